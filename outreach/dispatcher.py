"""The dispatcher: claim due messages, send them, record each outcome at once.

A claim is a lease: rows go to ``sending`` with ``lease_until``; a worker
killed mid-send leaves rows whose lease expires and which go back to
``pending`` with the same Message-ID. Each message's new state is committed
the moment the server answers for it, never after the batch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, or_, select, update

from outreach import store
from outreach.backends.base import Backend
from outreach.compose import build_email
from outreach.errors import BatchAbort, NotFound, PermanentError, TransientError
from outreach.models import FAILED, PENDING, SENDING, SENT, message_events, messages
from outreach.settings import Settings

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class SendReport:
    sent: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    released: int = 0
    aborted: str | None = None


def backoff(settings: Settings, attempts: int) -> timedelta:
    """Exponential: base, 2×base, 4×base … capped at the maximum."""
    seconds = settings.retry_base_seconds * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, settings.retry_max_seconds))


def _trail(conn: Connection, message_id: int, at: datetime, action: str, detail: str = "") -> None:
    conn.execute(message_events.insert().values(message_id=message_id, at=at, action=action, detail=detail))


def release_expired(engine: Engine, now: datetime) -> int:
    """Messages whose sender died mid-send go back to the queue."""
    with store.write(engine) as conn:
        ids = list(
            conn.execute(
                select(messages.c.id).where(messages.c.status == SENDING, messages.c.lease_until < now)
            ).scalars()
        )
        if ids:
            conn.execute(
                update(messages)
                .where(messages.c.id.in_(ids), messages.c.status == SENDING)
                .values(
                    status=PENDING, lease_until=None, claimed_by=None, next_attempt_at=now, updated_at=now
                )
            )
            for message_id in ids:
                _trail(conn, message_id, now, "released", "lease expired: the sender stopped mid-send")
    if ids:
        log.warning("released %d message(s) whose sender stopped mid-send", len(ids))
    return len(ids)


def claim(engine: Engine, settings: Settings, limit: int, now: datetime, worker: str) -> list:
    """Lease up to ``limit`` due messages to this worker, most urgent first."""
    with store.write(engine) as conn:
        query = (
            select(messages.c.id)
            .where(
                messages.c.status == PENDING,
                or_(messages.c.next_attempt_at.is_(None), messages.c.next_attempt_at <= now),
                or_(messages.c.not_before.is_(None), messages.c.not_before <= now),
            )
            .order_by(messages.c.priority.desc(), messages.c.id)
            .limit(limit)
        )
        if store.is_postgres(conn):
            query = query.with_for_update(skip_locked=True)
        ids = list(conn.execute(query).scalars())
        if not ids:
            return []
        lease_until = now + timedelta(seconds=settings.lease_seconds)
        conn.execute(
            update(messages)
            .where(messages.c.id.in_(ids))
            .values(status=SENDING, lease_until=lease_until, claimed_by=worker, updated_at=now)
        )
        for message_id in ids:
            _trail(conn, message_id, now, "claimed", worker)
        return list(
            conn.execute(
                select(messages)
                .where(messages.c.id.in_(ids))
                .order_by(messages.c.priority.desc(), messages.c.id)
            )
        )


def _finish(
    engine: Engine, message_id: int, worker: str, now: datetime, values: dict, action: str, detail: str
) -> bool:
    """Record one outcome, only if this worker still holds the lease."""
    with store.write(engine) as conn:
        result = conn.execute(
            update(messages)
            .where(messages.c.id == message_id, messages.c.status == SENDING, messages.c.claimed_by == worker)
            .values(lease_until=None, updated_at=now, **values)
        )
        if result.rowcount:
            _trail(conn, message_id, now, action, detail)
    if not result.rowcount:
        log.warning("message %s: lease lost before its outcome was recorded (%s)", message_id, action)
    return bool(result.rowcount)


def _release(engine: Engine, rows: list, worker: str, now: datetime, reason: str, retry_at: datetime) -> None:
    """Hand unsent messages back to the queue without counting an attempt."""
    if not rows:
        return
    with store.write(engine) as conn:
        ids = list(
            conn.execute(
                select(messages.c.id).where(
                    messages.c.id.in_([row.id for row in rows]),
                    messages.c.status == SENDING,
                    messages.c.claimed_by == worker,
                )
            ).scalars()
        )
        conn.execute(
            update(messages)
            .where(messages.c.id.in_(ids), messages.c.status == SENDING, messages.c.claimed_by == worker)
            .values(
                status=PENDING,
                lease_until=None,
                claimed_by=None,
                next_attempt_at=retry_at,
                last_error=reason or messages.c.last_error,
                updated_at=now,
            )
        )
        for message_id in ids:
            _trail(conn, message_id, now, "deferred" if reason else "released", reason or "service stopping")


def _renew(engine: Engine, settings: Settings, worker: str, now: datetime) -> datetime:
    lease_until = now + timedelta(seconds=settings.lease_seconds)
    with store.write(engine) as conn:
        conn.execute(
            update(messages)
            .where(messages.c.status == SENDING, messages.c.claimed_by == worker)
            .values(lease_until=lease_until)
        )
    return lease_until


def deliver(
    engine: Engine, settings: Settings, backend: Backend, row, worker: str, clock: Clock, report: SendReport
) -> None:
    """Send one claimed message and record what happened to it."""
    now = clock()
    attempts = row.attempts + 1
    try:
        response = backend.send(build_email(row, settings, now), settings.from_addr, row.recipient)
    except PermanentError as exc:
        values = {"status": FAILED, "attempts": attempts, "last_error": str(exc), "smtp_response": exc.reply}
        _finish(engine, row.id, worker, clock(), values, "failed", str(exc))
        report.failed.append(row.id)
        log.error("message %s failed permanently: %s", row.id, exc)
        return
    except TransientError as exc:
        if attempts >= settings.max_attempts:
            detail = f"gave up after {attempts} attempts: {exc}"
            values = {
                "status": FAILED,
                "attempts": attempts,
                "last_error": detail,
                "smtp_response": exc.reply,
            }
            _finish(engine, row.id, worker, clock(), values, "failed", detail)
            report.failed.append(row.id)
            log.error("message %s failed: %s", row.id, detail)
            return
        retry_at = clock() + backoff(settings, attempts)
        values = {
            "status": PENDING,
            "attempts": attempts,
            "last_error": str(exc),
            "next_attempt_at": retry_at,
            "claimed_by": None,
        }
        detail = f"{exc}; retry after {retry_at:%Y-%m-%d %H:%M:%S} UTC"
        _finish(engine, row.id, worker, clock(), values, "deferred", detail)
        report.deferred.append(row.id)
        log.warning("message %s deferred (attempt %d): %s", row.id, attempts, exc)
        return
    values = {
        "status": SENT,
        "attempts": attempts,
        "sent_at": clock(),
        "smtp_response": response,
        "last_error": None,
    }
    if _finish(engine, row.id, worker, clock(), values, "sent", response):
        report.sent.append(row.id)
        log.info("message %s sent to %s: %s", row.id, row.recipient, response)


def send_due(
    engine: Engine,
    settings: Settings,
    backend: Backend,
    clock: Clock,
    limit: int | None = None,
    stop: threading.Event | None = None,
    worker: str | None = None,
) -> SendReport:
    """Deliver due messages in batches until none is due, ``limit`` is reached or ``stop`` is set."""
    worker = worker or worker_name()
    report = SendReport(released=release_expired(engine, clock()))
    remaining = limit
    while not (stop and stop.is_set()) and (remaining is None or remaining > 0):
        size = settings.batch_size if remaining is None else min(settings.batch_size, remaining)
        batch = claim(engine, settings, size, clock(), worker)
        if not batch:
            break
        if remaining is not None:
            remaining -= len(batch)
        if not _send_batch(engine, settings, backend, batch, worker, clock, stop, report):
            break
    return report


def _send_batch(engine, settings, backend, batch, worker, clock, stop, report) -> bool:
    """One connection for the batch; False when sending must stop for now."""
    lease_until = clock() + timedelta(seconds=settings.lease_seconds)
    try:
        backend.open()
        for index, row in enumerate(batch):
            if stop is not None and stop.is_set():
                _release(engine, batch[index:], worker, clock(), "", clock())
                return False
            if clock() > lease_until - timedelta(seconds=settings.lease_seconds / 2):
                lease_until = _renew(engine, settings, worker, clock())
            deliver(engine, settings, backend, row, worker, clock, report)
    except BatchAbort as exc:
        now = clock()
        unsent = [row for row in batch if row.id not in {*report.sent, *report.deferred, *report.failed}]
        _release(engine, unsent, worker, now, str(exc), now + timedelta(seconds=settings.retry_base_seconds))
        report.aborted = str(exc)
        log.error("sending stopped, %d message(s) left queued: %s", len(unsent), exc)
        return False
    finally:
        backend.close()
    return True


def retry_failed(engine: Engine, now: datetime, ids: list[int] | None = None) -> int:
    """Put failed messages back in the queue with a fresh set of attempts."""
    with store.write(engine) as conn:
        # A message that never rendered (template error) has nothing to resend.
        query = select(messages.c.id).where(messages.c.status == FAILED, messages.c.html != "")
        if ids is not None:
            found = dict(
                conn.execute(select(messages.c.id, messages.c.status).where(messages.c.id.in_(ids))).all()
            )
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFound(f"no message with id {', '.join(map(str, missing))}")
            not_failed = [f"{i} is {found[i]}" for i in ids if found[i] != FAILED]
            unrendered = conn.execute(
                select(messages.c.id).where(messages.c.id.in_(ids), messages.c.html == "")
            ).scalars()
            not_failed += [f"{i} was never rendered (fix its template)" for i in unrendered]
            if not_failed:
                raise NotFound(f"only failed messages can be retried: {', '.join(not_failed)}")
            query = query.where(messages.c.id.in_(ids))
        retry_ids = [row.id for row in conn.execute(query)]
        if retry_ids:
            conn.execute(
                update(messages)
                .where(messages.c.id.in_(retry_ids))
                .values(status=PENDING, attempts=0, next_attempt_at=now, updated_at=now)
            )
            for message_id in retry_ids:
                _trail(conn, message_id, now, "retried", "queued again by a person")
    return len(retry_ids)
