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
from dataclasses import dataclass
from datetime import datetime, timedelta

import schedule
from sqlalchemy import Engine

from outreach import store
from outreach.backends import Backend, get_backend
from outreach.dispatcher import Clock, SendReport, send_due
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


@dataclass
class Service:
    """Everything one cycle needs, loaded and validated once."""

    settings: Settings
    engine: Engine
    rules: list[Rule]
    renderer: Renderer
    backend: Backend

    @classmethod
    def load(
        cls, settings: Settings, engine: Engine | None = None, backend: Backend | None = None
    ) -> Service:
        engine = engine or store.connect(settings.database_url)
        store.require_current(engine)
        return cls(
            settings=settings,
            engine=engine,
            rules=load_rules(settings.campaigns_dir, settings.templates_dir),
            renderer=Renderer(settings.templates_dir),
            backend=backend or get_backend(settings),
        )

    def plan(self, now: datetime) -> PlanReport:
        return plan(self.engine, self.settings, self.rules, self.renderer, now)

    def send(self, clock: Clock, limit: int | None = None, stop: threading.Event | None = None) -> SendReport:
        return send_due(self.engine, self.settings, self.backend, clock, limit=limit, stop=stop)

    def cycle(self, clock: Clock, stop: threading.Event | None = None) -> tuple[PlanReport, SendReport]:
        return self.plan(clock()), self.send(clock, stop=stop)


def guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
    """Run a job; log what it raises instead of letting it kill the loop."""

    def run() -> None:
        try:
            job()
        except Exception as exc:
            log.error("%s failed, will retry next tick: %s", name, exc)
            log.debug("%s traceback", name, exc_info=True)

    return run


def run_forever(service: Service, clock: Clock, stop: threading.Event) -> None:
    """Plan and send every tick until ``stop`` is set (SIGTERM, SIGINT)."""
    scheduler = schedule.Scheduler()
    every = service.settings.tick_seconds
    scheduler.every(every).seconds.do(guarded("plan", lambda: service.plan(clock())))
    scheduler.every(every).seconds.do(guarded("send", lambda: service.send(clock, stop=stop)))
    log.info("outreach running: %d rule(s), tick every %ds", len(service.rules), every)
    scheduler.run_all()
    while not stop.is_set():
        scheduler.run_pending()
        idle = scheduler.idle_seconds
        stop.wait(min(max(idle if idle is not None else every, 0.05), MAX_SLEEP))
    log.info("outreach stopped")
