"""The sent-message log: what went to whom, when, and what happened to it.

Filtering happens in SQL (indexed columns), never by loading the log into
Python, because a practice keeps years of it.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, time, tzinfo
from typing import Any

from sqlalchemy import Case, Connection, Select, case, select

from outreach import tables
from outreach.errors import NotFound
from outreach.models import MESSAGE_STATUSES, SENT, clients, message_events, messages, physicians

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
)


# The digest that carried an update: its Message-ID is the one the physician received.
_DIGEST = messages.alias("digest")


def _sent_message_id() -> Case[Any]:
    """The Message-ID that actually went out for this entry, or NULL while nothing has."""
    return case(
        (messages.c.digest_id.is_not(None) & (_DIGEST.c.status == SENT), _DIGEST.c.message_id),
        (messages.c.digest_id.is_(None) & (messages.c.status == SENT), messages.c.message_id),
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
    """Log entries, newest first, filtered in the database."""
    query = _log_query()
    if status:
        if status not in MESSAGE_STATUSES:
            raise NotFound(f"status {status!r} is not one of {', '.join(MESSAGE_STATUSES)}")
        query = query.where(messages.c.status == status)
    if physician:
        pid = conn.execute(select(physicians.c.id).where(physicians.c.email == physician.lower())).scalar()
        if pid is None:
            raise NotFound(f"no physician with email {physician!r}")
        query = query.where(messages.c.physician_id == pid)
    if client:
        cid = conn.execute(select(clients.c.id).where(clients.c.ref == client)).scalar()
        if cid is None:
            raise NotFound(f"no client with ref {client!r}")
        query = query.where(messages.c.client_id == cid)
    if since is not None:
        query = query.where(messages.c.created_at >= since)
    query = query.order_by(messages.c.created_at.desc(), messages.c.id.desc())
    if limit:
        query = query.limit(limit)
    return [dict(row._mapping) for row in conn.execute(query)]


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
    from outreach.csvsafe import safe_cell

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: safe_cell(_plain(v)) if v is not None else "" for k, v in row.items()})
    return out.getvalue().rstrip("\n")


def format_table(rows: list[dict], tz: tzinfo) -> str:
    if not rows:
        return "(no messages)"
    headers = ("ID", "QUEUED", "STATUS", "RULE", "TO", "SUBJECT", "TRIES", "NOTE")
    table = []
    for row in rows:
        note = row["last_error"] or ""
        if row["status"] == "sent" and row["sent_at"]:
            note = f"sent {row['sent_at'].astimezone(tz):%Y-%m-%d %H:%M}"
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
    if digest.status == SENT:
        return f"{digest.message_id} (sent inside digest {row.digest_id})"
    return f"none yet (to be sent inside digest {row.digest_id})"


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
    lines += ["", "Trail:"]
    lines += [f"  {when(t.at)}  {t.action:<10} {t.detail}".rstrip() for t in trail]
    lines += ["", "Text part:", "", row.text.rstrip()]
    return "\n".join(lines)
