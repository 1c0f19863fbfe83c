"""What came back, for a person: replies, automatic answers, bounces and unmatched mail.

``outreach replies`` and ``outreach log show`` read here; ``inbox`` writes.
"""

from __future__ import annotations

from datetime import tzinfo

from sqlalchemy import Connection, select

from outreach import tables
from outreach.errors import NotFound
from outreach.models import clients, inbound, physicians

FIELDS = (
    "id",
    "kind",
    "message_id",
    "client_ref",
    "physician_email",
    "from",
    "received_at",
    "subject",
    "text",
    "auto",
    "bounce_status",
    "reason",
    "text_removed_at",  # retention: when the text (and the raw email) was removed
)


def list_replies(
    conn: Connection,
    client: str | None = None,
    physician: str | None = None,
    unmatched: bool = False,
    message_id: int | None = None,
    limit: int | None = 200,
) -> list[dict]:
    """Inbound mail, newest first, as ``FIELDS``; ``unmatched`` lists only what matched none of ours."""
    query = (
        select(
            inbound.c.id,
            inbound.c.kind,
            inbound.c.message_id,
            clients.c.ref.label("client_ref"),
            physicians.c.email.label("physician_email"),
            inbound.c.sender.label("from"),
            inbound.c.received_at,
            inbound.c.subject,
            inbound.c.text,
            (inbound.c.kind == "auto_reply").label("auto"),
            inbound.c.bounce_status,
            inbound.c.reason,
            inbound.c.body_removed_at.label("text_removed_at"),
        )
        .select_from(
            inbound.outerjoin(clients, clients.c.id == inbound.c.client_id).outerjoin(
                physicians, physicians.c.id == inbound.c.physician_id
            )
        )
        .order_by(inbound.c.received_at.desc(), inbound.c.id.desc())
    )
    if unmatched:
        query = query.where(inbound.c.kind == "unmatched")
    if client:
        found = conn.execute(select(clients.c.id).where(clients.c.ref == client)).scalar()
        if found is None:
            raise NotFound(f"no client with ref {client!r}")
        query = query.where(inbound.c.client_id == found)
    if physician:
        found = conn.execute(
            select(physicians.c.id).where(physicians.c.email == physician.strip().lower())
        ).scalar()
        if found is None:
            raise NotFound(f"no physician with email {physician!r}")
        query = query.where(inbound.c.physician_id == found)
    if message_id is not None:
        query = query.where(inbound.c.message_id == message_id)
    if limit:
        query = query.limit(limit)
    return [{**row._mapping, "auto": bool(row.auto)} for row in conn.execute(query)]


def format_replies(rows: list[dict], fmt: str, tz: tzinfo) -> str:
    def cells(r: dict) -> list[str]:
        return [
            str(r["id"]),
            f"{r['received_at'].astimezone(tz):%Y-%m-%d %H:%M}",
            r["kind"].replace("_", " "),
            str(r["message_id"] or ""),
            r["client_ref"] or "",
            r["from"],
            _first_line(says(r, tz) or r["reason"] or r["subject"]),
        ]

    headers = ["ID", "RECEIVED", "KIND", "MESSAGE", "CLIENT", "FROM", "SAYS"]
    return tables.as_format(rows, fmt, FIELDS, headers, cells, "(nothing received)")


def says(row: dict, tz: tzinfo) -> str:
    """The text received, or when the retention setting removed it."""
    removed = row["text_removed_at"]
    if removed:
        return f"(text removed on {removed.astimezone(tz):%Y-%m-%d} under the retention setting)"
    return str(row["text"] or "")


def _first_line(text: str, width: int = 70) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


KIND_WORDS = {"reply": "reply", "auto_reply": "automatic reply", "bounce": "bounce"}


def replies_lines(conn: Connection, message_id: int, tz: tzinfo) -> list[str]:
    """For ``log show``: each reply to the message, when, from whom, and what it says."""
    lines = []
    for r in list_replies(conn, message_id=message_id, limit=None):
        when = f"{r['received_at'].astimezone(tz):%Y-%m-%d %H:%M}"
        what = KIND_WORDS.get(r["kind"], r["kind"])
        lines.append(f"  {when}  {what} from {r['from']}: {_first_line(says(r, tz) or r['subject'], 200)}")
    return lines
