"""Clients: find one, their timeline, measures with charts, consent, and forms to record (to be filled in)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("clients", __name__)


@bp.route("/clients")
def index() -> str:
    return "clients"
