"""Users and API tokens, for admins: the console's side of ``outreach user`` and ``outreach token``."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from outreach import accounts, store
from outreach.errors import OutreachError
from outreach.models import USER_ROLES
from outreach.web import security
from outreach.web.security import engine, need, now

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _page(status: int = 200, **shown: object) -> tuple[str, int]:
    with store.read(engine()) as conn:
        users, tokens = accounts.list_users(conn), accounts.list_tokens(conn)
    page = render_template("admin.html", users=users, tokens=tokens, roles=USER_ROLES, **shown)
    return page, status


@bp.route("/")
@need("admin")
def index() -> tuple[str, int]:
    security.audit("view users", "users and tokens")
    return _page(done=request.args.get("done", ""))


@bp.route("/users", methods=["POST"])
@need("admin")
def add_user() -> Response | tuple[str, int]:
    email, role = request.form.get("email", ""), request.form.get("role", "")
    try:
        accounts.add_user(
            engine(), email, role, request.form.get("password", ""), now(), security.principal().name
        )
    except OutreachError as exc:
        return _page(422, user_error=str(exc), form={"email": email, "role": role})
    return redirect(url_for("admin.index", done=f"{email.strip().lower()} added as {role}"))


@bp.route("/users/disable", methods=["POST"])
@need("admin")
def disable_user() -> Response | tuple[str, int]:
    email = request.form.get("email", "")
    if email.strip().lower() == security.principal().name:
        return _page(422, user_error="you cannot disable yourself: ask another admin")
    try:
        accounts.disable_user(engine(), email, now(), security.principal().name)
    except OutreachError as exc:
        return _page(422, user_error=str(exc))
    return redirect(url_for("admin.index", done=f"{email} disabled; their sessions have ended"))


@bp.route("/tokens", methods=["POST"])
@need("admin")
def create_token() -> tuple[str, int]:
    name, role = request.form.get("name", ""), request.form.get("role", "")
    try:
        token = accounts.create_token(engine(), name, role, now(), security.principal().name)
    except OutreachError as exc:
        return _page(422, token_error=str(exc), form={"name": name, "role": role})
    return _page(201, new_token=token, new_token_name=name.strip())  # shown this once, never again


@bp.route("/tokens/revoke", methods=["POST"])
@need("admin")
def revoke_token() -> Response | tuple[str, int]:
    name = request.form.get("name", "")
    try:
        accounts.revoke_token(engine(), name, now(), security.principal().name)
    except OutreachError as exc:
        return _page(422, token_error=str(exc))
    return redirect(url_for("admin.index", done=f"token {name} revoked"))
