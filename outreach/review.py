"""The sent-message log: what went to whom, when, and what happened to it.

Filtering happens in SQL (indexed columns), never by loading the log into
Python, because a practice keeps years of it.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import Case, ColumnElement, Connection, Engine, Select, case, func, select

from outreach import store, tables
from outreach.csvsafe import safe_cell
from outreach.errors import NotFound
from outreach.models import (
    BOUNCED,
    MESSAGE_STATUSES,
    REDIRECTED,
    SENT,
    clients,
    message_bodies,
    message_events,
    messages,
    physicians,
)

LOG_FIELDS = (
    "id",
    "created_at",
    "sent_at",
    "status",
    "rule",
    "template",
    "to",
    "subject",
    "client_ref",
    "physician_email",
    "attempts",
    "last_error",
    "message_id",
    "sent_message_id",
    "priority",
    "next_attempt_at",
    "smtp_response",
    "digest_id",
    "redirected_to",
)


# The digest that carried an update: its Message-ID is the one the physician received.
_DIGEST = messages.alias("digest")


# A bounced message was sent: the server took it, then gave it back. A redirected one went to staging.
WENT_OUT = (SENT, BOUNCED, REDIRECTED)


def _sent_message_id() -> Case[Any]:
    """The Message-ID that actually went out for this entry, or NULL while nothing has."""
    return case(
        (messages.c.digest_id.is_not(None) & _DIGEST.c.status.in_(WENT_OUT), _DIGEST.c.message_id),
        (messages.c.digest_id.is_(None) & messages.c.status.in_(WENT_OUT), messages.c.message_id),
        else_=None,
    )


def _log_query() -> Select[*tuple[Any, ...]]:
    return select(
        messages.c.id,
        messages.c.created_at,
        messages.c.sent_at,
        messages.c.status,
        messages.c.rule,
        messages.c.template,
        messages.c.recipient.label("to"),
        messages.c.subject,
        clients.c.ref.label("client_ref"),
        physicians.c.email.label("physician_email"),
        messages.c.attempts,
        messages.c.last_error,
        messages.c.message_id,
        _sent_message_id().label("sent_message_id"),
        messages.c.priority,
        messages.c.next_attempt_at,
        messages.c.smtp_response,
        messages.c.digest_id,
        messages.c.redirected_to,
    ).select_from(messages.outerjoin(clients, clients.c.id == messages.c.client_id).outerjoin(
        physicians, physicians.c.id == messages.c.physician_id
    ).outerjoin(_DIGEST, _DIGEST.c.id == messages.c.digest_id))  # fmt: skip


def list_messages(
    conn: Connection,
    status: str | None = None,
    physician: str | None = None,
    client: str | None = None,
    since: date | datetime | None = None,
    limit: int | None = 100,
) -> list[dict]:
    """Log entries, newest first, filtered in the database (``outreach log``; see ``find_messages``)."""
    if isinstance(since, date) and not isinstance(since, datetime):
        since = datetime.combine(since, time.min, UTC)
    query = LogQuery(status=status, physician=physician, client=client, since=since, limit=limit)
    return find_messages(conn, query)


# --- the log, filtered and paged (``outreach log``, the console's log page, the API) -----


@dataclass(frozen=True)
class LogQuery:
    """What part of the log to read; every filter is on an indexed column but ``rule`` and ``words``.

    ``words`` are matched (LIKE) only among the rows the other filters leave,
    and ``before`` pages back by (created_at, id), never by OFFSET, so a page
    far back in a million messages costs what the first one does.
    """

    status: str | None = None
    physician: str | None = None  # email
    client: str | None = None  # ref
    rule: str | None = None
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until
    words: str | None = None  # every word in the subject (case-insensitive)
    before: str | None = None  # a cursor from cursor_of(): only rows older than it
    limit: int | None = 100


# A cursor is the row's created_at in UTC (microseconds) and its id: "2026-11-25T15:00:00.000000Z_42".
_CURSOR = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)(Z|[+ ]00:00)?_(\d{1,10})$")
LARGEST_ID = 2**31 - 1  # a message id is a 4-byte integer on PostgreSQL
MAX_WORDS = 10  # words in a subject search; more is not a search a person types


def cursor_of(row: dict) -> str:
    """Where the next page starts: opaque, URL-safe text naming this row's place in the log."""
    at = row["created_at"].astimezone(UTC)
    return f"{at:%Y-%m-%dT%H:%M:%S.%f}Z_{row['id']}"


def _parse_cursor(text: str) -> tuple[datetime, int]:
    """The (created_at, id) a cursor names; NotFound for text no log page gave."""
    found = _CURSOR.match(text.strip())
    if found is None:
        raise NotFound(f"the page cursor {text[:60]!r} is not one this log gave: start again from the newest")
    try:
        at = datetime.fromisoformat(found.group(1)).replace(tzinfo=UTC)
    except ValueError:
        raise NotFound(f"the page cursor {text[:60]!r} names no time: start again from the newest") from None
    if int(found.group(3)) > LARGEST_ID:
        raise NotFound(f"the page cursor {text[:60]!r} is not one this log gave: start again from the newest")
    return at, int(found.group(3))


def _like_word(word: str) -> str:
    """A word as a LIKE pattern matching it anywhere, its own % and _ taken literally."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filters(conn: Connection, query: LogQuery, *, status: bool = True) -> list[ColumnElement[bool]]:
    """The WHERE clauses for ``query`` (without ``before``); names are looked up to ids first.

    A physician or client is found by its unique column, then the log is
    filtered by its id (``ix_messages_physician_created``, the client index).
    """
    where: list[ColumnElement[bool]] = []
    if query.status and status:
        if query.status not in MESSAGE_STATUSES:
            raise NotFound(f"status {query.status!r} is not one of {', '.join(MESSAGE_STATUSES)}")
        where.append(messages.c.status == query.status)
    if query.physician:
        email = query.physician.strip().lower()
        pid = conn.execute(select(physicians.c.id).where(physicians.c.email == email)).scalar()
        if pid is None:
            raise NotFound(f"no physician with email {query.physician!r}")
        where.append(messages.c.physician_id == pid)
    if query.client:
        cid = conn.execute(select(clients.c.id).where(clients.c.ref == query.client)).scalar()
        if cid is None:
            raise NotFound(f"no client with ref {query.client!r}")
        where.append(messages.c.client_id == cid)
    if query.rule:
        where.append(messages.c.rule == query.rule)
    if query.since is not None:
        where.append(messages.c.created_at >= query.since)
    if query.until is not None:
        where.append(messages.c.created_at < query.until)
    for word in (query.words or "").split()[:MAX_WORDS]:
        where.append(messages.c.subject.ilike(_like_word(word), escape="\\"))
    return where


def _older_than(cursor: str) -> ColumnElement[bool]:
    """Rows after the cursor's in newest-first order: written so the created_at index bounds the scan."""
    at, ident = _parse_cursor(cursor)
    return (messages.c.created_at <= at) & ((messages.c.created_at < at) | (messages.c.id < ident))


def _find(conn: Connection, query: LogQuery, *extra: Any) -> list[dict]:
    statement = _log_query().add_columns(*extra).where(*_filters(conn, query))
    if query.before:
        statement = statement.where(_older_than(query.before))
    statement = statement.order_by(messages.c.created_at.desc(), messages.c.id.desc())
    if query.limit:
        statement = statement.limit(query.limit)
    return [dict(row._mapping) for row in conn.execute(statement)]


def find_messages(conn: Connection, query: LogQuery) -> list[dict]:
    """Log entries with exactly the ``LOG_FIELDS`` keys, newest first.

    ``NotFound`` (one line) for an unknown status, physician or client, or a
    cursor this log did not give.
    """
    return _find(conn, query)


def log_page(conn: Connection, query: LogQuery) -> list[dict]:
    """As ``find_messages``, with ``recipient_name`` too: a person reads "to whom" by name."""
    return _find(conn, query, messages.c.recipient_name)


def count_by_status(conn: Connection, query: LogQuery) -> dict[str, int]:
    """How many messages of each status the query's other filters leave (status and before ignored).

    Every status is named, in the lifecycle's order, zero included: one
    GROUP BY over the filtered rows.
    """
    statement = (
        select(messages.c.status, func.count())
        .where(*_filters(conn, query, status=False))
        .group_by(messages.c.status)
    )
    found = {status: count for status, count in conn.execute(statement)}
    return {status: found.get(status, 0) for status in MESSAGE_STATUSES}


FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(9998, 12, 31)


def day_bounds(since: date | None, until: date | None, tz: tzinfo) -> tuple[datetime | None, datetime | None]:
    """The practice's days as a LogQuery's range: from the start of ``since`` to the end of ``until``."""
    for name, day in (("since", since), ("until", until)):
        if day is not None and not FIRST_DAY <= day <= LAST_DAY:
            raise NotFound(f"{name}: {day} is outside the dates the log can hold ({FIRST_DAY} to {LAST_DAY})")
    start = since_start(since, tz) if since else None
    end = since_start(until + timedelta(days=1), tz) if until else None
    return start, end


def iter_csv(engine: Engine, query: LogQuery, batch: int = 1000) -> Iterator[str]:
    """The whole filtered log as CSV (``outreach log --format csv``'s columns), read a page at a time.

    Each page is its own short read, so an export of a year's log neither
    holds a transaction open nor the whole log in memory.
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    page = replace(query, before=query.before, limit=batch)
    while True:
        with store.read(engine) as conn:
            rows = find_messages(conn, page)
        for row in rows:
            writer.writerow(_csv_cells(row))
        yield out.getvalue()
        out.seek(0)
        out.truncate()
        if len(rows) < batch:
            return
        page = replace(page, before=cursor_of(rows[-1]))


def since_start(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time.min, tz)


def _plain(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def format_json(rows: list[dict]) -> str:
    """A JSON array, one message object per line."""
    if not rows:
        return "[]"
    lines = [json.dumps({k: _plain(v) for k, v in row.items()}, ensure_ascii=False) for row in rows]
    return "[\n" + ",\n".join(lines) + "\n]"


def format_csv(rows: list[dict]) -> str:
    """The log as CSV; text that a spreadsheet would run as a formula is quoted (``csvsafe``)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_csv_cells(row))
    return out.getvalue().rstrip("\n")


def _csv_cells(row: dict) -> dict:
    """One log entry as CSV cells: text a spreadsheet would run as a formula is quoted (``csvsafe``)."""
    return {k: safe_cell(_plain(v)) if v is not None else "" for k, v in row.items()}


def format_table(rows: list[dict], tz: tzinfo) -> str:
    if not rows:
        return "(no messages)"
    headers = ("ID", "QUEUED", "STATUS", "RULE", "TO", "SUBJECT", "TRIES", "NOTE")
    table = []
    for row in rows:
        note = row["last_error"] or ""
        if row["status"] == "sent" and row["sent_at"]:
            note = f"sent {row['sent_at'].astimezone(tz):%Y-%m-%d %H:%M}"
        if row["status"] == REDIRECTED and row.get("redirected_to"):
            note = f"staging: went to {row['redirected_to'].replace(',', ', ')}, not to the physician"
        if row["digest_id"]:
            note = f"in digest {row['digest_id']}" + (f", {note}" if note else "")
        table.append(
            (
                str(row["id"]),
                f"{row['created_at'].astimezone(tz):%Y-%m-%d %H:%M}",
                row["status"],
                row["rule"],
                row["to"],
                _clip(row["subject"], 48),
                str(row["attempts"]),
                _clip(note, 60),
            )
        )
    return tables.format_table(headers, table)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _message_id_line(conn: Connection, row: Any) -> str:
    """The Message-ID the physician received: a digest's, for an update that travelled in one."""
    if row.digest_id is None:
        return row.message_id
    digest = conn.execute(
        select(messages.c.message_id, messages.c.status).where(messages.c.id == row.digest_id)
    ).one()
    if digest.status in (SENT, REDIRECTED):
        return f"{digest.message_id} ({digest.status} inside digest {row.digest_id})"
    return f"none yet (to be sent inside digest {row.digest_id})"


def _redirected_lines(row: Any) -> list[str]:
    """Where a message went under staging instead of its recipient (``redirected_to``)."""
    if not row.redirected_to:
        return []
    to = row.redirected_to.replace(",", ", ")
    if row.status == REDIRECTED:
        return [f"Redirected:  staging: sent to {to}, never to the physician"]
    return [f"Redirected:  staging: the last attempt went to {to}, not to the physician"]


def body_removed(removed_at: datetime, sha256: str | None, tz: tzinfo) -> str:
    """What ``log show`` and the console say in place of a body the retention setting removed."""
    return f"removed on {removed_at.astimezone(tz):%Y-%m-%d} under the retention setting (SHA-256 {sha256})"


def show_message(conn: Connection, message_id: int, tz: tzinfo) -> str:
    """One message whole: headers, the text part, and its attempt trail."""
    from outreach.outbox import with_body  # only here: ``outreach log`` itself starts faster

    row = conn.execute(with_body().where(messages.c.id == message_id)).first()
    if row is None:
        raise NotFound(f"no message with id {message_id}")
    ref = None
    if row.client_id is not None:
        ref = conn.execute(select(clients.c.ref).where(clients.c.id == row.client_id)).scalar()
    trail = conn.execute(
        select(message_events).where(message_events.c.message_id == message_id).order_by(message_events.c.id)
    ).all()

    def when(value: datetime | None) -> str:
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"

    lines = [
        f"Message {row.id}  [{row.status}]",
        f"Rule:        {row.rule} (template {row.template})",
        f"To:          {row.recipient_name} <{row.recipient}>",
        *_redirected_lines(row),
        f"Subject:     {row.subject}",
        f"Message-ID:  {_message_id_line(conn, row)}",
        f"Client:      {ref or '-'}",
        f"Priority:    {'urgent' if row.priority > 0 else 'normal'}",
        f"Queued:      {when(row.created_at)}",
        f"Sent:        {when(row.sent_at)}",
        f"Attempts:    {row.attempts}",
    ]
    if row.status == "pending":
        lines.append(f"Next try:    {when(row.next_attempt_at)}")
    if row.digest_id:
        lines.append(f"Digest:      carried by message {row.digest_id}")
    if row.kind == "digest":
        carried = conn.execute(
            select(messages.c.id).where(messages.c.digest_id == row.id).order_by(messages.c.id)
        )
        lines.append(f"Carries:     messages {', '.join(str(i) for i in carried.scalars())}")
    if row.last_error:
        lines.append(f"Last error:  {row.last_error}")
    if row.smtp_response:
        lines.append(f"Server said: {row.smtp_response}")
    if row.body_removed_at:
        lines.append(f"Body:        {body_removed(row.body_removed_at, row.body_sha256, tz)}")
    lines += ["", "Trail:"]
    lines += [f"  {when(t.at)}  {t.action:<10} {t.detail}".rstrip() for t in trail]
    from outreach.replies import replies_lines

    answers = replies_lines(conn, message_id, tz)
    if answers:
        lines += ["", "Replies:", *answers]
    if not row.body_removed_at:
        lines += ["", "Text part:", "", row.text.rstrip()]
    return "\n".join(lines)


# --- one message whole, for the console and the API ------------------------------------------


def message_detail(conn: Connection, message_id: int) -> dict:
    """One message whole: the log entry, who it is about and to, its body, its trail and its links.

    Every ``LOG_FIELDS`` key plus ``recipient_name``, ``client_name``,
    ``physician_name``, ``kind``, ``reason``, ``html``, ``text``, ``trail``
    ([{"at", "event", "detail"}], oldest first), ``digest_members`` (the ids a
    digest carried), ``resent_from`` (the id this is a resend of, or None) and
    ``resent_as`` (the ids of its resends, oldest first). ``NotFound`` if none.
    Under the retention setting ``body_removed_at`` and ``body_sha256`` say
    when a body was removed (``html`` and ``text`` are then empty).
    """
    statement = _log_query().add_columns(
        messages.c.recipient_name,
        messages.c.kind,
        messages.c.reason,
        messages.c.not_before,
        (clients.c.first_name + " " + clients.c.last_name).label("client_name"),
        physicians.c.name.label("physician_name"),
        messages.c.body_removed_at,
        messages.c.body_sha256,
        messages.c.resent_from,
    )
    row = conn.execute(statement.where(messages.c.id == message_id)).first()
    if row is None:
        raise NotFound(f"no message with id {message_id}")
    found = dict(row._mapping)
    body = conn.execute(
        select(message_bodies.c.html, message_bodies.c.text).where(message_bodies.c.message_id == message_id)
    ).first()
    found["html"], found["text"] = (body.html, body.text) if body else ("", "")
    trail = conn.execute(
        select(message_events.c.at, message_events.c.action, message_events.c.detail)
        .where(message_events.c.message_id == message_id)
        .order_by(message_events.c.id)
    ).all()
    found["trail"] = [{"at": t.at, "event": t.action, "detail": t.detail} for t in trail]
    found["digest_members"] = list(
        conn.execute(
            select(messages.c.id).where(messages.c.digest_id == message_id).order_by(messages.c.id)
        ).scalars()
    )
    found["resent_as"] = list(
        conn.execute(
            select(messages.c.id).where(messages.c.resent_from == message_id).order_by(messages.c.id)
        ).scalars()
    )
    return found
