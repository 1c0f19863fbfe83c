"""Clients: find one, their record, timeline, scores as charts, consent, and forms to record.

Reads go through ``outreach.timeline``; every change through ``records``
(``add_event``, ``add_measure``, ``give_consent``, ``revoke_consent``), as
``outreach event add``, ``outreach measure add`` and ``outreach client
consent`` do, with the same checks: a bad value comes back as a
``RowError`` naming the field, shown next to its form (422, nothing saved,
what was typed kept).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from functools import wraps

from flask import Blueprint, abort, flash, redirect, render_template, request, send_file, url_for
from werkzeug.wrappers import Response

from outreach import records, store, timeline
from outreach.errors import NotFound
from outreach.export import client_zip
from outreach.instruments import INSTRUMENTS
from outreach.models import CLIENT_STATUSES, EVENT_KINDS
from outreach.web import charts
from outreach.web.security import audit, engine, local, need, now, principal, settings, today

bp = Blueprint("clients", __name__)

# The form's own name for a field a ``RowError`` names (records speaks in CSV columns).
FORM_FIELD = {"consent_date": "on", "consent_expires": "expires"}
# How a page names each field in an error line.
LABELS = {
    "kind": "Kind",
    "occurred_at": "When",
    "note": "Note",
    "instrument": "Instrument",
    "score": "Score",
    "measured_at": "Measured on",
    "on": "Given on",
    "expires": "Expires",
}
FORMS = {
    "event": ("kind", "occurred_at", "note"),
    "measure": ("instrument", "score", "measured_at"),
    "consent": ("on", "expires"),
}


@bp.route("/clients")
def index() -> str:
    """Find a client by ref or name, and by status; each row links to the client's page."""
    q = request.args.get("q", "").strip()
    status = request.args.get("status", "").strip().lower()
    error = None
    with store.read(engine()) as conn:
        try:
            found = timeline.find_clients(conn, today(), q, status or None)
        except NotFound as exc:  # an unknown status: say so, and search without it
            error, status = str(exc), ""
            found = timeline.find_clients(conn, today(), q)
    audit("view clients", "client list", f"q={q} status={status}")
    return render_template(
        "clients.html",
        found=found,
        q=q,
        status=status,
        statuses=CLIENT_STATUSES,
        error=error,
        limit=timeline.LIST_LIMIT,
        local=local,
    )


@bp.route("/clients/<ref>")
def client(ref: str) -> tuple[str, int]:
    """One client: who they are, consent, scores as charts, the timeline; staff also record here."""
    return _page(ref)


def _blank_forms() -> dict[str, dict[str, str]]:
    """The forms as a page first shows them: now, today, nothing chosen."""
    moment = now().astimezone(settings().tz)
    day = moment.date().isoformat()
    return {
        "event": {"kind": "", "occurred_at": moment.strftime("%Y-%m-%dT%H:%M"), "note": ""},
        "measure": {"instrument": "", "score": "", "measured_at": day},
        "consent": {"on": day, "expires": ""},
    }


def _page(
    ref: str, code: int = 200, form: str = "", values: dict[str, str] | None = None, error: str = ""
) -> tuple[str, int]:
    """The client's page; after a refused form, that form with its error and what was typed."""
    with store.read(engine()) as conn:
        try:
            record = timeline.client_record(conn, ref, today())
        except NotFound as exc:
            abort(404, str(exc))
        entries = timeline.timeline(conn, record.id, settings().tz)
        series = timeline.measures(conn, record.id)
    audit("view client", f"client {record.ref}")
    forms = _blank_forms()
    if form and values is not None:
        forms[form] = values
    invalid = error.partition(":")[0] if error else ""
    page = render_template(
        "client.html",
        client=record,
        timeline=entries,
        charts=[
            (s, charts.svg(s), charts.describe(s), charts.threshold(s.instrument, s.points[0][1]))
            for s in series
        ],
        forms=forms,
        form=form,
        error=_said(error),
        invalid=invalid,
        kinds=EVENT_KINDS,
        instruments=list(INSTRUMENTS.values()),
        may_record=principal().may("staff"),
        may_export=principal().may("admin"),
        local=local,
        tzname=settings().timezone,
    )
    return page, code


def _said(error: str) -> str:
    """A ``RowError`` line ("score: …") as the page says it ("Score: …")."""
    if not error:
        return ""
    field, _, problem = error.partition(": ")
    return f"{LABELS.get(field, field)}: {problem}"


def _refused(ref: str, form: str, exc: records.RowError) -> tuple[str, int]:
    """The page again, 422: the form's error, nothing saved, the user's input kept."""
    values = {name: request.form.get(name, "") for name in FORMS[form]}
    field = FORM_FIELD.get(exc.field, exc.field)
    return _page(ref, 422, form, values, f"{field}: {exc.problem}")


def _back(ref: str, notice: str) -> Response:
    flash(notice)
    return redirect(url_for("clients.client", ref=ref))


# A form's POST for the client ``ref`` at ``moment``: what it recorded, in a sentence.
Recording = Callable[[str, datetime], str]


def _form_post(path: str, form: str) -> Callable[[Recording], Callable[[str], Response | tuple[str, int]]]:
    """The staff's POST of the client page's ``form``, at ``path``.

    The view records what the form says, as of one moment, and returns the
    notice shown back on the client's page. A bad value (``RowError``) shows
    the page again with the form's error, what was typed kept (422); an
    unknown client is 404.
    """

    def register(record: Recording) -> Callable[[str], Response | tuple[str, int]]:
        @bp.route(path, methods=["POST"])
        @need("staff")
        @wraps(record)
        def view(ref: str) -> Response | tuple[str, int]:
            try:
                notice = record(ref, now())
            except records.RowError as exc:
                return _refused(ref, form, exc)
            except NotFound as exc:
                abort(404, str(exc))
            return _back(ref, notice)

        return view

    return register


@_form_post("/clients/<ref>/events", "event")
def add_event(ref: str, moment: datetime) -> str:
    """Record a milestone (``outreach event add``): once; the client's status moves along."""
    given = request.form.get("occurred_at", "")
    occurred = records.parse_datetime(given, "occurred_at", settings().tz) if given.strip() else moment
    added = records.add_event(
        engine(),
        ref,
        request.form.get("kind", ""),
        occurred,
        moment,
        note=request.form.get("note", ""),
        actor=principal().name,
    )
    what = f"{added.kind.replace('_', ' ')} on {local(occurred)}"
    if added.event_id is None:
        return f"{what.capitalize()} was already on record; nothing changed."
    return f"Recorded {what} (event {added.event_id})."


@_form_post("/clients/<ref>/measures", "measure")
def add_measure(ref: str, moment: datetime) -> str:
    """Record a score (``outreach measure add``): a second one the same day replaces the first."""
    day = records.parse_date(request.form.get("measured_at", ""), "measured_at") or today()
    measured = records.add_measure(
        engine(),
        ref,
        request.form.get("instrument", ""),
        request.form.get("score", ""),
        day,
        moment,
        actor=principal().name,
    )
    what = f"{measured.instrument} {measured.score:g} on {day}"
    if measured.outcome == "unchanged":
        return f"{what} was already on record; nothing changed."
    if measured.outcome == "updated":
        return f"Recorded {what}, replacing the score recorded earlier that day."
    return f"Recorded {what}."


@_form_post("/clients/<ref>/consent", "consent")
def give_consent(ref: str, moment: datetime) -> str:
    """Record consent to share health information (``outreach client consent``); lifts a revocation."""
    on = records.parse_date(request.form.get("on", ""), "on") or today()
    expires = records.parse_date(request.form.get("expires", ""), "expires")
    records.give_consent(engine(), ref, on, moment, expires=expires, actor=principal().name)
    until = f", until {expires}" if expires else ""
    return f"Consent recorded as given on {on}{until}; updates held for it can now go."


@bp.route("/clients/<ref>/consent/revoke", methods=["POST"])
@need("staff")
def revoke_consent(ref: str) -> Response:
    """Record that consent was withdrawn today (``outreach client revoke-consent``)."""
    day = today()
    with store.read(engine()) as conn:
        try:
            record = timeline.client_record(conn, ref, day)
        except NotFound as exc:
            abort(404, str(exc))
    revoked = record.consent.revoked_on
    if revoked is not None and revoked <= day:  # a second click keeps the day it was revoked
        return _back(ref, f"Consent was already revoked on {revoked}; nothing changed.")
    try:
        records.revoke_consent(engine(), ref, day, now(), actor=principal().name)
    except NotFound as exc:
        abort(404, str(exc))
    return _back(ref, f"Consent revoked on {day}: queued updates about this client will not be sent.")


@bp.route("/clients/<ref>/export", methods=["POST"])
@need("admin")
def export(ref: str) -> Response:
    """The client's record as a zip (``outreach client export``): admins only, audited, never cached.

    Built in memory and sent as it is: nothing is left on the server's disk.
    """
    try:
        data, summary = client_zip(engine(), settings(), ref, now(), actor=principal().name)
    except NotFound as exc:
        abort(404, str(exc))
    response = send_file(
        io.BytesIO(data), mimetype="application/zip", as_attachment=True, download_name=summary.path.name
    )
    response.headers["Cache-Control"] = "no-store"
    return response
