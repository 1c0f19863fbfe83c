"""Writing to the outbox: one message row, and one line of its audit trail.

Shared by every stage that queues or moves a message, so each row is
inserted and each step is recorded the same way. The sending side writes
here too (``settle_members``), so this module must not import the
rendering stack.
"""

from __future__ import annotations

import importlib
import logging
import re
from datetime import datetime
from types import ModuleType
from typing import Any

from sqlalchemy import Connection, Select, select, update

from outreach.models import (
    FAILED,
    PENDING,
    REDIRECTED,
    SENT,
    message_bodies,
    message_events,
    messages,
    physicians,
)
from outreach.store import chunks

log = logging.getLogger(__name__)

BODY = ("html", "text")  # stored in message_bodies, the rest in messages
DIGEST = "digest"  # the kind (and rule, and template) of an email that carries several updates


def _split(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return {k: v for k, v in row.items() if k not in BODY}, {k: row[k] for k in BODY}


def insert_message(conn: Connection, row: dict[str, Any]) -> int | None:
    """Insert unless the dedupe key exists; the new id, or None on conflict.

    ``row`` holds the ``messages`` columns and the body (``html``, ``text``).
    """
    entry, body = _split(row)
    statement = (
        _dialect(conn)
        .insert(messages)
        .values(**entry)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(messages.c.id)
    )
    message_id = conn.execute(statement).scalar()
    if message_id is not None:
        conn.execute(message_bodies.insert().values(message_id=message_id, **body))
    return message_id


def insert_messages(conn: Connection, rows: list[dict[str, Any]]) -> list[int | None]:
    """Insert many in one statement; each row's new id, or None where its dedupe key was taken.

    A row is ours when the stored Message-ID is the one we generated for it.
    """
    if not rows:
        return []
    entries, texts = zip(*(_split(row) for row in rows), strict=True)
    conn.execute(
        _dialect(conn).insert(messages).on_conflict_do_nothing(index_elements=["dedupe_key"]), list(entries)
    )
    found: dict[str, int] = {}
    for chunk in chunks(entries):
        keys = [entry["dedupe_key"] for entry in chunk]
        query = select(messages.c.message_id, messages.c.id).where(messages.c.dedupe_key.in_(keys))
        found.update((row.message_id, row.id) for row in conn.execute(query))
    ids = [found.get(entry["message_id"]) for entry in entries]
    bodies = [{"message_id": i, **text} for i, text in zip(ids, texts, strict=True) if i is not None]
    if bodies:
        conn.execute(message_bodies.insert(), bodies)
    return ids


def _dialect(conn: Connection) -> ModuleType:
    """The dialect's own INSERT (for ON CONFLICT), imported when used: PostgreSQL's costs every start 50 ms."""
    name = "postgresql" if conn.dialect.name == "postgresql" else "sqlite"
    return importlib.import_module(f"sqlalchemy.dialects.{name}")


def with_body() -> Select[Any]:
    """Log entries with what they say: ``select(messages)`` plus ``html`` and ``text``."""
    return select(messages, message_bodies.c.html, message_bodies.c.text).select_from(
        messages.outerjoin(message_bodies, message_bodies.c.message_id == messages.c.id)
    )


def log_line(text: object) -> str:
    """Text for the log and the trail on one line, its lines joined by " | ".

    A multi-line SMTP reply must not split a log event. (``compose.one_line``
    is for header text: every break folded to a space.)
    """
    return re.sub(r"\s*[\r\n]+\s*", " | ", str(text)).strip()


_TRAIL = message_events.insert()  # built once: a step is written for every message sent


def trail(conn: Connection, message_id: int, at: datetime, action: str, detail: str = "") -> None:
    """One step in a message's life, as ``outreach log show`` lists it."""
    trail_many(conn, at, [(message_id, action, detail)])


def trail_many(conn: Connection, at: datetime, steps: list[tuple[int, str, str]]) -> None:
    """Many steps at once, as (message id, action, detail)."""
    if steps:
        conn.execute(
            _TRAIL,
            [{"message_id": i, "at": at, "action": action, "detail": detail} for i, action, detail in steps],
        )


def settle_members(conn: Connection, digest_id: int, status: str | None, now: datetime) -> int:
    """The updates a digest carried share its fate: sent (or redirected) with it, or failed with it."""
    if status not in (SENT, REDIRECTED, FAILED):
        return 0
    members = list(
        conn.execute(
            select(messages.c.id).where(messages.c.digest_id == digest_id, messages.c.status == PENDING)
        ).scalars()
    )
    if not members:
        return 0
    if status == SENT:
        values = {"status": SENT, "sent_at": now, "smtp_response": f"sent in digest message {digest_id}"}
        detail = f"delivered in digest message {digest_id}"
    elif status == REDIRECTED:
        values = {
            "status": REDIRECTED,
            "sent_at": now,
            "smtp_response": f"redirected in digest message {digest_id}",
        }
        detail = f"went to the staging address in digest message {digest_id}, not to the physician"
    else:
        values = {"status": FAILED, "last_error": f"digest message {digest_id} failed"}
        detail = f"digest message {digest_id} failed; see its log entry"
    conn.execute(update(messages).where(messages.c.id.in_(members)).values(updated_at=now, **values))
    action = {SENT: "sent", REDIRECTED: "redirected"}.get(status, "failed")
    trail_many(conn, now, [(i, action, detail) for i in members])
    return len(members)


def mark_undeliverable(conn: Connection, message_id: int, reason: str, at: datetime) -> None:
    """The message's physician, at this address, gets nothing more until a person clears it.

    Said by a mail server refusing the address at RCPT (the dispatcher) or by a
    bounce read from the practice's mailbox (``inbox``).
    """
    sent_to = select(messages.c.physician_id, messages.c.recipient).where(messages.c.id == message_id)
    found = conn.execute(sent_to).first()
    if found is None or found.physician_id is None:
        return
    conn.execute(
        update(physicians)
        .where(physicians.c.id == found.physician_id, physicians.c.email == found.recipient.lower())
        .values(undeliverable_on=at.date(), undeliverable_reason=reason[:2000], updated_at=at)
    )
    log.warning("address %s marked undeliverable: %s", found.recipient, reason)
