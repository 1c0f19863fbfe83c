"""Nothing lost, nothing doubled: the service killed with SIGKILL at random moments.

A real ``outreach run`` process sends a queue of several hundred messages to
a real SMTP server and is killed (no handler runs) at least 20 times, each
time restarted. Leases bring back what a dead sender held; the Message-ID is
kept, so the only possible double is the message whose acceptance the dead
process had not yet written down: at most one per kill.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta

import pytest

from outreach import store
from outreach.models import SENT, utcnow
from tests.conftest import CRASH_SEED, smtp_settings
from tests.service_helpers import (
    Daemon,
    queue_many,
    received_by_recipient,
    sent_trail_counts,
    service_env,
    sqlite_settings,
    status_counts,
    wait_until,
)

MESSAGES = 500
KILLS = 20


@pytest.mark.slow
@pytest.mark.parametrize("connections", [1, 4])
def test_sigkill_at_random_moments_loses_nothing_and_doubles_at_most_one_per_kill(
    tmp_path, smtp_server, connections
):
    """With several connections, at most one double per connection per kill (one unrecorded each)."""
    seed = int(CRASH_SEED or random.randrange(1_000_000))
    print(f"crash seed {seed}: OUTREACH_TEST_CRASH_SEED={seed} replays these kill times")  # shown on failure
    rng = random.Random(seed)
    cfg = smtp_settings(sqlite_settings(tmp_path), smtp_server)
    engine = store.connect(cfg.database_url)
    store.migrate(engine)
    queued = queue_many(engine, MESSAGES, next_attempt_at=utcnow() - timedelta(minutes=1))
    smtp_server.handler.delay = 0.01  # about 60 messages a second: kills land mid-batch
    env = service_env(cfg, tick_seconds=1, lease_seconds=2, log_level="WARNING", smtp_connections=connections)
    started = time.monotonic()

    for kill in range(KILLS):
        before = len(smtp_server.received)
        daemon = Daemon(env, tmp_path, name=f"run{kill}")
        try:
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0, 1.0))  # anywhere, start-up included
            else:
                wait_until(
                    lambda d=daemon, b=before: len(smtp_server.received) > b or not d.alive,
                    30,
                    "the restarted service to send",
                )
                time.sleep(rng.uniform(0, 0.3))  # somewhere in the middle of a batch
            assert daemon.alive, daemon.log()
        finally:
            daemon.kill()
    assert status_counts(engine).get(SENT, 0) < MESSAGES, "the queue drained before the last kill"

    final = Daemon(env, tmp_path, name="final")
    try:
        wait_until(lambda: status_counts(engine) == {SENT: MESSAGES}, 90, "the queue to drain")
    finally:
        assert final.stop() == 0, final.log()
    elapsed = time.monotonic() - started

    received = received_by_recipient(smtp_server)
    for message_id, recipient in queued.items():
        copies = received.get(recipient, [])
        assert copies, f"{message_id} was never received"
        assert set(copies) == {message_id}, f"{recipient} got another Message-ID: {copies}"
    doubles = sum(len(copies) - 1 for copies in received.values())
    print(
        f"\ncrash ({connections} connection(s)): {KILLS} kills, {MESSAGES} messages, {doubles} double(s), "
        f"seed {seed}, {elapsed:.1f}s"
    )
    assert doubles <= KILLS * connections
    assert set(sent_trail_counts(engine).values()) == {1}
    assert len(sent_trail_counts(engine)) == MESSAGES
    engine.dispose()
