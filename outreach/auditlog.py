"""Reading the audit trail: who viewed or changed what, when, from where.

The ``audit`` table is append-only: ``records`` writes it in the transaction
of each change, ``accounts`` for logins, and the console for each view of
health information. Nothing in the package updates or deletes its rows.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from sqlalchemy import Connection, select

from outreach import tables
from outreach.models import audit

FIELDS = ("id", "at", "actor", "address", "action", "subject", "detail")


def entries(
    conn: Connection,
    who: str | None = None,
    since: datetime | None = None,
    limit: int | None = 200,
    before_id: int | None = None,
) -> list[dict]:
    """Audit lines, newest first; ``before_id`` pages back (keyset, by id)."""
    query = select(*(audit.c[name] for name in FIELDS))
    if who:
        query = query.where(audit.c.actor == who)
    if since is not None:
        query = query.where(audit.c.at >= since)
    if before_id is not None:
        query = query.where(audit.c.id < before_id)
    query = query.order_by(audit.c.id.desc())
    if limit:
        query = query.limit(limit)
    return [dict(row._mapping) for row in conn.execute(query)]


def format_entries(rows: list[dict], fmt: str, tz: tzinfo) -> str:
    def cells(r: dict) -> list[str]:
        when = f"{r['at'].astimezone(tz):%Y-%m-%d %H:%M:%S}"
        return [when, r["actor"], r["address"] or "", r["action"], r["subject"], r["detail"]]

    headers = ["WHEN", "WHO", "FROM", "ACTION", "SUBJECT", "DETAIL"]
    return tables.as_format(rows, fmt, FIELDS, headers, cells, "(nothing audited)")
