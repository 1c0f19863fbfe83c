"""The sent-message log and one message whole: what went to whom, and putting one right.

The log page is ``outreach log`` with a form: the same query
(``review.find_messages``), filtered and paged in the database, with counts
by status and a CSV export of what is shown. A message's page is
``outreach log show`` with the email as the physician saw it, in a sandboxed
frame. Staff can retry, cancel or resend from it, each after a confirmation
page, through ``records`` (which audits the change).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markupsafe import escape

from outreach import records, replies, review, store
from outreach.errors import NotFound, OutreachError
from outreach.models import FAILED, MESSAGE_STATUSES, PENDING, REDIRECTED, SENT, SUPPRESSED
from outreach.web import security
from outreach.web.security import engine, need, now, principal, settings

bp = Blueprint("log", __name__)
PAGE = 100  # log entries a page
FILTERS = ("status", "physician", "client", "rule", "since", "until", "q")
FIELD_LIMIT = 300  # characters kept of a filter field: longer is not a search

# ``messages.reason`` as the practice says it.
REASONS = {
    "consent": "no consent to share on record",
    "opted_out": "the physician opted out of non-clinical mail",
    "undeliverable": "the address was refused as nonexistent",
    "deidentification": "too few clients to stay anonymous",
    "moved": "the client is now referred to another physician",
    "address_changed": "the physician's address changed",
    "discharged": "the client has been discharged",
    "digest_rebuilt": "the digest was taken apart",
    "by_person": "cancelled by a person",
}


# --- helpers the templates use ---------------------------------------------------------


def _when(moment: datetime | None) -> str:
    """A time as the practice reads it: its own zone, to the minute."""
    return moment.astimezone(settings().tz).strftime("%Y-%m-%d %H:%M") if moment else ""


@bp.context_processor
def _helpers() -> dict[str, Callable[..., str]]:
    return {"when": _when}


# --- the log ---------------------------------------------------------------------------


def _form() -> dict[str, str]:
    """The filter form as typed (kept in the fields, whatever it says)."""
    return {name: request.args.get(name, "").strip()[:FIELD_LIMIT] for name in FILTERS}


def _query(form: dict[str, str], before: str | None, limit: int | None) -> review.LogQuery:
    """The form as a ``LogQuery``; ``RowError`` names a bad date as its field."""
    since = records.parse_date(form["since"], "since") if form["since"] else None
    until = records.parse_date(form["until"], "until") if form["until"] else None
    if since and until and until < since:
        raise records.RowError(f"until: {until} is before since ({since})")
    start, end = review.day_bounds(since, until, settings().tz)
    return review.LogQuery(
        status=form["status"] or None,
        physician=form["physician"] or None,
        client=form["client"] or None,
        rule=form["rule"] or None,
        since=start,
        until=end,
        words=form["q"] or None,
        before=before,
        limit=limit,
    )


def _describe(form: dict[str, str], before: str = "") -> str:
    """The filters as the audit line keeps them."""
    parts = [f"{name}={value}" for name, value in form.items() if value]
    if before:
        parts.append(f"before={before}")
    return " ".join(parts) or "all"


@bp.route("/")
def index() -> tuple[str, int]:
    """The log, newest first, as filtered; an unknown name or a bad date is said on the page."""
    form = _form()
    before = request.args.get("before", "").strip()[:80]
    rows: list[dict] = []
    counts: dict[str, int] = {}
    error = None
    try:
        query = _query(form, before or None, PAGE + 1)
        with store.read(engine()) as conn:
            rows = review.log_page(conn, query)
            counts = review.count_by_status(conn, query)
    except OutreachError as exc:
        error = str(exc)
    security.audit("view log", "message log", _describe(form, before))
    filters: dict[str, Any] = {name: value for name, value in form.items() if value}
    older = review.cursor_of(rows[PAGE - 1]) if len(rows) > PAGE else None
    others: dict[str, Any] = {name: value for name, value in filters.items() if name != "status"}
    page = render_template(
        "log.html",
        rows=rows[:PAGE],
        form=form,
        statuses=MESSAGE_STATUSES,
        counts=[(name, n, url_for("log.index", **others, status=name)) for name, n in counts.items()],
        all_url=url_for("log.index", **others),
        total=sum(counts.values()),
        csv_url=url_for("log.export", **filters),
        older_url=url_for("log.index", **filters, before=older) if older else None,
        newest_url=url_for("log.index", **filters) if before else None,
        error=error,
    )
    return page, 422 if error else 200


@bp.route("/log.csv")
def export() -> Response | tuple[str, int]:
    """The whole filtered log as CSV (``outreach log --format csv``'s columns), audited as an export."""
    form = _form()
    try:
        query = _query(form, None, None)
        with store.read(engine()) as conn:
            review.find_messages(conn, replace(query, limit=1))  # a bad filter is said before any download
    except OutreachError as exc:
        page = render_template(
            "error.html", code=422, title="That filter could not be used", message=str(exc)
        )
        return page, 422
    security.audit("export", "message log", _describe(form))
    return Response(
        review.iter_csv(engine(), query),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="outreach-log.csv"'},
    )


# --- one message -----------------------------------------------------------------------


def _detail(message_id: int) -> dict:
    try:
        with store.read(engine()) as conn:
            return review.message_detail(conn, message_id)
    except NotFound as exc:
        abort(404, str(exc))


def _removed(detail: dict) -> str:
    """What stands in for a body the retention setting removed ("removed on DATE …"), else ""."""
    if not detail["body_removed_at"]:
        return ""
    return review.body_removed(detail["body_removed_at"], detail["body_sha256"], settings().tz)


def _sender() -> str:
    """The From line the service writes (``compose``): the practice's chosen name, or sender and practice."""
    cfg = settings()
    name = " ".join(cfg.from_name.split()) or f"{cfg.sender_name}, {cfg.practice_name}"
    return f"{name} <{cfg.from_addr}>"


@bp.route("/messages/<int:message_id>")
def message(message_id: int) -> str:
    """One message whole: headers, status and why, the trail, the text, the email as sent."""
    detail = _detail(message_id)
    with store.read(engine()) as conn:
        answers = replies.list_replies(conn, message_id=message_id, limit=None)
    security.audit("view message", f"message {message_id}")
    allowed = [name for name, action in ACTIONS.items() if detail["status"] in action.allowed]
    if detail["body_removed_at"]:  # nothing left to send again
        allowed = [name for name in allowed if name not in ("retry", "resend")]
    return render_template(
        "message.html",
        m=detail,
        removed=_removed(detail),
        answers=[
            {
                **a,
                "what": replies.KIND_WORDS.get(a["kind"], a["kind"]),
                "says": replies.says(a, settings().tz),
            }
            for a in reversed(answers)  # oldest first, as the trail
        ],
        sender=_sender(),
        reason=REASONS.get(detail["reason"] or "", detail["reason"]),
        actions=allowed if principal().may("staff") else [],
    )


@bp.route("/messages/<int:message_id>/html")
def message_html(message_id: int) -> Response:
    """The HTML part exactly as stored, under a policy that lets nothing in it run or load."""
    detail = _detail(message_id)
    security.audit("view message", f"message {message_id}", "the email's HTML part")
    removed = _removed(detail)
    page = f"<p>Body {escape(removed)}.</p>" if removed else detail["html"]
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = security.EMAIL_POLICY
    return response


# --- retry, cancel, resend -------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One thing staff can do to a message: for which statuses, and how it is asked and said."""

    allowed: tuple[str, ...]
    confirm: str  # the confirmation page's button
    question: str  # with {id}
    refusal: str  # with {id} and {status}
    run: Callable[[int, str], tuple[int, str]]  # (message id, why) -> (the page to show, the notice)
    explain: Callable[[dict, str], str]


def _retry(message_id: int, why: str) -> tuple[int, str]:
    records.retry(engine(), settings(), now(), [message_id], actor=principal().name)
    return message_id, f"Message {message_id} is queued again: the service sends it at its next round."


def _cancel(message_id: int, why: str) -> tuple[int, str]:
    done = records.cancel(engine(), [message_id], now(), actor=principal().name)
    notice = f"Message {message_id} is cancelled: it will never be sent."
    if done.carried:
        notice += f" The updates it carried are cancelled with it: {', '.join(map(str, done.carried))}."
    if done.regrouped:
        notice += f" Combined again at the next plan: {', '.join(map(str, done.regrouped))}."
    return message_id, notice


def _resend(message_id: int, why: str) -> tuple[int, str]:
    new_id = records.resend(engine(), message_id, now(), actor=principal().name, why=why)
    return new_id, (
        f"Message {new_id} is queued: a resend of message {message_id}. Consent and the address "
        "are checked again before it leaves."
    )


def _explain_retry(m: dict, why: str) -> str:
    error = f" ({m['last_error']})" if m["last_error"] else ""
    return (
        f"It failed{error}. It goes back in the queue with a fresh set of attempts, "
        f"to {m['recipient_name'] or m['to']}, with the same content and Message-ID."
    )


def _explain_cancel(m: dict, why: str) -> str:
    text = f"It will never be sent to {m['recipient_name'] or m['to']}."
    if m["digest_members"]:
        text += " It is a digest: the updates it carries are cancelled with it."
    elif m["digest_id"]:
        text += f" It waits inside digest message {m['digest_id']}: the others in it are combined again."
    return text


def _explain_resend(m: dict, why: str) -> str:
    text = (
        f"A new message with the same words goes to {m['recipient_name'] or m['to']} <{m['to']}>, "
        "with a new Message-ID, through the same checks as any other (consent, opt-out, address)."
    )
    return text + (f" Why: {why}" if why else "")


ACTIONS = {
    "retry": Action(
        (FAILED,),
        "Confirm retry",
        "Retry message {id}?",
        "Only a failed message can be retried: message {id} is {status}.",
        _retry,
        _explain_retry,
    ),
    "cancel": Action(
        (PENDING, SUPPRESSED),
        "Confirm cancel",
        "Cancel message {id}?",
        "Only a pending or suppressed message can be cancelled: message {id} is {status}.",
        _cancel,
        _explain_cancel,
    ),
    "resend": Action(
        (SENT, REDIRECTED),
        "Confirm resend",
        "Resend message {id}?",
        "Only a sent message can be resent: message {id} is {status}.",
        _resend,
        _explain_resend,
    ),
}


def _act(message_id: int, name: str) -> ResponseReturnValue:
    """GET: the question; POST with ``confirmed=yes``: the change, then back to the message with a notice."""
    action = ACTIONS[name]
    detail = _detail(message_id)
    back = url_for("log.message", message_id=message_id)
    if detail["status"] not in action.allowed:
        refusal = action.refusal.format(id=message_id, status=detail["status"])
        return render_template("log_refused.html", message=refusal, back=back), 409
    why = " ".join(request.values.get("why", "").split()) if name == "resend" else ""
    if request.method == "GET" or request.form.get("confirmed") != "yes":
        return render_template(
            "confirm.html",
            question=action.question.format(id=message_id),
            explain=action.explain(detail, why),
            action=url_for(f"log.{name}", message_id=message_id),
            fields={"why": why} if why else {},
            button=action.confirm,
            back=back,
        )
    try:
        shown, notice = action.run(message_id, why)
    except records.RowError as exc:
        return render_template("log_refused.html", message=str(exc), back=back), 422
    except OutreachError as exc:
        return render_template("log_refused.html", message=str(exc), back=back), 409
    flash(notice, "notice")
    return redirect(url_for("log.message", message_id=shown))


@bp.route("/messages/<int:message_id>/retry", methods=["GET", "POST"])
@need("staff")
def retry(message_id: int) -> ResponseReturnValue:
    """Queue a failed message again (``outreach retry ID``)."""
    return _act(message_id, "retry")


@bp.route("/messages/<int:message_id>/cancel", methods=["GET", "POST"])
@need("staff")
def cancel(message_id: int) -> ResponseReturnValue:
    """Never send a pending or suppressed message (``outreach cancel ID``)."""
    return _act(message_id, "cancel")


@bp.route("/messages/<int:message_id>/resend", methods=["GET", "POST"])
@need("staff")
def resend(message_id: int) -> ResponseReturnValue:
    """Send a sent message again as a new one (``records.resend``)."""
    return _act(message_id, "resend")
