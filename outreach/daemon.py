"""The service: planner and dispatcher on a ``schedule`` loop until told to stop.

``schedule`` does not catch exceptions, drifts, and never catches up, so:
every job is wrapped (a raising job is logged and simply runs again next
tick), the loop sleeps with ``Event.wait`` (a signal wakes it at once), and
all state lives in the database, so a restart loses nothing.

Rules and templates are read once and held in memory (templates as a
snapshot of their files), so an edit on disk changes nothing until it has
been validated: a broken rule or template is refused and the service goes
on with the ones it had.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import schedule
from sqlalchemy import Engine

from outreach import digest, status, store
from outreach.backends import Backend, get_backend
from outreach.dispatcher import Clock, Dispatcher, Planning, SendReport, worker_name
from outreach.errors import OutreachError
from outreach.models import utcnow
from outreach.outbox import log_line
from outreach.planner import PlanReport, plan
from outreach.planprocess import PlanProcess, can_fork
from outreach.renderer import Renderer, load_renderer
from outreach.rules import Rule, load_rules
from outreach.settings import Settings

log = logging.getLogger(__name__)
MAX_SLEEP = 60.0
PURGE_EVERY = timedelta(days=1)  # the retention job: once a day (and at start)
PURGE_BUDGET = 10.0  # seconds a tick may spend on it; a long purge goes on at the next tick


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


def load_config(settings: Settings) -> tuple[list[Rule], Renderer]:
    """Rules and templates, both validated; raises ``OutreachError`` listing the problems.

    Every template file is read strictly as UTF-8 (``renderer.load_renderer``):
    a stray byte is refused here, at start or reload, with the file and offset.
    """
    renderer = load_renderer(settings.templates_dir)
    return load_rules(settings.campaigns_dir, settings.templates_dir), renderer


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
    dispatcher: Dispatcher = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # One dispatcher for the service's life: what the server said while the
        # database was away (its backlog) is written on a later pass.
        self.dispatcher = Dispatcher(
            self.engine, self.settings, self.backend, worker=self.worker, regroup=self.regroup
        )

    @classmethod
    def load(
        cls, settings: Settings, engine: Engine | None = None, backend: Backend | None = None
    ) -> Service:
        engine = engine or store.connect(settings.database_url, settings.db_busy_seconds)
        store.require_current(engine)
        fingerprint = config_fingerprint(settings)
        rules, renderer = load_config(settings)
        return cls(
            settings=settings,
            engine=engine,
            rules=rules,
            renderer=renderer,
            backend=backend or get_backend(settings),
            fingerprint=fingerprint,
        )

    def plan(self, now: datetime, planning: Planning | None = None) -> PlanReport:
        return self._plan_now(now, planning.released if planning is not None else None)

    def send(
        self,
        clock: Clock,
        limit: int | None = None,
        stop: threading.Event | None = None,
        planning: Planning | None = None,
    ) -> SendReport:
        self.dispatcher.clock = clock  # the caller's time: a replay (``--now``) runs on its own clock
        return self.dispatcher.send_due(limit, stop, planning)

    def regroup(self, ids: list[int], now: datetime) -> None:
        """Combine again the updates of a digest the gate took apart (it needs the renderer)."""
        digest.regroup(self.engine, self.settings, self.renderer, self.rules, ids, now)

    def cycle(self, clock: Clock, stop: threading.Event | None = None) -> tuple[PlanReport, SendReport]:
        """Plan and send at once: the sender takes each physician's mail as soon as its chunk is planned.

        So a big plan (after an import, a quarter's summaries) takes about as
        long as the longer of planning and sending, not their sum. The plan
        runs in a child process where that is safe (``planprocess``), so the
        two do not take turns for one interpreter; else on this thread. The
        send pass ends once the plan is over and nothing more is due; an
        error of either is raised after both have stopped (the plan's first).
        """
        planning = Planning(clock())
        child = None
        if can_fork(self.engine):  # before the sender's thread starts: forking is safe with one thread only
            child = PlanProcess(self.engine, lambda released: self._plan_now(planning.now, released))
        outcome: dict[str, Any] = {}

        def send_beside() -> None:
            try:
                outcome["sent"] = self.send(clock, stop=stop, planning=planning)
            except BaseException as exc:  # raised below, on the caller's thread
                outcome["error"] = exc

        sender = threading.Thread(target=send_beside, name="outreach-send-beside-plan", daemon=True)
        sender.start()
        try:
            planned = child.follow(planning.released) if child else self.plan(planning.now, planning)
        finally:
            planning.finish()
            sender.join()
        if "error" in outcome:
            raise outcome["error"]
        return planned, outcome["sent"]

    def _plan_now(self, now: datetime, released: Callable[[Sequence[int]], None] | None) -> PlanReport:
        return plan(self.engine, self.settings, self.rules, self.renderer, now, released)

    def reload(self) -> bool:
        """Load rules and templates again; keep the current ones if the new are invalid."""
        self.fingerprint = config_fingerprint(self.settings)
        try:
            rules, renderer = load_config(self.settings)
        except (OutreachError, OSError, UnicodeError) as exc:
            problems = str(exc).splitlines() or [type(exc).__name__]
            log.error("reload refused, keeping the current rules and templates: %s", "; ".join(problems))
            return False
        self.rules, self.renderer = rules, renderer
        log.info("reloaded %d rule(s) and the templates", len(rules))
        return True

    def flush(self, clock: Clock) -> None:
        """Write outcomes held while the database was away (on the way out, say)."""
        self.dispatcher.clock = clock
        self.dispatcher.flush_backlog()

    def config_changed(self) -> bool:
        return config_fingerprint(self.settings) != self.fingerprint


def guarded(
    name: str, job: Callable[[], object], on_error: Callable[[str], None] | None = None
) -> Callable[[], None]:
    """Run a job; log what it raises instead of letting it kill the loop."""

    def run() -> None:
        try:
            job()
        except Exception as exc:
            message = log_line(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            log.error("%s failed, will retry next tick: %s", name, message)
            log.debug("%s traceback", name, exc_info=True)
            if on_error is not None:
                try:
                    on_error(f"{name}: {message}")
                except Exception:  # the database itself may be what is failing
                    log.debug("could not record the error", exc_info=True)

    return run


class Jobs:
    """The jobs of one running service, each safe to run again after a failure.

    What ``outreach status`` calls "failing" is tracked per job: a job's
    error stands until that job succeeds again. A send pass with nothing
    due proves nothing (the messages that failed may simply be waiting for
    their retry time), so only a pass that delivered clears a send error.
    """

    def __init__(self, service: Service, clock: Clock, stop: threading.Event):
        self.service, self.clock, self.stop = service, clock, stop
        self.failing: set[str] = set()
        self.purged_at: datetime | None = None  # when the retention job last finished

    def record_error(self, error: str) -> None:
        """``error`` is ``"job: what happened"`` (see ``guarded``)."""
        self.failing.add(error.partition(":")[0])
        status.record_error(self.service.engine, self.service.worker, self.clock(), error)

    def _ok(self, job: str) -> None:
        if job in self.failing:
            self.failing.discard(job)
            if not self.failing:
                status.record_send_ok(self.service.engine, self.service.worker, self.clock())

    def plan(self) -> None:
        """Plan with a send pass beside it (``Service.cycle``), judged as the send job's own."""
        _, report = self.service.cycle(self.clock, stop=self.stop)
        self._ok("plan")
        self._judge(report)

    def send(self) -> None:
        """What came due since the plan (a retry's time, a window opening)."""
        self._judge(self.service.send(self.clock, stop=self.stop))

    def _judge(self, report: SendReport) -> None:
        if report.aborted:
            self.record_error(f"send: {report.aborted}")
        elif report.sent:
            self.failing.discard("send")
            if not self.failing:
                status.record_send_ok(self.service.engine, self.service.worker, self.clock())
        elif report.deferred or report.failed:
            what = f"{len(report.deferred)} deferred, {len(report.failed)} failed, none delivered"
            self.record_error(f"send: {what}")
        # Nothing was due: no news either way.

    def heartbeat(self) -> None:
        status.heartbeat(self.service.engine, self.service.worker, self.clock())
        self._ok("heartbeat")

    def inbox(self) -> None:
        """Read the practice's mailbox (replies, bounces); a failure here never stops sending."""
        from outreach.inbox import fetch

        report = fetch(self.service.engine, self.service.settings, self.clock())
        if report.kinds:
            log.info("%s", report.summary())
        self._ok("inbox")

    def purge(self) -> None:
        """Remove the bodies ``OUTREACH_RETENTION_DAYS`` no longer keeps: at start, then once a day.

        A tick spends at most ``PURGE_BUDGET`` on it, so sending never waits
        long; the first purge of a year of mail simply takes a few ticks.
        """
        from outreach.retention import purge

        now = self.clock()
        if self.purged_at is not None and now - self.purged_at < PURGE_EVERY:
            return
        report = purge(self.service.engine, self.service.settings, now, budget=PURGE_BUDGET, actor="service")
        if report.messages or report.inbound:
            log.info("retention: %s", report.summary(self.service.settings.tz))
        if report.finished:
            self.purged_at = now
        self._ok("purge")

    def named(self) -> list[tuple[str, Callable[[], None]]]:
        jobs = [("heartbeat", self.heartbeat), ("plan", self.plan), ("send", self.send)]
        if self.service.settings.imap_host:
            jobs.append(("inbox", self.inbox))
        if self.service.settings.retention_days is not None:
            jobs.append(("purge", self.purge))
        return jobs


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
    jobs = Jobs(service, clock, control.stop)
    scheduler = schedule.Scheduler()
    every = service.settings.tick_seconds
    for name, job in jobs.named():
        scheduler.every(every).seconds.do(guarded(name, job, jobs.record_error))
    guarded("start", lambda: status.started(service.engine, service.worker, clock()))()
    log.info("outreach running as %s: %d rule(s), tick every %ds", service.worker, len(service.rules), every)
    if service.settings.staging:
        log.warning(
            "staging: every email goes to %s, none to a physician",
            ", ".join(service.settings.redirect_all_to),
        )
    scheduler.run_all()
    reload = guarded("reload", service.reload)
    while not control.stop.is_set():
        try:
            if control.reload.is_set() or service.config_changed():
                control.reload.clear()
                reload()
            scheduler.run_pending()
        except Exception as exc:  # the jobs are guarded; this is the loop's own machinery
            log.error("service loop: %s", log_line(exc))
        idle = scheduler.idle_seconds
        control.sleep(min(max(idle if idle is not None else every, 0.05), MAX_SLEEP))
    guarded("flush", lambda: service.flush(clock))()
    guarded("stop", lambda: status.stopped(service.engine, service.worker, clock()))()
    log.info("outreach stopped")
