"""The service: planner and dispatcher on a ``schedule`` loop until told to stop.

``schedule`` does not catch exceptions, drifts, and never catches up, so:
every job is wrapped (a raising job is logged and simply runs again next
tick), the loop sleeps with ``Event.wait`` (a signal wakes it at once), and
all state lives in the database, so a restart loses nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import schedule
from sqlalchemy import Engine

from outreach import status, store
from outreach.backends import Backend, get_backend
from outreach.dispatcher import Clock, SendReport, send_due, worker_name
from outreach.errors import OutreachError
from outreach.models import utcnow
from outreach.planner import PlanReport, plan
from outreach.renderer import Renderer
from outreach.rules import Rule, load_rules
from outreach.settings import Settings

log = logging.getLogger(__name__)
MAX_SLEEP = 60.0


def make_clock(now: datetime | None = None) -> Clock:
    """The real clock, or one that starts at ``now`` and runs on from there (replays)."""
    if now is None:
        return utcnow
    started = time.monotonic()
    return lambda: now + timedelta(seconds=time.monotonic() - started)


def config_fingerprint(settings: Settings) -> tuple:
    """What the rule and template files look like now (names, sizes, mtimes)."""
    files = sorted(Path(settings.campaigns_dir).glob("*.toml"))
    files += sorted(p for p in Path(settings.templates_dir).rglob("*") if p.is_file())
    fingerprint = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        fingerprint.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(fingerprint)


@dataclass
class Service:
    """Everything one cycle needs, loaded and validated once."""

    settings: Settings
    engine: Engine
    rules: list[Rule]
    renderer: Renderer
    backend: Backend
    worker: str = field(default_factory=worker_name)
    fingerprint: tuple = ()

    @classmethod
    def load(
        cls, settings: Settings, engine: Engine | None = None, backend: Backend | None = None
    ) -> Service:
        engine = engine or store.connect(settings.database_url)
        store.require_current(engine)
        fingerprint = config_fingerprint(settings)
        return cls(
            settings=settings,
            engine=engine,
            rules=load_rules(settings.campaigns_dir, settings.templates_dir),
            renderer=Renderer(settings.templates_dir),
            backend=backend or get_backend(settings),
            fingerprint=fingerprint,
        )

    def plan(self, now: datetime) -> PlanReport:
        return plan(self.engine, self.settings, self.rules, self.renderer, now)

    def send(self, clock: Clock, limit: int | None = None, stop: threading.Event | None = None) -> SendReport:
        return send_due(
            self.engine, self.settings, self.backend, clock, limit=limit, stop=stop, worker=self.worker
        )

    def cycle(self, clock: Clock, stop: threading.Event | None = None) -> tuple[PlanReport, SendReport]:
        return self.plan(clock()), self.send(clock, stop=stop)

    def reload(self) -> bool:
        """Load rules and templates again; keep the current ones if the new are invalid."""
        self.fingerprint = config_fingerprint(self.settings)
        try:
            rules = load_rules(self.settings.campaigns_dir, self.settings.templates_dir)
        except OutreachError as exc:
            problems = str(exc).splitlines()
            log.error("reload refused, keeping the current rules: %s", "; ".join(problems))
            return False
        self.rules, self.renderer = rules, Renderer(self.settings.templates_dir)
        log.info("reloaded %d rule(s) and the templates", len(rules))
        return True

    def config_changed(self) -> bool:
        return config_fingerprint(self.settings) != self.fingerprint


def guarded(name: str, job: Callable[[], object], on_error: Callable[[str], None] | None = None):
    """Run a job; log what it raises instead of letting it kill the loop."""

    def run() -> None:
        try:
            job()
        except Exception as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("%s failed, will retry next tick: %s", name, message)
            log.debug("%s traceback", name, exc_info=True)
            if on_error is not None:
                try:
                    on_error(f"{name}: {message}")
                except Exception:  # the database itself may be what is failing
                    log.debug("could not record the error", exc_info=True)

    return run


class Loop:
    """The jobs of one running service, each safe to run again after a failure."""

    def __init__(self, service: Service, clock: Clock, stop: threading.Event):
        self.service, self.clock, self.stop = service, clock, stop

    def record_error(self, error: str) -> None:
        status.record_error(self.service.engine, self.service.worker, self.clock(), error)

    def plan(self) -> None:
        self.service.plan(self.clock())

    def send(self) -> None:
        report = self.service.send(self.clock, stop=self.stop)
        engine, worker, now = self.service.engine, self.service.worker, self.clock()
        if report.aborted:
            status.record_error(engine, worker, now, f"send: {report.aborted}")
        elif report.deferred and not report.sent:
            status.record_error(engine, worker, now, f"send: {len(report.deferred)} message(s) deferred")
        else:
            status.record_send_ok(engine, worker, now)

    def heartbeat(self) -> None:
        status.heartbeat(self.service.engine, self.service.worker, self.clock())

    def jobs(self) -> list[tuple[str, Callable[[], None]]]:
        return [("heartbeat", self.heartbeat), ("plan", self.plan), ("send", self.send)]


class Control:
    """What signals ask of the loop: stop (SIGTERM/SIGINT) or reload (SIGHUP); both wake it."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self._wake = threading.Event()

    def request_stop(self, *_: object) -> None:
        self.stop.set()
        self._wake.set()

    def request_reload(self, *_: object) -> None:
        self.reload.set()
        self._wake.set()

    def sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()


def run_forever(service: Service, clock: Clock, control: Control) -> None:
    """Plan and send every tick until a stop is requested.

    A reload request, or a changed rule or template file, reloads them first.
    """
    loop = Loop(service, clock, control.stop)
    scheduler = schedule.Scheduler()
    every = service.settings.tick_seconds
    for name, job in loop.jobs():
        scheduler.every(every).seconds.do(guarded(name, job, loop.record_error))
    guarded("start", lambda: status.started(service.engine, service.worker, clock()))()
    log.info("outreach running as %s: %d rule(s), tick every %ds", service.worker, len(service.rules), every)
    scheduler.run_all()
    while not control.stop.is_set():
        if control.reload.is_set() or service.config_changed():
            control.reload.clear()
            service.reload()
        scheduler.run_pending()
        idle = scheduler.idle_seconds
        control.sleep(min(max(idle if idle is not None else every, 0.05), MAX_SLEEP))
    guarded("stop", lambda: status.stopped(service.engine, service.worker, clock()))()
    log.info("outreach stopped")
