"""``outreach status`` for a monitor: a killed worker goes stale within seconds, not minutes.

A heartbeat older than two ticks (and at least 30 s) from a worker that did
not say it stopped is stale: listed as such, and no longer "running". Mail
whose template failed in the last days pages too, with the error.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from outreach import status, store
from outreach.models import FAILED
from tests.conftest import NOW
from tests.factories import queue_message

WORKER = "host:101:abc123"
SECOND = timedelta(seconds=1)


def health(engine, at, tick_seconds: int) -> status.Health:
    with store.read(engine) as conn:
        return status.health(conn, at, tick_seconds)


@pytest.mark.parametrize(
    ("tick", "fresh", "stale", "ago"),
    [(1, 29, 31, "31 s"), (10, 29, 31, "31 s"), (60, 119, 121, "2 min")],  # two ticks, at least 30 s
)
def test_a_worker_that_stops_beating_is_stale_after_two_ticks(engine, tick, fresh, stale, ago):
    status.started(engine, WORKER, NOW)
    alive = health(engine, NOW + fresh * SECOND, tick)
    assert alive.ok and alive.running == [WORKER] and alive.stale == []
    gone = health(engine, NOW + stale * SECOND, tick)
    assert not gone.ok and gone.running == []
    assert gone.stale == [f"{WORKER} (last heartbeat {ago} ago)"]
    assert gone.problems == [f"no heartbeat for {ago}: the service is not running"]


def test_a_stale_worker_beside_a_live_one_is_shown_but_not_a_problem(engine):
    status.started(engine, WORKER, NOW)
    status.started(engine, "host:202:def456", NOW + 40 * SECOND)
    report = health(engine, NOW + 45 * SECOND, 1)
    assert report.ok and report.running == ["host:202:def456"]
    assert report.stale == [f"{WORKER} (last heartbeat 45 s ago)"]


def test_a_worker_that_stopped_cleanly_or_long_ago_is_not_listed_as_stale(engine):
    status.started(engine, WORKER, NOW)
    status.stopped(engine, WORKER, NOW + SECOND)
    status.started(engine, "host:303:killed", NOW - timedelta(days=2))
    report = health(engine, NOW + timedelta(minutes=5), 1)
    assert report.stale == [] and not report.ok


def test_status_command_lists_the_stale_worker_and_exits_1(run_cli, engine):
    status.started(engine, WORKER, NOW)
    tick = {"OUTREACH_TICK_SECONDS": "1"}
    alive = run_cli("status", "--now", (NOW + 10 * SECOND).isoformat(), extra_env=tick)
    assert alive.exit_code == 0, alive.output
    result = run_cli("status", "--now", (NOW + 31 * SECOND).isoformat(), extra_env=tick)
    assert result.exit_code == 1
    assert re.search(r"^status: +PROBLEM$", result.stdout, re.M)
    assert re.search(r"^running: +none$", result.stdout, re.M)
    assert re.search(
        rf"^stale: +{WORKER} \(last heartbeat 31 s ago\) \(not stopped cleanly", result.stdout, re.M
    )
    assert "problem:         no heartbeat for 31 s: the service is not running" in result.stdout


def test_mail_whose_template_failed_this_week_is_a_problem_with_its_error(engine):
    status.started(engine, WORKER, NOW)
    unrendered = {"status": FAILED, "html": "", "text": "", "next_attempt_at": None}
    queue_message(engine, **unrendered, created_at=NOW - timedelta(days=8), last_error="template a: old")
    assert health(engine, NOW, 60).ok, "a failure older than a week no longer pages"
    queue_message(
        engine, **unrendered, created_at=NOW - timedelta(hours=2), last_error="template b: 'x' is undefined"
    )
    queue_message(engine, status=FAILED, attempts=8, last_error="550 no such user")  # rendered: not counted
    report = health(engine, NOW, 60)
    assert report.problems == [
        "1 message(s) could not be rendered: template b: 'x' is undefined; "
        "fix the template and run outreach retry --all-failed"
    ]
