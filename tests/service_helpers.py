"""Helpers for the reliability tests: a queue filled in bulk, and the service as a real process.

The service under test is always ``python -m outreach …`` in a subprocess
with an ``OUTREACH_*`` environment, exactly as systemd would start it; the
SMTP server and the database are real too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from outreach import store
from outreach.models import message_events, messages
from outreach.outbox import insert_messages, trail_many
from outreach.settings import Settings
from tests.conftest import NOW, ROOT, settings_env
from tests.factories import message_row


def queue_many(engine, count: int, **overrides) -> dict[str, str]:
    """Queue ``count`` pending messages in one transaction; returns Message-ID → recipient."""
    batch = uuid.uuid4().hex[:8]
    rows = [
        message_row(
            dedupe_key=f"bulk:{batch}:{n}",
            recipient=f"dr{n}.{batch}@clinic.example.org",
            recipient_name=f"Dr Bulk {n}, MD",
            **overrides,
        )
        for n in range(count)
    ]
    with store.write(engine) as conn:
        ids = insert_messages(conn, rows)
        trail_many(conn, NOW, [(i, "queued", "") for i in ids])
    return {row["message_id"]: row["recipient"] for row in rows}


def status_counts(engine) -> dict[str, int]:
    with store.read(engine) as conn:
        return dict(conn.execute(select(messages.c.status, func.count()).group_by(messages.c.status)).all())


def sent_trail_counts(engine) -> dict[str, int]:
    """Message-ID → number of ``sent`` entries in its trail."""
    with store.read(engine) as conn:
        rows = conn.execute(
            select(messages.c.message_id, func.count(message_events.c.id))
            .select_from(messages.join(message_events, message_events.c.message_id == messages.c.id))
            .where(message_events.c.action == "sent")
            .group_by(messages.c.message_id)
        ).all()
    return dict(rows)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll until ``predicate()`` is truthy; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def service_env(settings: Settings, **extra: object) -> dict[str, str]:
    """This machine's environment without OUTREACH_*, plus the service's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    env.update(settings_env(settings))
    env.update({f"OUTREACH_{key.upper()}": str(value) for key, value in extra.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Daemon:
    """``python -m outreach ARGS`` in its own process; stderr (the log) goes to a file."""

    def __init__(self, env: dict[str, str], folder: Path, *args: str, name: str = "daemon"):
        self.stderr_path = folder / f"{name}.stderr"
        self.stdout_path = folder / f"{name}.stdout"
        self._stderr = self.stderr_path.open("ab")
        self._stdout = self.stdout_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "outreach", *(args or ("run",))],
            env=env,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def output(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, signum: int) -> None:
        if self.alive:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is cleaned up."""
        self.signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._close()

    def wait(self, timeout: float = 30) -> int:
        """Wait for a command that ends by itself; returns its exit code."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._close()

    def ensure_dead(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        self._stderr.close()
        self._stdout.close()


def sqlite_settings(tmp_path: Path, **changes) -> Settings:
    """The suite's usual settings on a SQLite file (for tests that are about one engine)."""
    from tests.conftest import ROOT

    values = {
        "database_url": f"sqlite:///{tmp_path / 'outreach.db'}",
        "outbox_dir": tmp_path / "outbox",
        "campaigns_dir": ROOT / "outreach" / "campaigns",
        "templates_dir": ROOT / "outreach" / "templates" / "email",
        "timezone": "America/New_York",
        "from_addr": "updates@rehab.example.org",
        "practice_name": "Summit Post-Rehab",
        "sender_name": "Alex Morgan",
        "sender_credentials": "MS, ACSM-CEP",
    }
    values.update(changes)
    return Settings(**values)


def received_by_recipient(server) -> dict[str, list[str]]:
    """Recipient → the Message-IDs it received, in order."""
    found: dict[str, list[str]] = {}
    with server.handler.lock:
        copies = list(server.received)
    for item in copies:
        for rcpt in item.rcpt_tos:
            found.setdefault(rcpt, []).append(item.message_id)
    return found


def json_from_module(module: str, mode: str, env: dict[str, str]) -> dict:
    """``python -m MODULE MODE NOW`` in a fresh process (one thread: a plan may fork there); its JSON line."""
    done = subprocess.run(
        [sys.executable, "-m", module, mode, NOW.isoformat()],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
