"""Messages whose template failed when they were queued, rendered again (``outreach retry``).

The planner stores such a message as ``failed`` with an empty body, but
with its rule, client, event, physician and dedupe key: everything needed
to render it again once the template is fixed, as the planner would have
rendered it (``context.client_context`` with its event for an update about
a client, ``context.physician_context`` for its period, read from the
dedupe key, for a physician's summary).
A message rendered again is queued like a new one (held for the
physician's send window unless urgent; a summary of fewer clients than
``MIN_COHORT`` suppressed, as the planner would have it); whether it may
still go (consent, opt-out) is judged before it is sent, as for every
message.

Rendering happens in a read transaction and nothing is stored unless every
message asked for renders: a template that still fails changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, exists, select, update

from outreach.context import MIN_COHORT, Period, client_context, load_history, physician_context
from outreach.errors import OutreachError, RenderError
from outreach.models import (
    DEIDENTIFICATION,
    FAILED,
    PENDING,
    PRIORITIES,
    SUPPRESSED,
    message_bodies,
    messages,
    physicians,
)
from outreach.outbox import log_line, trail
from outreach.rules import Rule
from outreach.settings import Settings

if TYPE_CHECKING:
    from outreach.renderer import Rendered, Renderer

REQUEUED = "rendered again and queued by a person"
FIX_HINT = "fix the template and run outreach retry --all-failed"
# Where the period of a physician's summary is written in its dedupe key (see planner.previous_period).
PERIOD_KEYS = {"month": re.compile(r"(\d{4})-(\d{2})"), "quarter": re.compile(r"(\d{4})Q([1-4])")}


def never_rendered() -> ColumnElement[bool]:
    """SQL: a failed message with no body to send (its template failed when it was queued).

    Not one whose body the retention setting removed: that one was rendered, and sent or tried.
    """
    has_body = exists().where(message_bodies.c.message_id == messages.c.id, message_bodies.c.html != "")
    return (messages.c.status == FAILED) & ~has_body & messages.c.body_removed_at.is_(None)


@dataclass(frozen=True)
class Redone:
    """One message rendered again, and how it is to be queued."""

    message_id: int
    template: str
    rendered: Rendered
    not_before: datetime | None = None
    held: str = ""  # why it waits (the physician's send window), for the trail
    suppress: str | None = None  # why it may not go at all (a summary too small to be anonymous)


class Rerenderer:
    """Renders failed messages again from the rules and templates as they are now."""

    def __init__(self, settings: Settings, rules: list[Rule], renderer: Renderer):
        self.settings = settings
        self.rules = {rule.name: rule for rule in rules}
        self.renderer = renderer

    @classmethod
    def load(cls, settings: Settings) -> Rerenderer:
        """Rules and templates from disk, validated as the service validates them."""
        from outreach.renderer import load_renderer
        from outreach.rules import load_rules

        renderer = load_renderer(settings.templates_dir)
        return cls(settings, load_rules(settings.campaigns_dir, settings.templates_dir), renderer)

    def render(self, conn: Connection, ids: list[int], now: datetime) -> list[Redone]:
        """Each message rendered again; raises ``RenderError`` (one line per message) if any fails."""
        rows = conn.execute(
            select(
                messages.c.id,
                messages.c.rule,
                messages.c.dedupe_key,
                messages.c.client_id,
                messages.c.event_id,
                messages.c.physician_id,
                physicians.c.timezone,
                physicians.c.send_window,
            )
            .select_from(messages.outerjoin(physicians, physicians.c.id == messages.c.physician_id))
            .where(messages.c.id.in_(ids))
            .order_by(messages.c.id)
        ).all()
        redone, problems = [], []
        for row in rows:
            try:
                redone.append(self._one(conn, row, now))
            except OutreachError as exc:
                problems.append(
                    f"message {row.id} ({row.rule}) still cannot be rendered: {log_line(str(exc).strip() or type(exc).__name__)}"
                )
        if problems:
            raise RenderError("\n".join([*problems, "nothing was queued again"]))
        return redone

    def _one(self, conn: Connection, row: Any, now: datetime) -> Redone:
        from outreach.planner import hold_for_window

        rule = self.rules.get(row.rule)
        if rule is None:
            raise RenderError(f"rule {row.rule} is no longer in the campaigns (or is disabled)")
        suppress = None
        if rule.scope == "physician":
            period = period_of(row.dedupe_key, rule.period or "quarter")
            context = physician_context(conn, self.settings, rule, row.physician_id, now, period)
            if context["cohort"]["size"] < MIN_COHORT:  # as the planner decides it
                suppress = f"fewer than {MIN_COHORT} clients: the summary could identify them"
        else:
            history = load_history(conn, row.client_id)
            context = client_context(self.settings, rule, history, now, row.event_id)
        rendered = self.renderer.render(rule.template, context)
        not_before, held = None, ""
        if rule.priority == PRIORITIES["normal"] and suppress is None:
            not_before, held = hold_for_window(self.settings, row.timezone, row.send_window, now)
        return Redone(row.id, rule.template, rendered, not_before, held, suppress)


def period_of(dedupe_key: str, kind: str) -> Period:
    """The calendar period a physician's summary covers, read back from its dedupe key.

    The key ends with the period's key (``2026-10`` or ``2026Q3``); the
    period is the one ``previous_period`` gives on the day after it ends.
    """
    from outreach.planner import previous_period

    key = dedupe_key.rsplit(":", 1)[-1]
    match = PERIOD_KEYS[kind].fullmatch(key)
    if not match:
        raise RenderError(f"dedupe key {dedupe_key!r} does not end with a {kind} like 2026-10 or 2026Q3")
    year, number = int(match[1]), int(match[2])
    start = date(year, number if kind == "month" else 3 * number - 2, 1)
    after = (start + timedelta(days=32 if kind == "month" else 95)).replace(day=1)
    period = previous_period(kind, after)
    if period.key != key:
        raise RenderError(f"dedupe key {dedupe_key!r}: {key} is not a {kind}")
    return period


def store_redone(conn: Connection, redone: list[Redone], now: datetime) -> int:
    """Store each new subject and body and queue the message (fresh attempts); how many were.

    Only a message still failed and still without a body is touched: one
    that someone else retried meanwhile is left as it is.
    """
    done = 0
    for item in redone:
        status = SUPPRESSED if item.suppress else PENDING
        changed = conn.execute(
            update(messages)
            .where(messages.c.id == item.message_id, never_rendered())
            .values(
                status=status,
                template=item.template,
                subject=item.rendered.subject,
                attempts=0,
                not_before=item.not_before,
                next_attempt_at=now if status == PENDING else None,
                reason=DEIDENTIFICATION if item.suppress else None,
                last_error=item.suppress,
                updated_at=now,
            )
        ).rowcount
        if not changed:
            continue
        body = {"html": item.rendered.html, "text": item.rendered.text}
        found = conn.execute(
            update(message_bodies).where(message_bodies.c.message_id == item.message_id).values(**body)
        ).rowcount
        if not found:
            conn.execute(message_bodies.insert().values(message_id=item.message_id, **body))
        if item.suppress:
            trail(conn, item.message_id, now, "suppressed", f"rendered again by a person; {item.suppress}")
        else:
            trail(conn, item.message_id, now, "queued", REQUEUED + (f"; {item.held}" if item.held else ""))
        done += 1
    return done
