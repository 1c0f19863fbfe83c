"""The console's locks: every route behind a login or token, CSRF, lockout, idle expiry, roles, headers."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from outreach import accounts, status, store
from outreach.models import audit, secrets_table
from outreach.web import create_app
from tests.conftest import NOW
from tests.web_support import PASSWORD, Clock

OPEN = {"auth.login", "auth.healthz", "static"}


def _url(rule) -> str:
    """A concrete URL for a route, whatever its arguments."""
    return re.sub(r"<(?:([^:>]+):)?[^>]+>", lambda m: "1" if m.group(1) == "int" else "x", rule.rule)


def _routes(app):
    return [r for r in app.url_map.iter_rules() if r.endpoint not in OPEN]


def audit_lines(engine, action: str) -> list:
    with store.read(engine) as conn:
        return list(conn.execute(select(audit).where(audit.c.action == action).order_by(audit.c.id)))


def test_every_route_refuses_an_anonymous_request(console):
    routes = _routes(console.app)
    assert len(routes) >= 8
    anonymous = console.anonymous()
    for rule in routes:
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = anonymous.client.open(_url(rule), method=method)
            where = f"{method} {rule.rule}"
            if rule.rule.startswith("/api/"):
                assert response.status_code == 401, where
                assert response.json["errors"][0]["message"].startswith("a valid API token is needed"), where
            else:
                assert response.status_code == 302, where
                assert response.headers["Location"].startswith("/login"), where


def test_login_and_health_check_are_the_only_open_routes(console):
    anonymous = console.anonymous()
    assert anonymous.get("/login").status_code == 200
    health = anonymous.get("/healthz")
    assert health.status_code == 503  # no service has run on this database
    assert health.json == {"ok": False}  # and nothing else: no health information


def test_health_check_is_200_while_the_service_runs(console):
    status.started(console.engine, "worker-1", NOW)
    assert console.anonymous().get("/healthz").status_code == 200
    console.clock.now = NOW + timedelta(hours=2)  # no heartbeat for two hours
    assert console.anonymous().get("/healthz").status_code == 503


def test_a_wrong_password_is_refused_and_audited(console):
    email = console.user("staff")
    browser = console.anonymous()
    browser.get("/login")
    response = browser.post("/login", {"email": email, "password": "not the password"})
    assert response.status_code == 401
    assert "wrong email or password" in response.get_data(as_text=True)
    failed = audit_lines(console.engine, accounts.FAILED)
    assert [(r.actor, r.address) for r in failed] == [(email, "127.0.0.1")]


def test_an_unknown_email_reads_as_a_wrong_password(console):
    browser = console.anonymous()
    browser.get("/login")
    response = browser.post("/login", {"email": "nobody@practice.example", "password": PASSWORD})
    assert response.status_code == 401
    assert "wrong email or password" in response.get_data(as_text=True)


def test_five_failures_in_fifteen_minutes_lock_the_account_for_fifteen(console):
    email = console.user("staff")
    browser = console.anonymous()
    browser.get("/login")
    for minute in range(5):
        console.clock.now = NOW + timedelta(minutes=minute * 3)
        assert browser.post("/login", {"email": email, "password": "guess"}).status_code == 401
    console.clock.now = NOW + timedelta(minutes=13)
    locked = browser.post("/login", {"email": email, "password": PASSWORD})  # the right one, too late
    assert locked.status_code == 429
    assert "locked until" in locked.get_data(as_text=True)
    assert len(audit_lines(console.engine, accounts.LOCKED)) == 2  # the lock, then the refused attempt
    console.clock.now = NOW + timedelta(minutes=12 + 15, seconds=1)  # 15 minutes after the fifth failure
    assert browser.post("/login", {"email": email, "password": PASSWORD}).status_code == 302


def test_failures_spread_over_more_than_fifteen_minutes_do_not_lock(console):
    email = console.user("staff")
    browser = console.anonymous()
    browser.get("/login")
    for minute in range(5):
        console.clock.now = NOW + timedelta(minutes=minute * 4)  # 16 minutes from first to fifth
        browser.post("/login", {"email": email, "password": "guess"})
    assert browser.post("/login", {"email": email, "password": PASSWORD}).status_code == 302


def test_a_session_ends_after_the_idle_time_and_activity_keeps_it(console):
    browser = console.login("viewer")
    for _ in range(3):  # 14 minutes between requests, three times: still in
        console.clock.now += timedelta(minutes=14)
        assert browser.get("/status").status_code == 200
    console.clock.now += timedelta(minutes=16)
    response = browser.get("/status")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert len(audit_lines(console.engine, "session expired")) == 1


def test_logout_ends_the_session_on_the_server(console):
    browser = console.login("staff")
    cookie = browser.client.get_cookie("outreach_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax" and not cookie.secure
    assert browser.post("/logout").status_code == 302
    replay = console.anonymous()
    replay.client.set_cookie("outreach_session", cookie.value)  # the old cookie, kept by an attacker
    assert replay.get("/status").status_code == 302
    assert [r.action for r in audit_lines(console.engine, "logout")] == ["logout"]


def test_the_cookie_is_secure_when_configured(engine, settings):
    app = create_app(settings.with_(web_secure_cookies=True), engine, Clock(NOW))
    accounts.add_user(engine, "a@practice.example", "staff", PASSWORD, NOW)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    client.post("/login", data={"csrf": token, "email": "a@practice.example", "password": PASSWORD})
    assert client.get_cookie("outreach_session").secure


def test_a_form_without_the_csrf_token_is_refused(console):
    browser = console.login("staff")
    response = browser.client.post("/logout", data={})
    assert response.status_code == 400
    assert browser.client.post("/logout", data={"csrf": "forged"}).status_code == 400
    assert browser.get("/status").status_code == 200  # still logged in


def test_the_login_form_needs_its_csrf_token_too(console):
    email = console.user("staff")
    response = console.anonymous().client.post("/login", data={"email": email, "password": PASSWORD})
    assert response.status_code == 400


def test_roles_decide_what_a_user_may_open(console):
    viewer, staff, admin = console.login("viewer"), console.login("staff"), console.login("admin")
    assert viewer.get("/audit").status_code == 403
    assert staff.get("/audit").status_code == 403
    page = admin.get("/audit")
    assert page.status_code == 200
    assert "login" in page.get_data(as_text=True)
    assert "Audit" not in viewer.get("/status").get_data(as_text=True)  # no link to what they may not open


def test_every_response_carries_the_security_headers(console):
    browser = console.login("admin")
    for url in ("/status", "/audit", "/login", "/healthz", "/no-such-page"):
        response = browser.get(url)
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, url
        assert response.headers["X-Content-Type-Options"] == "nosniff", url
        assert response.headers["Referrer-Policy"] == "no-referrer", url
        assert response.headers["Cache-Control"] == "no-store", url


def test_the_login_redirect_stays_on_this_site(console):
    email = console.user("staff")
    for target in ("//evil.example/x", "https://evil.example/", "javascript:alert(1)"):
        browser = console.anonymous()
        browser.get("/login")
        response = browser.post("/login", {"email": email, "password": PASSWORD, "next": target})
        assert response.headers["Location"] == "/", target
    browser = console.anonymous()
    browser.get("/login")
    response = browser.post("/login", {"email": email, "password": PASSWORD, "next": "/status"})
    assert response.headers["Location"] == "/status"


def test_the_signing_key_is_made_once_and_kept_in_the_database(engine, settings):
    first = create_app(settings, engine, Clock(NOW)).config["SECRET_KEY"]
    second = create_app(settings, engine, Clock(NOW)).config["SECRET_KEY"]
    assert first == second and len(first) >= 48
    with store.read(engine) as conn:
        assert conn.execute(select(secrets_table.c.name)).scalars().all() == ["web_signing_key"]


@pytest.mark.parametrize("trusted", [(), ("127.0.0.1",)])
def test_forwarded_addresses_are_believed_only_from_a_trusted_proxy(engine, settings, trusted):
    app = create_app(settings.with_(web_trusted_proxies=trusted), engine, Clock(NOW))
    accounts.add_user(engine, "a@practice.example", "staff", PASSWORD, NOW)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    client.post(
        "/login",
        data={"csrf": token, "email": "a@practice.example", "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.9, 127.0.0.1"},
    )
    (line,) = audit_lines(engine, "login")
    assert line.address == ("203.0.113.9" if trusted else "127.0.0.1")


def test_a_disabled_user_is_logged_out_at_once(console):
    browser = console.login("staff", "leaver@practice.example")
    accounts.disable_user(console.engine, "leaver@practice.example", console.clock())
    assert browser.get("/status").status_code == 302
    again = console.anonymous()
    again.get("/login")
    response = again.post("/login", {"email": "leaver@practice.example", "password": PASSWORD})
    assert response.status_code == 401


HOSTILE = "<script>alert(1)</script>"
TEMPLATE = "{{ 7*7 }}"


def _hostile_practice(engine) -> dict[str, str]:
    """A physician, a client, a note and a message whose every text is markup or a template."""
    from outreach import records
    from outreach.models import SENT, clients, physicians
    from tests.factories import queue_message

    with store.write(engine) as conn:
        records.save_physician(
            conn, {"email": "x@clinic.example", "name": HOSTILE, "clinic": TEMPLATE, "credentials": ""}, NOW
        )
        doctor = conn.execute(
            select(physicians.c.id).where(physicians.c.email == "x@clinic.example")
        ).scalar()
        values = {"ref": "C-666", "first_name": HOSTILE, "last_name": TEMPLATE, "physician_id": doctor}
        records.save_client(conn, {**values, "status": "active", "diagnosis": TEMPLATE}, NOW)
        client = conn.execute(select(clients.c.id).where(clients.c.ref == "C-666")).scalar()
    records.add_event(engine, "C-666", "referral_received", NOW - timedelta(hours=1), NOW, note=TEMPLATE)
    message = queue_message(
        engine,
        subject=f"Update {HOSTILE} {TEMPLATE}",
        recipient_name=HOSTILE,
        recipient="x@clinic.example",
        physician_id=doctor,
        client_id=client,
        text=f"{HOSTILE}\n{TEMPLATE}\n",
        status=SENT,
        sent_at=NOW,
    )
    return {"message_id": str(message), "ref": "C-666", "email": "x@clinic.example"}


def test_markup_and_templates_in_the_data_are_shown_literally_on_every_page(demo_console):
    args = _hostile_practice(demo_console.engine)
    browser = demo_console.login("admin")
    urls = []
    for rule in demo_console.app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint in OPEN or rule.rule.startswith("/api/"):
            continue
        if rule.endpoint in ("log.message_html", "preview.preview_html"):
            continue  # the email's own HTML, served under the email policy (its own test)
        urls.append(re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: args[m.group(1)], rule.rule))
    urls += ["/?client=C-666", "/clients?q=script", "/preview?rule=referral_acknowledgement&client=C-666"]
    assert len(urls) >= 12
    shown = 0
    for url in urls:
        response = browser.get(url)
        assert response.status_code in (200, 409), url
        if response.mimetype != "text/html":
            continue  # the CSV export: data as text, with its own formula guard
        page = response.get_data(as_text=True)
        assert HOSTILE not in page, url
        assert "alert(1)" not in page.replace("&lt;script&gt;alert(1)&lt;/script&gt;", ""), url
        shown += "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert shown >= 5  # the name is on the log, the message, the client, the physician, the clients list ...
    client_page = browser.get("/clients/C-666").get_data(as_text=True)
    assert TEMPLATE in client_page and ">49<" not in client_page
