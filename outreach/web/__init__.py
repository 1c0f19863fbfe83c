"""The practice's window: a server-rendered console and a JSON API over the database.

Flask, because it is small, well kept and renders with Jinja2 (the same
package as the emails); waitress serves it, because it is a production WSGI
server that installs from PyPI on Linux, macOS and Windows with no compiler.
No JavaScript is needed on any page, and none comes from elsewhere.

The routes are thin, as the CLI's commands are: they read through the same
query functions (``review``, ``loops``, ``status``) and change things only
through ``records`` and ``accounts``. ``security`` puts every request behind
a login or a token, checks CSRF, sets the security headers and audits.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from flask import Flask
from sqlalchemy import Engine

from outreach import accounts
from outreach.models import utcnow
from outreach.settings import Settings

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE.parent / "templates" / "web"
MAX_BODY = 1024 * 1024  # bytes: a bigger request body is refused with 413


def create_app(settings: Settings, engine: Engine, clock: Callable[[], datetime] = utcnow) -> Flask:
    """The console and the API on one database; ``clock`` lets tests move time on."""
    from outreach.web import admin, api, auth, clients, log, people, preview, security, service

    app = Flask("outreach.web", template_folder=str(TEMPLATES), static_folder=str(HERE / "static"))
    app.config.update(
        SECRET_KEY=accounts.stored_secret(engine, "web_signing_key", clock()),
        SESSION_COOKIE_NAME="outreach_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.web_secure_cookies,
        MAX_CONTENT_LENGTH=MAX_BODY,
        OUTREACH_SETTINGS=settings,
        OUTREACH_ENGINE=engine,
        OUTREACH_CLOCK=clock,
        OUTREACH_IDLE=timedelta(minutes=settings.web_idle_minutes),
    )
    app.jinja_env.autoescape = True
    security.install(app)
    for module in (auth, log, clients, people, preview, service, admin, api):
        app.register_blueprint(module.bp)
    return app


def serve(app: Flask, host: str, port: int) -> None:
    """Serve with waitress until stopped (Ctrl-C, or SIGTERM from systemd)."""
    from waitress import serve as waitress_serve

    waitress_serve(app, host=host, port=port, threads=8, ident="outreach")
