"""``outreach web`` as a real server process over the demo practice, for the browser test.

The browser must meet the console as a practice would: ``python -m outreach
web`` in its own process (waitress, the real clock, settings from the
environment), over a database holding the demo practice after one delivery
cycle. To that the practice adds what the journey needs: one message that
failed (refused by the receiving server, through the real dispatcher) and a
staff user added with ``outreach user add``, as an administrator would. The
client whose name and note are hostile markup is imported by the importer
when the journey asks (``Practice.add_hostile_client``), after the pictures
for the README are taken, so they show the demo practice alone.
"""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path

from sqlalchemy import Engine, select

from outreach import records, store
from outreach.backends.file import FileBackend
from outreach.compose import Email
from outreach.daemon import Service, make_clock
from outreach.demo import demo_moment, load_demo
from outreach.errors import PermanentError
from outreach.importer import SPECS, import_file
from outreach.models import clients, physicians, utcnow
from outreach.review import list_messages
from outreach.settings import Settings
from tests.service_helpers import Daemon, service_env

STAFF_EMAIL = "sam.rivera@practice.example"
STAFF_PASSWORD = "a long staff password 42"
HOSTILE_REF = "C-9001"
HOSTILE_FIRST = "<script>alert(1)</script>"
HOSTILE_LAST = "<img src=x onerror=alert(2)>"
HOSTILE_NOTE = "{{ 7*7 }}"
REFUSAL = "554 5.7.1 Message rejected by the clinic's content filter"
DEMO_CLIENT = "C-1001"  # the hostile client shares this demo client's physician
REFUSED_RULE = "adverse_event_alert"  # the urgent alert: it goes on its own, so it fails on its own


@dataclass(frozen=True)
class Practice:
    """What the browser test needs to know about the running console."""

    url: str  # http://127.0.0.1:PORT, no trailing slash
    engine: Engine
    settings: Settings
    moment: datetime  # when the demo's cycle ran (UTC)
    email: str
    password: str
    failed_id: int  # the refused urgent alert
    physician_name: str  # a demo physician's name (the hostile client's physician)
    server: Daemon
    folder: Path

    def add_hostile_client(self) -> str:
        """Import the client whose name is markup (while the console runs); their ref."""
        add_hostile_client(self.engine, self.settings, self.folder, self.moment)
        return HOSTILE_REF


class RefusingBackend(FileBackend):
    """The file backend, except that the receiving server refuses the Message-IDs in ``refuse``."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        self.refuse: set[str] = set()

    def _envelope(self, msg: Email, sender: str, recipients: tuple[str, ...]) -> None:
        if msg.message_id in self.refuse:
            raise PermanentError(REFUSAL, reply=REFUSAL)


def last_open_moment(now: datetime, settings: Settings) -> datetime:
    """The latest whole hour before ``now`` when every demo physician's office is open.

    The console runs on the real clock, so the demo is dated in the recent
    past (not shifted ahead, as ``outreach demo`` does at night): what was
    sent was sent before the browser looks, and a milestone recorded "now"
    comes after it.
    """
    tz = settings.tz
    today = now.astimezone(tz).date()
    for back in range(10):
        for hour in range(23, -1, -1):
            candidate = datetime.combine(today - timedelta(days=back), clock_time(hour), tz)
            if candidate < now - timedelta(minutes=5) and demo_moment(candidate, settings) == candidate:
                return candidate.astimezone(UTC)
    raise AssertionError("no hour in the last ten days had every demo physician's office open")


def practice_with_history(engine: Engine, settings: Settings, folder: Path) -> tuple[datetime, int]:
    """The demo practice after one cycle in which the urgent alert was refused; (moment, its id)."""
    moment = last_open_moment(utcnow(), settings)
    load_demo(engine, settings, folder / "demo-csv", moment)
    backend = RefusingBackend(settings.outbox_dir)
    service = Service.load(settings, engine=engine, backend=backend)
    clock = make_clock(moment)
    service.plan(clock())
    with store.read(engine) as conn:
        queued = [row for row in list_messages(conn, limit=None) if row["rule"] == REFUSED_RULE]
    assert len(queued) == 1, f"the demo should queue one {REFUSED_RULE}, not {len(queued)}"
    backend.refuse.add(queued[0]["message_id"])
    service.send(clock)
    with store.read(engine) as conn:
        failed = list_messages(conn, status="failed", limit=None)
    assert [row["id"] for row in failed] == [queued[0]["id"]], failed
    return moment, queued[0]["id"]


def physician_of(engine: Engine, client_ref: str) -> tuple[str, str]:
    """A client's physician: (email, name)."""
    with store.read(engine) as conn:
        found = conn.execute(
            select(physicians.c.email, physicians.c.name)
            .join(clients, clients.c.physician_id == physicians.c.id)
            .where(clients.c.ref == client_ref)
        ).one()
    return found.email, found.name


def add_hostile_client(engine: Engine, settings: Settings, folder: Path, moment: datetime) -> None:
    """A client whose name is markup and whose note is a template expression, as an import brings them."""
    path = folder / "hostile-clients.csv"
    row = dict.fromkeys(SPECS["clients"].columns, "")
    local_day = moment.astimezone(settings.tz).date()
    row.update(
        ref=HOSTILE_REF,
        first_name=HOSTILE_FIRST,
        last_name=HOSTILE_LAST,
        physician_email=physician_of(engine, DEMO_CLIENT)[0],
        referral_date=(local_day - timedelta(days=3)).isoformat(),
        diagnosis=f"Left ankle sprain {HOSTILE_NOTE}",
        goals=HOSTILE_NOTE,
        consent_date=(local_day - timedelta(days=3)).isoformat(),
        status="active",
    )
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SPECS["clients"].columns)
        writer.writeheader()
        writer.writerow(row)
    import_file(engine, settings, "clients", path, moment, actor="test")
    records.add_event(
        engine,
        HOSTILE_REF,
        "initial_assessment",
        moment - timedelta(hours=1),
        moment,
        note=HOSTILE_NOTE,
        actor="test",
    )


def outreach_command(settings: Settings, *args: str, stdin: str = "") -> str:
    """``python -m outreach ARGS`` as an administrator would type it; its output (fails the test if it fails)."""
    done = subprocess.run(
        [sys.executable, "-m", "outreach", *args],
        input=stdin,
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"outreach {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done.stdout


def free_port() -> int:
    """A port nothing listens on now (the server may still lose a race for it: see ``start``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    """Whether the console answers its health check (200 and 503 both mean it is up)."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 503
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def start(settings: Settings, folder: Path, attempts: int = 3) -> tuple[Daemon, str]:
    """``outreach web`` on a free port, answering; (the process, its base URL)."""
    for attempt in range(attempts):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = Daemon(
            service_env(settings),
            folder,
            "web",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            name=f"web-{attempt}",
        )

        def ready(server: Daemon = server, url: str = url) -> bool:
            return not server.alive or answers(url)

        up = wait_until(ready, timeout=30)
        if up and server.alive:
            return server, url
        server.ensure_dead()
        log = server.log()
        if "address already in use" not in log.lower() and "in use" not in log.lower():
            raise AssertionError(f"outreach web did not start:\n{server.output()}\n{log}")
    raise AssertionError(f"outreach web found no free port in {attempts} attempts")


@contextmanager
def console_server(settings: Settings, engine: Engine, folder: Path) -> Iterator[Practice]:
    """The demo practice (with a failed message and a staff user) served by ``outreach web``."""
    moment, failed_id = practice_with_history(engine, settings, folder)
    outreach_command(settings, "user", "add", STAFF_EMAIL, "--role", "staff", stdin=f"{STAFF_PASSWORD}\n")
    server, url = start(settings, folder)
    try:
        yield Practice(
            url=url,
            engine=engine,
            settings=settings,
            moment=moment,
            email=STAFF_EMAIL,
            password=STAFF_PASSWORD,
            failed_id=failed_id,
            physician_name=physician_of(engine, DEMO_CLIENT)[1],
            server=server,
            folder=folder,
        )
    finally:
        code = server.stop(timeout=15) if server.alive else server.proc.returncode
        server.ensure_dead()
    # Reached only when the test passed: a server that crashed under it fails it too.
    assert code in (0, -15), f"outreach web exited {code}:\n{server.log()}"
