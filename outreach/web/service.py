"""The service's state (status) and the audit log (admins)."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from outreach import auditlog, records, review, store
from outreach import status as service_status
from outreach.web import security
from outreach.web.security import engine, need, now, settings

bp = Blueprint("service", __name__)
PAGE = 100  # audit lines a page


@bp.route("/status")
def status() -> str:
    with store.read(engine()) as conn:
        health = service_status.health(conn, now(), settings().tick_seconds, settings().redirect_all_to)
    return render_template("status.html", health=health, tz=settings().tz)


@bp.route("/audit")
@need("admin")
def audit() -> str:
    """Who viewed or changed what, newest first (admins only), by user and from a day."""
    who = request.args.get("user", "").strip() or None
    since_text = request.args.get("since", "").strip()
    before = request.args.get("before", "")
    error = None
    since = None
    try:
        day = records.parse_date(since_text, "since") if since_text else None
        since = review.since_start(day, settings().tz) if day else None
    except records.RowError as exc:
        error = str(exc)
    with store.read(engine()) as conn:
        rows = auditlog.entries(conn, who, since, PAGE + 1, int(before) if before.isdigit() else None)
    security.audit("view audit", "audit log", f"user={who or ''} since={since_text}")
    older = rows[PAGE - 1]["id"] if len(rows) > PAGE else None
    return render_template(
        "audit.html",
        rows=rows[:PAGE],
        older=older,
        who=who or "",
        since=since_text,
        error=error,
        tz=settings().tz,
    )
