"""The referring physicians as the console shows them: who they are, their clients, what went to them.

Read queries only (changes go through ``records``). The per-physician
numbers (referrals, conversion, time to first report) are ``loops.physician_summary``;
this module answers what one physician's page and the loops page need besides.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from outreach import store
from outreach.models import clients, messages, physicians

RECENT_MESSAGES = 20


@dataclass
class Recent:
    """A physician's newest messages, and whether there are more than were read."""

    rows: list[Any]
    more: bool


def find(conn: Connection, email: str) -> Any | None:
    """The physician with this email (stored trimmed and in lower case), or None."""
    key = email.strip().lower()
    if not key:
        return None
    return conn.execute(select(physicians).where(physicians.c.email == key)).first()


def choices(conn: Connection) -> list[tuple[str, str]]:
    """Every physician as (email, name), by name: the options of a "which physician" select."""
    rows = conn.execute(select(physicians.c.email, physicians.c.name).order_by(physicians.c.name))
    return [(row.email, row.name) for row in rows]


def clients_of(conn: Connection, physician_id: int) -> list[Any]:
    """The physician's clients, the most recently referred first."""
    query = (
        select(
            clients.c.ref,
            clients.c.first_name,
            clients.c.last_name,
            clients.c.status,
            clients.c.referral_date,
            clients.c.diagnosis,
        )
        .where(clients.c.physician_id == physician_id)
        .order_by(clients.c.referral_date.desc().nulls_last(), clients.c.ref)
    )
    return list(conn.execute(query))


def recent_messages(conn: Connection, physician_id: int, limit: int = RECENT_MESSAGES) -> Recent:
    """The physician's newest messages (the index on physician and time answers it)."""
    query = (
        select(
            messages.c.id,
            messages.c.created_at,
            messages.c.sent_at,
            messages.c.status,
            messages.c.subject,
            messages.c.kind,
            messages.c.digest_id,
            clients.c.ref.label("client_ref"),
        )
        .select_from(messages.outerjoin(clients, clients.c.id == messages.c.client_id))
        .where(messages.c.physician_id == physician_id)
        .order_by(messages.c.created_at.desc(), messages.c.id.desc())
        .limit(limit + 1)
    )
    rows = list(conn.execute(query))
    return Recent(rows[:limit], len(rows) > limit)


def names(conn: Connection, refs: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Client names by ref (for ``refs``) and physician names by email: a list speaks of people."""
    wanted = sorted(set(refs))
    client_names: dict[str, str] = {}
    for chunk in store.chunks(wanted):
        rows = conn.execute(
            select(clients.c.ref, clients.c.first_name, clients.c.last_name).where(clients.c.ref.in_(chunk))
        )
        client_names.update((row.ref, f"{row.first_name} {row.last_name}") for row in rows)
    physician_names = dict(choices(conn))
    return client_names, physician_names
