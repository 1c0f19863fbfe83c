"""Leases, stopping mid-batch and ordering: the dispatcher's own promises."""

from __future__ import annotations

import email
import email.policy
import logging
import threading
from datetime import timedelta

from sqlalchemy import event

from outreach.backends.base import Backend
from outreach.dispatcher import Dispatcher, claim
from outreach.models import PENDING, SENDING, SENT
from tests.conftest import NOW
from tests.factories import message, queue_message, trail


class Recorder(Backend):
    """A backend that keeps what it was given (the dispatcher's view, no network)."""

    def __init__(self, on_send=None):
        self.sent = []
        self.on_send = on_send

    def _data(self, msg):
        self.sent.append(email.message_from_bytes(msg.data, policy=email.policy.default))
        if self.on_send:
            self.on_send(len(self.sent))
        return "250 recorded"


def test_a_crashed_claim_goes_back_to_the_queue_with_the_same_message_id(engine, settings):
    message_id = queue_message(engine)
    original = message(engine, message_id).message_id
    assert len(claim(engine, settings, 10, NOW, "worker-that-dies")) == 1
    assert message(engine, message_id).status == SENDING

    backend = Recorder()
    before_expiry = Dispatcher(engine, settings, backend, lambda: NOW + timedelta(seconds=10)).send_due()
    assert before_expiry.sent == [] and backend.sent == []

    after = NOW + timedelta(seconds=settings.lease_seconds + 1)
    report = Dispatcher(engine, settings, backend, lambda: after).send_due()
    assert report.released == 1 and report.sent == [message_id]
    assert backend.sent[0]["Message-ID"] == original
    assert "released" in [action for action, _ in trail(engine, message_id)]


def test_stop_finishes_the_message_in_flight_and_leaves_the_rest_queued(engine, settings):
    ids = [queue_message(engine) for _ in range(5)]
    stop = threading.Event()
    backend = Recorder(on_send=lambda n: stop.set() if n == 2 else None)
    report = Dispatcher(engine, settings, backend, lambda: NOW).send_due(stop=stop)
    assert report.sent == ids[:2]
    assert [message(engine, i).status for i in ids] == [SENT, SENT, PENDING, PENDING, PENDING]
    assert all(message(engine, i).attempts == 0 for i in ids[2:])


def test_urgent_messages_leave_first(engine, settings):
    normal = [queue_message(engine) for _ in range(3)]
    urgent = queue_message(engine, priority=10)
    backend = Recorder()
    report = Dispatcher(engine, settings, backend, lambda: NOW).send_due()
    assert report.sent[0] == urgent and sorted(report.sent[1:]) == normal
    assert backend.sent[0]["Importance"] == "high"


def test_not_before_holds_a_message_until_its_time(engine, settings):
    later = queue_message(engine, not_before=NOW + timedelta(hours=3))
    assert Dispatcher(engine, settings, Recorder(), lambda: NOW).send_due().sent == []
    three_hours_on = Dispatcher(engine, settings, Recorder(), lambda: NOW + timedelta(hours=3))
    assert three_hours_on.send_due().sent == [later]


def test_limit_caps_one_send(engine, settings):
    for _ in range(4):
        queue_message(engine)
    dispatcher = Dispatcher(engine, settings, Recorder(), lambda: NOW)
    assert len(dispatcher.send_due(limit=3).sent) == 3
    assert len(dispatcher.send_due().sent) == 1


def test_two_workers_never_claim_the_same_message(engine, settings):
    ids = {queue_message(engine) for _ in range(6)}
    first = {row.id for row in claim(engine, settings, 4, NOW, "a")}
    second = {row.id for row in claim(engine, settings, 4, NOW, "b")}
    assert first and second and not first & second
    assert first | second == ids


def test_each_email_is_handed_over_only_once_the_one_before_is_on_record(engine, settings):
    """Outcomes are written beside the sending, yet no more than one accepted message is unrecorded.

    That is what keeps a crash to at most one double per kill.
    """
    ids = [queue_message(engine) for _ in range(12)]
    by_message_id = {message(engine, i).message_id: i for i in ids}
    accepted: list[int] = []
    unrecorded_at_handover: list[int] = []

    class Checking(Backend):
        def _data(self, msg):
            unrecorded = [i for i in accepted if message(engine, i).status != SENT]
            unrecorded_at_handover.append(len(unrecorded))
            accepted.append(by_message_id[msg.message_id])
            return "250 accepted"

    report = Dispatcher(engine, settings, Checking(), lambda: NOW).send_due()
    assert sorted(report.sent) == ids
    assert unrecorded_at_handover == [0] * len(ids)
    assert {message(engine, i).status for i in ids} == {SENT}


def test_outcomes_share_one_connection_for_the_whole_batch(engine, settings):
    """Outcomes come fast: a batch of twenty takes as many connections from the pool as a batch of two."""

    def checkouts_to_send(count: int) -> int:
        [queue_message(engine) for _ in range(count)]
        taken: list[object] = []

        def checked_out(*args: object) -> None:
            taken.append(args)

        event.listen(engine, "checkout", checked_out)
        try:
            report = Dispatcher(engine, settings, Recorder(), lambda: NOW).send_due()
        finally:
            event.remove(engine, "checkout", checked_out)
        assert len(report.sent) == count
        return len(taken)

    assert checkouts_to_send(2) == checkouts_to_send(20)


def test_the_sending_thread_records_counts_and_logs_each_outcome(engine, settings, caplog):
    """No second thread: the report and the log are the sending thread's."""
    ids = [queue_message(engine) for _ in range(3)]
    caplog.set_level(logging.INFO, logger="outreach.dispatcher")
    report = Dispatcher(engine, settings, Recorder(), lambda: NOW).send_due()
    assert sorted(report.sent) == ids
    sent = [r for r in caplog.records if " sent to " in r.getMessage()]
    assert len(sent) == 3 and {r.threadName for r in sent} == {threading.current_thread().name}


class Judging(Backend):
    """Hands an email over, lets the caller work while the server judges it, then gives the verdict."""

    def __init__(self, steps: list):
        self.steps = steps

    def _data(self, msg):
        self.steps.append(("out", msg.message_id))
        self._while_waiting()
        self.steps.append(("verdict", msg.message_id))
        return "250 accepted"


def test_the_next_email_is_built_while_the_server_judges_the_one_before(engine, settings, monkeypatch):
    import outreach.dispatcher as dispatcher_module

    ids = [queue_message(engine) for _ in range(3)]
    message_ids = [message(engine, i).message_id for i in ids]
    steps: list = []
    real_build = dispatcher_module.build_email

    def build(row, *args):
        steps.append(("build", row.message_id))
        return real_build(row, *args)

    monkeypatch.setattr(dispatcher_module, "build_email", build)
    report = Dispatcher(engine, settings, Judging(steps), lambda: NOW).send_due()
    assert sorted(report.sent) == ids
    first, second, third = message_ids
    assert steps == [
        ("build", first), ("out", first), ("build", second), ("verdict", first),
        ("out", second), ("build", third), ("verdict", second),
        ("out", third), ("verdict", third),
    ]  # fmt: skip


def test_an_email_built_ahead_that_cannot_be_built_fails_alone(engine, settings, monkeypatch):
    import outreach.dispatcher as dispatcher_module

    ids = [queue_message(engine) for _ in range(3)]
    broken = message(engine, ids[1]).message_id
    real_build = dispatcher_module.build_email

    def build(row, *args):
        if row.message_id == broken:
            raise ValueError("a header no email can carry")
        return real_build(row, *args)

    monkeypatch.setattr(dispatcher_module, "build_email", build)
    report = Dispatcher(engine, settings, Judging([]), lambda: NOW).send_due()
    assert sorted(report.sent) == [ids[0], ids[2]] and report.failed == [ids[1]]
    assert (
        message(engine, ids[1]).last_error
        == "cannot build the email: ValueError: a header no email can carry"
    )
