"""Reading about clients: find one, one client's record, their timeline and their scores.

The console's Clients pages (and anything else that shows a client) read
through here, so a page never holds SQL. Everything is read in the
database by client (indexed columns), a bounded number of rows at a time:
a practice keeps years of sessions, measures and messages.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime, time
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, or_, select

from outreach.consent import consent_problem
from outreach.errors import NotFound
from outreach.instruments import INSTRUMENTS, Instrument, Outcome, format_score, lookup
from outreach.models import CLIENT_STATUSES, clients, events, measurements, messages, physicians

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

LIST_LIMIT = 100  # clients a search shows at most
TIMELINE_LIMIT = 300  # entries of the timeline shown at most (the newest)


@dataclass(frozen=True)
class Consent:
    """A client's consent to share health information, and whether it is in effect today."""

    given_on: date | None
    expires: date | None
    revoked_on: date | None
    problem: str | None  # why it is not in effect (``consent.consent_problem``), None when it is

    @property
    def in_effect(self) -> bool:
        return self.problem is None

    @property
    def summary(self) -> str:
        """One phrase for a list: "in effect", "in effect until …", or why not."""
        if self.problem is not None:
            return self.problem
        return f"in effect until {self.expires}" if self.expires else "in effect"


def _consent(row: Any, today: date) -> Consent:
    """The one consent rule (``outreach.consent``), applied to a client row."""
    problem = consent_problem(row.consent_date, row.consent_expires, row.consent_revoked_on, today)
    return Consent(row.consent_date, row.consent_expires, row.consent_revoked_on, problem)


def _from_row(kind: type[T], row: Any, **worked_out: Any) -> T:
    """A ``kind`` (a dataclass) from a row holding its fields by the same names; ``worked_out`` the rest."""
    given = {f.name: getattr(row, f.name) for f in fields(kind) if f.name not in worked_out}
    return kind(**given, **worked_out)


@dataclass(frozen=True)
class ClientRow:
    """One line of the clients list."""

    ref: str
    first_name: str
    last_name: str
    status: str
    physician_name: str
    physician_email: str
    consent: Consent
    last_event_kind: str | None
    last_event_at: datetime | None

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


@dataclass(frozen=True)
class Found:
    """A page of the clients list: the rows, and whether more matched than are shown."""

    rows: list[ClientRow]
    more: bool


def find_clients(
    conn: Connection, today: date, q: str = "", status: str | None = None, limit: int = LIST_LIMIT
) -> Found:
    """Clients whose ref or name contains ``q`` (any case), of ``status`` if given; by ref.

    ``status`` must be one of ``CLIENT_STATUSES`` (``NotFound`` otherwise,
    as ``review.list_messages`` says of a message status).
    """
    query = select(
        clients.c.id,
        clients.c.ref,
        clients.c.first_name,
        clients.c.last_name,
        clients.c.status,
        clients.c.consent_date,
        clients.c.consent_expires,
        clients.c.consent_revoked_on,
        physicians.c.name.label("physician_name"),
        physicians.c.email.label("physician_email"),
    ).select_from(clients.join(physicians, physicians.c.id == clients.c.physician_id))
    words = q.split()
    for word in words:  # every word somewhere in the ref or the name: "davis jor" finds Jordan Davis
        needle = word.lower()
        query = query.where(
            or_(
                *(
                    func.lower(column).contains(needle, autoescape=True)
                    for column in (clients.c.ref, clients.c.first_name, clients.c.last_name)
                )
            )
        )
    if status:
        if status not in CLIENT_STATUSES:
            raise NotFound(f"status {status!r} is not one of {', '.join(CLIENT_STATUSES)}")
        query = query.where(clients.c.status == status)
    rows = conn.execute(query.order_by(clients.c.ref).limit(limit + 1)).all()
    shown = rows[:limit]
    latest = _last_events(conn, [row.id for row in shown])
    return Found(
        [
            _from_row(
                ClientRow,
                row,
                consent=_consent(row, today),
                last_event_kind=latest[row.id][0] if row.id in latest else None,
                last_event_at=latest[row.id][1] if row.id in latest else None,
            )
            for row in shown
        ],
        more=len(rows) > limit,
    )


def _last_events(conn: Connection, ids: list[int]) -> dict[int, tuple[str, datetime]]:
    """Each client's latest milestone (kind, when); a client with none is absent."""
    if not ids:
        return {}
    newest = (
        select(events.c.client_id, func.max(events.c.occurred_at).label("at"))
        .where(events.c.client_id.in_(ids))
        .group_by(events.c.client_id)
        .subquery()
    )
    query = (
        select(events.c.client_id, events.c.kind, events.c.occurred_at)
        .join(newest, (newest.c.client_id == events.c.client_id) & (newest.c.at == events.c.occurred_at))
        .order_by(events.c.id)
    )
    return {row.client_id: (row.kind, row.occurred_at) for row in conn.execute(query)}


@dataclass(frozen=True)
class ClientRecord:
    """Who a client is, their care as recorded, and their consent today."""

    id: int
    ref: str
    first_name: str
    last_name: str
    status: str
    referral_date: date | None
    diagnosis: str
    precautions: str
    goals: str
    plan: str
    next_reassessment: date | None
    physician_name: str
    physician_credentials: str
    physician_email: str
    physician_clinic: str
    consent: Consent

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    @property
    def goal_list(self) -> list[str]:
        """The goals one by one, split as the emails split them (on ";" and line breaks)."""
        return [goal.strip() for goal in self.goals.replace("\n", ";").split(";") if goal.strip()]


def client_record(conn: Connection, ref: str, today: date) -> ClientRecord:
    """The client with this ref; ``NotFound`` naming the ref if there is none."""
    row = conn.execute(
        select(
            clients,
            physicians.c.name.label("physician_name"),
            physicians.c.credentials.label("physician_credentials"),
            physicians.c.email.label("physician_email"),
            physicians.c.clinic.label("physician_clinic"),
        )
        .select_from(clients.join(physicians, physicians.c.id == clients.c.physician_id))
        .where(clients.c.ref == ref)
    ).first()
    if row is None:
        raise NotFound(f"no client with ref {ref!r}")
    return _from_row(ClientRecord, row, consent=_consent(row, today))


EntryKind = Literal["event", "measure", "message"]


@dataclass(frozen=True)
class Entry:
    """One line of a client's timeline: a milestone, a score or a message about them.

    ``at`` orders the timeline; a score has a day, not a time (``day``), and
    sorts at the end of that day in the practice's time zone.
    """

    kind: EntryKind
    at: datetime
    day: date | None = None  # a measure: the day it was measured
    event_kind: str = ""  # an event: its kind
    note: str = ""  # an event: its note
    instrument: str = ""  # a measure: the instrument's code
    score: float = 0.0  # a measure
    unit: str = ""  # a measure: the instrument's unit
    message_id: int = 0  # a message
    subject: str = ""  # a message
    status: str = ""  # a message
    recipient_name: str = ""  # a message
    sent_at: datetime | None = None  # a message
    why: str = ""  # a message suppressed, failed or cancelled: the sentence a person reads

    @property
    def score_text(self) -> str:
        """A score as clinicians write it ("55", "12.8")."""
        return format_score(self.score)


@dataclass(frozen=True)
class Timeline:
    """A client's timeline, newest first, and whether older entries were left off."""

    entries: list[Entry]
    more: bool


def timeline(conn: Connection, client_id: int, tz: ZoneInfo, limit: int = TIMELINE_LIMIT) -> Timeline:
    """Events, measures and messages about a client, newest first (at most ``limit``)."""
    entries = [
        *_event_entries(conn, client_id, limit + 1),
        *_measure_entries(conn, client_id, tz, limit + 1),
        *_message_entries(conn, client_id, limit + 1),
    ]
    entries.sort(key=lambda entry: entry.at, reverse=True)
    return Timeline(entries[:limit], more=len(entries) > limit)


def _event_entries(conn: Connection, client_id: int, limit: int) -> list[Entry]:
    """The client's newest milestones."""
    query = (
        select(events.c.kind, events.c.occurred_at, events.c.note)
        .where(events.c.client_id == client_id)
        .order_by(events.c.occurred_at.desc(), events.c.id.desc())
        .limit(limit)
    )
    return [
        Entry("event", row.occurred_at, event_kind=row.kind, note=row.note) for row in conn.execute(query)
    ]


def _measure_entries(conn: Connection, client_id: int, tz: ZoneInfo, limit: int) -> list[Entry]:
    """The client's newest scores, each placed at the end of its day (practice time)."""
    query = (
        select(measurements.c.instrument, measurements.c.score, measurements.c.measured_on)
        .where(measurements.c.client_id == client_id)
        .order_by(measurements.c.measured_on.desc(), measurements.c.id.desc())
        .limit(limit)
    )
    entries = []
    for row in conn.execute(query):
        instrument = lookup(row.instrument)
        entries.append(
            Entry(
                "measure",
                datetime.combine(row.measured_on, time.max, tz),
                day=row.measured_on,
                instrument=row.instrument,
                score=row.score,
                unit=instrument.unit if instrument else "",
            )
        )
    return entries


def _message_entries(conn: Connection, client_id: int, limit: int) -> list[Entry]:
    """The newest messages about the client, at when they were sent (or queued, if not yet)."""
    query = (
        select(
            messages.c.id,
            messages.c.subject,
            messages.c.status,
            messages.c.recipient_name,
            messages.c.created_at,
            messages.c.sent_at,
            messages.c.last_error,
        )
        .where(messages.c.client_id == client_id)
        .order_by(messages.c.created_at.desc(), messages.c.id.desc())
        .limit(limit)
    )
    return [
        Entry(
            "message",
            row.sent_at or row.created_at,
            message_id=row.id,
            subject=row.subject,
            status=row.status,
            recipient_name=row.recipient_name,
            sent_at=row.sent_at,
            why=(row.last_error or "") if row.status != "sent" else "",
        )
        for row in conn.execute(query)
    ]


@dataclass(frozen=True)
class Series:
    """One instrument's scores for a client, oldest first, and how the change reads."""

    instrument: Instrument
    points: list[tuple[date, float]]

    @property
    def outcome(self) -> Outcome:
        """Baseline (first score) against the latest, read as every report reads it."""
        (first_on, first), (last_on, last) = self.points[0], self.points[-1]
        return Outcome(self.instrument, first, last, first_on, last_on, len(self.points))


def measures(conn: Connection, client_id: int) -> list[Series]:
    """Each instrument's scores for a client, in the registry's order (codes it lacks are skipped)."""
    by_code: dict[str, list[tuple[date, float]]] = {}
    for row in conn.execute(
        select(measurements.c.instrument, measurements.c.measured_on, measurements.c.score)
        .where(measurements.c.client_id == client_id)
        .order_by(measurements.c.measured_on, measurements.c.id)
    ):
        by_code.setdefault(row.instrument, []).append((row.measured_on, row.score))
    found = [(lookup(code), points) for code, points in by_code.items()]
    series = [Series(instrument, points) for instrument, points in found if instrument is not None]
    order = {code: n for n, code in enumerate(INSTRUMENTS)}
    return sorted(series, key=lambda s: order.get(s.instrument.code, len(order)))
