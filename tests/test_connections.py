"""Several SMTP connections at once (OUTREACH_SMTP_CONNECTIONS), the server's limit, and a rate limit."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from outreach import store
from outreach.backends import get_backend
from outreach.dispatcher import Dispatcher, Pace
from outreach.models import FAILED, PENDING, SENT, messages
from outreach.settings import Settings, SettingsError
from tests.conftest import NOW, smtp_settings
from tests.factories import trail
from tests.service_helpers import queue_many, sent_trail_counts, status_counts


def dispatcher(settings: Settings, engine, server, **changes) -> Dispatcher:
    cfg = smtp_settings(settings, server, **changes)
    return Dispatcher(engine, cfg, get_backend(cfg), lambda: NOW)


def test_four_connections_send_every_message_once_on_four_connections_at_once(engine, settings, smtp_server):
    queued = queue_many(engine, 120)
    smtp_server.handler.delay = 0.01  # each connection busy long enough for the others to open
    report = dispatcher(settings, engine, smtp_server, smtp_connections=4, batch_size=15).send_due()

    assert len(report.sent) == 120 and report.failed == [] and report.aborted is None
    received = smtp_server.handler.count_by_message_id()
    assert set(received) == set(queued) and set(received.values()) == {1}
    assert set(sent_trail_counts(engine).values()) == {1}
    assert smtp_server.handler.peak == 4


def test_one_connection_is_one_connection_at_a_time(engine, settings, smtp_server):
    queue_many(engine, 30)
    smtp_server.handler.delay = 0.005
    report = dispatcher(settings, engine, smtp_server, batch_size=10).send_due()
    assert len(report.sent) == 30 and smtp_server.handler.peak == 1


def test_a_server_that_takes_two_connections_gets_two_and_no_mail_fails(engine, settings, smtp_server):
    queued = queue_many(engine, 80)
    smtp_server.handler.max_connections = 2
    smtp_server.handler.delay = 0.01
    sender = dispatcher(settings, engine, smtp_server, smtp_connections=4, batch_size=10)
    report = sender.send_due()

    assert report.aborted is None and report.failed == [] and report.deferred == []
    assert status_counts(engine) == {SENT: 80}
    assert set(smtp_server.handler.count_by_message_id().values()) == {1}
    assert set(smtp_server.handler.count_by_message_id()) == set(queued)
    assert smtp_server.handler.refused_connections >= 1 and smtp_server.handler.peak == 2
    assert sender.connections == 2  # learned: the next pass opens two
    with store.read(engine) as conn:
        ids = list(conn.execute(select(messages.c.id)).scalars())
    handed_back = [i for i in ids if any("left for another connection" in d for _, d in trail(engine, i))]
    assert handed_back, "the refused connections' messages were handed to the others"
    with store.read(engine) as conn:
        assert set(conn.execute(select(messages.c.attempts)).scalars()) == {1}  # no attempt was counted


def test_a_server_that_takes_no_connection_leaves_every_message_queued(engine, settings, smtp_server):
    queue_many(engine, 20)
    smtp_server.handler.max_connections = -1  # every greeting is 421
    report = dispatcher(settings, engine, smtp_server, smtp_connections=4, batch_size=5).send_due()

    assert report.sent == [] and report.failed == []
    assert report.aborted is not None and "421" in report.aborted
    assert status_counts(engine) == {PENDING: 20}
    with store.read(engine) as conn:
        assert set(conn.execute(select(messages.c.attempts)).scalars()) == {0}


def test_a_refused_recipient_on_one_connection_holds_nothing_else(engine, settings, smtp_server):
    queued = queue_many(engine, 40)
    refused = sorted(queued.values())[7]
    smtp_server.handler.refuse_rcpt[refused] = "550 5.1.1 No such mailbox"
    report = dispatcher(settings, engine, smtp_server, smtp_connections=4, batch_size=5).send_due()

    assert len(report.sent) == 39 and len(report.failed) == 1
    assert status_counts(engine) == {SENT: 39, FAILED: 1}
    assert set(smtp_server.handler.count_by_message_id().values()) == {1}


def test_a_limit_is_kept_across_connections(engine, settings, smtp_server):
    queue_many(engine, 50)
    report = dispatcher(settings, engine, smtp_server, smtp_connections=4, batch_size=4).send_due(limit=13)
    assert len(report.sent) == 13
    assert status_counts(engine) == {SENT: 13, PENDING: 37}


def test_a_rate_limit_spaces_the_emails_across_connections(engine, settings, smtp_server):
    """A minimum time, not a speed: a slow machine only makes it longer."""
    queue_many(engine, 12)
    started = time.monotonic()
    report = dispatcher(
        settings, engine, smtp_server, smtp_connections=3, smtp_max_per_minute=600
    ).send_due()  # one every 0.1 s
    elapsed = time.monotonic() - started
    assert len(report.sent) == 12
    assert elapsed >= 11 * 0.1 * 0.95, elapsed


def test_pace_hands_out_evenly_spaced_turns_and_stops_on_request():
    pace = Pace(per_minute=1200)  # 0.05 s apart
    started = time.monotonic()
    turns = []
    for _ in range(5):
        assert pace.wait(None)
        turns.append(time.monotonic() - started)
    assert turns[-1] >= 4 * 0.05 * 0.95
    assert Pace(None).wait(None) and Pace(None).interval == 0

    slow = Pace(per_minute=1)  # a minute apart: the second waits, and a stop ends the wait at once
    assert slow.wait(None)
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    began = time.monotonic()
    assert slow.wait(stop) is False
    assert time.monotonic() - began < 30


def test_stopped_while_waiting_for_its_turn_the_message_stays_queued(engine, settings, smtp_server):
    queue_many(engine, 3)
    stop = threading.Event()
    sender = dispatcher(settings, engine, smtp_server, smtp_max_per_minute=1)  # a minute between emails
    threading.Timer(0.3, stop.set).start()
    report = sender.send_due(stop=stop)
    assert len(report.sent) == 1
    assert status_counts(engine) == {SENT: 1, PENDING: 2}
    with store.read(engine) as conn:
        assert Counter(conn.execute(select(messages.c.attempts)).scalars()) == {1: 1, 0: 2}


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("OUTREACH_SMTP_CONNECTIONS", "0", "OUTREACH_SMTP_CONNECTIONS: 0 is out of range (between 1 and 32)"),
        ("OUTREACH_SMTP_CONNECTIONS", "four", "OUTREACH_SMTP_CONNECTIONS: 'four' is not a whole number"),
        ("OUTREACH_SMTP_MAX_PER_MINUTE", "0", "OUTREACH_SMTP_MAX_PER_MINUTE: 0 is out of range"),
        ("OUTREACH_SMTP_MAX_PER_MINUTE", "1.5", "OUTREACH_SMTP_MAX_PER_MINUTE: '1.5' is not a whole number"),
    ],
)
def test_bad_connection_settings_are_one_line_naming_the_key(key, value, problem):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({key: value})
    assert str(raised.value).startswith(problem)


def test_the_settings_are_read():
    read = Settings.from_env({"OUTREACH_SMTP_CONNECTIONS": "4", "OUTREACH_SMTP_MAX_PER_MINUTE": "300"})
    assert (read.smtp_connections, read.smtp_max_per_minute) == (4, 300)
    assert (Settings().smtp_connections, Settings().smtp_max_per_minute) == (1, None)
