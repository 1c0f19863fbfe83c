"""Reading the audit trail: who viewed or changed what, when, from where.

The ``audit`` table is append-only: ``records`` writes it in the transaction
of each change, ``accounts`` for logins, and the console for each view of
health information. Nothing in the package updates or deletes its rows.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, tzinfo

from sqlalchemy import Connection, select

from outreach import tables
from outreach.csvsafe import safe_row
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


def _plain(row: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def format_entries(rows: list[dict], fmt: str, tz: tzinfo) -> str:
    if fmt == "json":
        return json.dumps([_plain(row) for row in rows], ensure_ascii=False, indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            safe_row({k: "" if v is None else v for k, v in _plain(row).items()}) for row in rows
        )
        return out.getvalue().rstrip("\n")
    if not rows:
        return "(nothing audited)"
    cells = [
        [
            f"{r['at'].astimezone(tz):%Y-%m-%d %H:%M:%S}",
            r["actor"],
            r["address"] or "",
            r["action"],
            r["subject"],
            r["detail"],
        ]
        for r in rows
    ]
    return tables.format_table(["WHEN", "WHO", "FROM", "ACTION", "SUBJECT", "DETAIL"], cells)
