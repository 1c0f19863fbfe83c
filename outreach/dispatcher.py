"""The dispatcher: claim due messages, send them, record each outcome at once.

A ``Dispatcher`` is made once per service, as an httpx ``Client`` is, and
holds what every pass needs: the database, the settings, the backend, the
worker's name and its clock. ``send_due`` is one pass.

A claim is a lease: rows go to ``sending`` with ``lease_until``; a worker
killed mid-send leaves rows whose lease expires and which go back to
``pending`` with the same Message-ID. Each message's new state is committed
the moment the server answers for it, never after the batch.

If the database cannot be written when the server has already answered,
the answer is kept in the dispatcher (its ``Backlog``) and written first
thing on the next pass, so a database outage does not turn accepted mail
into resends.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Dialect,
    Engine,
    Exists,
    Row,
    Update,
    and_,
    bindparam,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from outreach import gate, store
from outreach.backends.base import Backend, no_wait
from outreach.compose import Email, build_email, envelope_recipients, envelope_sender, redirected_to
from outreach.errors import (
    BatchAbort,
    DatabaseError,
    NotFound,
    PermanentError,
    RecipientUnknown,
    TooManyConnections,
    TransientError,
)
from outreach.models import (
    FAILED,
    PENDING,
    PRIORITY_NORMAL,
    REDIRECTED,
    SENDING,
    SENT,
    message_bodies,
    message_events,
    messages,
    utcnow,
)
from outreach.outbox import DIGEST, log_line, mark_undeliverable, settle_members, trail, trail_many, with_body
from outreach.settings import Settings

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
Claimed = Row[Any]  # a claimed message: its ``messages`` columns and its body (``outbox.with_body``)
Regroup = Callable[[list[int], datetime], None]

# What "the database is unavailable" looks like once ``store`` has had its say.
DB_ERRORS = (DatabaseError, SQLAlchemyError)

# What the server accepting a message is called in the trail: to the physician, or to staging.
ACCEPTED = ("sent", "redirected")

# A sender beside a plan looks again this often when the plan has released nothing new.
PLAN_POLL_SECONDS = 0.5

# A batch is judged by the gate when claimed, and again before each message
# once this much time has passed: a long batch does not send on old news.
GATE_FRESH_SECONDS = 1.0


def worker_name() -> str:
    """Host, process and a random tag: a restarted process never inherits a dead one's leases.

    (In a container every restart is PID 1; with the PID alone a new process
    would renew, and finish, the claims of the one that was killed.)
    """
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class _Outcome:
    """What the server said about one message, waiting to be written."""

    message_id: int
    recipient: str
    at: datetime
    values: dict[str, Any]
    action: str  # sent, redirected, failed or deferred: the trail's word and the report's list
    detail: str
    digest: bool = False  # a digest settles the updates it carries
    undeliverable: str | None = None  # the server says the mailbox does not exist: mark the address


@dataclass
class Backlog:
    """Outcomes the database could not take yet, and claims to hand back."""

    outcomes: list[_Outcome] = field(default_factory=list)
    release: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.release)


@dataclass
class SendReport:
    sent: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    released: int = 0
    aborted: str | None = None


def _count(report: SendReport, outcome: _Outcome) -> None:
    """An outcome on record goes in the report and in the log (on the sending thread)."""
    values = outcome.values
    if outcome.action in ACCEPTED:
        report.sent.append(outcome.message_id)
        log.info(
            "message %s %s to %s: %s", outcome.message_id, outcome.action, outcome.recipient, outcome.detail
        )
    elif outcome.action == "failed":
        report.failed.append(outcome.message_id)
        log.error("message %s failed: %s", outcome.message_id, values["last_error"])
    else:
        report.deferred.append(outcome.message_id)
        log.warning(
            "message %s deferred (attempt %d): %s",
            outcome.message_id,
            values["attempts"],
            values["last_error"],
        )


class _Quota:
    """How many more messages a pass may claim (``send --limit``), shared by its connections."""

    def __init__(self, limit: int | None) -> None:
        self.left, self._lock = limit, threading.Lock()

    def take(self, wanted: int) -> int:
        with self._lock:
            if self.left is None:
                return wanted
            granted = min(wanted, self.left)
            self.left -= granted
            return granted

    def give_back(self, unused: int) -> None:
        with self._lock:
            if self.left is not None:
                self.left += unused


class Pace:
    """``OUTREACH_SMTP_MAX_PER_MINUTE``: emails evenly spaced, across every connection of the service."""

    def __init__(self, per_minute: int | None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next, self._lock = 0.0, threading.Lock()

    def wait(self, stop: threading.Event | None) -> bool:
        """Until this email's turn; False if ``stop`` was set meanwhile (the email must not go)."""
        if not self.interval:
            return True
        with self._lock:
            now = time.monotonic()
            turn = max(now, self._next)
            self._next = turn + self.interval
        delay = turn - now
        if delay <= 0:
            return True
        if stop is None:
            time.sleep(delay)
            return True
        return not stop.wait(delay)


class _Lanes:
    """The connections of one pass still sending, so one the server refuses can leave the rest to them."""

    def __init__(self, count: int) -> None:
        self._active = set(range(count))
        self._lock = threading.Lock()

    def leave_if_others(self, lane: int) -> bool:
        """Connection ``lane`` stops; True if another is still sending (its messages go to them)."""
        with self._lock:
            others = self._active - {lane}
            if others:
                self._active.discard(lane)
            return bool(others)

    def done(self, lane: int) -> None:
        with self._lock:
            self._active.discard(lane)


@dataclass(frozen=True)
class _Seat:
    """One connection's place among the pass's connections."""

    lanes: _Lanes
    lane: int

    def leave_if_others(self) -> bool:
        return self.lanes.leave_if_others(self.lane)


def _done(report: SendReport) -> set[int]:
    return {*report.sent, *report.deferred, *report.failed}


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


@dataclass(frozen=True)
class Fence:
    """What a sender may take while a plan runs beside it: urgent mail, and the planned physicians' new mail.

    A physician's normal mail is final only once the plan has combined it
    into a digest and held what the weekly cap holds (``digest.batch``); mail
    queued before the plan waits for the plan's own last ``batch``.
    """

    since: datetime  # the plan's moment: the created_at of everything it queues
    physicians: frozenset[int]  # those whose mail the plan has finished with


class Planning:
    """A plan running beside a send pass (``Service.cycle``): which physicians it has finished with.

    A fence names at most ``store.IN_LIMIT`` physicians: those released
    first and not yet drained. A claim that came back short under a fence
    took all its physicians had (``drained``), so the next fence names the
    next ones; a plan of thousands of physicians never waits for its end.
    """

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._undrained: dict[int, None] = {}  # released, in the order released
        self._done = False
        self._news = threading.Condition()

    def released(self, physician_ids: Sequence[int]) -> None:
        """The planner has finished with these physicians: their new mail may go."""
        with self._news:
            self._undrained.update(dict.fromkeys(physician_ids))
            self._news.notify_all()

    def finish(self) -> None:
        """The plan is over: everything due may go."""
        with self._news:
            self._done = True
            self._news.notify_all()

    def fence(self) -> Fence | None:
        with self._news:
            if self._done:
                return None
            return Fence(self.now, frozenset(itertools.islice(self._undrained, store.IN_LIMIT)))

    def drained(self, fence: Fence) -> bool:
        """A claim under ``fence`` came back short: its physicians have nothing left; whether others have."""
        with self._news:
            for physician_id in fence.physicians:
                self._undrained.pop(physician_id, None)
            return bool(self._undrained)

    def wait(self, seconds: float) -> bool:
        """Until the planner releases more (or ``seconds``); False once the plan is over."""
        with self._news:
            if not self._done and not self._undrained:
                self._news.wait(seconds)
            return not self._done


def _within(fence: Fence) -> ColumnElement[bool]:
    urgent = messages.c.priority > PRIORITY_NORMAL
    if not fence.physicians:
        return urgent
    planned = and_(
        messages.c.created_at >= fence.since, messages.c.physician_id.in_(sorted(fence.physicians))
    )
    return or_(urgent, planned)


def _waiting(postgres: bool) -> ColumnElement[bool]:
    """The claim's status term, worded so each database reads the queue index, ``ix_messages_claim``.

    It holds the waiting mail only, in claim order: a claim reads its first
    rows and stops, however many wait. SQLite keeps no statistics and
    would rather read every waiting message through a status index and sort
    them; told the term filters little, it walks the queue index instead.
    The status is written out, not a parameter: a plan made for any status
    (PostgreSQL's generic plan of a statement psycopg has prepared) could
    not use an index of the waiting mail alone.
    """
    waiting = messages.c.status == literal_column(f"'{PENDING}'")
    return waiting if postgres else func.likelihood(waiting, literal_column("0.9"))


def claim(
    engine: Engine, settings: Settings, limit: int, now: datetime, worker: str, fence: Fence | None = None
) -> list[Claimed]:
    """Lease up to ``limit`` due messages to this worker, most urgent first.

    Committed without waiting for the disk: a claim lost to a power cut only
    means the messages are claimed again, none of them having been sent.

    Under staging each claim records where this attempt goes instead
    (``redirected_to``), from the setting as it is now: a message queued while
    staging was on and sent after it was turned off goes to its physician; one
    sent to the staging addresses is ``redirected``, final, never sent again.
    """
    with store.write(engine, durable=False) as conn:
        query = (
            select(messages.c.id)
            .where(
                _waiting(store.is_postgres(conn)),
                messages.c.digest_id.is_(None),  # updates carried by a digest go with it
                or_(messages.c.next_attempt_at.is_(None), messages.c.next_attempt_at <= now),
                or_(messages.c.not_before.is_(None), messages.c.not_before <= now),
                *([_within(fence)] if fence is not None else []),
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
            .values(
                status=SENDING,
                lease_until=lease_until,
                claimed_by=worker,
                updated_at=now,
                redirected_to=",".join(settings.redirect_all_to) or None,
            )
        )
        trail_many(conn, now, [(message_id, "claimed", worker) for message_id in ids])
        return list(
            conn.execute(
                with_body().where(messages.c.id.in_(ids)).order_by(messages.c.priority.desc(), messages.c.id)
            )
        )


class Dispatcher:
    """Sends due mail as one worker: claim, the gate, the backend, each outcome on record.

    Made once and used for many passes (``send_due``): the backlog, what the
    server said while the database was away, must outlive a pass, and only
    this dispatcher knows it. ``regroup`` (given by the service, which can
    render) combines again the updates of a digest the gate took apart.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        backend: Backend,
        clock: Clock = utcnow,
        *,
        worker: str | None = None,
        regroup: Regroup | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.backend = backend
        self.clock = clock
        self.worker = worker or worker_name()
        self.regroup = regroup
        self.backlog = Backlog()
        self.connections = settings.smtp_connections  # fewer once the server refuses one more (421)
        self.pace = Pace(settings.smtp_max_per_minute)

    def send_due(
        self, limit: int | None = None, stop: threading.Event | None = None, planning: Planning | None = None
    ) -> SendReport:
        """Deliver due messages in batches until none is due, ``limit`` is reached or ``stop`` is set.

        Every message passes the gate (``screen_claimed``) after its claim and
        before the backend sees it. With ``OUTREACH_SMTP_CONNECTIONS`` above 1,
        each connection is a thread of its own, claiming its own batches and
        recording each outcome before its next DATA, as one connection does.
        With ``planning``, a plan runs beside: the pass takes what the plan
        has finished with (``Fence``), waits for more, and ends once the plan
        is over and nothing is due.
        """
        self.flush_backlog()
        report = SendReport(released=release_expired(self.engine, self.clock()))
        quota = _Quota(limit)
        if self.connections == 1:
            self._lane(self.backend, report, quota, stop, None, planning)
            return report
        lanes = _Lanes(self.connections)
        backends = [self.backend, *(self.backend.another() for _ in range(self.connections - 1))]
        raised: list[BaseException] = []

        def lane(backend: Backend, seat: _Seat) -> None:
            try:
                self._lane(backend, report, quota, stop, seat, planning)
            except BaseException as exc:  # a database outage: raised below, as one connection raises it
                raised.append(exc)
            finally:
                lanes.done(seat.lane)

        threads = [
            threading.Thread(
                target=lane, args=(backend, _Seat(lanes, n)), name=f"outreach-send-{n}", daemon=True
            )
            for n, backend in enumerate(backends)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if raised:
            raise raised[0]
        return report

    def _claim_size(self) -> int:
        """A batch: no more than a minute's worth under a rate limit, so no claim is held for long."""
        per_minute = self.settings.smtp_max_per_minute
        return min(self.settings.batch_size, per_minute) if per_minute else self.settings.batch_size

    def _lane(
        self,
        backend: Backend,
        report: SendReport,
        quota: _Quota,
        stop: threading.Event | None,
        seat: _Seat | None,
        planning: Planning | None = None,
    ) -> None:
        """One connection's pass: claim a batch, send it, until nothing is due or sending must stop.

        The connection stays open from one batch to the next while they come
        back to back, and is closed before any wait: a server may drop a
        connection left idle, and the message sent on it next would pay.
        """
        try:
            while not (stop and stop.is_set()):
                size = quota.take(self._claim_size())
                if not size:
                    break
                fence = planning.fence() if planning is not None else None
                rows = claim(self.engine, self.settings, size, self.clock(), self.worker, fence)
                quota.give_back(size - len(rows))
                if fence is not None and planning is not None and len(rows) < size:
                    others = planning.drained(fence)  # (a short claim took all these physicians had)
                    if not rows:
                        if not others:  # the plan goes on: more will be released
                            backend.close()
                            planning.wait(PLAN_POLL_SECONDS)
                        continue
                if not rows:
                    break
                batch = _Batch(self, backend, rows, report, stop, seat)
                if batch.screen() and not batch.send():
                    break
        finally:
            backend.close()

    def deliver(self, row: Claimed) -> SendReport:
        """Send one claimed message and record its outcome before returning (no second thread)."""
        report = SendReport()
        outcome = self._attempt(row, no_wait)
        if self._record(outcome):
            _count(report, outcome)
        return report

    def flush_backlog(self) -> int:
        """Write what could not be written during an outage; hand back claims left unsent."""
        backlog, written = self.backlog, 0
        while backlog.outcomes:
            self._finish(backlog.outcomes[0])
            backlog.outcomes.pop(0)
            written += 1
        if backlog.release:
            now = self.clock()
            with store.write(self.engine) as conn:
                self._hand_back(
                    conn, sorted(backlog.release), now, "", now, "the database was unavailable mid-batch"
                )
            backlog.release.clear()
        if written:
            log.warning("recorded %d outcome(s) held while the database was unavailable", written)
        return written

    def screen_claimed(self, rows: list[Claimed], now: datetime) -> list[Claimed]:
        """The last gate: claimed messages that may no longer go leave the batch, the reason on record.

        A digest with an update that may not go is cancelled; the rest of its
        updates are combined again without it (``regroup``), or, without
        ``regroup``, by the next plan.
        """
        if not rows:
            return rows
        today = now.astimezone(self.settings.tz).date()
        ids = [row.id for row in rows]
        with store.read(self.engine) as conn:
            if not gate.screen(conn, ids, today):
                return rows  # the usual case: one read, nothing to write
        with store.write(self.engine) as conn:
            verdicts = gate.screen(conn, ids, today)  # again, inside the transaction that applies it
            digests = {row.id for row in rows if _is_digest(row)} & (
                {*verdicts.refused} | {*verdicts.members}
            )
            singles = [refusal for i, refusal in verdicts.refused.items() if i not in digests]
            gate.refuse(conn, singles, now, self.worker)
            groups = [gate.take_apart(conn, i, verdicts, now, self.worker) for i in sorted(digests)]
        for refusal in singles:
            log.warning("message %s %s at the gate: %s", refusal.message_id, refusal.status, refusal.detail)
        for remaining in groups:
            if remaining and self.regroup is not None:
                self.regroup(remaining, now)
        out = {*verdicts.refused, *digests}
        return [row for row in rows if row.id not in out]

    # --- one message ---------------------------------------------------------------------------

    def _attempt(
        self,
        row: Claimed,
        before_data: Callable[[], None],
        backend: Backend | None = None,
        emails: _Emails | None = None,
        after: Claimed | None = None,
    ) -> _Outcome:
        """Offer one claimed message to the backend (this connection's); what happened, to be recorded.

        ``before_data`` runs just before the email is handed over. ``emails``
        builds the email of the message ``after`` this one while the server
        judges this one.
        """
        backend = backend or self.backend
        emails = emails or _Emails(self)
        attempts = row.attempts + 1
        try:
            msg = emails.take(row)
        except Exception as exc:  # a stored row no email can be made of: it will never go
            return self._failure(row, attempts, f"cannot build the email: {_describe(exc)}", "")
        staging = redirected_to(row)
        meanwhile = (lambda: emails.build(after)) if after is not None else no_wait
        try:
            response = backend.send(
                msg, envelope_sender(row, self.settings), envelope_recipients(row), before_data, meanwhile
            )
        except PermanentError as exc:
            # A staging address refused says nothing about the physician's.
            unknown = log_line(exc.reply) if isinstance(exc, RecipientUnknown) and not staging else None
            return self._failure(row, attempts, log_line(exc), log_line(exc.reply), unknown)
        except TransientError as exc:
            return self._retry(row, attempts, log_line(exc), log_line(exc.reply))
        except (BatchAbort, *DB_ERRORS):
            raise
        except Exception as exc:  # a backend bug or an odd reply: retry this one, keep the batch going
            backend.close()
            log.debug("message %s: unexpected error from the %s backend", row.id, backend.name, exc_info=True)
            return self._retry(row, attempts, _describe(exc), "")
        now, response = self.clock(), log_line(response)
        values = {
            "status": REDIRECTED if staging else SENT,
            "attempts": attempts,
            "sent_at": now,
            "smtp_response": response,
            "last_error": None,
        }
        if staging:
            to, detail = (
                ", ".join(staging),
                f"staging: to {', '.join(staging)}, not {row.recipient}: {response}",
            )
            return _Outcome(row.id, to, now, values, "redirected", detail, _is_digest(row))
        return _Outcome(row.id, row.recipient, now, values, "sent", response, _is_digest(row))

    def _failure(
        self, row: Claimed, attempts: int, error: str, reply: str, undeliverable: str | None = None
    ) -> _Outcome:
        values = {"status": FAILED, "attempts": attempts, "last_error": error, "smtp_response": reply or None}
        return _Outcome(
            row.id, row.recipient, self.clock(), values, "failed", error, _is_digest(row), undeliverable
        )

    def _retry(self, row: Claimed, attempts: int, error: str, reply: str) -> _Outcome:
        """Try again after a growing delay, or give up after the last attempt."""
        if attempts >= self.settings.max_attempts:
            return self._failure(row, attempts, f"gave up after {attempts} attempts: {error}", reply)
        now = self.clock()
        retry_at = now + backoff(self.settings, attempts)
        values = {"status": PENDING, "attempts": attempts, "last_error": error, "next_attempt_at": retry_at}
        detail = f"{error}; retry after {retry_at:%Y-%m-%d %H:%M:%S} UTC"
        return _Outcome(row.id, row.recipient, now, values, "deferred", detail, _is_digest(row))

    # --- the record ----------------------------------------------------------------------------

    def _record(self, outcome: _Outcome, on: Callable[[], Connection] | None = None) -> bool:
        """Write an outcome now, or keep it in the backlog for the next pass if the database is away.

        ``on`` gives the connection to write on; reaching the database is part of
        writing, so an outcome that cannot even connect is kept as well.
        """
        try:
            return self._finish(outcome, on() if on else None)
        except DB_ERRORS:
            self.backlog.outcomes.append(outcome)
            log.error(
                "message %s: %s, but the database is unavailable; will record it when it is back",
                outcome.message_id,
                outcome.action,
            )
            raise

    def _finish(self, outcome: _Outcome, on: Connection | None = None) -> bool:
        """Record one outcome, only if this worker still holds the lease.

        An acceptance is recorded even if the lease ran out meanwhile, as long as
        nobody has claimed the message again: it did go, sending it again would
        be a double. Written without waiting for the disk (see ``store.write``):
        this runs once per message sent, and a killed process loses nothing.
        """
        values = {"lease_until": None, "updated_at": outcome.at, "claimed_by": None, **outcome.values}
        if outcome.values.get("status") != PENDING:
            values["claimed_by"] = self.worker  # who sent (or failed) it stays on record
        accepted, columns = outcome.action in ACCEPTED, tuple(sorted(values))
        params = {f"new_{key}": value for key, value in values.items()}
        params |= {"message": outcome.message_id, "worker": self.worker}
        if self._write_lean(outcome, params, accepted, columns, on):
            return True
        with store.write(self.engine, durable=False, on=on) as conn:
            result = conn.execute(_finish_statement(accepted, columns), params)
            if result.rowcount:
                trail(conn, outcome.message_id, outcome.at, outcome.action, outcome.detail)
                if outcome.digest:
                    settle_members(conn, outcome.message_id, outcome.values.get("status"), outcome.at)
                if outcome.undeliverable:
                    mark_undeliverable(conn, outcome.message_id, outcome.undeliverable, outcome.at)
                return True
            current = conn.execute(
                select(messages.c.status, messages.c.claimed_by).where(messages.c.id == outcome.message_id)
            ).first()
        if current is not None and current.status == outcome.values.get("status") in (SENT, REDIRECTED):
            return True  # written already: the commit went through before the connection dropped
        log.warning(
            "message %s: lease lost before its outcome was recorded (%s)", outcome.message_id, outcome.action
        )
        return False

    def _write_lean(
        self,
        outcome: _Outcome,
        params: dict[str, Any],
        accepted: bool,
        columns: tuple[str, ...],
        on: Connection | None,
    ) -> bool:
        """The usual outcome (one email, still ours) in prepared statements on the driver.

        This runs once per message sent, and SQLAlchemy's execution costs more
        than the database's work. False: nothing written, ``_finish`` takes
        the long way (a digest and its updates, an address marked
        undeliverable, or a message no longer ours as claimed).
        """
        if on is None or outcome.digest or outcome.undeliverable:
            return False
        values = {  # the update's and its step's: each statement takes the names it has
            **params,
            "message_id": outcome.message_id,
            "at": outcome.at,
            "action": outcome.action,
            "detail": outcome.detail,
        }
        statements = _prepared(self.engine.dialect, accepted, columns)
        return store.driver_write(self.engine, on, [(s.sql, s.args(values)) for s in statements])

    # --- claims --------------------------------------------------------------------------------

    def _release(self, rows: list[Claimed], now: datetime, reason: str, retry_at: datetime) -> None:
        """Hand unsent messages back to the queue without counting an attempt."""
        if not rows:
            return
        with store.write(self.engine) as conn:
            self._hand_back(conn, [row.id for row in rows], now, reason, retry_at, "service stopping")

    def _hand_back(
        self, conn: Connection, ids: list[int], now: datetime, reason: str, retry_at: datetime, why: str
    ) -> None:
        """Claims of this worker back to ``pending``: ``deferred`` with a reason, else ``released``."""
        mine = and_(messages.c.status == SENDING, messages.c.claimed_by == self.worker)
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

    def _renew(self, ids: list[int]) -> tuple[datetime, set[int]]:
        """Extend the lease on the messages still ours; returns the new expiry and those ids."""
        now = self.clock()
        lease_until = now + timedelta(seconds=self.settings.lease_seconds)
        mine = and_(
            messages.c.id.in_(ids), messages.c.status == SENDING, messages.c.claimed_by == self.worker
        )
        with store.write(self.engine) as conn:
            conn.execute(update(messages).where(mine).values(lease_until=lease_until))
            held = set(conn.execute(select(messages.c.id).where(mine)).scalars())
        return lease_until, held


class _Recorder:
    """Holds one outcome until the next email's envelope is out, and writes it then.

    The backend runs ``settle`` (its hook) once the next envelope is written
    and before its replies are read, so the write overlaps the server's
    reading of the envelope, on the sending thread: no second thread to take
    turns with for the interpreter, and still no more than one accepted
    message unrecorded, never past the next email's content. Each outcome
    is counted in the report once it is on record; a database error while
    writing it comes out of ``settle``, the outcome kept in the backlog.
    """

    def __init__(self, dispatcher: Dispatcher, report: SendReport) -> None:
        self._dispatcher, self._report = dispatcher, report
        self._conn: Connection | None = None  # one for the batch: outcomes come fast
        self._pending: _Outcome | None = None

    def submit(self, outcome: _Outcome) -> None:
        """Hold ``outcome`` until the next ``settle``; the one held before is written first."""
        self.settle()
        self._pending = outcome

    def settle(self) -> None:
        """Write the outcome held, count it; raises what writing it raised."""
        outcome, self._pending = self._pending, None
        if outcome is None:
            return
        try:
            recorded = self._dispatcher._record(outcome, self._connection)
        except BaseException:
            self._disconnect()  # a connection in doubt: the next outcome gets a new one
            raise
        if recorded:  # else the lease was lost: the new holder reports it
            _count(self._report, outcome)

    def close(self, quietly: bool = False) -> None:
        """Write the last outcome, close the connection; raises what ``settle`` raises, unless ``quietly``."""
        try:
            self.settle()
        except BaseException:
            if not quietly:
                raise
        finally:
            self._disconnect()

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = store.connection(self._dispatcher.engine)
        return self._conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class _Emails:
    """Each claimed message's email; the next one built ahead while the server judges the one before.

    Building is CPU and the wait for the server's verdict is not, so the next
    email costs nothing on the wire. One is held at a time; an email the
    batch no longer sends (the gate refused it, sending stopped) is dropped.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._ahead: tuple[int, Email | Exception] | None = None

    def build(self, row: Claimed) -> None:
        """Build ``row``'s email now; what building raises is kept for ``take`` to raise."""
        d = self._dispatcher
        try:
            self._ahead = (row.id, build_email(row, d.settings, d.clock()))
        except Exception as exc:
            self._ahead = (row.id, exc)

    def take(self, row: Claimed) -> Email:
        """``row``'s email: the one built ahead, or built now."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != row.id:
            return build_email(row, self._dispatcher.settings, self._dispatcher.clock())
        if isinstance(ahead[1], Exception):
            raise ahead[1]
        return ahead[1]


class _Batch:
    """One claimed batch on its way out on one connection: its lease, the gate's verdict, its recorder."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        backend: Backend,
        rows: list[Claimed],
        report: SendReport,
        stop: threading.Event | None,
        seat: _Seat | None = None,
    ) -> None:
        self.dispatcher, self.backend, self.rows, self.report, self.stop = (
            dispatcher,
            backend,
            rows,
            report,
            stop,
        )
        self.seat = seat
        self.judged_at: datetime | None = None
        self.refused: set[int] = set()

    def screen(self) -> bool:
        """The gate on the whole batch as claimed; whether any message may go."""
        self._judge(self.rows)
        self.rows = [row for row in self.rows if row.id not in self.refused]
        return bool(self.rows)

    def send(self) -> bool:
        """Each message in turn, its outcome recorded beside; False when sending must stop for now."""
        recorder = _Recorder(self.dispatcher, self.report)
        keep_open = False  # for the lane's next batch, only if this one ended well
        try:
            going = self._offer(recorder)
            recorder.close()
            keep_open = going
            return going
        except DB_ERRORS:
            # The database went away mid-batch: what is not sent is handed back when it returns.
            recorder.close(quietly=True)  # an outcome it could not write is in the backlog already
            backlog = self.dispatcher.backlog
            done = _done(self.report) | {outcome.message_id for outcome in backlog.outcomes}
            backlog.release.update(row.id for row in self.rows if row.id not in done)
            raise
        finally:
            recorder.close(quietly=True)
            if not keep_open:
                self.backend.close()

    def _offer(self, recorder: _Recorder) -> bool:
        d = self.dispatcher
        lease = timedelta(seconds=d.settings.lease_seconds)
        lease_until, held = d.clock() + lease, {row.id for row in self.rows}
        emails = _Emails(d)
        try:
            self.backend.open()
            for index, row in enumerate(self.rows):
                if self.stop is not None and self.stop.is_set():
                    recorder.settle()
                    now = d.clock()
                    d._release(self.rows[index:], now, "", now)
                    return False
                if d.clock() > lease_until - lease / 2:
                    recorder.settle()
                    lease_until, held = d._renew([r.id for r in self.rows[index:]])
                if row.id not in held:
                    log.warning("message %s: lease lost before sending; left to its new sender", row.id)
                    continue
                if not self._allowed(index, recorder):
                    continue
                if not d.pace.wait(self.stop):  # stopped while waiting for its turn under the rate limit
                    recorder.settle()
                    now = d.clock()
                    d._release(self.rows[index:], now, "", now)
                    return False
                after = self.rows[index + 1] if index + 1 < len(self.rows) else None
                recorder.submit(d._attempt(row, recorder.settle, self.backend, emails, after))
        except TooManyConnections as exc:
            recorder.settle()
            if self.seat is not None and self.seat.leave_if_others():
                self._leave(exc)
            else:
                self._abort(exc)
            return False
        except BatchAbort as exc:
            recorder.settle()
            self._abort(exc)
            return False
        return True

    def _leave(self, exc: TooManyConnections) -> None:
        """The server will not take this connection: its messages go back now, for the connections it took."""
        d = self.dispatcher
        now = d.clock()
        unsent = [row for row in self.rows if row.id not in _done(self.report)]
        why = f"left for another connection: {log_line(exc)}"
        with store.write(d.engine) as conn:
            d._hand_back(conn, [row.id for row in unsent], now, "", now, why)
        with _LEARN:
            if d.connections > 1:
                d.connections -= 1
                log.warning("%s; sending on %d connection(s) from now on", log_line(exc), d.connections)

    def _judge(self, rows: list[Claimed]) -> None:
        self.judged_at = self.dispatcher.clock()
        kept = self.dispatcher.screen_claimed(rows, self.judged_at)
        self.refused |= {row.id for row in rows} - {row.id for row in kept}

    def _allowed(self, index: int, recorder: _Recorder) -> bool:
        """Whether the message at ``index`` may go; the rest is judged again once the verdict is old."""
        fresh = timedelta(seconds=GATE_FRESH_SECONDS)
        if self.judged_at is None or self.dispatcher.clock() - self.judged_at > fresh:
            recorder.settle()  # the recorder's writes first: one writer at a time on SQLite
            self._judge(self.rows[index:])
        return self.rows[index].id not in self.refused

    def _abort(self, exc: BatchAbort) -> None:
        """Nothing can be sent now: the unsent go back to the queue with the reason."""
        d = self.dispatcher
        now = d.clock()
        unsent = [row for row in self.rows if row.id not in _done(self.report)]
        reason = log_line(exc)
        d._release(unsent, now, reason, now + timedelta(seconds=d.settings.retry_base_seconds))
        self.report.aborted = reason
        log.error("sending stopped, %d message(s) left queued: %s", len(unsent), reason)


_LEARN = threading.Lock()  # connections that learn the server's limit, one at a time


@functools.cache
def _finish_statement(accepted: bool, columns: tuple[str, ...]) -> Update:
    """The outcome update, built once per shape: it runs for every message sent."""
    worker: BindParameter[str] = bindparam("worker")
    mine = and_(messages.c.status == SENDING, messages.c.claimed_by == worker)
    released = and_(messages.c.status == PENDING, messages.c.claimed_by.is_(None))
    allowed = or_(mine, released) if accepted else mine
    return (
        update(messages)
        .where(messages.c.id == bindparam("message"), allowed)
        .values({column: bindparam(f"new_{column}") for column in columns})
    )


@functools.cache
def _prepared(dialect: Dialect, accepted: bool, columns: tuple[str, ...]) -> tuple[store.Prepared, ...]:
    """The outcome's update and its step in the trail, compiled once per shape and database.

    On PostgreSQL they are one statement, the step added only if the update
    applied, so that the transaction goes to the server in one round trip.
    """
    update_outcome = _finish_statement(accepted, columns)
    if dialect.name == "postgresql":
        done = update_outcome.returning(messages.c.id).cte("done")
        step = select(done.c.id, *(bindparam(name, type_=message_events.c[name].type) for name in STEP))
        both = message_events.insert().from_select(["message_id", *STEP], step)
        return (store.Prepared(both, dialect),)
    add_step = store.Prepared(message_events.insert(), dialect, ["message_id", *STEP])
    return store.Prepared(update_outcome, dialect), add_step


STEP = ("at", "action", "detail")  # a step in the trail, besides its message


def _is_digest(row: Claimed) -> bool:
    return bool(row.kind == DIGEST)


def _describe(exc: BaseException) -> str:
    return log_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _rendered() -> Exists:
    """The message has a body to send (not a template error's empty one)."""
    return exists().where(message_bodies.c.message_id == messages.c.id, message_bodies.c.html != "")


def _refuse_purged(conn: Connection, ids: list[int]) -> None:
    """``OutreachError`` naming the first of ``ids`` whose body the retention setting removed."""
    from outreach.errors import OutreachError  # here: only a retry by id needs them
    from outreach.retention import cannot_send

    purged = conn.execute(
        select(messages.c.id, messages.c.body_removed_at)
        .where(messages.c.id.in_(ids), messages.c.body_removed_at.is_not(None))
        .order_by(messages.c.id)
    ).first()
    if purged is not None:
        raise OutreachError(cannot_send(purged.id, purged.body_removed_at))


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

    # A body removed under the retention setting is gone: such a message is never sent again.
    selected = (messages.c.status == FAILED) & messages.c.body_removed_at.is_(None)
    with store.read(engine) as conn:
        if ids is not None:
            found = dict(
                conn.execute(select(messages.c.id, messages.c.status).where(messages.c.id.in_(ids))).all()
            )
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFound(f"no message with id {', '.join(map(str, missing))}")
            _refuse_purged(conn, ids)
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
                conn.execute(select(messages.c.id).where(messages.c.id.in_(chunk), selected)).scalars()
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
