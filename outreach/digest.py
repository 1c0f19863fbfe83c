"""The physician's time: a weekly cap per physician, and several updates in one email.

Runs after planning. For each physician with non-urgent mail ready to leave:

- updates about two or more clients that are due together go as one digest
  email, one section per client, each section complete on its own; the log
  keeps one entry per update, linked to the digest (``digest_id``);
- at most ``weekly_cap`` non-urgent emails reach a physician in any 7 days;
  what would exceed it waits (``not_before``) until the cap allows, and the
  trail says why. Nothing is dropped. Urgent mail is never held or combined.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any

from markupsafe import Markup
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    TextualSelect,
    bindparam,
    column,
    or_,
    select,
    text,
    update,
)

from outreach import store
from outreach.context import (
    client_context,
    display_name,
    load_histories,
    physician_view,
    practice_view,
)
from outreach.errors import RenderError
from outreach.models import (
    PENDING,
    PRIORITIES,
    SENDING,
    SENT,
    UTCDateTime,
    aware,
    clients,
    messages,
    outbox_row,
    physicians,
)
from outreach.outbox import DIGEST, insert_message, trail
from outreach.renderer import Renderer
from outreach.rules import Rule
from outreach.settings import Settings
from outreach.windows import parse_window, physician_zone

log = logging.getLogger(__name__)
CAP_PERIOD = timedelta(days=7)


@dataclass
class BatchReport:
    digests: list[int] = field(default_factory=list)
    held: int = 0


def due_now(now: datetime) -> ColumnElement[bool]:
    """Pending, non-urgent, not yet combined, ready to leave now."""
    return (
        (messages.c.status == PENDING)
        & (messages.c.priority == PRIORITIES["normal"])
        & messages.c.digest_id.is_(None)
        & (messages.c.attempts == 0)
        & or_(messages.c.not_before.is_(None), messages.c.not_before <= now)
        & or_(messages.c.next_attempt_at.is_(None), messages.c.next_attempt_at <= now)
    )


def batch(
    engine: Engine,
    settings: Settings,
    renderer: Renderer,
    rules: list[Rule],
    now: datetime,
    *,
    only: Collection[int] | None = None,
    skip: Collection[int] = (),
    report: BatchReport | None = None,
) -> BatchReport:
    """Combine and hold each physician's ready mail so the weekly cap is kept.

    ``rules`` are needed to render each update again as a digest section.
    ``only`` the physicians given, or every one but those in ``skip`` (the
    planner batches each chunk's physicians, then the rest once).
    """
    report = report if report is not None else BatchReport()
    query = (
        select(messages.c.id, messages.c.physician_id, messages.c.kind, messages.c.client_id)
        .where(due_now(now), messages.c.physician_id.is_not(None))
        .order_by(messages.c.physician_id, messages.c.id)
    )
    ready = []
    with store.read(engine) as conn:
        if only is None:
            ready = [row for row in conn.execute(query) if row.physician_id not in skip]
        else:
            for chunk in store.chunks(sorted(only)):
                ready += conn.execute(query.where(messages.c.physician_id.in_(chunk))).all()
    groups: dict[int, list[Any]] = {
        key: list(rows) for key, rows in groupby(ready, key=lambda r: r.physician_id)
    }
    for ids in store.chunks(list(groups)):
        with store.read(engine) as conn:
            doctors, recent = _physicians_and_sends(conn, list(ids), now)
        for physician_id in ids:
            _batch_physician(
                engine, settings, renderer, rules, doctors[physician_id], recent[physician_id],
                groups[physician_id], now, report,
            )  # fmt: skip
    return report


def _physicians_and_sends(
    conn: Connection, ids: list[int], now: datetime
) -> tuple[dict[int, Any], dict[int, list[datetime]]]:
    """The physicians and their recent sends in a few queries, not two per physician.

    A query per physician made combining the slow part of planning a batch
    of new referrals (thousands of physicians, each with one update).
    """
    doctors = {row.id: row for row in conn.execute(select(physicians).where(physicians.c.id.in_(ids)))}
    return doctors, _recent_sends(conn, ids, now)


def _batch_physician(
    engine: Engine,
    settings: Settings,
    renderer: Renderer,
    rules: list[Rule],
    doctor: Any,
    recent: list[datetime],
    group: list,
    now: datetime,
    report: BatchReport,
) -> None:
    cap = doctor.weekly_cap or settings.weekly_cap
    slots = max(cap - len(recent), 0)
    clinical = [r.id for r in group if r.kind == "clinical" and r.client_id is not None]
    others = [r.id for r in group if r.id not in clinical]
    # Updates about several clients become one email; relationship mail stays apart.
    emails = ([clinical] if len(clinical) >= 2 else [[i] for i in clinical]) + [[i] for i in others]
    going, waiting = emails[:slots], emails[slots:]
    for ids in going:
        if len(ids) > 1:
            digest_id = _make_digest(engine, settings, renderer, rules, doctor, ids, now)
            if digest_id is not None:
                report.digests.append(digest_id)
    if waiting:
        until = _cap_frees_at(recent, cap, now, settings, doctor)
        held_ids = [i for ids in waiting for i in ids]
        report.held += _hold(engine, held_ids, until, cap, now, doctor, settings)


def recent_sends(conn: Connection, physician_id: int, now: datetime) -> list[datetime]:
    """When each non-urgent email that counts against the cap left, oldest first."""
    return _recent_sends(conn, [physician_id], now)[physician_id]


def _recent_sends(conn: Connection, physician_ids: list[int], now: datetime) -> dict[int, list[datetime]]:
    """Each physician's sends that count against the cap in the last 7 days, oldest first.

    When a message left is ``sent_at``, or while it is being sent (and for a
    row from before that column was kept) ``updated_at``: two queries, each
    a seek per physician on ``ix_messages_cap``.
    """
    recent: dict[int, list[datetime]] = {physician_id: [] for physician_id in physician_ids}
    params = {"ids": physician_ids, "normal": PRIORITIES["normal"], "since": now - CAP_PERIOD}
    for query in _cap_queries(conn.dialect.name):
        for physician_id, left in conn.execute(query, params):
            recent[physician_id].append(left)
    for times in recent.values():
        times.sort()
    return recent


@functools.cache
def _cap_queries(dialect: str) -> tuple[TextualSelect, TextualSelect]:
    """The two queries of ``_recent_sends``, written out so SQLite can be told its index.

    SQLite keeps no statistics: given the physicians as a list it chose an
    index on the status or on ``digest_id`` (every row but a digest's
    members), reading the whole log, about a quarter of a second for each
    chunk of physicians in a practice of a million messages.
    """
    table = "messages INDEXED BY ix_messages_cap" if dialect == "sqlite" else "messages"
    counted = (
        f"FROM {table} WHERE physician_id IN :ids AND priority = :normal"
        " AND digest_id IS NULL AND redirected_to IS NULL"  # staging mail counts toward no cap
    )
    queries = (
        f"SELECT physician_id, sent_at {counted} AND status = '{SENT}' AND sent_at > :since",
        f"SELECT physician_id, updated_at {counted} AND status IN ('{SENT}', '{SENDING}')"
        " AND sent_at IS NULL AND updated_at > :since",
    )
    made = [
        text(sql)
        .bindparams(bindparam("ids", expanding=True), bindparam("since", type_=UTCDateTime))
        .columns(column("physician_id", Integer), column("left", UTCDateTime))
        for sql in queries
    ]
    return made[0], made[1]


def _cap_frees_at(
    recent: list[datetime], cap: int, now: datetime, settings: Settings, doctor: Any
) -> datetime:
    """The first moment, inside the send window, when one more email fits the cap."""
    oldest_that_must_expire = recent[len(recent) - cap] if len(recent) >= cap else now
    frees = max(aware(oldest_that_must_expire) + CAP_PERIOD, now)
    tz = physician_zone(doctor.timezone, settings.tz)
    return parse_window(doctor.send_window or settings.send_window).next_opening(frees, tz)


def _hold(
    engine: Engine, ids: list[int], until: datetime, cap: int, now: datetime, doctor: Any, settings: Settings
) -> int:
    tz = physician_zone(doctor.timezone, settings.tz)
    detail = (
        f"weekly cap of {cap} email(s) to this physician reached: "
        f"held until {until.astimezone(tz):%a %d %b %H:%M %Z}, then sent together"
    )
    with store.write(engine) as conn:
        held = list(
            conn.execute(
                update(messages)
                .where(messages.c.id.in_(ids), messages.c.status == PENDING, messages.c.digest_id.is_(None))
                .values(not_before=until, updated_at=now)
                .returning(messages.c.id)
            ).scalars()
        )
        for message_id in held:
            trail(conn, message_id, now, "deferred", detail)
    if held:
        log.info("held %d message(s) for %s: %s", len(held), doctor.email, detail)
    return len(held)


def _make_digest(
    engine: Engine,
    settings: Settings,
    renderer: Renderer,
    rules: list[Rule],
    doctor: Any,
    ids: list[int],
    now: datetime,
) -> int | None:
    """One email carrying several client updates; the updates stay in the log, linked to it."""
    try:
        sections = _sections(engine, settings, renderer, rules, ids, now)
    except RenderError as exc:
        log.error("digest for %s not rendered, updates go one by one: %s", doctor.email, exc)
        return None
    context = {
        "practice": practice_view(settings),
        "physician": physician_view(doctor),
        "sections": sections,
        "count": len(sections),
        "now": now.astimezone(settings.tz),
        "today": now.astimezone(settings.tz).date(),
        "section_only": False,
    }
    try:
        rendered = renderer.render(DIGEST, context)
    except RenderError as exc:
        log.error("digest for %s not rendered, updates go one by one: %s", doctor.email, exc)
        return None
    row = outbox_row(
        rule=DIGEST,
        template=DIGEST,
        dedupe_key=digest_key(ids),
        kind=DIGEST,
        physician_id=doctor.id,
        recipient=doctor.email,
        recipient_name=display_name(doctor.name, doctor.credentials),
        rendered=rendered,
        status=PENDING,
        now=now,
        domain=settings.from_domain,
        needs_consent=False,  # its members are checked one by one
        priority=PRIORITIES["normal"],
    )
    try:
        digest_id = _store_digest(engine, row, ids, now)
    except _Conflict:
        return None
    if digest_id is not None:
        log.info("digest message %s to %s carries %d updates", digest_id, doctor.email, len(ids))
    return digest_id


def digest_key(ids: list[int]) -> str:
    """One key per set of updates: two planners making the same digest collide, a rebuilt one does not."""
    members = ",".join(map(str, sorted(ids)))
    return f"{DIGEST}:{min(ids)}:{hashlib.sha1(members.encode()).hexdigest()[:16]}"


def regroup(
    engine: Engine, settings: Settings, renderer: Renderer, rules: list[Rule], ids: list[int], now: datetime
) -> int | None:
    """Updates left from a digest the gate cancelled: combined again, or the one left goes alone.

    They were held (``not_before``) so that no sender takes them one by one
    meanwhile; if no new digest can be made, the hold is lifted and they go
    one by one, as when a digest cannot be rendered.
    """
    with store.read(engine) as conn:
        live = conn.execute(
            select(messages.c.id, messages.c.physician_id)
            .where(messages.c.id.in_(ids), messages.c.status == PENDING, messages.c.digest_id.is_(None))
            .order_by(messages.c.id)
        ).all()
        doctors = {row.physician_id for row in live}
        doctor = None
        if len(live) >= 2 and len(doctors) == 1:
            doctor = conn.execute(select(physicians).where(physicians.c.id == doctors.pop())).one()
    digest_id = None
    if doctor is not None:
        digest_id = _make_digest(engine, settings, renderer, rules, doctor, [row.id for row in live], now)
    if digest_id is None and live:
        with store.write(engine) as conn:
            conn.execute(
                update(messages)
                .where(messages.c.id.in_([row.id for row in live]), messages.c.status == PENDING)
                .values(not_before=None, updated_at=now)
            )
    return digest_id


def _sections(
    engine: Engine, settings: Settings, renderer: Renderer, rules: list[Rule], ids: list[int], now: datetime
) -> list[dict]:
    """Each update rendered as a section, from the same records as when it was queued."""
    by_name = {rule.name: rule for rule in rules}
    with store.read(engine) as conn:
        members = conn.execute(
            select(
                messages.c.id,
                messages.c.rule,
                messages.c.subject,
                messages.c.client_id,
                messages.c.event_id,
                clients.c.ref,
            )
            .join(clients, clients.c.id == messages.c.client_id)
            .where(messages.c.id.in_(ids))
            .order_by(messages.c.id)
        ).all()
        histories = load_histories(conn, [m.client_id for m in members])
        sections = []
        for m in members:
            rule = by_name.get(m.rule)
            if rule is None:
                raise RenderError(f"message {m.id}: rule {m.rule} is no longer in the campaigns")
            context = client_context(settings, rule, histories[m.client_id], now, m.event_id)
            section = renderer.render_section(rule.template, context, m.subject)
            sections.append(
                {
                    "title": m.subject,
                    "ref": m.ref,
                    "html": Markup(section.html),  # rendered with autoescape on
                    "text": section.text,
                    "status": context["status"],  # the bottom line, shown in the list at the top
                    "attention": context["attention"],  # as the section's own template prints it
                }
            )
    return sections


def _store_digest(engine: Engine, row: dict, ids: list[int], now: datetime) -> int | None:
    with store.write(engine) as conn:
        digest_id = insert_message(conn, row)
        if digest_id is None:
            return None
        linked = conn.execute(
            update(messages)
            .where(messages.c.id.in_(ids), messages.c.status == PENDING, messages.c.digest_id.is_(None))
            .values(digest_id=digest_id, updated_at=now)
        ).rowcount
        if linked != len(ids):  # another planner got there first: leave it to that one
            raise _Conflict
        detail = f"carries {len(ids)} client updates: " + ", ".join(f"message {i}" for i in ids)
        trail(conn, digest_id, now, "queued", detail)
        for message_id in ids:
            trail(
                conn,
                message_id,
                now,
                "queued",
                f"combined into digest message {digest_id}",
            )
    return digest_id


class _Conflict(Exception):
    """Raised inside the transaction to roll the digest back."""
