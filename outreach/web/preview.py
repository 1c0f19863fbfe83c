"""Any rule for any client, rendered as it would go (as ``outreach preview``) (to be filled in)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("preview", __name__)


@bp.route("/preview")
def preview() -> str:
    return "preview"
