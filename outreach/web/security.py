"""Every request behind a login or a token, CSRF on every form, headers on every response, an audit line.

The rules, in one place so a route cannot forget them:
- ``/login``, ``/healthz`` and ``/static`` are open; ``/api/`` needs a bearer
  token; everything else a live session (else a redirect to the login page).
- Every POST outside ``/api/`` carries the session's CSRF token (a form field
  ``csrf``); the API takes no cookies, so a browser cannot be made to call it.
- A route says the least role it needs with ``@need("staff")``; without it a
  viewer may read.
- The client's address is the socket's, unless the socket is a proxy named in
  ``OUTREACH_WEB_TRUSTED_PROXIES``; then the last address it forwarded.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from functools import wraps
from typing import Any, TypeVar, cast

from flask import (
    Flask,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import Engine
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from outreach import accounts, records, store
from outreach.accounts import Principal
from outreach.models import aware
from outreach.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
OPEN = ("auth.login", "auth.healthz", "static")

PAGE_POLICY = (
    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
# An email's HTML, shown in a sandboxed frame of our own page: its styles, nothing that runs.
EMAIL_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; sandbox"
# The routes that serve an email's HTML for such a frame: they set EMAIL_POLICY themselves.
EMAIL_FRAMES = ("log.message_html", "preview.preview_html")


def engine() -> Engine:
    return cast(Engine, current_app.config["OUTREACH_ENGINE"])


def settings() -> Settings:
    return cast(Settings, current_app.config["OUTREACH_SETTINGS"])


def now() -> datetime:
    return cast(Callable[[], datetime], current_app.config["OUTREACH_CLOCK"])()


def today() -> date:
    """The practice's calendar day now (as the CLI's default day)."""
    return now().astimezone(settings().tz).date()


def local(moment: datetime | None) -> str:
    """A stored time as the practice reads it: its own time zone, YYYY-MM-DD HH:MM."""
    if moment is None:
        return ""
    return aware(moment).astimezone(settings().tz).strftime("%Y-%m-%d %H:%M")


def principal() -> Principal:
    """Who is asking (set for every request that got past ``_authenticate``)."""
    return cast(Principal, g.principal)


def audit(action: str, subject: str, detail: str = "") -> None:
    """One audit line for what the current user just saw or did (the address comes with it)."""
    with store.write(engine()) as conn:
        records.audit(conn, now(), principal().name, action, subject, detail)


def need(role: str) -> Callable[[F], F]:
    """A route for ``role`` and above: 403 for anyone less."""

    def decorate(view: F) -> F:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not principal().may(role):
                if request.path.startswith("/api/"):
                    return api_error(403, f"this needs the {role} role", "role")
                abort(403)
            return view(*args, **kwargs)

        return cast(F, guarded)

    return decorate


def api_error(status: int, message: str, field: str = "") -> Response:
    response = jsonify({"errors": [{"field": field, "message": message}]})
    response.status_code = status
    return response


def client_address() -> str:
    """The requester's address, believing X-Forwarded-For only from a trusted proxy."""
    address = request.remote_addr or ""
    if address in settings().web_trusted_proxies:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed([part for part in forwarded if part]):
            if hop not in settings().web_trusted_proxies:
                return hop[:64]
    return address[:64]


def _authenticate() -> Response | None:
    g.address = client_address()
    g.address_token = records.REQUEST_ADDRESS.set(g.address)
    if request.endpoint in OPEN or request.endpoint is None:
        return None
    if request.path.startswith("/api/"):
        return _bearer()
    found = None
    key = session.get("key")
    if isinstance(key, str):
        found = accounts.session(engine(), key, now(), current_app.config["OUTREACH_IDLE"])
    if found is None:
        session.clear()
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    g.principal, g.session = found.principal, found
    if request.method == "POST" and not accounts.csrf_matches(found.csrf, request.form.get("csrf")):
        abort(400, "the form was stale or not from this console: go back, reload and try again")
    return None


def _bearer() -> Response | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    found = accounts.token_principal(engine(), token.strip(), now()) if scheme.lower() == "bearer" else None
    if found is None:
        response = api_error(401, "a valid API token is needed: Authorization: Bearer TOKEN")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    g.principal = found
    return None


def _headers(response: Response) -> Response:
    framed = request.endpoint in EMAIL_FRAMES
    if not framed:
        response.headers["Content-Security-Policy"] = PAGE_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "SAMEORIGIN" if framed else "DENY"
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _forget_address(_: BaseException | None) -> None:
    token = g.pop("address_token", None)
    if token is not None:
        records.REQUEST_ADDRESS.reset(token)


def csrf_token() -> str:
    """The token every form carries (``{{ csrf_token() }}`` in a template)."""
    live = g.get("session")
    if live is not None:
        return cast(str, live.csrf)
    return cast(str, session.get("login_csrf", ""))


ERRORS = {
    400: "That request could not be used",
    403: "Your role does not allow this",
    404: "Not found",
    405: "Not allowed",
    413: "Too large",
}


def _error(exc: HTTPException) -> tuple[Response | str, int]:
    """Errors as a page (or, under /api/, as JSON), never a stack trace."""
    code = exc.code or 500
    fallback = ERRORS.get(code, "Something went wrong")
    message = (exc.description or fallback) if code in (400, 404) else fallback
    if code == 413:
        message = "the request body is over 1 MB"
    if request.path.startswith("/api/"):
        return api_error(code, message), code
    page = render_template("error.html", code=code, title=ERRORS.get(code, "Error"), message=message)
    return page, code


def install(app: Flask) -> None:
    app.register_error_handler(HTTPException, _error)
    app.before_request(_authenticate)
    app.after_request(_headers)
    app.teardown_request(_forget_address)
    app.jinja_env.globals.update(
        csrf_token=csrf_token,
        principal=lambda: g.get("principal"),
        staging=lambda: settings().redirect_all_to,
    )
