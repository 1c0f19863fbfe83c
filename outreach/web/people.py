"""Loops and physicians: what each referral still expects, and each referring physician's page.

The loops page is ``outreach loops`` and the report ``outreach physicians``,
read through the same functions (``loops.open_loops``, ``loops.physician_summary``);
a physician's page reads through ``referrers``. The opt-out toggle and the
undeliverable mark change through ``records``, as ``outreach physician`` does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from outreach import loops as loop_queries
from outreach import records, referrers, store
from outreach.errors import NotFound, OutreachError
from outreach.web.security import audit, engine, local, need, now, principal, settings, today

bp = Blueprint("people", __name__)


@bp.route("/loops")
def loops() -> tuple[str, int]:
    """Every expected update, blocked and overdue first; each with a link to where it is acted on."""
    chosen = request.args.get("physician", "").strip()
    error, code = None, 200
    found: list[loop_queries.Loop] = []
    with store.read(engine()) as conn:
        doctors = referrers.choices(conn)
        if chosen and referrers.find(conn, chosen) is None:
            error, code = f"There is no physician with the email {chosen!r}.", 404
        else:
            try:
                found = loop_queries.open_loops(conn, settings(), now(), chosen or None)
            except OutreachError as exc:  # the practice's rule files do not load
                error = f"The rules could not be read: {exc}"
        client_names, physician_names = referrers.names(conn, [lp.client_ref for lp in found])
    audit("view loops", f"physician {chosen.lower()}" if chosen else "all physicians")
    page = render_template(
        "loops.html",
        open=[lp for lp in found if lp.state not in loop_queries.CLOSED],
        done=[lp for lp in found if lp.state in loop_queries.CLOSED],
        counts=Counter(lp.state for lp in found),
        doctors=doctors,
        chosen=chosen.lower(),
        error=error,
        client_names=client_names,
        physician_names=physician_names,
        blocker=loop_queries.blocker,
        local=local,
    )
    return page, code


@bp.route("/physicians")
def physicians() -> str:
    """The referral report per physician (``outreach physicians``), each linking to their page."""
    with store.read(engine()) as conn:
        rows = loop_queries.physician_summary(conn, settings(), now())
    audit("view physicians", "all physicians")
    return render_template("physicians.html", rows=rows)


@bp.route("/physicians/<email>")
def physician(email: str) -> str:
    """One physician: who they are, how they are written to, their clients and recent messages."""
    with store.read(engine()) as conn:
        doctor = referrers.find(conn, email)
        if doctor is None:
            abort(404, f"There is no physician with the email {email!r}.")
        people = referrers.clients_of(conn, doctor.id)
        recent = referrers.recent_messages(conn, doctor.id)
    audit("view physician", f"physician {doctor.email}")
    return render_template(
        "physician.html",
        doctor=doctor,
        people=people,
        recent=recent,
        defaults=settings(),
        local=local,
    )


def _back(email: str, notice: str) -> Response:
    """Back to the physician's page, saying what was done (post, redirect, get: no resubmit)."""
    flash(notice)
    return redirect(url_for("people.physician", email=email))


def _changed(email: str, change: Callable[..., object]) -> str:
    """``change`` (a ``records`` function) made to the physician; their stored email, or 404."""
    with store.read(engine()) as conn:
        doctor = referrers.find(conn, email)
    if doctor is None:  # before any change is attempted
        abort(404, f"There is no physician with the email {email!r}.")
    try:
        change(engine(), doctor.email, now(), actor=principal().name)
    except NotFound as exc:
        abort(404, str(exc))
    return str(doctor.email)


@bp.route("/physicians/<email>/opt-out", methods=["POST"])
@need("staff")
def opt_out(email: str) -> Response:
    """Stop non-clinical mail (the quarterly outcomes summary); clinical updates still go."""
    with store.read(engine()) as conn:
        doctor = referrers.find(conn, email)
    if doctor is None:
        abort(404, f"There is no physician with the email {email!r}.")
    if doctor.opted_out_on is not None:  # a second click keeps the day they opted out
        return _back(doctor.email, f"Already opted out of non-clinical mail since {doctor.opted_out_on}.")
    day = today()
    try:
        records.opt_out(engine(), doctor.email, day, now(), actor=principal().name)
    except NotFound as exc:
        abort(404, str(exc))
    return _back(
        doctor.email,
        f"Opted out of non-clinical mail from {day}; clinical updates about shared clients still go.",
    )


@bp.route("/physicians/<email>/opt-in", methods=["POST"])
@need("staff")
def opt_in(email: str) -> Response:
    """Resume non-clinical mail."""
    return _back(_changed(email, records.opt_in), "Non-clinical mail resumed.")


@bp.route("/physicians/<email>/deliverable", methods=["POST"])
@need("staff")
def deliverable(email: str) -> Response:
    """Clear a "no such mailbox" mark, so mail goes to the address again."""
    return _back(
        _changed(email, records.mark_deliverable),
        "Marked deliverable again; mail suppressed meanwhile stays in the log and is not resent.",
    )
