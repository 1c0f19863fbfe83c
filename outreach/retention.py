"""Retention: remove old bodies, keep the log (``OUTREACH_RETENTION_DAYS``, ``outreach purge``).

A practice may not want to hold every clinical email and every reply for
ever. With the setting, the bodies (HTML and text) of messages that reached
a final state more than N days ago, and the text and raw copy of inbound
mail recorded more than N days ago, are removed. What stays is the proof
that something was sent and what became of it: the log entry, its trail,
the Message-ID, status and dates, and the SHA-256 of what was removed, so a
copy a person still holds can be checked against it (``body_digest``).

Nothing that is ``pending`` or ``sending`` is ever touched, and a digest
and the updates it carried go together: none of them before all of them
are final and old enough.

The work is done in chunks of ``store.IN_LIMIT`` messages, each in its own
short write transaction, so the service (another process) gets the
database between chunks (on SQLite after a pause, ``TURN``); on
PostgreSQL a row another process holds is skipped (``FOR UPDATE SKIP
LOCKED``) and left for the next run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.sql.expression import FromClause

from outreach import store
from outreach.models import FINAL_STATUSES, inbound, message_bodies, messages
from outreach.outbox import trail_many
from outreach.settings import Settings

SETTING = "OUTREACH_RETENTION_DAYS"
NOT_SET = f"retention is not set ({SETTING}): every body is kept"
PASS = 20 * store.IN_LIMIT  # ids read per pass (outside any write transaction), then written by chunk
# SQLite gives its write lock to no one in particular: a writer kept waiting
# retries every 100 ms (its busy handler's longest sleep), so chunk after chunk
# of a purge could keep it out for a whole pass (3.4 s measured at the
# default scale). The purge leaves the lock free a little longer than that
# between chunks: a writer beside it waits for one chunk at most.
TURN = 0.12  # seconds between chunks on SQLite


def body_digest(html: str, text: str) -> str:
    """The SHA-256 kept for a removed message body, in hex.

    Exactly ``sha256(html.encode("utf-8") + b"\\0" + text.encode("utf-8"))``:
    the HTML part, one NUL byte, the text part. A message that never had a
    body stored counts as both parts empty.
    """
    return hashlib.sha256(html.encode("utf-8") + b"\0" + text.encode("utf-8")).hexdigest()


def inbound_digest(raw: bytes | None, text: str) -> str:
    """The SHA-256 kept for a removed inbound email: of the raw email as received, else of its text (UTF-8)."""
    return hashlib.sha256(raw if raw is not None else text.encode("utf-8")).hexdigest()


def cannot_send(message_id: int, removed_at: datetime) -> str:
    """Why a message whose body was removed is refused by retry and resend (one line, the day in UTC)."""
    return (
        f"message {message_id}: its body was removed on {removed_at.astimezone(UTC):%Y-%m-%d} under the retention "
        "setting; it cannot be sent again"
    )


@dataclass(frozen=True)
class PurgeReport:
    """What a purge removed (or, on a dry run, would remove)."""

    cutoff: datetime | None  # final (or received) before this; None: retention is not set
    messages: int = 0
    inbound: int = 0
    dry_run: bool = False
    finished: bool = True  # False: the time budget ran out; the rest is left for the next run
    batches: int = 0  # write transactions
    longest_batch_s: float = 0.0  # the longest any one of them held the database

    def summary(self, tz: tzinfo) -> str:
        """One line for a person: what was (or would be) removed, and the cutoff."""
        if self.cutoff is None:
            return NOT_SET
        what = f"the bodies of {_count(self.messages, 'message')} and {_count(self.inbound, 'inbound email')}"
        before = f"(final or received before {self.cutoff.astimezone(tz):%Y-%m-%d %H:%M %Z})"
        if self.dry_run:
            return f"would remove {what} {before}; nothing changed (dry run)"
        rest = "" if self.finished else "; more is left for the next run"
        return f"removed {what} {before}{rest}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def purge(
    engine: Engine,
    settings: Settings,
    now: datetime,
    dry_run: bool = False,
    budget: float | None = None,
    actor: str | None = None,
) -> PurgeReport:
    """Remove the bodies the retention setting no longer keeps; what was removed.

    ``dry_run`` counts and changes nothing. ``budget`` (seconds): stop between
    chunks once it is spent (the service's daily job: its other jobs wait
    while this one runs); the report then says it did not finish. One audit
    line (by ``actor``) says what was removed.
    """
    days = settings.retention_days
    if days is None:
        return PurgeReport(cutoff=None, dry_run=dry_run)
    cutoff = now - timedelta(days=days)
    if dry_run:
        with store.read(engine) as conn:
            found = conn.execute(select(func.count()).select_from(messages).where(purgeable(cutoff))).scalar()
            mail = conn.execute(
                select(func.count()).select_from(inbound).where(_old_inbound(cutoff))
            ).scalar()
        return PurgeReport(cutoff=cutoff, messages=found or 0, inbound=mail or 0, dry_run=True)
    run = _Run(engine, now, cutoff, days, None if budget is None else time.monotonic() + budget)
    finished = run.each(messages, purgeable(cutoff), run.message_chunk) and run.each(
        inbound, _old_inbound(cutoff), run.inbound_chunk
    )
    report = PurgeReport(
        cutoff=cutoff,
        messages=run.removed[0],
        inbound=run.removed[1],
        finished=finished,
        batches=run.batches,
        longest_batch_s=run.longest,
    )
    if report.messages or report.inbound:
        what = f"{report.messages} message bodies and {report.inbound} inbound emails"
        when = f"final or received before {cutoff:%Y-%m-%d %H:%M} UTC ({SETTING}={days})"
        _audit(engine, now, f"{what}, {when}", actor)
    return report


def _audit(engine: Engine, now: datetime, detail: str, actor: str | None) -> None:
    from outreach.records import audit  # here: the service's sending side need not load records

    with store.write(engine) as conn:
        audit(conn, now, actor, "purge", "message bodies", detail)


# --- what may go ----------------------------------------------------------------------------


def _settled(table: FromClause, cutoff: datetime) -> ColumnElement[bool]:
    """SQL: this message reached a final state before ``cutoff`` (and has stayed in it since)."""
    return table.c.status.in_(FINAL_STATUSES) & (table.c.updated_at < cutoff)


def purgeable(cutoff: datetime) -> ColumnElement[bool]:
    """SQL: a message whose body the retention setting no longer keeps.

    Final before ``cutoff``, body still there; a digest only when every
    update it carried is final before ``cutoff`` too, and an update carried
    by a digest only when that whole digest is.
    """
    member = messages.alias("purge_member")
    digest = messages.alias("purge_digest")
    sibling = messages.alias("purge_sibling")
    whole_digest = exists().where(
        digest.c.id == messages.c.digest_id,
        _settled(digest, cutoff),
        ~exists().where(sibling.c.digest_id == digest.c.id, ~_settled(sibling, cutoff)),
    )
    return (
        _settled(messages, cutoff)
        & messages.c.body_removed_at.is_(None)
        & ~exists().where(member.c.digest_id == messages.c.id, ~_settled(member, cutoff))
        & (messages.c.digest_id.is_(None) | whole_digest)
    )


def _old_inbound(cutoff: datetime) -> ColumnElement[bool]:
    """SQL: inbound mail recorded before ``cutoff`` whose text is still there.

    By when outreach recorded it (``created_at``), not the Date header
    (``received_at``): that is the sender's clock, and a wrong one must not
    make a reply vanish the day it arrives.
    """
    return inbound.c.body_removed_at.is_(None) & (inbound.c.created_at < cutoff)


# --- the work, chunk by chunk ----------------------------------------------------------------


class _Run:
    """One purge: reads candidate ids without holding the database, writes them a chunk at a time."""

    def __init__(self, engine: Engine, now: datetime, cutoff: datetime, days: int, deadline: float | None):
        self.engine, self.now, self.cutoff, self.deadline = engine, now, cutoff, deadline
        self.detail = f"body removed under the retention setting ({days} days)"
        self.removed = [0, 0]  # message bodies, inbound emails
        self.batches = 0
        self.longest = 0.0

    def each(
        self, table: Any, where: ColumnElement[bool], chunk: Callable[[Connection, Sequence[int]], int]
    ) -> bool:
        """Every row of ``table`` that ``where`` selects, through ``chunk``; False if the budget ran out."""
        after = 0
        while True:
            with store.read(self.engine) as conn:
                ids = list(
                    conn.execute(
                        select(table.c.id).where(where, table.c.id > after).order_by(table.c.id).limit(PASS)
                    ).scalars()
                )
            for part in store.chunks(ids):
                if self.spent():
                    return False
                self.give_a_turn()
                started = time.perf_counter()
                with store.write(self.engine) as conn:
                    chunk(conn, part)
                self.batches += 1
                self.longest = max(self.longest, time.perf_counter() - started)
            if len(ids) < PASS:
                return True
            after = ids[-1]

    def give_a_turn(self) -> None:
        """On SQLite, after a chunk, leave the write lock free long enough for a writer waiting on it."""
        if self.batches and not store.is_postgres(self.engine):
            time.sleep(TURN)

    def spent(self) -> bool:
        """The time budget is used up; at least one chunk is always written, so every run makes progress."""
        return self.batches > 0 and self.deadline is not None and time.monotonic() > self.deadline

    def message_chunk(self, conn: Connection, ids: Sequence[int]) -> int:
        """Remove these messages' bodies, if they may still go (checked again, rows locked)."""
        query: Select[Any] = (
            select(messages.c.id, message_bodies.c.html, message_bodies.c.text)
            .select_from(messages.outerjoin(message_bodies, message_bodies.c.message_id == messages.c.id))
            .where(messages.c.id.in_(ids), purgeable(self.cutoff))
        )
        rows = conn.execute(_locked(conn, query, messages)).all()
        if not rows:
            return 0
        found = [row.id for row in rows]
        conn.execute(
            update(messages)
            .where(
                messages.c.id == bindparam("row_id"),
                or_(*(messages.c.status == status for status in FINAL_STATUSES)),  # no IN: an executemany
                messages.c.body_removed_at.is_(None),
            )
            .values(body_removed_at=self.now, body_sha256=bindparam("digest")),
            [{"row_id": row.id, "digest": body_digest(row.html or "", row.text or "")} for row in rows],
        )
        conn.execute(delete(message_bodies).where(message_bodies.c.message_id.in_(found)))
        trail_many(conn, self.now, [(i, "purged", self.detail) for i in found])
        self.removed[0] += len(found)
        return len(found)

    def inbound_chunk(self, conn: Connection, ids: Sequence[int]) -> int:
        """Clear these inbound emails' text and raw copy; the row stays (a reply was received)."""
        query: Select[Any] = select(inbound.c.id, inbound.c.text, inbound.c.raw).where(
            inbound.c.id.in_(ids), _old_inbound(self.cutoff)
        )
        rows = conn.execute(_locked(conn, query, inbound)).all()
        if not rows:
            return 0
        conn.execute(
            update(inbound)
            .where(inbound.c.id == bindparam("row_id"), inbound.c.body_removed_at.is_(None))
            .values(text="", raw=None, body_removed_at=self.now, body_sha256=bindparam("digest")),
            [{"row_id": row.id, "digest": inbound_digest(row.raw, row.text)} for row in rows],
        )
        self.removed[1] += len(rows)
        return len(rows)


def _locked(conn: Connection, query: Select[Any], table: Any) -> Select[Any]:
    """PostgreSQL: lock the rows read, skipping any another process holds (it is busy with them)."""
    return query.with_for_update(skip_locked=True, of=table) if store.is_postgres(conn) else query
