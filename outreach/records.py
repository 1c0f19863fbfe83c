"""The one write path: every change a person, the CSV importer or the demo makes.

As sqlite-utils' CLI is a thin layer over its ``Table``, ``outreach``'s
commands and its importer are layers over this module: they parse what they
were given and print or report; what a change *is* (which values are
allowed, what it writes, what it leaves on record) is said here, once.

Each change a person asks for (``add_event`` … ``cancel``) checks its values
(a ``RowError`` names the field, as the CSV column is named), runs in one
transaction, leaves an ``audit`` row when it changed something, and returns
ids or a small dataclass, never text. The row writers underneath
(``save_physician``, ``save_client``, ``record_event``, ``record_measure``)
take a connection and checked values: the importer calls them for each row
of a file, in the file's one transaction, and audits the file once.
"""

from __future__ import annotations

import getpass
import math
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, Table, select, update

from outreach import store
from outreach.errors import NotFound, OutreachError
from outreach.instruments import lookup
from outreach.models import (
    BY_PERSON,
    CANCELLED,
    CLIENT_STATUSES,
    EVENT_KINDS,
    PENDING,
    SENDING,
    SUPPRESSED,
    clients,
    events,
    measurements,
    messages,
    physicians,
)
from outreach.models import audit as audit_table
from outreach.outbox import DIGEST, trail_many
from outreach.settings import Settings, address_problem


class RowError(OutreachError, ValueError):
    """One bad value; the message begins with the field it is about (``occurred_at: …``).

    Fields are named as the CSV columns are; the CLI names its own options
    instead (``--at``) where it shows the message.
    """

    @property
    def field(self) -> str:
        return str(self).partition(": ")[0]

    @property
    def problem(self) -> str:
        return str(self).partition(": ")[2]


# --- values a person gives (the CLI's arguments, a CSV file's cells) ---------------------

# A free-text value (note, diagnosis, precautions, goals, plan) holds at most this many
# characters: a clinical note is a few hundred; 64 K is a pasted document.
TEXT_LIMIT = 64 * 1024


def encodable(text: str) -> bool:
    """False for text with a lone surrogate, which no database can store.

    Such text comes from bytes that are not UTF-8 (a command-line argument on
    Linux reaches Python as surrogate escapes) or from a JSON escape (``"\\ud800"``).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def single_line(value: str, column: str) -> str:
    if any(ch in value for ch in "\r\n\x00"):
        raise RowError(f"{column}: must be a single line (found a line break)")
    return value.strip()


def parse_email(value: str, column: str = "email") -> str:
    value = value.strip()
    problem = address_problem(value)
    if problem:
        raise RowError(f"{column}: {problem}")
    return value.lower()


def parse_date(value: str, column: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RowError(f"{column}: {value!r} is not a date (YYYY-MM-DD)") from None


def parse_datetime(value: str, column: str, tz: ZoneInfo) -> datetime:
    """ISO 8601; without a zone it is the practice's local time; a date alone is 09:00 that day."""
    value = value.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RowError(f"{column}: {value!r} is not a date-time (ISO 8601, e.g. 2026-11-26T09:30)") from None
    if len(value) == 10:
        parsed = datetime.combine(parsed.date(), time(9, 0))
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)
    try:
        if parsed.astimezone(UTC).year < 1900:
            raise RowError(f"{column}: {value!r} is before 1900")
    except OverflowError:
        raise RowError(f"{column}: {value!r} is out of range") from None
    return parsed


def parse_score(value: str | float, instrument_name: str) -> tuple[str, float]:
    """The instrument's code and the score, which must be in its range."""
    instrument = lookup(instrument_name)
    if instrument is None:
        raise RowError(f"instrument: {instrument_name!r} is not a known outcome measure")
    try:
        score = float(value)
    except ValueError:
        raise RowError(f"score: {value!r} is not a number") from None
    if not math.isfinite(score) or not instrument.in_range(score):
        raise RowError(f"score: {value} is outside the {instrument.code} range ({instrument.range_text})")
    return instrument.code, score


def parse_event_kind(value: str) -> str:
    kind = value.strip().lower()
    if kind not in EVENT_KINDS:
        raise RowError(f"kind: {value!r} is not a known event kind ({', '.join(EVENT_KINDS)})")
    return kind


def parse_status(value: str) -> str | None:
    """A client's status (``referred``, ``active``, …); None for an empty value."""
    status = value.strip().lower()
    if status and status not in CLIENT_STATUSES:
        raise RowError(f"status: {status!r} is not one of {', '.join(CLIENT_STATUSES)}")
    return status or None


def not_in_future(moment: datetime | date | None, now: datetime, column: str) -> None:
    """Refuse a milestone more than an hour ahead of ``now`` (clocks differ a little)."""
    if moment is None:
        return
    limit = now + timedelta(hours=1)
    if (moment > limit) if isinstance(moment, datetime) else (moment > limit.date()):
        raise RowError(f"{column}: {moment} is in the future")


def fits(table: Table, values: dict[str, Any]) -> None:
    """Refuse what the database cannot hold: NUL characters, text longer than its column.

    Free text (a ``Text`` column) is held to ``TEXT_LIMIT``.
    """
    for column, value in values.items():
        if not isinstance(value, str):
            continue
        if "\x00" in value:
            raise RowError(f"{column}: contains a NUL character")
        limit = getattr(table.c[column].type, "length", None) or TEXT_LIMIT
        if len(value) > limit:
            raise RowError(f"{column}: {len(value):,} characters, more than the limit of {limit:,}")


# --- the audit trail --------------------------------------------------------------------


def person() -> str:
    """Who is making a change: the login running this process (a service account, say)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        return "unknown"


def audit(
    conn: Connection, at: datetime, actor: str | None, action: str, subject: str, detail: str = ""
) -> None:
    """One line of who changed what, in the transaction that made the change."""
    write_audit(conn, at, actor, [(action, subject, detail)])


def write_audit(
    conn: Connection, at: datetime, actor: str | None, lines: Iterable[tuple[str, str, str]]
) -> None:
    """Many lines at once, as (action, subject, detail), from the address the request came from."""
    who = (actor or person())[:100]
    where = REQUEST_ADDRESS.get()
    rows = [
        {
            "at": at,
            "actor": who,
            "action": action,
            "subject": subject[:300],
            "detail": detail,
            "address": where,
        }
        for action, subject, detail in lines
    ]
    if rows:
        conn.execute(audit_table.insert(), rows)


# The network address of the console or API request being served (None at the command
# line): set by ``outreach.web`` for the request's thread, so every audit line carries it.
REQUEST_ADDRESS: ContextVar[str | None] = ContextVar("outreach_request_address", default=None)


# --- the row writers (a connection, checked values; the importer's too) -------------------

Outcome = Literal["created", "updated", "unchanged"]


def _upsert(
    conn: Connection,
    table: Table,
    key: str,
    values: dict[str, Any],
    now: datetime,
    insert_only: tuple[str, ...] = (),
) -> Outcome:
    """Insert the row, or update the one with the same ``key``; ``insert_only`` columns only start a row."""
    existing = conn.execute(select(table).where(table.c[key] == values[key])).first()
    if existing is None:
        conn.execute(table.insert().values(created_at=now, updated_at=now, **values))
        return "created"
    changed = {k: v for k, v in values.items() if k not in insert_only and getattr(existing, k) != v}
    if not changed:
        return "unchanged"
    conn.execute(update(table).where(table.c.id == existing.id).values(updated_at=now, **changed))
    return "updated"


def save_physician(conn: Connection, values: dict[str, Any], now: datetime) -> Outcome:
    """Create the physician, or update the one with the same email (``values`` checked as the importer does)."""
    return _upsert(conn, physicians, "email", values, now)


def save_client(conn: Connection, values: dict[str, Any], now: datetime) -> Outcome:
    """Create the client, or update the one with the same ref.

    A client's status comes from ``values`` only for a new client: after
    that, milestones decide it (a re-import never reopens a discharge).
    """
    return _upsert(conn, clients, "ref", values, now, insert_only=("status",))


# What a milestone does to the client's status.
STATUS_AFTER = {"initial_assessment": ("referred", "on_hold"), "discharged": CLIENT_STATUSES}
NEW_STATUS = {"initial_assessment": "active", "discharged": "discharged"}


def record_event(
    conn: Connection, client_id: int, kind: str, occurred_at: datetime, note: str, now: datetime
) -> int | None:
    """Store a milestone (once) and move the client's status along; the new id or None."""
    exists = conn.execute(
        select(events.c.id).where(
            events.c.client_id == client_id, events.c.kind == kind, events.c.occurred_at == occurred_at
        )
    ).scalar()
    if exists is not None:
        return None
    new_id: int = conn.execute(
        events.insert()
        .values(client_id=client_id, kind=kind, occurred_at=occurred_at, note=note, created_at=now)
        .returning(events.c.id)
    ).scalar_one()
    if kind in NEW_STATUS:
        conn.execute(
            update(clients)
            .where(clients.c.id == client_id, clients.c.status.in_(STATUS_AFTER[kind]))
            .values(status=NEW_STATUS[kind], updated_at=now)
        )
    return new_id


def record_measure(
    conn: Connection, client_id: int, instrument: str, score: float, measured_on: date, now: datetime
) -> Outcome:
    """Store a score; a second score for the same instrument and day replaces the first."""
    existing = conn.execute(
        select(measurements.c.id, measurements.c.score).where(
            measurements.c.client_id == client_id,
            measurements.c.instrument == instrument,
            measurements.c.measured_on == measured_on,
        )
    ).first()
    if existing is None:
        conn.execute(
            measurements.insert().values(
                client_id=client_id,
                instrument=instrument,
                score=score,
                measured_on=measured_on,
                created_at=now,
            )
        )
        return "created"
    if existing.score == score:
        return "unchanged"
    conn.execute(update(measurements).where(measurements.c.id == existing.id).values(score=score))
    return "updated"


# --- what a person changes --------------------------------------------------------------


def find_client(conn: Connection, ref: str) -> int:
    """The client's id; ``NotFound`` naming the ref if there is none."""
    found: int | None = conn.execute(select(clients.c.id).where(clients.c.ref == ref)).scalar()
    if found is None:
        raise NotFound(f"no client with ref {ref!r}")
    return found


@dataclass(frozen=True)
class EventAdded:
    """A milestone as recorded: its id (None: it was already on record) and its kind as stored."""

    event_id: int | None
    kind: str


def add_event(
    engine: Engine,
    client_ref: str,
    kind: str,
    occurred_at: datetime,
    now: datetime,
    note: str = "",
    actor: str | None = None,
) -> EventAdded:
    """Record a milestone in a client's care (once); the client's status moves along."""
    kind = parse_event_kind(kind)
    not_in_future(occurred_at, now, "occurred_at")
    fits(events, {"note": note})
    with store.write(engine) as conn:
        new_id = record_event(conn, find_client(conn, client_ref), kind, occurred_at, note, now)
        if new_id is not None:
            audit(conn, now, actor, "event", f"client {client_ref}", f"{kind} at {occurred_at.isoformat()}")
    return EventAdded(new_id, kind)


@dataclass(frozen=True)
class Measured:
    """A score as stored: the instrument's code, the score, and whether it was created, updated or unchanged."""

    instrument: str
    score: float
    outcome: Outcome


def add_measure(
    engine: Engine,
    client_ref: str,
    instrument: str,
    score: str | float,
    measured_at: date,
    now: datetime,
    actor: str | None = None,
) -> Measured:
    """Record an outcome measure; a second score for the same instrument and day replaces the first."""
    code, value = parse_score(score, instrument)
    not_in_future(measured_at, now, "measured_at")
    with store.write(engine) as conn:
        outcome = record_measure(conn, find_client(conn, client_ref), code, value, measured_at, now)
        if outcome != "unchanged":
            audit(
                conn,
                now,
                actor,
                "measure",
                f"client {client_ref}",
                f"{code} {value:g} on {measured_at}: {outcome}",
            )
    return Measured(code, value, outcome)


def give_consent(
    engine: Engine,
    client_ref: str,
    on: date,
    now: datetime,
    expires: date | None = None,
    actor: str | None = None,
) -> int:
    """Record consent to share health information (a revocation is lifted); the client's id."""
    not_in_future(on, now, "consent_date")
    if expires is not None and expires < on:
        raise RowError(f"consent_expires: {expires} is before the day consent was given ({on})")
    values = {"consent_date": on, "consent_expires": expires, "consent_revoked_on": None}
    detail = f"given on {on}" + (f", until {expires}" if expires else "")
    return _change(engine, CLIENT, client_ref, values, now, actor, ("consent", detail))


def revoke_consent(engine: Engine, client_ref: str, on: date, now: datetime, actor: str | None = None) -> int:
    """Record that consent was withdrawn: nothing more about the client is sent; the client's id."""
    what = ("revoke consent", f"revoked on {on}")
    return _change(engine, CLIENT, client_ref, {"consent_revoked_on": on}, now, actor, what)


def opt_out(engine: Engine, email: str, on: date, now: datetime, actor: str | None = None) -> int:
    """Stop non-clinical mail to a physician (clinical updates still go); the physician's id."""
    return _change(engine, PHYSICIAN, email, {"opted_out_on": on}, now, actor, ("opt out", f"from {on}"))


def opt_in(engine: Engine, email: str, now: datetime, actor: str | None = None) -> int:
    """Resume non-clinical mail to a physician; the physician's id."""
    return _change(engine, PHYSICIAN, email, {"opted_out_on": None}, now, actor, ("opt in", ""))


def mark_deliverable(engine: Engine, email: str, now: datetime, actor: str | None = None) -> int:
    """Clear a "no such mailbox" mark: mail to the physician goes again; the physician's id."""
    values = {"undeliverable_on": None, "undeliverable_reason": None}
    return _change(
        engine, PHYSICIAN, email, values, now, actor, ("deliverable", "undeliverable mark cleared")
    )


@dataclass(frozen=True)
class _Named:
    """A kind of record a person names: its table, the column they name it by, how to say so."""

    table: Table
    key: str  # the column
    noun: str  # "client", as the audit's subject and the NotFound line say it
    folded: bool = False  # stored trimmed and in lower case (an email), so compared so

    def normal(self, key: str) -> str:
        return key.strip().lower() if self.folded else key


CLIENT = _Named(clients, "ref", "client")
PHYSICIAN = _Named(physicians, "email", "physician", folded=True)


def _change(
    engine: Engine,
    named: _Named,
    key: str,
    values: dict[str, Any],
    now: datetime,
    actor: str | None,
    what: tuple[str, str],
) -> int:
    """Update the one record named ``key`` and audit it as ``what`` (action, detail); its id."""
    key = named.normal(key)
    table = named.table
    with store.write(engine) as conn:
        found: int | None = conn.execute(select(table.c.id).where(table.c[named.key] == key)).scalar()
        if found is None:
            raise NotFound(f"no {named.noun} with {named.key} {key!r}")
        conn.execute(update(table).where(table.c.id == found).values(updated_at=now, **values))
        audit(conn, now, actor, what[0], f"{named.noun} {key}", what[1])
    return found


def retry(
    engine: Engine,
    settings: Settings,
    now: datetime,
    ids: Sequence[int] | None = None,
    actor: str | None = None,
) -> int:
    """Queue failed messages again (all of them when ``ids`` is None); how many were.

    The dispatcher does the work in its own transactions (a message whose
    template failed is rendered again first); the audit row follows them.
    """
    from outreach.dispatcher import retry_failed  # only here: it loads the sending side

    count = retry_failed(engine, now, None if ids is None else list(ids), settings=settings)
    if count:
        named = "every failed message" if ids is None else ", ".join(map(str, ids))
        with store.write(engine) as conn:
            audit(conn, now, actor, "retry", "messages", f"{named}: {count} queued again")
    return count


# --- cancelling a message ---------------------------------------------------------------

CANCELLABLE = (PENDING, SUPPRESSED)
BY_A_PERSON = "cancelled by a person"


@dataclass(frozen=True)
class Cancelled:
    """What ``cancel`` did.

    ``carried``: updates that travelled inside a cancelled digest, cancelled
    with it. ``regrouped``: updates that shared a digest with a cancelled
    one; that digest is cancelled and they wait, unsent, to be combined
    again by the next plan.
    """

    messages: list[int]
    carried: list[int]
    regrouped: list[int]


def cancel(engine: Engine, ids: Sequence[int], now: datetime, actor: str | None = None) -> Cancelled:
    """Cancel pending or suppressed messages: they will never be sent; all of them, or none.

    A message in any other state (being sent, sent, failed, cancelled) is
    refused, naming it. A cancelled message keeps its dedupe key, so the
    planner does not queue it again.
    """
    wanted = list(dict.fromkeys(ids))
    with store.write(engine) as conn:
        rows = _cancellable(conn, wanted)
        digests = {i for i in wanted if rows[i].kind == DIGEST}
        carried = _cancel_digests(conn, sorted(digests), now)
        inside = [i for i in wanted if rows[i].digest_id is not None and rows[i].digest_id not in digests]
        regrouped = _take_out(conn, inside, rows, now)
        _set_cancelled(conn, [i for i in wanted if i not in inside and i not in carried], now, BY_A_PERSON)
        _check_cancelled(conn, [*wanted, *carried])
        write_audit(conn, now, actor, [("cancel", f"message {i}", BY_A_PERSON) for i in wanted])
    return Cancelled(wanted, carried, regrouped)


def _cancellable(conn: Connection, ids: list[int]) -> dict[int, Any]:
    """The messages named, each pending or suppressed; else one line naming those that are not."""
    query = select(messages.c.id, messages.c.status, messages.c.kind, messages.c.digest_id)
    rows = {
        row.id: row
        for chunk in store.chunks(ids)
        for row in conn.execute(query.where(messages.c.id.in_(chunk)))
    }
    missing = [i for i in ids if i not in rows]
    if missing:
        raise NotFound(f"no message with id {', '.join(map(str, missing))}")
    refused = [f"{i} is {rows[i].status}" for i in ids if rows[i].status not in CANCELLABLE]
    if refused:
        raise OutreachError(f"only pending or suppressed messages can be cancelled: {', '.join(refused)}")
    return rows


def _cancel_digests(conn: Connection, digest_ids: list[int], now: datetime) -> list[int]:
    """Cancel the updates these digests carry (the digests themselves are cancelled with the rest)."""
    carried: list[int] = []
    for digest_id in digest_ids:
        members = select(messages.c.id).where(
            messages.c.digest_id == digest_id, messages.c.status.in_(CANCELLABLE)
        )
        ids = list(conn.execute(members).scalars())
        _set_cancelled(conn, ids, now, f"{BY_A_PERSON} (with digest message {digest_id})")
        carried += ids
    return carried


def _take_out(conn: Connection, ids: list[int], rows: dict[int, Any], now: datetime) -> list[int]:
    """Cancel updates waiting inside a digest: the digest goes, the others wait to be combined again.

    As the gate does when an update in a digest may no longer go
    (``gate.take_apart``); a digest already being sent is left alone, and
    the update with it (refused).
    """
    from outreach import gate  # only here: most changes have nothing to do with the outbox

    by_digest: dict[int, list[int]] = {}
    for i in ids:
        by_digest.setdefault(rows[i].digest_id, []).append(i)
    regrouped: list[int] = []
    for digest_id, mine in sorted(by_digest.items()):
        refusals = {i: gate.Refusal(i, CANCELLED, BY_A_PERSON, BY_PERSON) for i in mine}
        verdicts = gate.Verdicts(refused={}, members={digest_id: refusals})
        remaining = gate.take_apart(conn, digest_id, verdicts, now)
        status = conn.execute(select(messages.c.status).where(messages.c.id == digest_id)).scalar()
        if status != CANCELLED:
            state = "being sent now" if status == SENDING else status
            raise OutreachError(
                f"message {', '.join(map(str, mine))} travels inside digest message {digest_id}, "
                f"which is {state}: nothing was cancelled"
            )
        regrouped += remaining
    return regrouped


def _set_cancelled(conn: Connection, ids: list[int], now: datetime, why: str) -> None:
    """Cancelled by a person: that is the reason now (a suppression's own reason is replaced)."""
    for chunk in store.chunks(ids):
        conn.execute(
            update(messages)
            .where(messages.c.id.in_(chunk), messages.c.status.in_(CANCELLABLE))
            .values(status=CANCELLED, last_error=why, reason=BY_PERSON, lease_until=None, updated_at=now)
        )
    trail_many(conn, now, [(i, "cancelled", why) for i in ids])


def _check_cancelled(conn: Connection, ids: list[int]) -> None:
    """Every message is cancelled now; one that a sender claimed meanwhile undoes the whole change."""
    query = select(messages.c.id, messages.c.status)
    moved = [
        f"{row.id} is {row.status}"
        for chunk in store.chunks(ids)
        for row in conn.execute(query.where(messages.c.id.in_(chunk), messages.c.status != CANCELLED))
    ]
    if moved:
        raise OutreachError(
            f"changed while being cancelled: {', '.join(moved)}; nothing was cancelled, try again"
        )


# --- resending a sent message -----------------------------------------------------------

RESEND_MARK = "~resend:"  # a resend's dedupe key: the original's, this, and the resend's own id
WHY_LIMIT = 500  # characters of a reason for resending: a sentence, not a letter
# What a resend keeps of the message it copies, besides its words; the rest is its own
# (dedupe key, status, Message-ID, attempts and times).
RESEND_KEEPS = (
    "rule",
    "template",
    "kind",
    "physician_id",
    "recipient",
    "recipient_name",
    "client_id",
    "event_id",
    "needs_consent",
    "priority",
)


def resend(engine: Engine, message_id: int, now: datetime, actor: str | None = None, why: str = "") -> int:
    """Queue a sent message again as a new one (same words, a new Message-ID); the new message's id.

    For when a physician says it never arrived. Only a sent message, and not
    a digest (its updates are resent one by one, each judged on its own).
    The copy is pending, so it goes through the dispatcher and its gate like
    any other: consent, opt-out and address are checked again when it leaves.
    Both trails say what happened; one audit line.
    """
    import uuid  # this section's own imports: nothing else in the module needs them

    from outreach.models import REDIRECTED, SENT, outbox_row
    from outreach.outbox import insert_message, with_body
    from outreach.renderer import Rendered
    from outreach.retention import cannot_send

    why = single_line(why, "why")
    if len(why) > WHY_LIMIT:
        raise RowError(f"why: {len(why):,} characters, more than the limit of {WHY_LIMIT:,}")
    with store.write(engine) as conn:
        row = conn.execute(with_body().where(messages.c.id == message_id)).first()
        if row is None:
            raise NotFound(f"no message with id {message_id}")
        if row.status not in (SENT, REDIRECTED):  # a redirected one: staging is over, send it for real
            raise OutreachError(f"only sent messages can be resent: {message_id} is {row.status}")
        if row.body_removed_at is not None:
            raise OutreachError(cannot_send(message_id, row.body_removed_at))
        if row.kind == DIGEST:
            carried = conn.execute(
                select(messages.c.id).where(messages.c.digest_id == message_id).order_by(messages.c.id)
            ).scalars()
            raise OutreachError(
                f"message {message_id} is a digest: resend the updates it carried instead "
                f"({', '.join(map(str, carried))})"
            )
        if row.html is None:
            raise OutreachError(f"message {message_id} has no stored body to send again")
        domain = row.message_id.strip("<>").rpartition("@")[2] or "localhost"
        copy = outbox_row(
            **{column: getattr(row, column) for column in RESEND_KEEPS},
            dedupe_key=f"resend:{uuid.uuid4().hex}",  # until the new id is known
            rendered=Rendered(row.subject, row.html, row.text),
            resent_from=message_id,
            status=PENDING,
            now=now,
            domain=domain,
        )
        new_id = insert_message(conn, copy)
        if new_id is None:  # a random key taken: cannot happen, but never a silent nothing
            raise OutreachError(f"message {message_id} could not be queued again: try again")
        suffix = f"{RESEND_MARK}{new_id}"
        room = getattr(messages.c.dedupe_key.type, "length", None) or 255
        key = row.dedupe_key[: room - len(suffix)] + suffix
        conn.execute(update(messages).where(messages.c.id == new_id).values(dedupe_key=key))
        who = (actor or person())[:100]
        trail_many(
            conn,
            now,
            [
                (message_id, "resent", f"resent as message {new_id} by {who}" + (f": {why}" if why else "")),
                (new_id, "queued", f"resend of message {message_id}"),
            ],
        )
        audit(
            conn,
            now,
            actor,
            "resend",
            f"message {message_id}",
            f"as message {new_id}" + (f": {why}" if why else ""),
        )
    return new_id
