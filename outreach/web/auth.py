"""Logging in and out, and the monitor's health check (the only routes open to all)."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from flask import Blueprint, abort, g, jsonify, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from outreach import accounts, status, store
from outreach.web.security import engine, now, settings

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a login link cannot send anyone elsewhere."""
    if not target:
        return url_for("log.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("log.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    if request.method == "GET":
        session["login_csrf"] = session.get("login_csrf") or secrets.token_urlsafe(32)
        return render_template("login.html", next=request.args.get("next", ""), error=None)
    if not accounts.csrf_matches(session.get("login_csrf", ""), request.form.get("csrf")):
        abort(400, "the login form was stale: reload the page and try again")
    email, password = request.form.get("email", ""), request.form.get("password", "")
    try:
        login = accounts.log_in(engine(), email, password, now())
    except accounts.Locked as exc:
        return render_template("login.html", next=request.form.get("next", ""), error=str(exc)), 429
    except accounts.LoginRefused as exc:
        return render_template("login.html", next=request.form.get("next", ""), error=str(exc)), 401
    session.clear()  # a new cookie for the new session: nothing carried over from before the login
    session["key"] = login.key
    return redirect(_safe_next(request.form.get("next")))


@bp.route("/logout", methods=["POST"])
def logout() -> Response:
    accounts.log_out(engine(), g.session.id, g.principal.name, now())
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/healthz")
def healthz() -> tuple[Response, int]:
    """200 when the service is sending on time, 503 when not: no health information, no login."""
    with store.read(engine()) as conn:
        health = status.health(conn, now(), settings().tick_seconds)
    return jsonify({"ok": health.ok}), 200 if health.ok else 503
