"""The dispatcher: claim due messages, send them, record each outcome at once.

A claim is a lease: rows go to ``sending`` with ``lease_until``; a worker
killed mid-send leaves rows whose lease expires and which go back to
``pending`` with the same Message-ID. Each message's new state is committed
the moment the server answers for it, never after the batch.

If the database cannot be written when the server has already answered,
the answer is kept in memory (``_Backlog``) and written first thing on the
next pass, so a database outage does not turn accepted mail into resends.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import secrets
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, bindparam, exists, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from outreach import gate, store
from outreach.backends.base import Backend
from outreach.compose import build_email
from outreach.digest import DIGEST, settle_members
from outreach.errors import (
    BatchAbort,
    DatabaseError,
    NotFound,
    PermanentError,
    RecipientUnknown,
    TransientError,
)
from outreach.models import FAILED, PENDING, SENDING, SENT, message_bodies, messages, physicians
from outreach.outbox import trail, trail_many, with_body
from outreach.settings import Settings

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


# What "the database is unavailable" looks like once ``store`` has had its say.
DB_ERRORS = (DatabaseError, SQLAlchemyError)


def worker_name() -> str:
    """Host, process and a random tag: a restarted process never inherits a dead one's leases.

    (In a container every restart is PID 1; with the PID alone a new process
    would renew, and finish, the claims of the one that was killed.)
    """
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


def one_line(text: object) -> str:
    """Log and trail text on one line: a multi-line SMTP reply must not split a log event."""
    return re.sub(r"\s*[\r\n]+\s*", " | ", str(text)).strip()


@dataclass
class _Outcome:
    """What the server said about one message, waiting to be written."""

    message_id: int
    at: datetime
    values: dict
    action: str
    detail: str
    digest: bool = False  # a digest settles the updates it carries
    undeliverable: str | None = None  # the server says the mailbox does not exist: mark the address


@dataclass
class _Backlog:
    """Outcomes the database could not take yet, and claims to hand back."""

    outcomes: list[_Outcome] = field(default_factory=list)
    release: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.release)


# Per database and worker: only this process knows what its server said while the database was away.
_BACKLOGS: dict[tuple[str, str], _Backlog] = {}
_BACKLOG_LOCK = threading.Lock()


def _backlog(engine: Engine, worker: str) -> _Backlog:
    key = (engine.url.render_as_string(hide_password=True), worker)  # no password kept in memory as a key
    with _BACKLOG_LOCK:
        return _BACKLOGS.setdefault(key, _Backlog())


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


def release_expired(engine: Engine, now: datetime) -> int:
    """Messages whose sender died mid-send go back to the queue.

    The rows are locked (PostgreSQL) and the lease checked again in the
    update: a release racing another must never hand back a fresh claim.
    """
    expired = and_(messages.c.status == SENDING, messages.c.lease_until < now)
    with store.write(engine) as conn:
        query = select(messages.c.id).where(expired)
        if store.is_postgres(conn):
            query = query.with_for_update(skip_locked=True)
        ids = list(conn.execute(query).scalars())
        if ids:
            conn.execute(
                update(messages)
                .where(messages.c.id.in_(ids), expired)
                .values(
                    status=PENDING, lease_until=None, claimed_by=None, next_attempt_at=now, updated_at=now
                )
            )
            for message_id in ids:
                trail(conn, message_id, now, "released", "lease expired: the sender stopped mid-send")
    if ids:
        log.warning("released %d message(s) whose sender stopped mid-send", len(ids))
    return len(ids)


def claim(engine: Engine, settings: Settings, limit: int, now: datetime, worker: str) -> list:
    """Lease up to ``limit`` due messages to this worker, most urgent first.

    Committed without waiting for the disk: a claim lost to a power cut only
    means the messages are claimed again, none of them having been sent.
    """
    with store.write(engine, durable=False) as conn:
        query = (
            select(messages.c.id)
            .where(
                messages.c.status == PENDING,
                messages.c.digest_id.is_(None),  # updates carried by a digest go with it
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
        trail_many(conn, now, [(message_id, "claimed", worker) for message_id in ids])
        return list(
            conn.execute(
                with_body().where(messages.c.id.in_(ids)).order_by(messages.c.priority.desc(), messages.c.id)
            )
        )


# A batch is judged by the gate when claimed, and again before each message
# once this much time has passed: a long batch does not send on old news.
GATE_FRESH_SECONDS = 1.0
Regroup = Callable[[list[int], datetime], None]


def screen_claimed(
    engine: Engine, settings: Settings, rows: list, worker: str, now: datetime, regroup: Regroup | None = None
) -> list:
    """The last gate: claimed messages that may no longer go leave the batch, the reason on record.

    A digest with an update that may not go is cancelled; the rest of its
    updates are combined again without it (``regroup``, given by the service,
    which can render), or, without ``regroup``, by the next plan.
    """
    if not rows:
        return rows
    today = now.astimezone(settings.tz).date()
    ids = [row.id for row in rows]
    with store.read(engine) as conn:
        if not gate.screen(conn, ids, today):
            return rows  # the usual case: one read, nothing to write
    with store.write(engine) as conn:
        verdicts = gate.screen(conn, ids, today)  # again, inside the transaction that applies it
        digests = {row.id for row in rows if _is_digest(row)} & ({*verdicts.refused} | {*verdicts.members})
        singles = [refusal for i, refusal in verdicts.refused.items() if i not in digests]
        gate.refuse(conn, singles, now, worker)
        groups = [gate.take_apart(conn, digest_id, verdicts, now, worker) for digest_id in sorted(digests)]
    for refusal in singles:
        log.warning("message %s %s at the gate: %s", refusal.message_id, refusal.status, refusal.reason)
    for remaining in groups:
        if remaining and regroup is not None:
            regroup(remaining, now)
    out = {*verdicts.refused, *digests}
    return [row for row in rows if row.id not in out]


def _finish(engine: Engine, worker: str, outcome: _Outcome, on: Connection | None = None) -> bool:
    """Record one outcome, only if this worker still holds the lease.

    An acceptance is recorded even if the lease ran out meanwhile, as long as
    nobody has claimed the message again: it did go, sending it again would
    be a double. Written without waiting for the disk (see ``store.write``):
    this runs once per message sent, and a killed process loses nothing.
    """
    values = {"lease_until": None, "updated_at": outcome.at, "claimed_by": None, **outcome.values}
    if outcome.values.get("status") != PENDING:
        values["claimed_by"] = worker  # who sent (or failed) it stays on record
    statement = _finish_statement(outcome.action == "sent", tuple(sorted(values)))
    with store.write(engine, durable=False, on=on) as conn:
        params = {f"new_{key}": value for key, value in values.items()}
        result = conn.execute(statement, {**params, "message": outcome.message_id, "worker": worker})
        if result.rowcount:
            trail(conn, outcome.message_id, outcome.at, outcome.action, outcome.detail)
            if outcome.digest:
                settle_members(conn, outcome.message_id, outcome.values.get("status"), outcome.at)
            if outcome.undeliverable:
                _mark_undeliverable(conn, outcome.message_id, outcome.undeliverable, outcome.at)
            return True
        current = conn.execute(
            select(messages.c.status, messages.c.claimed_by).where(messages.c.id == outcome.message_id)
        ).first()
    if current is not None and current.status == outcome.values.get("status") == SENT:
        return True  # written already: the commit went through before the connection dropped
    log.warning(
        "message %s: lease lost before its outcome was recorded (%s)", outcome.message_id, outcome.action
    )
    return False


def _mark_undeliverable(conn: Connection, message_id: int, reason: str, at: datetime) -> None:
    """The message's physician, at this address, gets nothing more until a person clears it."""
    sent_to = select(messages.c.physician_id, messages.c.recipient).where(messages.c.id == message_id)
    found = conn.execute(sent_to).first()
    if found is None or found.physician_id is None:
        return
    conn.execute(
        update(physicians)
        .where(physicians.c.id == found.physician_id, physicians.c.email == found.recipient.lower())
        .values(undeliverable_on=at.date(), undeliverable_reason=reason, updated_at=at)
    )
    log.warning("address %s marked undeliverable: %s", found.recipient, reason)


@functools.cache
def _finish_statement(accepted: bool, columns: tuple[str, ...]):
    """The outcome update, built once per shape: it runs for every message sent."""
    worker = bindparam("worker")
    mine = and_(messages.c.status == SENDING, messages.c.claimed_by == worker)
    released = and_(messages.c.status == PENDING, messages.c.claimed_by.is_(None))
    allowed = or_(mine, released) if accepted else mine
    return (
        update(messages)
        .where(messages.c.id == bindparam("message"), allowed)
        .values({column: bindparam(f"new_{column}") for column in columns})
    )


def _record(
    engine: Engine, worker: str, outcome: _Outcome, on: Callable[[], Connection] | None = None
) -> bool:
    """Write an outcome now, or keep it for the next pass if the database is away.

    ``on`` gives the connection to write on; reaching the database is part of
    writing, so an outcome that cannot even connect is kept as well.
    """
    try:
        return _finish(engine, worker, outcome, on() if on else None)
    except DB_ERRORS:
        _backlog(engine, worker).outcomes.append(outcome)
        log.error(
            "message %s: %s, but the database is unavailable; will record it when it is back",
            outcome.message_id,
            outcome.action,
        )
        raise


def flush_backlog(engine: Engine, worker: str, now: datetime) -> int:
    """Write what could not be written during an outage; hand back claims left unsent."""
    backlog = _backlog(engine, worker)
    written = 0
    while backlog.outcomes:
        _finish(engine, worker, backlog.outcomes[0])
        backlog.outcomes.pop(0)
        written += 1
    if backlog.release:
        ids = sorted(backlog.release)
        with store.write(engine) as conn:
            _hand_back(conn, ids, worker, now, "", now, "the database was unavailable mid-batch")
        backlog.release.clear()
    if written:
        log.warning("recorded %d outcome(s) held while the database was unavailable", written)
    return written


def _release(engine: Engine, rows: list, worker: str, now: datetime, reason: str, retry_at: datetime) -> None:
    """Hand unsent messages back to the queue without counting an attempt."""
    if not rows:
        return
    with store.write(engine) as conn:
        _hand_back(conn, [row.id for row in rows], worker, now, reason, retry_at, "service stopping")


def _hand_back(
    conn: Connection, ids: list[int], worker: str, now: datetime, reason: str, retry_at, why: str
) -> None:
    """Claims of this worker back to ``pending``: ``deferred`` with a reason, else ``released``."""
    mine = and_(messages.c.status == SENDING, messages.c.claimed_by == worker)
    held = list(conn.execute(select(messages.c.id).where(messages.c.id.in_(ids), mine)).scalars())
    if not held:
        return
    conn.execute(
        update(messages)
        .where(messages.c.id.in_(held), mine)
        .values(
            status=PENDING,
            lease_until=None,
            claimed_by=None,
            next_attempt_at=retry_at,
            last_error=reason or messages.c.last_error,
            updated_at=now,
        )
    )
    for message_id in held:
        trail(conn, message_id, now, "deferred" if reason else "released", reason or why)


def _renew(engine: Engine, settings: Settings, worker: str, ids: list[int], now: datetime):
    """Extend the lease on the messages still ours; returns the new expiry and those ids."""
    lease_until = now + timedelta(seconds=settings.lease_seconds)
    mine = and_(messages.c.id.in_(ids), messages.c.status == SENDING, messages.c.claimed_by == worker)
    with store.write(engine) as conn:
        conn.execute(update(messages).where(mine).values(lease_until=lease_until))
        held = set(conn.execute(select(messages.c.id).where(mine)).scalars())
    return lease_until, held


class Recorder:
    """A second thread that records each outcome and builds the next email.

    The sending thread spends most of its time waiting for the SMTP server;
    this thread works meanwhile. The next email is handed over (SMTP DATA)
    only once the previous outcome is on record (``wait``, which the backend
    calls just before), so no more than one accepted message is ever
    unrecorded, as when outcomes were written in line. A database error
    raised while recording comes out of the next ``wait``.
    """

    def __init__(self, engine: Engine, worker: str):
        self._engine, self._worker = engine, worker
        self._conn: Connection | None = None
        self._jobs: deque[tuple] = deque()
        self._unrecorded = 0
        self._building: set[int] = set()
        self._built: dict[int, object] = {}
        self._error: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="outreach-recorder", daemon=True)
        self._thread.start()

    def submit(self, outcome: _Outcome, done: Callable[[bool], None]) -> None:
        """Record ``outcome``, then call ``done(recorded)``; returns at once."""
        self.wait()
        with self._changed:
            self._unrecorded += 1
            self._jobs.append((outcome, done))
            self._changed.notify_all()

    def build_ahead(self, row, build: Callable[[], object]) -> None:
        """Build ``row``'s email while the current one is being sent."""
        with self._changed:
            self._building.add(row.id)
            self._jobs.append((row.id, build))
            self._changed.notify_all()

    def email_for(self, row, build: Callable[[], object]):
        """The email built ahead for ``row`` (or built now); raises what building raised."""
        with self._changed:
            while row.id in self._building:
                self._changed.wait()
            built = self._built.pop(row.id, None)
        if built is None:
            return build()
        if isinstance(built, Exception):
            raise built
        return built

    def wait(self) -> None:
        """Until every outcome submitted is on record; raises what recording one raised."""
        with self._changed:
            while self._unrecorded:
                self._changed.wait()
            error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self, quietly: bool = False) -> None:
        """Finish the last outcome and stop the thread; raises as ``wait`` does unless ``quietly``."""
        if self._closed:
            return
        try:
            self.wait()
        except BaseException:
            if not quietly:
                raise
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()
            self._thread.join()

    def _connection(self) -> Connection:
        """One connection for the batch: outcomes come fast."""
        if self._conn is None:
            self._conn = store.connection(self._engine)
        return self._conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self) -> None:
        try:
            self._work()
        finally:
            self._disconnect()

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._jobs and not self._closed:
                    self._changed.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            if isinstance(job[0], _Outcome):
                self._record(*job)
            else:
                self._build(*job)

    def _record(self, outcome: _Outcome, done: Callable[[bool], None]) -> None:
        error = None
        try:
            done(_record(self._engine, self._worker, outcome, self._connection))
        except BaseException as exc:  # handed to the sending thread at its next wait
            error = exc
            self._disconnect()
        with self._changed:
            self._unrecorded -= 1
            self._error = self._error or error
            self._changed.notify_all()

    def _build(self, row_id: int, build: Callable[[], object]) -> None:
        try:
            built = build()
        except Exception as exc:  # reported when the email is asked for
            built = exc
        with self._changed:
            self._built[row_id] = built
            self._building.discard(row_id)
            self._changed.notify_all()


class _InLine:
    """Records each outcome before returning (``deliver`` called on its own)."""

    def __init__(self, engine: Engine, worker: str):
        self._engine, self._worker = engine, worker

    def submit(self, outcome: _Outcome, done: Callable[[bool], None]) -> None:
        done(_record(self._engine, self._worker, outcome))

    def email_for(self, row, build: Callable[[], object]):
        return build()

    def wait(self) -> None:
        pass


def deliver(
    engine: Engine,
    settings: Settings,
    backend: Backend,
    row,
    worker: str,
    clock: Clock,
    report: SendReport,
    recorder: Recorder | None = None,
) -> None:
    """Send one claimed message and record what happened to it."""
    record = recorder or _InLine(engine, worker)
    attempts = row.attempts + 1
    try:
        msg = record.email_for(row, lambda: build_email(row, settings, clock()))
    except Exception as exc:  # a stored row no email can be made of: it will never go
        _failed(record, row, clock(), attempts, f"cannot build the email: {_describe(exc)}", "", report)
        return
    try:
        response = backend.send(msg, settings.from_addr, row.recipient, before_data=record.wait)
    except PermanentError as exc:
        unknown = one_line(exc.reply) if isinstance(exc, RecipientUnknown) else None
        _failed(record, row, clock(), attempts, one_line(exc), one_line(exc.reply), report, unknown)
        return
    except TransientError as exc:
        _transient(record, settings, row, clock(), attempts, one_line(exc), one_line(exc.reply), report)
        return
    except (BatchAbort, *DB_ERRORS):
        raise
    except Exception as exc:  # a backend bug or an odd reply: retry this one, keep the batch going
        backend.close()
        log.debug("message %s: unexpected error from the %s backend", row.id, backend.name, exc_info=True)
        _transient(record, settings, row, clock(), attempts, _describe(exc), "", report)
        return
    now, response = clock(), one_line(response)
    values = {
        "status": SENT,
        "attempts": attempts,
        "sent_at": now,
        "smtp_response": response,
        "last_error": None,
    }

    def sent(recorded: bool) -> None:
        if recorded:
            report.sent.append(row.id)
            log.info("message %s sent to %s: %s", row.id, row.recipient, response)

    record.submit(_Outcome(row.id, now, values, "sent", response, _is_digest(row)), sent)


def _is_digest(row) -> bool:
    return row.kind == DIGEST


def _describe(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _failed(
    record, row, now, attempts: int, error: str, reply: str, report: SendReport, undeliverable=None
) -> None:
    values = {"status": FAILED, "attempts": attempts, "last_error": error, "smtp_response": reply or None}

    def failed(recorded: bool) -> None:
        if recorded:  # else the lease was lost: the new holder reports it
            report.failed.append(row.id)
            log.error("message %s failed: %s", row.id, error)

    outcome = _Outcome(row.id, now, values, "failed", error, _is_digest(row), undeliverable)
    record.submit(outcome, failed)


def _transient(record, settings, row, now, attempts: int, error: str, reply: str, report) -> None:
    """Try again after a growing delay, or give up after the last attempt."""
    if attempts >= settings.max_attempts:
        _failed(record, row, now, attempts, f"gave up after {attempts} attempts: {error}", reply, report)
        return
    retry_at = now + backoff(settings, attempts)
    values = {"status": PENDING, "attempts": attempts, "last_error": error, "next_attempt_at": retry_at}
    detail = f"{error}; retry after {retry_at:%Y-%m-%d %H:%M:%S} UTC"

    def deferred(recorded: bool) -> None:
        if recorded:  # else the lease was lost: the new holder reports it
            report.deferred.append(row.id)
            log.warning("message %s deferred (attempt %d): %s", row.id, attempts, error)

    record.submit(_Outcome(row.id, now, values, "deferred", detail, _is_digest(row)), deferred)


def send_due(
    engine: Engine,
    settings: Settings,
    backend: Backend,
    clock: Clock,
    limit: int | None = None,
    stop: threading.Event | None = None,
    worker: str | None = None,
    regroup: Regroup | None = None,
) -> SendReport:
    """Deliver due messages in batches until none is due, ``limit`` is reached or ``stop`` is set.

    Every message passes the gate (``screen_claimed``) after its claim and
    before the backend sees it; ``regroup`` combines again the updates of a
    digest the gate took apart.
    """
    worker = worker or _default_worker()
    flush_backlog(engine, worker, clock())
    report = SendReport(released=release_expired(engine, clock()))
    remaining = limit
    while not (stop and stop.is_set()) and (remaining is None or remaining > 0):
        size = settings.batch_size if remaining is None else min(settings.batch_size, remaining)
        batch = claim(engine, settings, size, clock(), worker)
        if not batch:
            break
        if remaining is not None:
            remaining -= len(batch)
        gated = _Gated(engine, settings, worker, clock, regroup)
        batch = gated.screen(batch)
        if batch and not _send_batch(engine, settings, backend, batch, worker, clock, stop, report, gated):
            break
    return report


_PROCESS_WORKER: dict[int, str] = {}


def _default_worker() -> str:
    """One name per process (a fork gets its own), so its backlog is found again."""
    return _PROCESS_WORKER.setdefault(os.getpid(), worker_name())


@dataclass
class _Gated:
    """The gate for one batch: judged when claimed, judged again when the verdict grows old."""

    engine: Engine
    settings: Settings
    worker: str
    clock: Clock
    regroup: Regroup | None
    at: datetime | None = None
    refused: set[int] = field(default_factory=set)

    def screen(self, rows: list) -> list:
        self.at = self.clock()
        kept = screen_claimed(self.engine, self.settings, rows, self.worker, self.at, self.regroup)
        self.refused |= {row.id for row in rows} - {row.id for row in kept}
        return kept

    def still_allowed(self, rest: list, recorder) -> bool:
        """Whether ``rest[0]`` may go; the rest of the batch is judged again if the verdict is old."""
        if self.at is None or self.clock() - self.at > timedelta(seconds=GATE_FRESH_SECONDS):
            recorder.wait()  # the recorder's writes first: one writer at a time on SQLite
            self.screen(rest)
        return rest[0].id not in self.refused


def _send_batch(engine, settings, backend, batch, worker, clock, stop, report, gated=None) -> bool:
    """One connection and one recorder for the batch; False when sending must stop for now."""
    recorder = Recorder(engine, worker)
    gated = gated or _Gated(engine, settings, worker, clock, None)
    try:
        going = _offer_batch(engine, settings, backend, batch, worker, clock, stop, report, recorder, gated)
        recorder.close()
        return going
    except DB_ERRORS:
        # The database went away mid-batch: what is not sent is handed back when it returns.
        recorder.close(quietly=True)  # an outcome it could not write is in the backlog already
        backlog = _backlog(engine, worker)
        waiting = {o.message_id for o in backlog.outcomes}
        backlog.release.update(row.id for row in batch if row.id not in _done(report) | waiting)
        raise
    finally:
        recorder.close(quietly=True)
        backend.close()


def _offer_batch(engine, settings, backend, batch, worker, clock, stop, report, recorder, gated) -> bool:
    lease_until = clock() + timedelta(seconds=settings.lease_seconds)
    held = {row.id for row in batch}
    try:
        backend.open()
        for index, row in enumerate(batch):
            if stop is not None and stop.is_set():
                recorder.wait()
                _release(engine, batch[index:], worker, clock(), "", clock())
                return False
            if clock() > lease_until - timedelta(seconds=settings.lease_seconds / 2):
                recorder.wait()
                lease_until, held = _renew(engine, settings, worker, [r.id for r in batch[index:]], clock())
            if row.id not in held:
                log.warning("message %s: lease lost before sending; left to its new sender", row.id)
                continue
            if not gated.still_allowed(batch[index:], recorder):
                continue
            if index + 1 < len(batch):
                upcoming = batch[index + 1]
                recorder.build_ahead(upcoming, lambda r=upcoming: build_email(r, settings, clock()))
            deliver(engine, settings, backend, row, worker, clock, report, recorder)
    except BatchAbort as exc:
        recorder.wait()
        now = clock()
        unsent = [row for row in batch if row.id not in _done(report)]
        reason = one_line(exc)
        _release(engine, unsent, worker, now, reason, now + timedelta(seconds=settings.retry_base_seconds))
        report.aborted = reason
        log.error("sending stopped, %d message(s) left queued: %s", len(unsent), reason)
        return False
    return True


def _done(report: SendReport) -> set[int]:
    return {*report.sent, *report.deferred, *report.failed}


def _rendered():
    """The message has a body to send (not a template error's empty one)."""
    return exists().where(message_bodies.c.message_id == messages.c.id, message_bodies.c.html != "")


def retry_failed(
    engine: Engine, now: datetime, ids: list[int] | None = None, settings: Settings | None = None
) -> int:
    """Put failed messages back in the queue with a fresh set of attempts; how many were.

    A message whose template failed when it was queued has no body to send
    again: given ``settings``, it is rendered again from its rule and records
    with the rules and templates as they are now (see ``rerender``) and
    queued. If any of them still fails to render, nothing at all changes.
    """
    from outreach.rerender import Rerenderer, store_redone

    selected = messages.c.status == FAILED
    with store.read(engine) as conn:
        if ids is not None:
            found = dict(
                conn.execute(select(messages.c.id, messages.c.status).where(messages.c.id.in_(ids))).all()
            )
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFound(f"no message with id {', '.join(map(str, missing))}")
            not_failed = [f"{i} is {found[i]}" for i in ids if found[i] != FAILED]
            if settings is None:  # nothing to render it with
                unrendered = conn.execute(
                    select(messages.c.id).where(messages.c.id.in_(ids), ~_rendered())
                ).scalars()
                not_failed += [f"{i} was never rendered (fix its template)" for i in unrendered]
            if not_failed:
                raise NotFound(f"only failed messages can be retried: {', '.join(not_failed)}")
            selected = selected & messages.c.id.in_(ids)
        rows = conn.execute(select(messages.c.id, _rendered().label("rendered")).where(selected)).all()
        again = [row.id for row in rows if not row.rendered]
        redone = Rerenderer.load(settings).render(conn, again, now) if again and settings else []
    with store.write(engine) as conn:
        done = 0
        for chunk in store.chunks([row.id for row in rows if row.rendered]):
            retry_ids = list(
                conn.execute(
                    select(messages.c.id).where(messages.c.id.in_(chunk), messages.c.status == FAILED)
                ).scalars()
            )
            if retry_ids:
                conn.execute(
                    update(messages)
                    .where(messages.c.id.in_(retry_ids))
                    .values(status=PENDING, attempts=0, next_attempt_at=now, updated_at=now)
                )
                trail_many(conn, now, [(i, "retried", "queued again by a person") for i in retry_ids])
            done += len(retry_ids)
        done += store_redone(conn, redone, now)
    return done
