"""What an email says: the template context for a client or a physician.

Everything a template may print is assembled here from the database, so
templates stay declarative and every email interprets the same numbers the
same way (outcomes against their MCID, attendance, the bottom line).
"""

from __future__ import annotations

import re
import statistics
from collections import namedtuple
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from outreach import store
from outreach.instruments import INSTRUMENTS, Outcome, format_change, format_score
from outreach.models import SENT, aware, clients, events, measurements, messages, physicians
from outreach.rules import Rule
from outreach.settings import Settings

EVENT_LABELS = {
    "referral_received": "Referral received",
    "initial_assessment": "Initial assessment",
    "reassessment": "Reassessment",
    "goal_achieved": "Goal achieved",
    "session_attended": "Session attended",
    "session_missed": "Session missed",
    "program_completed": "Program completed",
    "discharged": "Discharged",
    "adverse_event": "Adverse event",
}
DOCTOR_CREDENTIALS = {"MD", "DO", "MBBS", "MBCHB", "DPM", "PHD", "DC"}
MIN_COHORT = 3  # a de-identified summary must describe at least this many clients
ATTENTION = "needs your attention"  # the bottom line when the physician should act
# An email about one of these events is an alert, whatever the bottom line:
# an adverse event, or missed sessions (the adherence concern).
ALERT_EVENTS = ("adverse_event", "session_missed")


def practice_view(settings: Settings) -> dict:
    sender = ", ".join(p for p in (settings.sender_name, settings.sender_credentials) if p)
    return {
        "name": settings.practice_name,
        "address": settings.practice_address,
        "phone": settings.practice_phone,
        "email": settings.from_addr,
        "sender_name": settings.sender_name,
        "sender_credentials": settings.sender_credentials,
        "sender": sender,
    }


def display_name(name: str, credentials: str | None) -> str:
    """A physician as named on an envelope and in the log: "Maria Alvarez, MD"."""
    return f"{name}, {credentials}" if credentials else name


def physician_view(row: Any) -> dict:
    credentials = row.credentials or ""
    tokens = {t.strip(" .").upper() for t in credentials.replace(",", " ").split()}
    last_name = row.name.split()[-1] if row.name.split() else row.name
    salutation = f"Dr. {last_name}" if tokens & DOCTOR_CREDENTIALS else row.name
    return {
        "id": row.id,
        "name": row.name,
        "credentials": credentials,
        "display": display_name(row.name, credentials),
        "salutation": salutation,
        "specialty": row.specialty,
        "clinic": row.clinic,
        "email": row.email,
    }


def initials(first_name: str, last_name: str) -> str:
    letters = [next((ch for ch in part if ch.isalpha()), "") for part in (first_name, last_name)]
    return "".join(f"{ch.upper()}." for ch in letters if ch)


def client_view(row: Any) -> dict:
    goals = [g.strip() for g in (row.goals or "").replace("\n", ";").split(";") if g.strip()]
    return {
        "id": row.id,
        "ref": row.ref,
        "initials": initials(row.first_name, row.last_name),
        "first_name": row.first_name,
        "last_name": row.last_name,
        "referral_date": row.referral_date,
        "diagnosis": row.diagnosis or "not stated on the referral",
        "precautions": row.precautions or "none stated",
        "goals": goals,
        "status": row.status,
        "consent_date": row.consent_date,
    }


def event_view(row: Any, settings: Settings) -> dict:
    local = row.occurred_at.astimezone(settings.tz)
    return {
        "id": row.id,
        "kind": row.kind,
        "label": EVENT_LABELS.get(row.kind, row.kind),
        "occurred_at": local,
        "date": local.date(),
        "note": row.note or "",
    }


def outcome_view(outcome: Outcome) -> dict:
    ins = outcome.instrument
    pct = outcome.change_pct
    return {
        "code": ins.code,
        "name": ins.name,
        "unit": ins.unit,
        "baseline": format_score(outcome.baseline),
        "latest": format_score(outcome.latest),
        "change": format_change(outcome.change),
        "change_pct": "" if pct is None else f"{format_change(round(pct))} %",
        "threshold": ins.threshold_label,
        "interpretation": outcome.interpretation,
        "meaningful": outcome.meaningful,
        "worsened": outcome.worsened,
        "risk_note": outcome.risk_note,
        "baseline_on": outcome.baseline_on,
        "latest_on": outcome.latest_on,
        "count": outcome.count,
        "source": ins.source,
    }


def outcomes_for(conn: Connection, client_id: int, until: date | None = None) -> list[Outcome]:
    """First against latest score for each instrument measured for the client."""
    return outcomes_from(_measurements(conn, [client_id]).get(client_id, []), until)


def outcomes_from(rows: list, until: date | None = None) -> list[Outcome]:
    """Outcomes from one client's measurements (ordered by instrument, then date)."""
    series: dict[str, list] = {}
    for row in rows:
        if until is None or row.measured_on <= until:
            series.setdefault(row.instrument, []).append(row)
    result = []
    for code, found in series.items():
        instrument = INSTRUMENTS.get(code)
        if instrument is None:
            continue
        first, last = found[0], found[-1]
        result.append(
            Outcome(instrument, first.score, last.score, first.measured_on, last.measured_on, len(found))
        )
    return sorted(result, key=lambda o: _REGISTRY_ORDER[o.instrument.code])


_REGISTRY_ORDER = {code: index for index, code in enumerate(INSTRUMENTS)}  # outcomes in this order


def _rows(name: str, columns: Any) -> Any:
    """A named tuple type for rows of ``columns``: what a history keeps of the database's rows.

    Read a dozen times each while an email's context is assembled, and a
    database row's attributes are ten times slower to read than a tuple's.
    """
    return namedtuple(name, [c.name for c in columns])


_MEASURE_COLUMNS = measurements.c["client_id", "instrument", "score", "measured_on"]
_Measure = _rows("Measure", _MEASURE_COLUMNS)


def _measurements(conn: Connection, client_ids: list[int]) -> dict[int, list]:
    """Each client's measurements, ordered by instrument and date; one query per chunk."""
    found: dict[int, list] = {}
    for chunk in store.chunks(client_ids):
        rows = conn.execute(
            select(*_MEASURE_COLUMNS)
            .where(measurements.c.client_id.in_(chunk))
            .order_by(measurements.c.client_id, measurements.c.instrument, measurements.c.measured_on)
        )
        for row in map(_Measure._make, rows):
            found.setdefault(row.client_id, []).append(row)
    return found


SESSION_KINDS = ("session_attended", "session_missed")


def attendance_from(events_: list, start: datetime, end: datetime) -> dict:
    """Sessions attended and missed in the period; consecutive misses up to its end.

    ``events_`` are the client's events in time order.
    """
    attended = missed = streak = 0
    for event in events_:  # one pass: a client's history is mostly sessions
        kind = event.kind
        if kind not in SESSION_KINDS or event.occurred_at > end:
            continue
        streak = streak + 1 if kind == "session_missed" else 0
        if event.occurred_at >= start:
            if kind == "session_attended":
                attended += 1
            else:
                missed += 1
    scheduled = attended + missed
    return {
        "attended": attended,
        "missed": missed,
        "scheduled": scheduled,
        "rate": round(100 * attended / scheduled) if scheduled else None,
        "consecutive_missed": streak,
    }


def bottom_line(outcomes: list[Outcome], attendance: dict, adverse: bool) -> str:
    """The one-word status a physician reads first."""
    if adverse or attendance["consecutive_missed"] >= 3:
        return ATTENTION
    compared = [o for o in outcomes if o.count >= 2]
    if any(o.worsened for o in compared):
        return "declining"
    if any(o.meaningful for o in compared):
        return "improving"
    if compared:
        return "plateau"
    return "baseline established"


@dataclass(frozen=True)
class History:
    """Everything recorded about one client, read in bulk for a chunk of emails."""

    client: Any  # the client's row (its columns as attributes)
    physician: Any  # their physician's row
    events: list  # in time order
    measurements: list  # by instrument, then date
    # When each update about one of the client's events was sent: (rule, event id) -> the
    # first sending (a reminder says when we told the physician).
    sent: dict[tuple[str, int], datetime] = field(default_factory=dict)


def load_history(conn: Connection, client_id: int) -> History:
    """One client's history (``load_histories`` for many)."""
    return load_histories(conn, [client_id])[client_id]


# What a history keeps of each table: the columns an email reads (no time stamps).
_CLIENT_COLUMNS = [c for c in clients.c if c.name not in ("created_at", "updated_at")]
_EVENT_COLUMNS = events.c["id", "client_id", "kind", "occurred_at", "note"]
_PHYSICIAN_COLUMNS = [c for c in physicians.c if c.name not in ("created_at", "updated_at")]
_Client = _rows("Client", _CLIENT_COLUMNS)
_Event = _rows("Event", _EVENT_COLUMNS)
_Physician = _rows("Physician", _PHYSICIAN_COLUMNS)


def load_histories(
    conn: Connection, client_ids: list[int], told: Collection[int] | None = None
) -> dict[int, History]:
    """Histories of many clients in five queries per chunk, not a dozen per email.

    ``told``: the clients whose updates already sent a reminder will cite
    (``History.sent``); None for all. Reading them walks every message of
    every client, a fifth of the plan's reading, for the few reminders.
    """
    ids = sorted(set(client_ids))
    found_clients: dict[int, Any] = {}
    found_events: dict[int, list] = {}
    found_sent = _sent_updates(conn, ids if told is None else sorted(set(told)))
    for chunk in store.chunks(ids):
        found = conn.execute(select(*_CLIENT_COLUMNS).where(clients.c.id.in_(chunk)))
        found_clients.update((r.id, r) for r in map(_Client._make, found))
        rows = conn.execute(
            select(*_EVENT_COLUMNS)
            .where(events.c.client_id.in_(chunk))
            .order_by(events.c.client_id, events.c.occurred_at, events.c.id)
        )
        for row in map(_Event._make, rows):
            found_events.setdefault(row.client_id, []).append(row)
    doctor_ids = sorted({c.physician_id for c in found_clients.values()})
    doctors: dict[int, Any] = {}
    for chunk in store.chunks(doctor_ids):
        found = conn.execute(select(*_PHYSICIAN_COLUMNS).where(physicians.c.id.in_(chunk)))
        doctors.update((r.id, r) for r in map(_Physician._make, found))
    scores = _measurements(conn, ids)
    return {
        i: History(
            c, doctors[c.physician_id], found_events.get(i, []), scores.get(i, []), found_sent.get(i, {})
        )
        for i, c in found_clients.items()
    }


def _sent_updates(conn: Connection, client_ids: list[int]) -> dict[int, dict[tuple[str, int], datetime]]:
    """When each update about one of these clients' events was first sent, by client."""
    found: dict[int, dict[tuple[str, int], datetime]] = {}
    for chunk in store.chunks(client_ids):
        # By client (the index on client_id): a condition on status here would
        # tempt the database into the index on status, most of the log.
        told = conn.execute(
            select(*messages.c["client_id", "rule", "event_id", "sent_at", "status"]).where(
                messages.c.client_id.in_(chunk), messages.c.event_id.is_not(None)
            )
        )
        for row in told:
            if row.status != SENT or row.sent_at is None:  # an update a digest carried is sent with it
                continue
            mine = found.setdefault(row.client_id, {})
            key = (row.rule, row.event_id)
            mine[key] = min(mine.get(key, row.sent_at), row.sent_at)
    return found


def client_context(
    settings: Settings, rule: Rule, history: History, now: datetime, event_id: int | None = None
) -> dict:
    """Everything a client-level template may use, from the client's ``history`` (``load_history``)."""
    client = history.client
    event = None
    if event_id is not None:
        event = next((e for e in history.events if e.id == event_id), None)
        if event is None:
            raise LookupError(f"event {event_id} is not one of client {client.id}'s")
    local_now = now.astimezone(settings.tz)
    view = client_view(client)
    assessments = _event_dates(history.events, settings)
    goal_status, achievements = goals_from(history.events, view["goals"], settings)
    start = now - (rule.every or timedelta(days=30))
    if rule.every is None and client.referral_date is not None:
        start = min(start, datetime.combine(client.referral_date, datetime.min.time(), settings.tz))
    outcomes = outcomes_from(history.measurements, until=local_now.date())
    attendance = attendance_from(history.events, start, now)
    adverse = any(e.kind == "adverse_event" and start <= e.occurred_at <= now for e in history.events)
    status = bottom_line(outcomes, attendance, adverse)
    return {
        "practice": practice_view(settings),
        "physician": physician_view(history.physician),
        "client": view,
        "event": event_view(event, settings) if event is not None else None,
        "plan": plan_view(client, assessments),
        "goal_status": goal_status,
        "achievements": achievements,
        "outcomes": [outcome_view(o) for o in outcomes],
        "attendance": attendance,
        "status": status,
        # The email says the physician should act: templates print "needs your
        # attention" on it, a digest lists the update first for it.
        "attention": status == ATTENTION or (event is not None and event.kind in ALERT_EVENTS),
        "period": {"start": start.astimezone(settings.tz).date(), "end": local_now.date()},
        "assessments": assessments,
        "rule": {"name": rule.name, "description": rule.description},
        "now": local_now,
        "today": local_now.date(),
        "reminder": reminder_view(settings, rule, history, event) if rule.no_reply else None,
        "lapse": lapse_view(settings, rule, history, now) if rule.no_event else None,
    }


def reminder_view(settings: Settings, rule: Rule, history: History, event: Any) -> dict:
    """A reminder that rule ``rule.no_reply``'s email (about ``event``) has had no reply: when it went."""
    told = history.sent.get((rule.no_reply, event.id)) if rule.no_reply and event is not None else None
    return {
        "rule": rule.no_reply,
        "told_on": aware(told).astimezone(settings.tz).date() if told is not None else None,
    }


# A note on an event that records the practice getting in touch with the client.
CONTACT_WORDS = re.compile(
    r"\b(contact(ed|ing)?|phoned|called|rang|spoke|spoken|texted|emailed|e-mailed|messaged|voicemail"
    r"|left (a )?(voice ?)?message)\b",
    re.IGNORECASE,
)


def lapse_start(history: History, kinds: tuple[str, ...]) -> tuple[datetime, Any] | None:
    """When the current lapse began, and the event that began it (None: the initial assessment).

    The latest of ``kinds`` since the initial assessment, or the initial
    assessment itself; None for a client never assessed (no lapse).
    """
    assessed = [aware(e.occurred_at) for e in history.events if e.kind == "initial_assessment"]
    if not assessed:
        return None
    start = min(assessed)
    last = None
    for e in history.events:  # in time order: the last one found is the latest
        if e.kind in kinds and aware(e.occurred_at) >= start:
            last = e
    return (aware(last.occurred_at), last) if last is not None else (start, None)


def lapse_view(settings: Settings, rule: Rule, history: History, now: datetime) -> dict | None:
    """The facts of an attendance lapse: since when, the sessions missed, any contact recorded."""
    found = lapse_start(history, rule.no_event)
    if found is None:
        return None
    start, last = found
    later = [e for e in history.events if start < aware(e.occurred_at) <= now]
    missed = [e for e in later if e.kind == "session_missed"]
    contact = [e for e in later if e.note and CONTACT_WORDS.search(e.note)]
    local = start.astimezone(settings.tz)
    return {
        "since": local.date(),
        "days": (now - start).days,
        "last": event_view(last, settings) if last is not None else None,  # None: since the assessment
        "kinds": [EVENT_LABELS.get(kind, kind).lower() for kind in rule.no_event],
        "missed": [event_view(e, settings) for e in missed],
        "contact": [event_view(e, settings) for e in contact],
    }


REASSESS_EVERY = timedelta(days=30)


def plan_view(client: Any, assessments: dict) -> dict:
    """The plan of care as recorded, and when the next reassessment is due."""
    last = assessments.get("reassessment") or assessments.get("initial_assessment")
    due = client.next_reassessment or (last + REASSESS_EVERY if last else None)
    if client.status == "discharged":
        due = None  # no further reassessment is planned
    return {"text": client.plan or "", "next_reassessment": due}


def goals_from(events_: list, goals: list[str], settings: Settings) -> tuple[list, list]:
    """Each goal, met or not (a goal_achieved event whose note names it); other achievements."""
    achieved = [e for e in events_ if e.kind == "goal_achieved"]
    used: set[int] = set()
    status = []
    for number, goal in enumerate(goals, start=1):
        match = next(
            (
                i
                for i, e in enumerate(achieved)
                if e.note and i not in used and _same_goal(number, goal, e.note)
            ),
            None,
        )
        if match is not None:
            used.add(match)
        met_on = achieved[match].occurred_at.astimezone(settings.tz).date() if match is not None else None
        status.append({"text": goal, "met": match is not None, "met_on": met_on})
    others = [
        {"note": e.note, "date": e.occurred_at.astimezone(settings.tz).date()}
        for i, e in enumerate(achieved)
        if i not in used and e.note
    ]
    return status, others


def _same_goal(number: int, goal: str, note: str) -> bool:
    """The note names the goal: its text as written, or "Goal 2" by its number."""
    goal, note = goal.strip().lower(), note.strip().lower()
    numbered = re.match(r"goal\s*#?(\d+)\b", note)
    if numbered:
        return int(numbered[1]) == number
    return goal in note


def _event_dates(events_: list, settings: Settings) -> dict:
    """Dates of the first assessment and the latest reassessment, if any."""
    dates = {}
    for kind, pick in (("initial_assessment", min), ("reassessment", max)):
        times = [aware(e.occurred_at) for e in events_ if e.kind == kind]
        dates[kind] = pick(times).astimezone(settings.tz).date() if times else None
    return dates


@dataclass(frozen=True)
class Period:
    """A calendar month or quarter a physician's summary covers; ``key`` ends its dedupe key."""

    start: date
    end: date
    label: str  # "2026 Q3", "October 2026": what the physician reads
    key: str  # "2026Q3", "2026-10"


def physician_context(
    conn: Connection, settings: Settings, rule: Rule, physician_id: int, now: datetime, period: Period
) -> dict:
    """A de-identified summary of a physician's referrals: counts and median changes."""
    physician = conn.execute(select(physicians).where(physicians.c.id == physician_id)).one()
    rows = conn.execute(
        select(clients.c.id, clients.c.status, clients.c.referral_date).where(
            clients.c.physician_id == physician_id
        )
    ).all()
    start, end = period.start, period.end
    referred = [r for r in rows if r.referral_date and start <= r.referral_date <= end]
    per_instrument: dict[str, list[Outcome]] = {}
    scores = _measurements(conn, [row.id for row in rows])
    for row in rows:
        for outcome in outcomes_from(scores.get(row.id, []), until=end):
            if outcome.count >= 2:
                per_instrument.setdefault(outcome.instrument.code, []).append(outcome)
    measures = [
        {
            "code": code,
            "name": INSTRUMENTS[code].name,
            "clients": len(found),
            "median_change": format_change(statistics.median(o.change for o in found)),
            "reached_threshold": round(100 * sum(o.meaningful for o in found) / len(found)),
            "threshold": INSTRUMENTS[code].threshold_label,
        }
        for code, found in per_instrument.items()
        if len(found) >= MIN_COHORT
    ]
    return {
        "practice": practice_view(settings),
        "physician": physician_view(physician),
        "period": period,
        "cohort": {
            "size": len(rows),
            "referred": len(referred),
            "active": sum(r.status == "active" for r in rows),
            "discharged": sum(r.status == "discharged" for r in rows),
        },
        "measures": measures,
        "rule": {"name": rule.name, "description": rule.description},
        "now": now.astimezone(settings.tz),
        "today": now.astimezone(settings.tz).date(),
    }
