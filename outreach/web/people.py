"""Loops and physicians (to be filled in)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("people", __name__)


@bp.route("/loops")
def loops() -> str:
    return "loops"


@bp.route("/physicians")
def physicians() -> str:
    return "physicians"
