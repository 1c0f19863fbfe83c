"""A misbehaving SMTP server: 4xx, 5xx, dropped connections, stalls — nothing lost or doubled.

The server below speaks just enough SMTP over a real socket and, by a seeded
random draw per transaction, answers 421, 451, 452, 550 or 554 at MAIL, RCPT
or the end of DATA, drops the connection in the middle of DATA, or stalls
past the client's timeout. It records a message only when it answers 250
to the end of DATA, so a stall never accepts: every copy it keeps is one the
client was told about. 1,000 messages are driven through ``Dispatcher.send_due`` with a
fake clock that jumps to the next attempt time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from outreach import store
from outreach.backends import get_backend
from outreach.dispatcher import Dispatcher, backoff
from outreach.models import FAILED, PENDING, SENT, message_events, messages
from tests.conftest import NOW
from tests.service_helpers import queue_many, status_counts
from tests.smtp_server import free_port

MESSAGES = 1000
TIMEOUT = 0.5  # the client's; a stall lasts longer than this
STALL = 1.0

# (weight, fault): None is a clean delivery.
FAULTS = [
    (70.0, None),
    (3.0, ("mail", "421 4.7.0 Too many connections, closing")),
    (4.0, ("rcpt", "451 4.3.0 Local error, try again")),
    (4.0, ("rcpt", "452 4.2.2 Mailbox full")),
    (4.0, ("rcpt", "550 5.1.1 No such user here")),
    (3.0, ("data", "554 5.7.1 Message refused by policy")),
    (3.0, ("data", "451 4.7.1 Greylisted, come back later")),
    (4.0, ("drop", "mid-data")),
    (2.0, ("drop", "after-data")),
    (0.4, ("stall", "data")),
    (0.2, ("stall", "rcpt")),
]


@dataclass
class FaultyServer:
    """An SMTP server in a thread whose replies are drawn from ``FAULTS`` with a fixed seed."""

    seed: int
    port: int = field(default_factory=free_port)
    accepted: Counter = field(default_factory=Counter)  # Message-ID -> copies accepted
    replies: Counter = field(default_factory=Counter)  # every fault reply sent
    stalls: int = 0

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> FaultyServer:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.session, "127.0.0.1", self.port), self.loop
        )
        self.server = future.result(10)
        return self

    def stop(self) -> None:
        async def close():
            self.server.close()
            sessions = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in sessions:  # a stall still sleeping, say
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def draw(self):
        weights, faults = zip(*FAULTS, strict=True)
        return self.rng.choices(faults, weights)[0]

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def converse(self, reader, writer) -> None:
        def say(line: str):
            writer.write(line.encode() + b"\r\n")
            return writer.drain()

        await say("220 faults.test ESMTP")
        fault = None
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                await say("250-faults.test\r\n250 8BITMIME")
            elif verb == b"MAIL":
                fault = self.draw()
                if not await self.fault_at("mail", fault, say):
                    return
            elif verb == b"RCPT":
                if not await self.fault_at("rcpt", fault, say):
                    return
            elif verb == b"DATA":
                await say("354 End data with <CR><LF>.<CR><LF>")
                if not await self.receive(reader, writer, fault, say):
                    return
                fault = None
            elif verb == b"RSET":
                fault = None
                await say("250 2.0.0 OK")
            elif verb == b"QUIT":
                await say("221 2.0.0 Bye")
                return
            else:
                await say("250 2.0.0 OK")

    async def fault_at(self, stage: str, fault, say) -> bool:
        """Answer this command; False when the connection is to end."""
        if fault is not None and fault[0] == "stall" and fault[1] == stage:
            self.stalls += 1
            await asyncio.sleep(STALL)  # the client has given up by now
            return False
        if fault is not None and fault[0] == stage:
            self.replies[fault[1]] += 1
            await say(fault[1])
            return not fault[1].startswith("421")
        await say("250 2.1.0 OK")
        return True

    async def receive(self, reader, writer, fault, say) -> bool:
        lines = []
        while True:
            line = await reader.readline()
            if not line:
                return False
            if fault == ("drop", "mid-data") and len(lines) == 5:
                writer.transport.abort()  # in the middle of the message
                return False
            if line == b".\r\n":
                break
            lines.append(line)
        if fault is not None and fault[0] == "drop":
            writer.transport.abort()  # after the message, before any answer
            return False
        if fault == ("stall", "data"):
            self.stalls += 1
            await asyncio.sleep(STALL)
            return False  # never accepted
        if fault is not None and fault[0] == "data":
            self.replies[fault[1]] += 1
            await say(fault[1])
            return True
        message_id = next(
            (ln.split(b":", 1)[1].strip().decode() for ln in lines if ln.lower().startswith(b"message-id:")),
            "",
        )
        self.accepted[message_id] += 1
        await say(f"250 2.0.0 OK queued as {len(self.accepted)}")
        return True


@pytest.mark.slow
@pytest.mark.parametrize("connections", [1, 4])
def test_faulty_server_every_message_ends_sent_or_failed_never_lost_or_doubled(engine, settings, connections):
    server = FaultyServer(seed=20261125).start()
    try:
        cfg = settings.with_(
            email_backend="smtp",
            smtp_host="127.0.0.1",
            smtp_port=server.port,
            smtp_security="none",
            smtp_timeout=TIMEOUT,
            batch_size=100,
            smtp_connections=connections,
        )
        queued = queue_many(engine, MESSAGES)
        started = time.monotonic()
        delays, rounds = drive(engine, cfg)
        elapsed = time.monotonic() - started
    finally:
        server.stop()

    counts = status_counts(engine)
    assert set(counts) <= {SENT, FAILED} and sum(counts.values()) == MESSAGES, counts
    # Nothing doubled, nothing lost: every message the server kept is a sent one, kept once.
    assert set(server.accepted.values()) <= {1}
    with store.read(engine) as conn:
        rows = conn.execute(select(messages)).all()
        deferrals = dict(
            conn.execute(
                select(message_events.c.message_id, func.count())
                .where(message_events.c.action == "deferred")
                .group_by(message_events.c.message_id)
            ).all()
        )
    sent = {r.message_id for r in rows if r.status == SENT}
    assert set(server.accepted) == sent
    for row in rows:
        if row.status == FAILED:  # refused for good: the server's own words are kept
            assert row.smtp_response in server.replies and row.smtp_response[0] == "5", row
            assert row.smtp_response in row.last_error
    retried = [r for r in rows if deferrals.get(r.id) and r.status == SENT]
    assert len(retried) > 100, "the faults did not happen often enough to test retries"
    # Each retry waited twice as long as the one before: base, 2 x base, 4 x base …
    assert delays and all(delay == backoff(cfg, attempts) for attempts, delay in delays)
    assert {attempts for attempts, _ in delays} >= {1, 2, 3}
    assert backoff(cfg, 2) == 2 * backoff(cfg, 1) and backoff(cfg, 3) == 2 * backoff(cfg, 2)
    assert server.stalls >= 1 and len(server.replies) >= 6
    print(
        f"\nsmtp faults ({engine.dialect.name}, {connections} connection(s)): {MESSAGES} messages, {counts}, {len(retried)} delivered "
        f"after a retry, {server.stalls} stall(s), {rounds} passes, {elapsed:.1f}s"
    )
    assert set(queued) == {r.message_id for r in rows}


def drive(engine, cfg) -> tuple[list[tuple[int, timedelta]], int]:
    """``Dispatcher.send_due`` until nothing is pending, the clock jumping to each next attempt.

    Returns (attempts, delay before the next try) for every deferral, and the
    number of passes.
    """
    backend = get_backend(cfg)
    now, delays, rounds = NOW, [], 0
    while True:
        rounds += 1
        assert rounds < 200, "the queue never drained"
        report = Dispatcher(engine, cfg, backend, lambda now=now: now).send_due()
        if report.deferred:
            with store.read(engine) as conn:
                rows = conn.execute(
                    select(messages.c.attempts, messages.c.next_attempt_at).where(
                        messages.c.id.in_(report.deferred)
                    )
                ).all()
            delays += [(r.attempts, r.next_attempt_at - now) for r in rows]
        with store.read(engine) as conn:
            nxt = conn.execute(
                select(func.min(messages.c.next_attempt_at)).where(messages.c.status == PENDING)
            ).scalar()
        if nxt is None:
            return delays, rounds
        now = max(now, nxt)
