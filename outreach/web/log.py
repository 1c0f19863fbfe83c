"""The sent-message log and one message whole (to be filled in)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("log", __name__)


@bp.route("/")
def index() -> str:
    return "log"


@bp.route("/messages/<int:message_id>")
def message(message_id: int) -> str:
    return "message"


@bp.route("/messages/<int:message_id>/html")
def message_html(message_id: int) -> str:
    return ""
