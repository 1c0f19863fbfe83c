"""Is the service alive and delivering? Heartbeats, and the answer for a monitor.

Each running service writes a heartbeat row (``workers``) every tick, with
the last error it met and when a send pass last succeeded. ``outreach
status`` reads them with the queue, and exits 1 when a monitor should page
someone: no recent heartbeat, delivery failing since its last success, or
messages of the last days that could not be rendered (their template broke).

A worker that has not beaten for two ticks (and at least 30 s) without
saying it stopped is stale: killed, hung or cut off from the database. It
is listed as such and no longer counts as running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from sqlalchemy import Connection, Engine, func, select, update

from outreach import store
from outreach.models import MESSAGE_STATUSES, PENDING, messages, physicians, workers
from outreach.rerender import FIX_HINT, never_rendered

STALE_AFTER_TICKS = 2
MIN_STALE = timedelta(seconds=30)
SHOW_STALE_FOR = timedelta(days=1)  # a worker killed longer ago than this is history, not news
RENDER_FAILURES_FOR = timedelta(days=7)  # an older message that could not be rendered no longer pages


def _upsert(engine: Engine, name: str, now: datetime, **values: object) -> None:
    """Update this worker's row, or create it (a first heartbeat is also a start)."""
    with store.write(engine) as conn:
        done = conn.execute(update(workers).where(workers.c.name == name).values(**values)).rowcount
        if not done:
            conn.execute(
                workers.insert().values({"started_at": now, "heartbeat_at": now, **values, "name": name})
            )


def heartbeat(engine: Engine, name: str, now: datetime) -> None:
    _upsert(engine, name, now, heartbeat_at=now, stopped_at=None)


def started(engine: Engine, name: str, now: datetime) -> None:
    _upsert(
        engine,
        name,
        now,
        started_at=now,
        heartbeat_at=now,
        stopped_at=None,
        last_error=None,
        last_error_at=None,
    )


def stopped(engine: Engine, name: str, now: datetime) -> None:
    _upsert(engine, name, now, heartbeat_at=now, stopped_at=now)


def record_error(engine: Engine, name: str, now: datetime, error: str) -> None:
    _upsert(engine, name, now, heartbeat_at=now, last_error=error[:2000], last_error_at=now)


def record_send_ok(engine: Engine, name: str, now: datetime) -> None:
    _upsert(engine, name, now, heartbeat_at=now, last_send_ok_at=now)


@dataclass(frozen=True)
class Waiting:
    """The message that has waited longest to be sent."""

    id: int
    created_at: datetime
    next_attempt_at: datetime | None


@dataclass
class Health:
    now: datetime
    last_heartbeat: datetime | None
    running: list[str]
    queue: dict[str, int]
    oldest_pending: Waiting | None
    last_error: str | None
    last_error_at: datetime | None
    stale: list[str] = field(default_factory=list)  # "name (last heartbeat 45 s ago)"
    undeliverable: list[str] = field(default_factory=list)  # "a@b (since 2026-11-25: bounced: 550 5.1.1 ...)"
    staging: tuple[str, ...] = ()  # OUTREACH_REDIRECT_ALL_TO: where every email goes instead of a physician
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def health(conn: Connection, now: datetime, tick_seconds: int, staging: tuple[str, ...] = ()) -> Health:
    """Heartbeats, queue depth and the latest error, judged against ``now``; whether staging is on.

    Staging is said, never a problem: a practice trying the service is not an outage.
    """
    rows = conn.execute(select(workers).order_by(workers.c.heartbeat_at.desc())).all()
    stale_after = max(MIN_STALE, timedelta(seconds=STALE_AFTER_TICKS * tick_seconds))
    running = [r for r in rows if r.stopped_at is None and now - r.heartbeat_at <= stale_after]
    stale = [r for r in rows if r.stopped_at is None and stale_after < now - r.heartbeat_at <= SHOW_STALE_FOR]
    counts: dict[str, int] = dict(
        conn.execute(select(messages.c.status, func.count()).group_by(messages.c.status)).all()
    )
    oldest = conn.execute(
        select(messages.c.id, messages.c.created_at, messages.c.next_attempt_at, messages.c.last_error)
        .where(messages.c.status == PENDING)
        .order_by(messages.c.created_at, messages.c.id)
        .limit(1)
    ).first()
    errored = [r for r in rows if r.last_error_at is not None]
    latest = max(errored, key=lambda r: r.last_error_at) if errored else None
    result = Health(
        now=now,
        last_heartbeat=rows[0].heartbeat_at if rows else None,
        running=[r.name for r in running],
        queue={status: counts.get(status, 0) for status in MESSAGE_STATUSES},
        oldest_pending=Waiting(oldest.id, oldest.created_at, oldest.next_attempt_at) if oldest else None,
        last_error=latest.last_error if latest else None,
        last_error_at=latest.last_error_at if latest else None,
        stale=[f"{r.name} (last heartbeat {_ago(now - r.heartbeat_at)} ago)" for r in stale],
        staging=staging,
    )
    result.undeliverable = [
        f"{r.email} (since {r.undeliverable_on}: {r.undeliverable_reason or 'no reason recorded'})"
        for r in conn.execute(
            select(physicians.c.email, physicians.c.undeliverable_on, physicians.c.undeliverable_reason)
            .where(physicians.c.undeliverable_on.is_not(None))
            .order_by(physicians.c.email)
        )
    ]
    if not rows:
        result.problems.append("the service has never run (no heartbeat)")
    elif not running:
        result.problems.append(
            f"no heartbeat for {_ago(now - rows[0].heartbeat_at)}: the service is not running"
        )
    failing = [
        r
        for r in running
        if r.last_error_at and (r.last_send_ok_at is None or r.last_error_at > r.last_send_ok_at)
    ]
    if failing:
        r = failing[0]
        what = "inbox not read" if (r.last_error or "").startswith("inbox:") else "delivery failing"
        result.problems.append(f"{what} since {r.last_error_at:%Y-%m-%d %H:%M} UTC: {r.last_error}")
    unrendered = render_failures(conn, now - RENDER_FAILURES_FOR)
    if unrendered:
        result.problems.append(unrendered)
    return result


def render_failures(conn: Connection, since: datetime) -> str | None:
    """Messages queued since ``since`` whose template failed, with the latest error; None if none.

    They wait for a person (``outreach retry``): an urgent alert among them
    reaches nobody until then.
    """
    recent = never_rendered() & (messages.c.created_at >= since)
    count = conn.execute(select(func.count()).select_from(messages).where(recent)).scalar()
    if not count:
        return None
    error = conn.execute(
        select(messages.c.last_error)
        .where(recent)
        .order_by(messages.c.created_at.desc(), messages.c.id.desc())
    ).scalar()
    error = "; ".join((error or "no error recorded").splitlines())
    return f"{count} message(s) could not be rendered: {error}; {FIX_HINT}"


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h" if minutes < 2880 else f"{minutes // 1440} days"


def staging_line(staging: tuple[str, ...]) -> str:
    """What staging means, for the status, the console and ``outreach check``."""
    return (
        f"every email goes to {', '.join(staging)} instead of the physician "
        "(OUTREACH_REDIRECT_ALL_TO); redirected mail counts toward no cap, loop or last contact"
    )


def format_health(h: Health, tz: tzinfo) -> str:
    def when(value: datetime | None) -> str:
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z") if value else "never"

    queue = ", ".join(f"{status} {count}" for status, count in h.queue.items())
    lines = [
        f"status:          {'OK' if h.ok else 'PROBLEM'}",
        *([f"staging:         ON, {staging_line(h.staging)}"] if h.staging else []),
        f"last heartbeat:  {when(h.last_heartbeat)}",
        f"running:         {', '.join(h.running) or 'none'}",
    ]
    if h.stale:
        lines.append(f"stale:           {', '.join(h.stale)} (not stopped cleanly: killed or hung?)")
    lines.append(f"queue:           {queue}")
    if h.oldest_pending is not None:
        o = h.oldest_pending
        waiting = f"message {o.id}, queued {when(o.created_at)}, next try {when(o.next_attempt_at)}"
        lines.append(f"oldest pending:  {waiting}")
    else:
        lines.append("oldest pending:  none")
    lines.append(
        f"last error:      {h.last_error or 'none'}" + (f" ({when(h.last_error_at)})" if h.last_error else "")
    )
    lines += [
        f"undeliverable:   {a} (outreach physician address-ok EMAIL clears it)" for a in h.undeliverable
    ]
    lines += [f"problem:         {p}" for p in h.problems]
    return "\n".join(lines)
