"""The planner: which rule is due, for whom, now — and queue it, rendered.

Planning is idempotent: each due email has a dedupe key (``rule:event:ID``,
``rule:client:ID:PERIOD``, ``rule:physician:ID:PERIOD``; for the rules that
fire on a silence, ``rule:reply:MESSAGE`` and ``rule:lapse:CLIENT:EVENT``) that is unique in
the messages table, and rows are inserted with "on conflict do nothing", so
planning twice, or two planners at once, queues nothing the second time.
A message is rendered once, when it is queued, and stored exactly as it
will be sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from itertools import groupby
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Exists,
    Select,
    String,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)

from outreach import gate, models, store
from outreach.consent import consent_in_effect, row_consent_problem
from outreach.context import (
    MIN_COHORT,
    SESSION_KINDS,
    History,
    Period,
    client_context,
    display_name,
    lapse_start,
    load_histories,
    load_history,
    physician_context,
)
from outreach.digest import BatchReport, batch, regroup
from outreach.errors import RenderError
from outreach.models import (
    aware,
    clients,
    events,
    inbound,
    message_bodies,
    message_events,
    messages,
    outbox_row,
    physicians,
)
from outreach.outbox import insert_messages, trail, trail_many
from outreach.planprocess import ChunkHelper, can_help, share
from outreach.renderer import Rendered, Renderer
from outreach.rules import Rule
from outreach.settings import Settings
from outreach.windows import parse_window, physician_zone

log = logging.getLogger(__name__)
QUEUE_CHUNK = 200  # drafts rendered and stored per transaction
FIRST_CHUNK = 25  # the first transaction's: what the sender beside the plan starts on
HELPER_FROM = 400  # drafts: a plan this big queues every other chunk in a second process
GATHER_HELPER_FROM = 10_000  # clients on record: a practice this big looks for due mail in two processes


@dataclass(frozen=True)
class Recipient:
    """Who gets an email, and when they read mail."""

    physician_id: int
    email: str
    name: str  # as the To header shows it: "Ruth Osei, MD"
    timezone: str | None  # the physician's own; None: the practice's
    send_window: str | None  # the physician's own; None: OUTREACH_SEND_WINDOW


@dataclass
class Draft:
    """An email that a rule says is due; not yet rendered or stored."""

    rule: Rule
    dedupe_key: str
    to: Recipient
    client_id: int | None = None
    client_ref: str | None = None
    event_id: int | None = None
    period: Period | None = None
    suppress_reason: str | None = None  # why it may not go, as a person reads it
    suppress_code: str | None = None  # the same as one of ``models.REASONS``


@dataclass
class PlanReport:
    queued: list[Draft] = field(default_factory=list)
    suppressed: list[Draft] = field(default_factory=list)
    failed: list[tuple[Draft, str]] = field(default_factory=list)
    cancelled: int = 0
    consent_suppressed: int = 0  # pending messages whose consent went away
    revived: int = 0  # suppressed messages sent after all, consent now on record
    digests: BatchReport | None = None  # updates combined or held for the weekly cap

    @property
    def total(self) -> int:
        return len(self.queued) + len(self.suppressed) + len(self.failed)


# --- finding what is due -----------------------------------------------------


def find_due(conn: Connection, rules: Iterable[Rule], settings: Settings, now: datetime) -> list[Draft]:
    """Every email due now that has not been queued before (by dedupe key)."""
    drafts: list[Draft] = []
    for rule in rules:
        if rule.event:
            found = _due_on_event(conn, rule, now)
        elif rule.no_reply:
            found = _due_no_reply(conn, rule, settings, now)
        elif rule.no_event:
            found = _due_no_event(conn, rule, settings, now)
        elif rule.scope == "client":
            found = _due_recurring_client(conn, rule, settings, now)
        else:
            found = _due_recurring_physician(conn, rule, settings, now)
        if rule.kind == "relationship":
            _hold_for_opt_outs(conn, found)
        drafts += found
    return drafts


def _client_columns() -> tuple[ColumnElement[Any], ...]:
    """The client a draft is about, and what its consent check reads."""
    return (
        clients.c.id.label("client_id"),
        *clients.c["ref", "consent_date", "consent_expires", "consent_revoked_on"],
    )


def _recipient_columns() -> tuple[ColumnElement[Any], ...]:
    return (
        physicians.c.id.label("physician_id"),
        physicians.c.email,
        physicians.c.name.label("physician_name"),
        physicians.c.credentials,
        physicians.c.timezone.label("physician_tz"),
        physicians.c.send_window,
    )


def _recipient(row: Any) -> Recipient:
    """Who gets the email, from a row with ``_recipient_columns``."""
    return Recipient(
        row.physician_id,
        row.email,
        display_name(row.physician_name, row.credentials),
        row.physician_tz,
        row.send_window,
    )


def _consent(rule: Rule, row: Any, today: date) -> dict:
    """The Draft fields that hold back mail about a client without consent, when the rule needs it."""
    problem = row_consent_problem(row, today) if rule.consent_required else None
    return {"suppress_reason": problem, "suppress_code": models.CONSENT if problem else None}


def _about_client(rule: Rule, key: str, row: Any, today: date, event_id: int | None = None) -> Draft:
    """A draft about one client (``row`` carries the client and their physician), to their physician."""
    return Draft(
        rule=rule,
        dedupe_key=key,
        to=_recipient(row),
        client_id=row.client_id,
        client_ref=row.ref,
        event_id=event_id,
        **_consent(rule, row, today),
    )


def _due_on_event(conn: Connection, rule: Rule, now: datetime) -> list[Draft]:
    key = literal(f"{rule.name}:event:") + cast(events.c.id, String)
    newest = now - rule.delay
    recent = (
        events.c.kind == rule.event,
        events.c.occurred_at <= newest,
        events.c.occurred_at >= newest - rule.max_age,
    )
    query = (
        select(
            events.c.id.label("event_id"),
            *_client_columns(),
            *_recipient_columns(),
        )
        .select_from(events.join(clients).join(physicians))
        .where(*recent, ~exists().where(messages.c.dedupe_key == key))
        .order_by(events.c.occurred_at, events.c.id)
    )
    if rule.consecutive:
        query = query.where(
            events.c.id.in_(_streak_ends(select(events.c.client_id).where(*recent), rule.consecutive))
        )
    today = now.date()
    found = conn.execute(query).all()
    return [
        _about_client(rule, f"{rule.name}:event:{row.event_id}", row, today, row.event_id) for row in found
    ]


def _streak_ends(of_clients: Select, length: int) -> Select:
    """Missed sessions that are exactly the ``length``-th missed in a row (not the 4th of 3).

    Each session of the clients ``of_clients`` selects is seen with the
    ``length`` sessions before it (window functions, in the database): it
    ends a streak when it and the ``length - 1`` before it were missed and
    the one before those was not, or there was none. The steady tick
    re-examines every recent miss that did not end a streak, so this is one
    query, not the clients' sessions read into Python.
    """
    before = [
        func.lag(events.c.kind, n)
        .over(partition_by=events.c.client_id, order_by=(events.c.occurred_at, events.c.id))
        .label(f"before_{n}")
        for n in range(1, length + 1)
    ]
    sessions = (
        select(events.c.id, events.c.kind, *before)
        .where(events.c.kind.in_(SESSION_KINDS), events.c.client_id.in_(of_clients))
        .subquery()
    )
    earlier = sessions.c[f"before_{length}"]
    return select(sessions.c.id).where(
        sessions.c.kind == "session_missed",
        *(sessions.c[f"before_{n}"] == "session_missed" for n in range(1, length)),
        or_(earlier.is_(None), earlier != "session_missed"),
    )


def _due_recurring_client(conn: Connection, rule: Rule, settings: Settings, now: datetime) -> list[Draft]:
    """Every ``rule.every`` since the anchor, while active; only the latest period."""
    assert rule.every is not None
    anchor: ColumnElement[Any]
    if rule.since == "referral_date":
        anchor = clients.c.referral_date
    else:
        anchor = (
            select(func.min(events.c.occurred_at))
            .where(events.c.client_id == clients.c.id, events.c.kind == rule.since)
            .scalar_subquery()
        )
    query = (
        select(
            *_client_columns(),
            anchor.label("anchor"),
            *_recipient_columns(),
        )
        .select_from(clients.join(physicians))
        .where(clients.c.status == "active", ~_recently_reported(rule, now))
        .order_by(clients.c.id)
    )
    candidates = []
    for row in conn.execute(query):
        start = _as_datetime(row.anchor, settings)
        if start is None or start > now:
            continue
        period = (now - start) // rule.every
        if period >= 1:
            candidates.append((f"{rule.name}:client:{row.client_id}:{period}", row))
    new = _not_yet_queued(conn, candidates)
    today = now.date()
    return [_about_client(rule, key, row, today) for key, row in new]


def _due_no_reply(conn: Connection, rule: Rule, settings: Settings, now: datetime) -> list[Draft]:
    """A reminder for each email of rule ``rule.no_reply`` sent ``reply_within`` business days ago, unanswered.

    One query: the rule's emails sent (alone, or in a digest that was sent)
    since ``max_age`` ago and at least as many calendar days ago as business
    days are asked for, with no reply read to them or to the digest that
    carried them and no reminder queued yet (dedupe key ``rule:reply:ID``);
    the exact deadline, in the practice's business days, is then checked for
    those few. An automatic answer is not a reply. The reminder goes to the
    physician the email went to, while they still have the client and the
    client is not discharged.
    """
    assert rule.no_reply is not None and rule.reply_within is not None
    alert = messages.alias("alert")
    carrier = messages.alias("carrier")
    reminder = messages.alias("reminder")
    key = literal(f"{rule.name}:reply:") + cast(alert.c.id, String)
    sent_at = func.coalesce(alert.c.sent_at, carrier.c.sent_at)

    def replied(message_id: ColumnElement[Any]) -> Exists:
        return exists().where(inbound.c.message_id == message_id, inbound.c.kind == "reply")

    query = (
        select(
            alert.c.id.label("alert_id"),
            alert.c.event_id,
            sent_at.label("sent_at"),
            *_client_columns(),
            *_recipient_columns(),
        )
        .select_from(
            alert.outerjoin(carrier, carrier.c.id == alert.c.digest_id)
            .join(clients, clients.c.id == alert.c.client_id)
            .join(physicians, physicians.c.id == clients.c.physician_id)
        )
        .where(
            alert.c.rule == rule.no_reply,
            alert.c.created_at >= now - rule.max_age,
            or_(alert.c.status == models.SENT, carrier.c.status == models.SENT),
            sent_at <= now - timedelta(days=rule.reply_within),
            alert.c.physician_id == clients.c.physician_id,
            clients.c.status != "discharged",
            ~replied(alert.c.id),
            ~replied(alert.c.digest_id),  # a reply to the digest that carried it (none: NULL matches nothing)
            ~exists().where(reminder.c.dedupe_key == key),
        )
        .order_by(alert.c.id)
    )
    today = now.date()
    found = [row for row in conn.execute(query) if reply_due(settings, aware(row.sent_at), rule) <= now]
    return [
        _about_client(rule, f"{rule.name}:reply:{row.alert_id}", row, today, row.event_id) for row in found
    ]


def reply_due(settings: Settings, sent_at: datetime, rule: Rule) -> datetime:
    """When a reply to an email sent at ``sent_at`` is overdue: ``reply_within`` business days later.

    Counted in the practice's time zone, at the same time of day (sent on a
    Friday at 10:00, 2 business days: Tuesday at 10:00).
    """
    from outreach.loops import add_business_days

    assert rule.reply_within is not None
    local = sent_at.astimezone(settings.tz)
    day = add_business_days(local.date(), rule.reply_within)
    return datetime.combine(day, local.timetz().replace(tzinfo=None), settings.tz)


def _due_no_event(conn: Connection, rule: Rule, settings: Settings, now: datetime) -> list[Draft]:
    """A note for each active client with none of ``rule.no_event`` for ``rule.lapse``: once per lapse.

    The lapse starts at the latest of those events since the initial
    assessment (or at the assessment, with none yet): the dedupe key
    ``rule:lapse:CLIENT:EVENT`` names that event (0 for the assessment), so
    the note goes once, and again only after the client attends and lapses
    again. One query: each client's latest event of each kind and first
    assessment are index lookups (``client_id, kind, occurred_at``); only the
    clients in a lapse long enough come back.
    """
    assert rule.lapse is not None
    cutoff = now - rule.lapse

    def latest(kind: str) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
        mine = (events.c.client_id == clients.c.id) & (events.c.kind == kind)
        at = select(func.max(events.c.occurred_at)).where(mine).scalar_subquery()
        event_id = (
            select(events.c.id)
            .where(mine)
            .order_by(events.c.occurred_at.desc(), events.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        return at, event_id

    assessed = (
        select(func.min(events.c.occurred_at))
        .where(events.c.client_id == clients.c.id, events.c.kind == "initial_assessment")
        .scalar_subquery()
    )
    lasts = [latest(kind) for kind in rule.no_event]
    columns = [col.label(f"{what}_{n}") for n, (at, event_id) in enumerate(lasts)
               for what, col in (("at", at), ("id", event_id))]  # fmt: skip
    query = (
        select(
            *_client_columns(),
            assessed.label("assessed"),
            *columns,
            *_recipient_columns(),
        )
        .select_from(clients.join(physicians))
        .where(
            clients.c.status == "active",
            assessed <= cutoff,  # never assessed: no lapse
            *[or_(at.is_(None), at <= cutoff) for at, _ in lasts],
        )
        .order_by(clients.c.id)
    )
    candidates = []
    for row in conn.execute(query):
        start, since = aware(row.assessed), 0
        for n in range(len(lasts)):
            at = row._mapping[f"at_{n}"]
            if at is not None and aware(at) >= start:
                start, since = aware(at), row._mapping[f"id_{n}"]
        if start <= cutoff:
            candidates.append((f"{rule.name}:lapse:{row.client_id}:{since}", row))
    today = now.date()
    return [_about_client(rule, key, row, today) for key, row in _not_yet_queued(conn, candidates)]


def _recently_reported(rule: Rule, now: datetime) -> Exists:
    """The client already had an email from this template within one interval."""
    assert rule.every is not None
    return exists().where(
        messages.c.client_id == clients.c.id,
        messages.c.template == rule.template,
        # A redirected one too: under staging the cadence is the one physicians will get.
        messages.c.status.in_((models.PENDING, models.SENDING, models.SENT, models.REDIRECTED)),
        messages.c.created_at > now - rule.every,
    )


def _as_datetime(value: date | datetime | None, settings: Settings) -> datetime | None:
    """An anchor as an aware datetime (dates start at midnight in the practice's zone)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return aware(value)
    return datetime.combine(value, time.min, settings.tz)


def previous_period(kind: str, today: date) -> Period:
    """The last complete calendar month or quarter before ``today``."""
    if kind == "month":
        end = today.replace(day=1) - timedelta(days=1)
        start = end.replace(day=1)
        return Period(start, end, start.strftime("%B %Y"), start.strftime("%Y-%m"))
    quarter_start = date(today.year, 3 * ((today.month - 1) // 3) + 1, 1)
    end = quarter_start - timedelta(days=1)
    start = date(end.year, 3 * ((end.month - 1) // 3) + 1, 1)
    label = f"{start.year} Q{(start.month - 1) // 3 + 1}"
    return Period(start, end, label, label.replace(" ", ""))


def _due_recurring_physician(conn: Connection, rule: Rule, settings: Settings, now: datetime) -> list[Draft]:
    """Once per calendar period, to each physician with active referrals."""
    assert rule.period is not None
    period = previous_period(rule.period, now.astimezone(settings.tz).date())
    if now.astimezone(settings.tz).date() - period.end > rule.max_age:
        return []  # too late to be useful; the next period's summary will go
    has_active = exists().where(clients.c.physician_id == physicians.c.id, clients.c.status == "active")
    query = select(*_recipient_columns()).where(has_active).order_by(physicians.c.id)
    candidates = [
        (f"{rule.name}:physician:{row.physician_id}:{period.key}", row) for row in conn.execute(query)
    ]
    return [
        Draft(
            rule=rule,
            dedupe_key=key,
            to=_recipient(row),
            period=period,
        )
        for key, row in _not_yet_queued(conn, candidates)
    ]


def _not_yet_queued(conn: Connection, candidates: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    new = []
    for chunk in store.chunks(candidates):
        keys = [key for key, _ in chunk]
        taken = set(
            conn.execute(select(messages.c.dedupe_key).where(messages.c.dedupe_key.in_(keys))).scalars()
        )
        new += [(key, row) for key, row in chunk if key not in taken]
    return new


def _hold_for_opt_outs(conn: Connection, drafts: list[Draft]) -> None:
    """Relationship mail to a physician who opted out of it is suppressed (one query per chunk)."""
    ids = sorted({d.to.physician_id for d in drafts if d.suppress_reason is None})
    opted_out: dict[int, date] = {}
    for chunk in store.chunks(ids):
        query = select(physicians.c.id, physicians.c.opted_out_on).where(
            physicians.c.id.in_(chunk), physicians.c.opted_out_on.is_not(None)
        )
        opted_out.update((row.id, row.opted_out_on) for row in conn.execute(query))
    for draft in drafts:
        if draft.suppress_reason is None and draft.to.physician_id in opted_out:
            on = opted_out[draft.to.physician_id]
            draft.suppress_reason = f"physician opted out of non-clinical mail on {on}"
            draft.suppress_code = models.OPTED_OUT


# --- queuing -------------------------------------------------------------------


def plan(
    engine: Engine,
    settings: Settings,
    rules: list[Rule],
    renderer: Renderer,
    now: datetime,
    released: Callable[[Sequence[int]], None] | None = None,
) -> PlanReport:
    """Queue every due email, rendered; record why any is suppressed or failed.

    The drafts are queued a few physicians at a time, each physician's whole:
    rendered, stored, then combined and held for the weekly cap (``batch``).
    After each chunk ``released`` is told which physicians' mail is final for
    this plan, so a sender running beside it (``Service.cycle``) can take
    that mail while the next chunk renders.
    """
    report = PlanReport()
    report.cancelled = cancel_for_discharged(engine, rules, now)
    report.cancelled += replan_moved(engine, settings, rules, renderer, now)
    report.consent_suppressed, report.revived = reconsider_consent(engine, settings, rules, renderer, now)
    report.digests = BatchReport()
    chunks = list(_by_physician(_gather(engine, settings, rules, now), QUEUE_CHUNK))
    done = _queue_chunks(engine, settings, renderer, rules, now, chunks, report, released)
    # Mail that became ready since the last plan, for physicians with nothing new.
    batch(engine, settings, renderer, rules, now, skip=done, report=report.digests)
    if report.total or report.cancelled:
        log.info(
            "planned: %d queued, %d suppressed, %d failed, %d cancelled",
            len(report.queued), len(report.suppressed), len(report.failed), report.cancelled,
        )  # fmt: skip
    return report


class _Fate(NamedTuple):
    """What became of one draft of a chunk: stored as ``status`` (``detail`` says why), and why it was suppressed."""

    place: int  # in its chunk
    status: str
    detail: str
    suppress_reason: str | None
    suppress_code: str | None


@dataclass
class _Queued:
    """What queuing one chunk did: each stored draft's fate, the digests made, the physicians released."""

    fates: list[_Fate]
    digests: BatchReport
    physicians: list[int]


def _queue_chunks(
    engine: Engine,
    settings: Settings,
    renderer: Renderer,
    rules: list[Rule],
    now: datetime,
    chunks: list[list[Draft]],
    report: PlanReport,
    released: Callable[[Sequence[int]], None] | None,
) -> set[int]:
    """Queue each chunk, then combine and hold its physicians' mail; the physicians done.

    A big plan has a helper process queue every other chunk (``ChunkHelper``),
    so rendering uses two cores. The report lists the drafts in chunk order
    either way.
    """
    results: dict[int, _Queued] = {}

    def work(index: int) -> _Queued:
        chunk = chunks[index]
        fates = _queue(engine, settings, renderer, chunk, now)
        physicians = sorted({draft.to.physician_id for draft in chunk})
        return _Queued(fates, batch(engine, settings, renderer, rules, now, only=physicians), physicians)

    def take(index: int, queued: _Queued) -> None:
        results[index] = queued
        if released is not None:
            released(queued.physicians)

    share(_helper(engine, chunks, work), len(chunks), work, take)
    for index in sorted(results):
        _report(report, chunks[index], results[index])
    return {physician for queued in results.values() for physician in queued.physicians}


def _helper(engine: Engine, chunks: list[list[Draft]], work: Callable[[int], _Queued]) -> ChunkHelper | None:
    """A process for the odd chunks of a plan of ``HELPER_FROM`` drafts or more, where one may be forked."""
    if sum(map(len, chunks)) < HELPER_FROM or len(chunks) < 2 or not can_help(engine):
        return None
    return ChunkHelper(engine, work, range(1, len(chunks), 2))


def _report(report: PlanReport, chunk: list[Draft], queued: _Queued) -> None:
    """Add a chunk's fates to the report (the chunk may have been queued in the helper)."""
    for fate in queued.fates:
        draft = chunk[fate.place]  # rendering may have suppressed it (a summary's cohort): as it left it
        draft.suppress_reason, draft.suppress_code = fate.suppress_reason, fate.suppress_code
        if fate.status == models.PENDING:
            report.queued.append(draft)
        elif fate.status == models.SUPPRESSED:
            report.suppressed.append(draft)
        else:
            report.failed.append((draft, fate.detail))
    assert report.digests is not None
    report.digests.digests += queued.digests.digests
    report.digests.held += queued.digests.held


def _gather(engine: Engine, settings: Settings, rules: list[Rule], now: datetime) -> list[Draft]:
    """Every rule's due drafts, in the order the rules are judged.

    Event rules first: a recurring report is not due when a milestone's email
    from the same template is queued in this plan (a reassessment report
    resets the clock), as it is not when one was queued before.
    """
    ordered = sorted(rules, key=lambda r: r.trigger != "event")
    drafts: list[Draft] = []
    milestones: set[tuple[int | None, str]] = set()
    for rule, found in zip(ordered, _find_each(engine, settings, ordered, now), strict=True):
        if rule.trigger == "event":
            milestones |= {(d.client_id, rule.template) for d in found if d.suppress_reason is None}
        elif rule.trigger == "every" and rule.scope == "client":
            found = [d for d in found if (d.client_id, rule.template) not in milestones]
        drafts += found
    return drafts


def _find_each(engine: Engine, settings: Settings, rules: list[Rule], now: datetime) -> list[list[Draft]]:
    """Each rule's due drafts; in a big practice, every other rule's looked for in a helper process.

    Some rules read every active client: at 100,000 clients looking takes a
    third of a second, and the sender beside the plan waits for it before
    its first email. The queries only read, so two processes look at once;
    the helper's drafts come back through its pipe and are given back the
    planner's own rule objects.
    """

    def find(index: int) -> list[Draft]:
        with store.read(engine) as conn:
            return find_due(conn, [rules[index]], settings, now)

    found: dict[int, list[Draft]] = {}
    share(_gather_helper(engine, rules, find), len(rules), find, found.__setitem__)
    for index, drafts in found.items():
        for draft in drafts:
            draft.rule = rules[index]
    return [found[index] for index in range(len(rules))]


def _gather_helper(
    engine: Engine, rules: list[Rule], find: Callable[[int], list[Draft]]
) -> ChunkHelper | None:
    """A process for every other rule, in a practice of ``GATHER_HELPER_FROM`` clients or more.

    In a smaller one looking takes a few milliseconds, less than a fork.
    Counting stops at ``GATHER_HELPER_FROM``: a big practice pays for that
    many index entries, not for all of them.
    """
    if len(rules) < 2 or not can_help(engine):
        return None
    enough = select(clients.c.id).limit(GATHER_HELPER_FROM).subquery()
    with store.read(engine) as conn:
        if conn.execute(select(func.count()).select_from(enough)).scalar_one() < GATHER_HELPER_FROM:
            return None
    return ChunkHelper(engine, find, range(1, len(rules), 2))


def _by_physician(drafts: list[Draft], size: int) -> Iterator[list[Draft]]:
    """Chunks of about ``size`` drafts, each physician's drafts in one chunk (in rule order).

    The first chunks are smaller (``FIRST_CHUNK``, then twice that, up to
    ``size``): the sender beside the plan starts on the first one, so it
    should come soon.
    """
    ordered = sorted(drafts, key=lambda d: d.to.physician_id)  # stable: rule order kept within
    chunk: list[Draft] = []
    limit = min(FIRST_CHUNK, size)
    for _, group in groupby(ordered, key=lambda d: d.to.physician_id):
        mine = list(group)
        if chunk and len(chunk) + len(mine) > limit:
            yield chunk
            chunk, limit = [], min(2 * limit, size)
        chunk += mine
    if chunk:
        yield chunk


def _render_draft(
    conn: Connection,
    settings: Settings,
    renderer: Renderer,
    draft: Draft,
    now: datetime,
    history: History | None = None,
) -> Rendered:
    if draft.client_id is not None:
        history = history or load_history(conn, draft.client_id)
        context = client_context(settings, draft.rule, history, now, draft.event_id)
    else:
        assert draft.period is not None  # a physician's summary is for a calendar period
        context = physician_context(conn, settings, draft.rule, draft.to.physician_id, now, draft.period)
        if context["cohort"]["size"] < MIN_COHORT and draft.suppress_reason is None:
            draft.suppress_reason = f"fewer than {MIN_COHORT} clients: the summary could identify them"
            draft.suppress_code = models.DEIDENTIFICATION
    return renderer.render(draft.rule.template, context)


def _queue(
    engine: Engine,
    settings: Settings,
    renderer: Renderer,
    drafts: Sequence[Draft],
    now: datetime,
) -> list[_Fate]:
    """Render a chunk of drafts in one read, store them in one write transaction; each stored one's fate.

    The clients' histories are read in bulk and the rows inserted with one
    statement: per email, the cost is the rendering alone.
    """
    with store.read(engine) as conn:
        client_ids = [d.client_id for d in drafts if d.client_id is not None]
        reminding = [d.client_id for d in drafts if d.client_id is not None and d.rule.no_reply]
        histories = load_histories(conn, client_ids, told=reminding)
        rows = [
            _message_row(conn, settings, renderer, draft, now, _history(histories, draft)) for draft in drafts
        ]
    # Without waiting for the disk: a chunk a power cut undoes is planned
    # again from the events and records it came from, which are durable.
    with store.write(engine, durable=False) as conn:
        ids = insert_messages(conn, [row for row, _ in rows])
        stored = [
            (message_id, place, row["status"], detail)
            for place, (message_id, (row, detail)) in enumerate(zip(ids, rows, strict=True))
            if message_id is not None  # else another planner queued it first
        ]
        actions = {models.PENDING: "queued", models.SUPPRESSED: "suppressed", models.FAILED: "failed"}
        trail_many(
            conn, now, [(message_id, actions[status], detail) for message_id, _, status, detail in stored]
        )
    for message_id, _, status, detail in stored:
        if status == models.SUPPRESSED:
            log.info("message %s suppressed: %s", message_id, detail)
        elif status == models.FAILED:
            log.error("message %s failed to render: %s", message_id, detail)
    return [
        _Fate(place, status, detail, drafts[place].suppress_reason, drafts[place].suppress_code)
        for _, place, status, detail in stored
    ]


def _history(histories: dict[int, History], draft: Draft) -> History | None:
    """The draft's client's history, read in bulk; a physician's summary has none."""
    return histories.get(draft.client_id) if draft.client_id is not None else None


def _message_row(
    conn: Connection,
    settings: Settings,
    renderer: Renderer,
    draft: Draft,
    now: datetime,
    history: History | None,
) -> tuple[dict, str]:
    """The outbox row for a draft, rendered, and what its trail should say."""
    try:
        rendered = _render_draft(conn, settings, renderer, draft, now, history)
        error = None
    except RenderError as exc:
        rendered = Rendered(f"(not rendered: {draft.rule.template})", "", "")
        error = str(exc)
    not_before = None
    if error:
        status, detail = models.FAILED, error
    elif draft.suppress_reason:
        status, detail = models.SUPPRESSED, draft.suppress_reason
    else:
        status, detail = models.PENDING, ""
        if draft.rule.priority == models.PRIORITIES["normal"]:
            not_before, detail = hold_for_window(settings, draft.to.timezone, draft.to.send_window, now)
    row = outbox_row(
        rule=draft.rule.name,
        template=draft.rule.template,
        dedupe_key=draft.dedupe_key,
        kind=draft.rule.kind,
        physician_id=draft.to.physician_id,
        recipient=draft.to.email,
        recipient_name=draft.to.name,
        rendered=rendered,
        status=status,
        now=now,
        domain=settings.from_domain,
        client_id=draft.client_id,
        event_id=draft.event_id,
        needs_consent=draft.client_id is not None and draft.rule.consent_required,
        priority=draft.rule.priority,
        not_before=not_before,
        reason=draft.suppress_code if status == models.SUPPRESSED else None,
        last_error=detail if status != models.PENDING else None,
    )
    return row, detail


def hold_for_window(
    settings: Settings, tz_name: str | None, window_text: str | None, now: datetime
) -> tuple[datetime | None, str]:
    """When non-urgent mail to this physician may leave, and the reason it waits."""
    tz = physician_zone(tz_name, settings.tz)
    window = parse_window(window_text or settings.send_window)
    opening = window.next_opening(now, tz)
    if opening <= now:
        return None, ""
    local = opening.astimezone(tz)
    return opening, f"held for the physician's send window ({window}): leaves {local:%a %d %b %H:%M %Z}"


def cancel_for_discharged(engine: Engine, rules: list[Rule], now: datetime) -> int:
    """Recurring reports still waiting for a client who has been discharged are cancelled."""
    recurring = [r.name for r in rules if r.scope == "client" and not r.event]
    if not recurring:
        return 0
    with store.write(engine) as conn:
        discharged = select(clients.c.id).where(clients.c.status == "discharged")
        ids = list(
            conn.execute(
                select(messages.c.id).where(
                    messages.c.status == models.PENDING,
                    messages.c.rule.in_(recurring),
                    messages.c.client_id.in_(discharged),
                )
            ).scalars()
        )
        if not ids:
            return 0
        conn.execute(
            update(messages)
            .where(messages.c.id.in_(ids))
            .values(status=models.CANCELLED, reason=models.DISCHARGED, updated_at=now)
        )
        conn.execute(
            message_events.insert(),
            [{"message_id": i, "at": now, "action": "cancelled", "detail": "client discharged"} for i in ids],
        )
    return len(ids)


def replan_moved(
    engine: Engine, settings: Settings, rules: list[Rule], renderer: Renderer, now: datetime
) -> int:
    """Queued mail about a client now referred to another physician: cancelled, and planned afresh.

    The cancelled message gives up its dedupe key, so the rules queue what is
    still due for the new physician in this same pass. A waiting digest that
    carries such an update is taken apart and its other updates combined
    again (the gate does the same for a digest being sent).
    """
    moved = (messages.c.status == models.PENDING) & (clients.c.physician_id != messages.c.physician_id)
    query = select(messages.c.id, messages.c.digest_id).select_from(messages.join(clients)).where(moved)
    with store.read(engine) as conn:
        if not conn.execute(query.limit(1)).first():
            return 0
    today = now.astimezone(settings.tz).date()
    with store.write(engine) as conn:
        found = conn.execute(query).all()
        singles = [row.id for row in found if row.digest_id is None]
        verdicts = gate.screen(conn, singles, today)
        done = gate.refuse(conn, [r for r in verdicts.refused.values() if r.replan], now)
        digest_ids = sorted({row.digest_id for row in found if row.digest_id is not None})
        verdicts = gate.screen(conn, digest_ids, today)
        groups = [gate.take_apart(conn, digest_id, verdicts, now) for digest_id in digest_ids]
    for remaining in groups:
        if remaining:
            regroup(engine, settings, renderer, rules, remaining, now)
    members = [r for d in digest_ids for r in verdicts.members.get(d, {}).values() if r.replan]
    cancelled = len(done) + len(members)
    if cancelled:
        log.info("%d queued update(s) cancelled: the client moved to another physician", cancelled)
    return cancelled


# --- preview -------------------------------------------------------------------


def preview_rule(
    engine: Engine, settings: Settings, rule_name: str, client_ref: str | None, now: datetime
) -> Rendered:
    """Render the rule named ``rule_name`` as it would go now (``outreach preview``, the console's Preview).

    The rules and templates are read as the service reads them, so what is
    shown is what would be sent; a rule that does not exist is a ``NotFound``
    naming the ones that do.
    """
    from outreach.errors import NotFound
    from outreach.renderer import load_renderer
    from outreach.rules import load_rules

    rules = {r.name: r for r in load_rules(settings.campaigns_dir, settings.templates_dir)}
    if rule_name not in rules:
        raise NotFound(f"no rule named {rule_name!r} (rules: {', '.join(sorted(rules))})")
    renderer = load_renderer(settings.templates_dir)  # the files as the service reads them
    return preview(engine, settings, rules[rule_name], renderer, client_ref, now)


def preview(
    engine: Engine, settings: Settings, rule: Rule, renderer: Renderer, client_ref: str | None, now: datetime
) -> Rendered:
    """Render what ``rule`` would send now for a client (or physician), queuing nothing."""
    from outreach.errors import NotFound

    with store.read(engine) as conn:
        client = None
        if client_ref is not None:
            client = conn.execute(select(clients).where(clients.c.ref == client_ref)).first()
            if client is None:
                raise NotFound(f"no client with ref {client_ref!r}")
        if rule.scope == "physician":
            if client is None:
                raise NotFound(
                    f"rule {rule.name} is about a physician: name one of their clients with --client"
                )
            period = previous_period(rule.period or "quarter", now.astimezone(settings.tz).date())
            context = physician_context(conn, settings, rule, client.physician_id, now, period)
        else:
            if client is None:
                raise NotFound(f"rule {rule.name} is about a client: give --client REF")
            event_id = None
            kind = rule.event or rule.reply_event  # a reminder is about the event its email reported
            if kind:
                event_id = conn.execute(
                    select(events.c.id)
                    .where(events.c.client_id == client.id, events.c.kind == kind)
                    .order_by(events.c.occurred_at.desc())
                ).scalar()
                if event_id is None:
                    raise NotFound(f"client {client_ref} has no {kind} event to report on")
            history = load_history(conn, client.id)
            if rule.no_event and lapse_start(history, rule.no_event) is None:
                raise NotFound(f"client {client_ref} has no initial assessment: no attendance to report on")
            context = client_context(settings, rule, history, now, event_id)
    return renderer.render(rule.template, context)


# --- consent changes after queuing ---------------------------------------------------


def reconsider_consent(
    engine: Engine, settings: Settings, rules: list[Rule], renderer: Renderer, now: datetime
) -> tuple[int, int]:
    """Apply consent recorded or withdrawn since messages were queued.

    A pending message about a client whose consent is no longer valid is
    suppressed before it leaves; a message suppressed for want of consent is
    rendered afresh and queued once consent is on record (within the rule's
    ``max_age``, so a months-old report is not sent out of the blue).
    Returns (suppressed, revived).
    """
    by_name = {r.name: r for r in rules if r.consent_required and r.scope == "client"}
    if not by_name:
        return 0, 0
    today = now.astimezone(settings.tz).date()
    oldest = now - max(rule.max_age for rule in by_name.values())
    consenting = consent_in_effect(today)
    about_client = messages.c.rule.in_(list(by_name)) & messages.c.digest_id.is_(None)
    # Only the messages whose consent changed come back: the steady tick reads
    # (almost) nothing, not the whole log.
    now_refused = (messages.c.status == models.PENDING) & about_client & ~consenting
    now_given = (
        (messages.c.status == models.SUPPRESSED)
        & (messages.c.created_at >= oldest)
        & about_client
        & (messages.c.reason == models.CONSENT)
        & messages.c.body_removed_at.is_(None)  # its body removed under the retention setting: never sent
        & consenting
    )
    with store.read(engine) as conn:
        rows = [
            row for where in (now_refused, now_given) for row in conn.execute(_consent_query().where(where))
        ]
    suppressed = revived = 0
    for row in rows:
        problem = row_consent_problem(row, today)
        if row.status == models.PENDING and problem:
            suppressed += _suppress_for_consent(engine, row.id, now, f"{problem}: not sent")
        elif (
            row.status == models.SUPPRESSED
            and not problem
            and now - row.created_at <= by_name[row.rule].max_age
        ):
            revived += _revive(engine, settings, renderer, by_name[row.rule], row, now)
    return suppressed, revived


def _consent_query() -> Select[*tuple[Any, ...]]:
    return select(
        *messages.c["id", "status", "rule", "event_id", "created_at"],
        clients.c.id.label("client_id"),
        *clients.c["ref", "consent_date", "consent_expires", "consent_revoked_on"],
        *_recipient_columns(),
    ).select_from(messages.join(clients).join(physicians, physicians.c.id == clients.c.physician_id))


def _suppress_for_consent(engine: Engine, message_id: int, now: datetime, detail: str) -> int:
    """A pending message whose client's consent went away: suppressed, so it can be revived."""
    with store.write(engine) as conn:
        done = conn.execute(
            update(messages)
            .where(messages.c.id == message_id, messages.c.status == models.PENDING)
            .values(status=models.SUPPRESSED, reason=models.CONSENT, last_error=detail, updated_at=now)
        ).rowcount
        if done:
            trail(conn, message_id, now, "suppressed", detail)
    if done:
        log.info("message %s %s: %s", message_id, models.SUPPRESSED, detail)
    return done


def _revive(
    engine: Engine, settings: Settings, renderer: Renderer, rule: Rule, row: Any, now: datetime
) -> int:
    """Render a consent-suppressed message afresh and queue it."""
    try:
        with store.read(engine) as conn:
            context = client_context(settings, rule, load_history(conn, row.client_id), now, row.event_id)
        rendered = renderer.render(rule.template, context)
    except RenderError as exc:
        log.error("message %s could not be rendered again: %s", row.id, exc)
        return 0
    not_before, held = (None, "")
    if rule.priority == models.PRIORITIES["normal"]:
        not_before, held = hold_for_window(settings, row.physician_tz, row.send_window, now)
    with store.write(engine) as conn:
        done = conn.execute(
            update(messages)
            .where(
                messages.c.id == row.id,
                messages.c.status == models.SUPPRESSED,
                messages.c.body_removed_at.is_(None),
            )
            .values(
                status=models.PENDING,
                subject=rendered.subject,
                not_before=not_before,
                next_attempt_at=now,
                reason=None,
                last_error=None,
                updated_at=now,
            )
        ).rowcount
        if done:
            conn.execute(
                update(message_bodies)
                .where(message_bodies.c.message_id == row.id)
                .values(html=rendered.html, text=rendered.text)
            )
            detail = "consent now on record: rendered again and queued" + (f"; {held}" if held else "")
            trail(conn, row.id, now, "queued", detail)
    return done
