"""The service's state (status) and the audit log (admins)."""

from __future__ import annotations

from flask import Blueprint, render_template

from outreach import status as service_status
from outreach import store
from outreach.web.security import engine, need, now, settings

bp = Blueprint("service", __name__)


@bp.route("/status")
def status() -> str:
    with store.read(engine()) as conn:
        health = service_status.health(conn, now(), settings().tick_seconds)
    return render_template("status.html", health=health, tz=settings().tz)


@bp.route("/audit")
@need("admin")
def audit() -> str:
    return "audit"
