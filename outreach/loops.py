"""Closing the loop: which expected communication with each physician is done, due or stuck.

For every active referral (and every discharge not yet reported) the
service expects what the rules declare with ``loop`` (``campaigns/*.toml``):
an event rule's email within its ``loop_within`` business days of the event
(shipped: the referral acknowledgement within 1, the initial assessment
report within 2, the discharge summary within 3), a recurring rule's every
``when.every`` while the client is active (shipped: a progress report every
30 days). Each is ``done``, ``due``, ``overdue`` or ``blocked`` (with why);
blocked ones are listed first, so nothing is lost quietly.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select

from outreach import store
from outreach.consent import row_consent_problem
from outreach.models import (
    BOUNCED,
    FAILED,
    PENDING,
    REDIRECTED,
    SENDING,
    SENT,
    SUPPRESSED,
    aware,
    clients,
    events,
    inbound,
    messages,
    physicians,
)
from outreach.rules import Rule, load_rules
from outreach.settings import Settings
from outreach.tables import format_table

HISTORY = timedelta(days=30)  # as the planner's default max_age
DISCHARGE_LOOKBACK = timedelta(days=90)
# Blocked and overdue first; then an alert still waiting for the physician's
# direction; then what is due; then the closed ones (sent, answered, replied).
STATE_ORDER = {
    "blocked": 0,
    "overdue": 1,
    "awaiting direction": 2,
    "due": 3,
    "done": 4,
    "replied": 4,
    "answered": 4,
}
STATES = tuple(STATE_ORDER)
CLOSED = ("done", "replied", "answered")


@dataclass
class Loop:
    client_ref: str
    physician_email: str
    loop: str
    state: str
    due_at: datetime | None
    done_at: datetime | None
    detail: str
    message_id: int | None = None


def blocker(loop: Loop) -> str | None:
    """What holds a blocked loop up: ``"failed"`` or ``"suppressed"`` (a message), or ``"consent"``.

    For the console, which links each to where it is acted on (the message's
    Retry, the client's consent form); ``None`` for a loop that is not blocked.
    """
    if loop.state != "blocked":
        return None
    if loop.message_id is None:
        return "consent"
    return "failed" if loop.detail.startswith("failed delivery") else "suppressed"


def add_business_days(day: date, count: int) -> date:
    while count > 0:
        day += timedelta(days=1)
        if day.weekday() < 5:
            count -= 1
    return day


def open_loops(
    conn: Connection,
    settings: Settings,
    now: datetime,
    physician: str | None = None,
    rules: list[Rule] | None = None,
) -> list[Loop]:
    """Every expected communication for the referrals in scope, blocked and overdue first.

    What is expected is read from ``rules`` (by default the practice's rule
    files): each rule with a ``loop``.
    """
    if rules is None:
        rules = load_rules(settings.campaigns_dir, settings.templates_dir)
    milestones = [rule for rule in rules if rule.loop and rule.event]
    recurring = [rule for rule in rules if rule.loop and rule.every]
    scope = select(clients, physicians.c.email.label("physician_email")).join(physicians)
    scope = scope.where((clients.c.status != "discharged") | _recently_discharged(now))
    if physician:
        scope = scope.where(physicians.c.email == physician.strip().lower())
    people = conn.execute(scope.order_by(clients.c.ref)).all()
    ids = [p.id for p in people]
    kinds = {kind for rule in milestones + recurring for kind in (rule.event, rule.since) if kind}
    anchors = _first_events(conn, ids, kinds)
    sent_by_template = _messages_by_client(conn, ids)
    # Milestones from before the service started (imported history) were never its to report.
    started = conn.execute(select(func.min(messages.c.created_at))).scalar() or now
    history = started - HISTORY
    found: list[Loop] = []
    for person in people:
        mine = sent_by_template.get(person.id, {})
        for rule in milestones:
            assert rule.event is not None and rule.loop_within is not None
            anchor = anchors.get((person.id, rule.event))
            if rule.event == "referral_received" and anchor is None and person.referral_date:
                anchor = datetime.combine(person.referral_date, time(9), settings.tz)
            if anchor is None or (anchor < history and rule.template not in mine):
                continue
            day = add_business_days(anchor.astimezone(settings.tz).date(), rule.loop_within)
            found.append(
                _judge(person, rule, mine.get(rule.template, []), _end_of(day, settings), now, settings)
            )
        if person.status == "active":
            for rule in recurring:
                loop = _progress(person, rule, mine.get(rule.template, []), anchors, now, settings)
                if loop is not None:
                    found.append(loop)
    _hear_back(conn, found, {rule.loop: rule for rule in milestones + recurring}, sent_by_template, settings)
    return sorted(found, key=lambda lp: (STATE_ORDER[lp.state], lp.due_at or now, lp.client_ref))


def _hear_back(
    conn: Connection, found: list[Loop], rules: dict[str | None, Rule], sent: dict, settings: Settings
) -> None:
    """The physician's side: a reply read from the mailbox (``inbox``) answers or marks a sent email.

    A reply to the digest that carried an update counts for the update.
    """
    digest_of = {
        m.id: m.digest_id for by_template in sent.values() for rows in by_template.values() for m in rows
    }
    closed = [lp for lp in found if lp.state == "done" and lp.message_id is not None]
    wanted = {i for lp in closed for i in (lp.message_id, digest_of.get(lp.message_id)) if i is not None}
    answers = _first_replies(conn, sorted(wanted))
    for loop in closed:
        assert loop.message_id is not None
        answer = answers.get(loop.message_id) or answers.get(digest_of.get(loop.message_id) or -1)
        rule = rules[loop.loop]
        if answer is not None:
            at, sender = answer
            loop.state = "answered" if rule.awaits_reply else "replied"
            loop.detail += f"; {loop.state} {_local(at, settings)} by {sender}"
        elif rule.awaits_reply:
            loop.state = "awaiting direction"
            loop.detail += "; awaiting the physician's direction"


def _first_replies(conn: Connection, message_ids: list[int]) -> dict[int, tuple[datetime, str]]:
    """Each message's first reply (not an automatic answer): when, and from whom."""
    first: dict[int, tuple[datetime, str]] = {}
    for chunk in store.chunks(message_ids):
        rows = conn.execute(
            select(inbound.c.message_id, inbound.c.received_at, inbound.c.sender)
            .where(inbound.c.message_id.in_(chunk), inbound.c.kind == "reply")
            .order_by(inbound.c.received_at)
        )
        for row in rows:
            first.setdefault(row.message_id, (aware(row.received_at), row.sender))
    return first


def _recently_discharged(now: datetime) -> ColumnElement[bool]:
    discharged_at = (
        select(func.max(events.c.occurred_at))
        .where(events.c.client_id == clients.c.id, events.c.kind == "discharged")
        .scalar_subquery()
    )
    return discharged_at >= now - DISCHARGE_LOOKBACK


def _first_events(conn: Connection, ids: list[int], kinds: set[str]) -> dict:
    """When each client's first event of each kind happened: (client id, kind) -> time."""
    first: dict[tuple[int, str], datetime] = {}
    for chunk in store.chunks(ids):
        rows = conn.execute(
            select(events.c.client_id, events.c.kind, func.min(events.c.occurred_at))
            .where(events.c.client_id.in_(chunk), events.c.kind.in_(sorted(kinds)))
            .group_by(events.c.client_id, events.c.kind)
        )
        first.update(((cid, kind), at) for cid, kind, at in rows)
    return first


def _messages_by_client(conn: Connection, ids: list[int]) -> dict:
    """Each client's messages by template, oldest first."""
    grouped: dict = {}
    for chunk in store.chunks(ids):
        rows = conn.execute(
            select(
                messages.c.id, messages.c.client_id, messages.c.template, messages.c.status,
                messages.c.sent_at, messages.c.last_error, messages.c.created_at, messages.c.not_before,
                messages.c.digest_id,
            )
            .where(messages.c.client_id.in_(chunk))
            .order_by(messages.c.created_at, messages.c.id)
        )  # fmt: skip
        for row in rows:
            grouped.setdefault(row.client_id, {}).setdefault(row.template, []).append(row)
    return grouped


def _end_of(day: date, settings: Settings) -> datetime:
    return datetime.combine(day, time(23, 59, 59), settings.tz)


def _judge(person: Any, rule: Rule, sent: list, due: datetime, now: datetime, settings: Settings) -> Loop:
    """The state of one expected email from the messages queued for it."""
    assert rule.loop is not None
    loop = Loop(person.ref, person.physician_email, rule.loop, "due", due, None, "")
    done = [m for m in sent if m.status in (SENT, BOUNCED)]
    if done and done[0].status == BOUNCED:
        m = done[0]
        loop.state, loop.message_id = "blocked", m.id
        said = (m.last_error or "no diagnostic").removeprefix("bounced: ")
        loop.detail = f"address bounced: {said} (message {m.id})"
        return loop
    if done:
        first = done[0]
        late = first.sent_at - due
        loop.state, loop.done_at, loop.message_id = "done", first.sent_at, first.id
        loop.detail = f"sent {_local(first.sent_at, settings)}" + (
            f", {_span(late)} late" if late > timedelta(0) else ""
        )
        return loop
    stuck = [m for m in sent if m.status in (FAILED, SUPPRESSED)]
    waiting = [m for m in sent if m.status in (PENDING, SENDING)]
    if stuck and not waiting:
        m = stuck[-1]
        why = "failed delivery" if m.status == FAILED else "suppressed"
        loop.state, loop.message_id = "blocked", m.id
        loop.detail = f"{why}: {m.last_error or 'no reason recorded'} (message {m.id})"
        return loop
    consent = row_consent_problem(person, now.astimezone(settings.tz).date())
    if not waiting and rule.consent_required and consent:
        loop.state, loop.detail = "blocked", consent
        return loop
    if now > due:
        loop.state = "overdue"
        loop.detail = f"overdue by {_span(now - due)}"
    else:
        loop.detail = f"due by {_local(due, settings)}"
    if waiting:
        loop.message_id = waiting[-1].id
        loop.detail += f"; message {waiting[-1].id} queued"
    staged = [m for m in sent if m.status == REDIRECTED]
    if staged:  # staging: it went to the practice's own inbox, so for the physician it is still owed
        loop.detail += f"; message {staged[-1].id} went to the staging address only"
    return loop


def _progress(
    person: Any, rule: Rule, sent: list, anchors: dict, now: datetime, settings: Settings
) -> Loop | None:
    """A recurring report: due ``rule.every`` after the last one sent (or after its anchor)."""
    assert rule.loop is not None and rule.every is not None
    if rule.since == "referral_date":
        start = (
            datetime.combine(person.referral_date, time.min, settings.tz) if person.referral_date else None
        )
    else:
        start = anchors.get((person.id, rule.since))
    if start is None:
        return None
    delivered = [m for m in sent if m.status == SENT]
    last = delivered[-1].sent_at if delivered else start
    due = last + rule.every
    if delivered and now <= due:
        loop = Loop(person.ref, person.physician_email, rule.loop, "done", due, last, "", delivered[-1].id)
        loop.detail = f"sent {_local(last, settings)}; next due by {_local(due, settings)}"
        return loop
    return _judge(person, rule, [m for m in sent if m.created_at >= last], due, now, settings)


def _local(moment: datetime, settings: Settings) -> str:
    return moment.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M")


def _span(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.0f} days"


def format_loops(loops: list[Loop], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([_plain(asdict(lp)) for lp in loops], indent=1)
    if not loops:
        return "(no open referrals)"
    headers = ("STATE", "CLIENT", "PHYSICIAN", "COMMUNICATION", "DETAIL")
    rows = [(lp.state, lp.client_ref, lp.physician_email, lp.loop, lp.detail) for lp in loops]
    return format_table(headers, rows)


def _plain(values: dict) -> dict:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


# --- per physician ---------------------------------------------------------------------


def physician_summary(conn: Connection, settings: Settings, now: datetime) -> list[dict]:
    """Referrals, conversion, time to first report, emails sent and last contact, per physician."""
    today = now.astimezone(settings.tz).date()
    doctors = conn.execute(select(physicians).order_by(physicians.c.name)).all()
    people = conn.execute(select(clients.c.id, clients.c.physician_id, clients.c.referral_date)).all()
    assessed = set(
        conn.execute(
            select(events.c.client_id).where(events.c.kind == "initial_assessment").distinct()
        ).scalars()
    )
    first_report = dict(
        conn.execute(
            select(messages.c.client_id, func.min(messages.c.sent_at))
            .where(
                messages.c.status == SENT,
                messages.c.client_id.is_not(None),
                messages.c.template != "referral_acknowledgement",
            )
            .group_by(messages.c.client_id)
        ).all()
    )
    emails = {
        pid: (count, last)
        for pid, count, last in conn.execute(
            select(messages.c.physician_id, func.count(), func.max(messages.c.sent_at))
            .where(messages.c.status == SENT, messages.c.digest_id.is_(None))
            .group_by(messages.c.physician_id)
        ).all()
    }
    summary = []
    for doctor in doctors:
        mine = [p for p in people if p.physician_id == doctor.id]
        delays = [
            (_as_date(first_report[p.id], settings) - p.referral_date).days
            for p in mine
            if p.id in first_report and p.referral_date
        ]
        count, last = emails.get(doctor.id, (0, None))
        summary.append(
            {
                "physician": doctor.name,
                "email": doctor.email,
                "referrals_90d": sum(
                    1 for p in mine if p.referral_date and p.referral_date >= today - timedelta(days=90)
                ),
                "referrals_total": len(mine),
                "conversion_pct": round(100 * sum(p.id in assessed for p in mine) / len(mine))
                if mine
                else None,
                "median_days_to_first_report": statistics.median(delays) if delays else None,
                "emails_sent": count,
                "last_contact": _local(last, settings) if last else None,
                "undeliverable": _undeliverable(doctor),
            }
        )
    return summary


def _undeliverable(doctor: Any) -> str | None:
    """Why nothing goes to this physician's address (a bounce, a refusal), or None."""
    if doctor.undeliverable_on is None:
        return None
    return f"since {doctor.undeliverable_on}: {doctor.undeliverable_reason or 'no reason recorded'}"


def _as_date(value: datetime, settings: Settings) -> date:
    return aware(value).astimezone(settings.tz).date()


def format_physicians(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=1)
    headers = (
        "PHYSICIAN",
        "EMAIL",
        "REF 90D",
        "REF ALL",
        "CONVERSION",
        "DAYS TO 1ST REPORT",
        "EMAILS",
        "LAST CONTACT",
        "ADDRESS",
    )
    table = [
        (
            r["physician"], r["email"], str(r["referrals_90d"]), str(r["referrals_total"]),
            "-" if r["conversion_pct"] is None else f"{r['conversion_pct']} %",
            "-" if r["median_days_to_first_report"] is None else f"{r['median_days_to_first_report']:g}",
            str(r["emails_sent"]), r["last_contact"] or "never",
            f"undeliverable {r['undeliverable']}" if r["undeliverable"] else "",
        )
        for r in rows
    ]  # fmt: skip
    if not table:
        return "(no physicians)"
    return format_table(headers, table)
