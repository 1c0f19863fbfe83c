"""Writing to the outbox: one message row, and one line of its audit trail.

Shared by every stage that queues or moves a message, so each row is
inserted and each step is recorded the same way.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from outreach.models import message_bodies, message_events, messages
from outreach.store import chunks

BODY = ("html", "text")  # stored in message_bodies, the rest in messages


def _split(row: dict) -> tuple[dict, dict]:
    return {k: v for k, v in row.items() if k not in BODY}, {k: row[k] for k in BODY}


def insert_message(conn: Connection, row: dict) -> int | None:
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


def insert_messages(conn: Connection, rows: list[dict]) -> list[int | None]:
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


def _dialect(conn: Connection):
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def with_body():
    """Log entries with what they say: ``select(messages)`` plus ``html`` and ``text``."""
    return select(messages, message_bodies.c.html, message_bodies.c.text).select_from(
        messages.outerjoin(message_bodies, message_bodies.c.message_id == messages.c.id)
    )


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
