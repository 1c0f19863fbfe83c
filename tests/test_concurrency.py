"""Several services on one queue: every message leaves exactly once.

Three real ``outreach run`` processes drain 1,000 messages from one SQLite
file (claims serialised by ``BEGIN IMMEDIATE``) and from one PostgreSQL
database (``SELECT … FOR UPDATE SKIP LOCKED``). Two planners running at once
queue each dedupe key once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from outreach import store
from outreach.demo import load_demo
from outreach.models import SENT, messages, utcnow
from tests.conftest import NOW, smtp_settings
from tests.service_helpers import (
    Daemon,
    queue_many,
    sent_trail_counts,
    service_env,
    status_counts,
    wait_until,
)

MESSAGES = 1000
SERVICES = 3


@pytest.mark.slow
@pytest.mark.parametrize("connections", [1, 4])
def test_three_services_on_one_queue_send_each_message_exactly_once(
    settings, engine, smtp_server, tmp_path, connections
):
    cfg = smtp_settings(settings, smtp_server)
    queued = queue_many(engine, MESSAGES, next_attempt_at=utcnow() - timedelta(minutes=1))
    smtp_server.handler.delay = 0.002  # enough for the three to overlap
    env = service_env(
        cfg,
        tick_seconds=1,
        lease_seconds=60,
        batch_size=20,
        log_level="WARNING",
        smtp_connections=connections,
    )
    started = time.monotonic()
    daemons = [Daemon(env, tmp_path, name=f"service{n}") for n in range(SERVICES)]
    try:
        wait_until(lambda: status_counts(engine) == {SENT: MESSAGES}, 120, "the queue to drain")
    finally:
        codes = [d.stop() for d in daemons]
    elapsed = time.monotonic() - started
    assert codes == [0] * SERVICES, [d.log() for d in daemons]

    received = smtp_server.handler.count_by_message_id()
    assert set(received) == set(queued)
    assert set(received.values()) == {1}, Counter(received.values())
    trail = sent_trail_counts(engine)
    assert set(trail) == set(queued) and set(trail.values()) == {1}
    with store.read(engine) as conn:
        senders = Counter(conn.execute(select(messages.c.claimed_by)).scalars())
    print(
        f"\nconcurrency ({engine.dialect.name}): {MESSAGES} messages in {elapsed:.1f}s, per sender {dict(senders)}"
    )
    assert len(senders) >= 2, f"one service did all the work: {senders}"
    for daemon in daemons:
        assert "Traceback" not in daemon.log()


@pytest.mark.slow
def test_two_planners_at_once_queue_each_email_once(settings, engine, tmp_path):
    load_demo(engine, settings, tmp_path / "demo-csv", NOW)
    env = service_env(settings)
    command = [sys.executable, "-m", "outreach", "plan", "--now", NOW.isoformat()]
    planners = [
        subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in planners]
    assert [p.returncode for p in planners] == [0, 0], results
    with store.read(engine) as conn:
        keys = Counter(conn.execute(select(messages.c.dedupe_key)).scalars())
        total = conn.execute(select(func.count()).select_from(messages)).scalar()
    assert keys and set(keys.values()) == {1} and total == len(keys)
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.startswith("queued 0,"), again.stdout + again.stderr
