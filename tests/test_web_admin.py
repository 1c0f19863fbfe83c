"""Users and tokens in the console (admins only), as `outreach user` and `outreach token` do."""

from __future__ import annotations

from sqlalchemy import select

from outreach import accounts, store
from outreach.models import audit, users
from tests.web_support import PASSWORD


def test_only_an_admin_sees_or_changes_users_and_tokens(console):
    staff = console.login("staff")
    assert staff.get("/admin/").status_code == 403
    assert staff.post("/admin/users", {"email": "x@practice.example", "role": "admin"}).status_code == 403
    assert "Users" not in staff.get("/status").get_data(as_text=True)
    with store.read(console.engine) as conn:
        assert conn.execute(select(users.c.email)).scalars().all() == ["staff@practice.example"]


def test_an_admin_adds_and_disables_a_user(console):
    admin = console.login("admin")
    page = admin.get("/admin/").get_data(as_text=True)
    assert "admin@practice.example" in page
    response = admin.post(
        "/admin/users", {"email": "Desk@Practice.example", "role": "staff", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert (
        accounts.log_in(console.engine, "desk@practice.example", PASSWORD, console.clock()).principal.role
        == "staff"
    )
    short = admin.post("/admin/users", {"email": "b@practice.example", "role": "viewer", "password": "short"})
    assert short.status_code == 422
    assert "at least 10 characters" in short.get_data(as_text=True)
    assert 'value="b@practice.example"' in short.get_data(as_text=True)  # what was typed is kept
    assert admin.post("/admin/users/disable", {"email": "desk@practice.example"}).status_code == 302
    assert "disabled" in admin.get("/admin/").get_data(as_text=True)
    myself = admin.post("/admin/users/disable", {"email": "admin@practice.example"})
    assert myself.status_code == 422 and "cannot disable yourself" in myself.get_data(as_text=True)
    with store.read(console.engine) as conn:
        actions = conn.execute(
            select(audit.c.action, audit.c.actor, audit.c.address).where(audit.c.action.like("user %"))
        ).all()
    assert ("user add", "admin@practice.example", "127.0.0.1") in actions
    assert ("user disable", "admin@practice.example", "127.0.0.1") in actions


def test_a_token_made_in_the_console_is_shown_once_and_works_until_revoked(console):
    admin = console.login("admin")
    made = admin.post("/admin/tokens", {"name": "scheduler", "role": "viewer"})
    assert made.status_code == 201
    token = made.get_data(as_text=True).split('<pre class="text">', 1)[1].split("</pre>", 1)[0]
    assert token.startswith(accounts.TOKEN_PREFIX)
    assert token not in admin.get("/admin/").get_data(as_text=True)
    api = console.anonymous().client
    assert api.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert admin.post("/admin/tokens/revoke", {"name": "scheduler"}).status_code == 302
    assert api.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    again = admin.post("/admin/tokens", {"name": "x", "role": "admin"})
    assert again.status_code == 422 and "staff or viewer" in again.get_data(as_text=True)
