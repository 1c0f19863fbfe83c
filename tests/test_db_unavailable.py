"""The database goes away under a running service: it says so, keeps running, loses nothing.

(a) Another process holds the SQLite write lock for longer than the busy
timeout (``OUTREACH_DB_BUSY_SECONDS``); (b) the PostgreSQL server is stopped
mid-run and started again. Either way the service logs the problem, stays
up, and once the database is back every queued message goes out exactly
once: an acceptance the service could not write down is kept until it can.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from outreach import store
from outreach.models import SENT, utcnow
from tests.conftest import ROOT, smtp_settings
from tests.service_helpers import (
    Daemon,
    queue_many,
    sent_trail_counts,
    service_env,
    sqlite_settings,
    status_counts,
    wait_until,
)

MESSAGES = 150
OUTAGE = 3.0  # seconds: several ticks, several busy timeouts

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")  # the write lock, until told to let go
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def assert_each_sent_exactly_once(engine, smtp_server, queued: dict[str, str]) -> None:
    received = smtp_server.handler.count_by_message_id()
    assert set(received) == set(queued)
    assert set(received.values()) == {1}, Counter(received.values())
    assert set(sent_trail_counts(engine).values()) == {1}


@pytest.mark.slow
def test_a_sqlite_lock_held_too_long_is_logged_and_sending_resumes(tmp_path, smtp_server):
    cfg = smtp_settings(sqlite_settings(tmp_path), smtp_server)
    engine = store.connect(cfg.database_url)
    store.migrate(engine)
    queued = queue_many(engine, MESSAGES, next_attempt_at=utcnow() - timedelta(minutes=1))
    smtp_server.handler.delay = 0.02
    env = service_env(cfg, tick_seconds=1, lease_seconds=60, batch_size=20, db_busy_seconds=0.5)
    daemon = Daemon(env, tmp_path)
    try:
        wait_until(lambda: len(smtp_server.received) >= 20, 30, "sending to start")
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(tmp_path / "outreach.db")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout.readline().strip() == "locked"
        at_lock = len(smtp_server.received)
        time.sleep(OUTAGE)
        assert daemon.alive, daemon.log()
        assert "database is locked" in daemon.log()
        during = len(smtp_server.received) - at_lock
        locker.communicate("\n", timeout=10)
        wait_until(lambda: status_counts(engine) == {SENT: MESSAGES}, 60, "sending to resume")
    finally:
        code = daemon.stop()
    log = daemon.log()
    assert code == 0, log
    assert_each_sent_exactly_once(engine, smtp_server, queued)
    errors = [line for line in log.splitlines() if "database is locked" in line]
    assert all(line.startswith("ERROR ") for line in errors), errors
    assert "Traceback" not in log
    assert during <= 2, "messages went out although none could be recorded"
    engine.dispose()


# --- PostgreSQL stopped mid-run ---------------------------------------------------------------

PG_CTL = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))


def pg_ctl(folder: Path, *args: str) -> None:
    command = [PG_CTL[-1], "-D", str(folder / "data"), *args]
    if os.geteuid() == 0:  # the cluster belongs to the postgres user (see .ci/postgres.sh)
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@pytest.fixture
def own_postgres():
    """A second throwaway server, so stopping it disturbs no other test."""
    if not PG_CTL:
        pytest.skip("PostgreSQL binaries are not installed")
    started = subprocess.run(
        [str(ROOT / ".ci" / "postgres.sh"), "start"], capture_output=True, text=True, timeout=120, check=False
    )
    assert started.returncode == 0, f"could not start a PostgreSQL server: {started.stderr.strip()[-300:]}"
    url, folder = started.stdout.split()
    yield url, Path(folder)
    subprocess.run([str(ROOT / ".ci" / "postgres.sh"), "stop", folder], capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.postgres
def test_postgresql_stopped_mid_run_is_logged_and_sending_resumes(own_postgres, tmp_path, smtp_server):
    url, folder = own_postgres
    port = make_url(url).port
    cfg = smtp_settings(sqlite_settings(tmp_path, database_url=url), smtp_server)
    engine = store.connect(url)
    store.migrate(engine)
    queued = queue_many(engine, MESSAGES, next_attempt_at=utcnow() - timedelta(minutes=1))
    engine.dispose()
    smtp_server.handler.delay = 0.02
    daemon = Daemon(service_env(cfg, tick_seconds=1, lease_seconds=60, batch_size=20), tmp_path)
    try:
        wait_until(lambda: len(smtp_server.received) >= 20, 30, "sending to start")
        pg_ctl(folder, "-m", "fast", "-w", "stop")
        at_stop = len(smtp_server.received)
        time.sleep(OUTAGE)
        assert daemon.alive, daemon.log()
        during = len(smtp_server.received) - at_stop
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        pg_ctl(folder, "-l", str(folder / "log"), "-w", "-t", "60", "-o", options, "start")
        engine = store.connect(url)
        wait_until(lambda: status_counts(engine) == {SENT: MESSAGES}, 60, "sending to resume")
    finally:
        code = daemon.stop()
    log = daemon.log()
    assert code == 0, log
    outage = [line for line in log.splitlines() if line.startswith("ERROR ") and "database" in line]
    assert outage, log
    assert "Traceback" not in log
    assert during <= 2, "messages went out although none could be recorded"
    assert_each_sent_exactly_once(engine, smtp_server, queued)
    engine.dispose()
