"""Writing to the outbox: one message row, and one line of its audit trail.

Shared by every stage that queues or moves a message, so each row is
inserted and each step is recorded the same way.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from outreach.models import message_events, messages


def insert_message(conn: Connection, row: dict) -> int | None:
    """Insert unless the dedupe key exists; the new id, or None on conflict."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(messages)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(messages.c.id)
    )
    return conn.execute(statement).scalar()


def trail(conn: Connection, message_id: int, at: datetime, action: str, detail: str = "") -> None:
    """One step in a message's life, as ``outreach log show`` lists it."""
    conn.execute(message_events.insert().values(message_id=message_id, at=at, action=action, detail=detail))
