"""The dispatcher's edge cases, one at a time, in-process with a fake clock.

What the process-level tests (crash, concurrency, database outage) find by
chance, these pin down: an acceptance written after the lease ran out, a
lease lost mid-batch, an acceptance the database could not take, and a
message no email can be made of.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest

from outreach import store
from outreach.backends import get_backend
from outreach.backends.base import Backend
from outreach.daemon import Service
from outreach.dispatcher import Dispatcher, claim, release_expired, worker_name
from outreach.errors import DatabaseError
from outreach.models import FAILED, PENDING, SENDING, SENT
from tests.conftest import NOW, smtp_settings
from tests.factories import message, queue_message, trail
from tests.service_helpers import sqlite_settings


class Scripted(Backend):
    """Calls ``during(n)`` while sending the n-th message (1-based), then accepts it."""

    def __init__(self, during=None):
        self.sent: list[str] = []
        self.during = during

    def _data(self, msg):
        self.sent.append(msg.message_id)
        if self.during:
            self.during(len(self.sent))
        return "250 accepted"


def test_an_acceptance_after_the_lease_ran_out_is_still_recorded_not_resent(engine, settings):
    message_id = queue_message(engine)
    late = NOW + timedelta(seconds=settings.lease_seconds + 1)
    clock = [NOW]

    def slow_server(_n):  # the send outlives the lease; another sender releases it
        clock[0] = late
        assert release_expired(engine, late) == 1

    backend = Scripted(slow_server)
    report = Dispatcher(engine, settings, backend, lambda: clock[0], worker="slow").send_due()
    assert report.sent == [message_id]
    assert message(engine, message_id).status == SENT
    assert Dispatcher(engine, settings, backend, lambda: late + timedelta(minutes=1)).send_due().sent == []
    assert len(backend.sent) == 1
    assert [a for a, _ in trail(engine, message_id)] == ["queued", "claimed", "released", "sent"]


def test_a_message_whose_lease_was_lost_mid_batch_is_left_to_its_new_sender(engine, settings):
    first, second = queue_message(engine), queue_message(engine)
    clock = [NOW]

    def stalls_while_someone_else_takes_over(n):
        if n == 1:  # this send outlives the lease: another sender takes the whole batch over
            clock[0] = NOW + timedelta(seconds=settings.lease_seconds + 1)
            release_expired(engine, clock[0])
            assert [r.id for r in claim(engine, settings, 10, clock[0], "other")] == [first, second]

    backend = Scripted(stalls_while_someone_else_takes_over)
    report = Dispatcher(engine, settings, backend, lambda: clock[0], worker="stalled").send_due()
    assert report.sent == []  # the first is the new sender's to record now
    assert len(backend.sent) == 1, "the stalled worker sent a message it no longer held"
    for message_id in (first, second):
        row = message(engine, message_id)
        assert row.status == SENDING and row.claimed_by == "other"


def test_an_acceptance_the_database_cannot_take_is_written_when_it_is_back(tmp_path):
    cfg = sqlite_settings(tmp_path)
    engine = store.connect(cfg.database_url, busy=0.2)
    store.migrate(engine)
    ids = [queue_message(engine) for _ in range(3)]
    locker = sqlite3.connect(tmp_path / "outreach.db", isolation_level=None)

    def lock_the_database(n):
        if n == 1:
            locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock

    backend = Scripted(lock_the_database)
    dispatcher = Dispatcher(engine, cfg, backend, lambda: NOW)
    with pytest.raises(DatabaseError, match="database is locked"):
        dispatcher.send_due()
    assert message(engine, ids[0]).status == SENDING  # accepted, not yet written down
    locker.execute("ROLLBACK")

    report = dispatcher.send_due()  # the same dispatcher: it holds what the database could not take
    assert sorted(report.sent) == ids[1:]
    assert [message(engine, i).status for i in ids] == [SENT, SENT, SENT]
    assert len(backend.sent) == 3 and len(set(backend.sent)) == 3  # nothing twice
    assert [a for a, _ in trail(engine, ids[1])] == ["queued", "claimed", "released", "claimed", "sent"]
    locker.close()
    engine.dispose()


def test_the_service_keeps_what_the_database_could_not_take_from_one_send_to_the_next(tmp_path):
    """The service holds one dispatcher: an acceptance held in its backlog is written by the next pass."""
    cfg = sqlite_settings(tmp_path)
    engine = store.connect(cfg.database_url, busy=0.2)
    store.migrate(engine)
    message_id = queue_message(engine)
    locker = sqlite3.connect(tmp_path / "outreach.db", isolation_level=None)
    backend = Scripted(lambda n: locker.execute("BEGIN IMMEDIATE"))  # the write lock, while sending
    service = Service.load(cfg, engine=engine, backend=backend)
    with pytest.raises(DatabaseError, match="database is locked"):
        service.send(lambda: NOW)
    locker.execute("ROLLBACK")

    later = NOW + timedelta(seconds=cfg.lease_seconds + 1)  # the lease has run out meanwhile
    assert service.send(lambda: later).released == 0
    assert message(engine, message_id).status == SENT
    assert backend.sent == [message(engine, message_id).message_id]  # written down, not sent again
    locker.close()
    engine.dispose()


def test_a_message_no_email_can_be_made_of_fails_alone(engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    bad = queue_message(engine, recipient="dr.müller@klinik.example.de")
    good = queue_message(engine)
    report = Dispatcher(engine, cfg, get_backend(cfg), lambda: NOW).send_due()
    assert report.failed == [bad] and report.sent == [good]
    row = message(engine, bad)
    assert row.status == FAILED and "ASCII" in row.last_error, row.last_error
    assert len(smtp_server.received) == 1


def test_an_unexpected_backend_error_defers_that_message_and_the_batch_goes_on(engine, settings):
    first, second = queue_message(engine), queue_message(engine)

    class Buggy(Scripted):
        def _data(self, msg):
            if not self.sent:
                self.sent.append("boom")
                raise RuntimeError("unexpected reply\nover two lines")
            return super()._data(msg)

    report = Dispatcher(engine, settings, Buggy(), lambda: NOW).send_due()
    assert report.deferred == [first] and report.sent == [second]
    row = message(engine, first)
    assert row.status == PENDING and row.attempts == 1
    assert row.last_error == "RuntimeError: unexpected reply | over two lines"


def test_worker_names_are_unique_per_process_start():
    assert worker_name() != worker_name()
