"""Staging: OUTREACH_REDIRECT_ALL_TO sends every email to the practice's own addresses, never a physician's."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from outreach import store
from outreach.checks import safety_settings
from outreach.digest import recent_sends
from outreach.models import messages, physicians
from tests.conftest import NOW, smtp_settings
from tests.test_digest import OSEI, assess, entries
from tests.test_digest import clinic as clinic  # a fixture, used by name
from tests.test_end_to_end import write_practice

STAGING = "try@practice.example, owner@practice.example"
STAGING_ENV = {"OUTREACH_REDIRECT_ALL_TO": STAGING}
PHYSICIAN = "r.osei@ortho.example.org"


def practice(run_cli, settings, smtp_server, tmp_path):
    """The end-to-end practice (one client due a reassessment report); a CLI taking extra env."""
    cfg = smtp_settings(settings, smtp_server)

    def cli(*args: str, staging: bool = False, ok: bool = True):
        result = run_cli(*args, env_settings=cfg, extra_env=STAGING_ENV if staging else None)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    now = NOW.isoformat()
    cli("init")
    for kind, path in write_practice(tmp_path).items():
        cli("import", kind, str(path), "--now", now)
    cli("event", "add", "C-77", "reassessment", "--at", now, "--note", "12-week reassessment", "--now", now)
    return cli, now


def test_redirected_end_to_end_the_physician_is_never_an_envelope_recipient(
    run_cli, settings, smtp_server, tmp_path
):
    cli, now = practice(run_cli, settings, smtp_server, tmp_path)
    ran = cli("run", "--once", "--now", now, staging=True).stdout
    assert (
        "staging: every email went to try@practice.example, owner@practice.example, none to a physician"
        in ran
    )

    [received] = smtp_server.received
    assert received.rcpt_tos == ["try@practice.example", "owner@practice.example"]
    mail = received.message
    assert PHYSICIAN not in str(mail["To"]) and "try@practice.example" in str(mail["To"])
    assert PHYSICIAN in str(mail["X-Outreach-Original-To"]) and "Ruth Osei" in str(
        mail["X-Outreach-Original-To"]
    )
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    banner = f"Staging: this email would have gone to Ruth Osei, MD <{PHYSICIAN}>."
    assert text.startswith(banner)
    assert "LEFS" in text  # the email itself follows, unchanged
    body_at = html.lower().index("<body")
    assert html.index("Staging: this email would have gone to Ruth Osei") > body_at
    assert html.index("Staging:") < html.index("LEFS")

    [entry] = json.loads(cli("log", "--format", "json").stdout)
    assert entry["status"] == "redirected"
    assert entry["to"] == PHYSICIAN  # the log keeps the real recipient
    assert entry["redirected_to"] == "try@practice.example,owner@practice.example"
    assert entry["sent_message_id"] == mail["Message-ID"]
    table = cli("log").stdout
    assert "redirected" in table and "staging: went to try@practice.example" in table
    shown = cli("log", "show", str(entry["id"])).stdout
    assert "Redirected:  staging: sent to try@practice.example, owner@practice.example" in shown
    assert "redirected" in shown.split("Trail:")[1]

    # Turned off: nothing is sent again, and nothing new is queued for what was redirected.
    again = cli("run", "--once", "--now", now)
    assert "sent 0," in again.stdout
    assert len(smtp_server.received) == 1
    dry = cli("plan", "--dry-run", "--now", now).stdout
    assert "reassessment_report" not in dry


def test_redirected_mail_counts_toward_no_cap_loop_or_last_contact(run_cli, settings, smtp_server, tmp_path):
    cli, now = practice(run_cli, settings, smtp_server, tmp_path)
    cli("run", "--once", "--now", now, staging=True)

    [doctor] = json.loads(cli("physicians", "--format", "json", "--now", now).stdout)
    assert doctor["emails_sent"] == 0 and doctor["last_contact"] is None
    loops = json.loads(cli("loops", "--format", "json", "--now", now).stdout)
    assert loops and all(loop["state"] not in ("done", "replied", "answered") for loop in loops)
    assert any("went to the staging address only" in loop["detail"] for loop in loops)
    engine = store.connect(settings.database_url)
    try:
        with store.read(engine) as conn:
            doctor_id = conn.execute(select(physicians.c.id)).scalar_one()
            assert recent_sends(conn, doctor_id, NOW) == []
    finally:
        engine.dispose()


def test_a_message_queued_under_staging_and_sent_after_it_goes_to_the_physician(
    run_cli, settings, smtp_server, tmp_path
):
    """The redirect is decided when a message leaves, not when it is queued."""
    cli, now = practice(run_cli, settings, smtp_server, tmp_path)
    assert "queued 1," in cli("plan", "--now", now, staging=True).stdout
    cli("send", "--now", now)

    [received] = smtp_server.received
    assert received.rcpt_tos == [PHYSICIAN]
    assert received.message["X-Outreach-Original-To"] is None
    assert "Staging:" not in received.message.get_body(("plain",)).get_content()
    [entry] = json.loads(cli("log", "--format", "json").stdout)
    assert entry["status"] == "sent" and entry["redirected_to"] is None


def test_a_refused_staging_address_fails_the_message_and_leaves_the_physician_deliverable(
    run_cli, settings, smtp_server, tmp_path
):
    cli, now = practice(run_cli, settings, smtp_server, tmp_path)
    smtp_server.handler.refuse_rcpt["owner@practice.example"] = (
        "550 5.1.1 <owner@practice.example>: no such user"
    )
    cli("run", "--once", "--now", now, staging=True)

    assert smtp_server.received == []  # every staging address must be taken, or none is sent
    [entry] = json.loads(cli("log", "--format", "json").stdout)
    assert entry["status"] == "failed" and "owner@practice.example" in entry["last_error"]
    [doctor] = json.loads(cli("physicians", "--format", "json", "--now", now).stdout)
    assert doctor["undeliverable"] is None, doctor


def test_a_digest_and_the_updates_it_carries_are_redirected_together(clinic, monkeypatch):
    cli, server = clinic
    at = "2026-11-03T10:00:00-05:00"
    for ref in ("K-1", "K-2", "K-3", "K-4"):
        assess(cli, ref, at)
    monkeypatch.setenv("OUTREACH_REDIRECT_ALL_TO", STAGING)  # the fixture's CLI keeps the real environment
    cli("run", "--once", "--now", at)
    monkeypatch.delenv("OUTREACH_REDIRECT_ALL_TO")

    [received] = server.received
    assert received.rcpt_tos == ["try@practice.example", "owner@practice.example"]
    assert received.message["Subject"].startswith("Clinical updates: 4 clients")
    log = entries(cli)
    [digest] = [e for e in log if e["rule"] == "digest"]
    updates = [e for e in log if e["rule"] == "initial_assessment_report"]
    assert digest["status"] == "redirected" and digest["to"] == OSEI
    assert len(updates) == 4 and all(e["status"] == "redirected" for e in updates)
    shown = cli("log", "show", str(updates[0]["id"])).stdout
    assert "redirected inside digest" in shown
    cli("run", "--once", "--now", at)  # staging off: the updates are not sent again
    assert len(server.received) == 1


def test_status_and_check_say_staging_is_on(run_cli, settings, smtp_server, tmp_path):
    cli, now = practice(run_cli, settings, smtp_server, tmp_path)
    status = cli("status", "--now", now, staging=True, ok=False).stdout
    assert f"staging:         ON, every email goes to {STAGING} instead of the physician" in status
    assert "staging" not in cli("status", "--now", now, ok=False).stdout
    check = cli("check", staging=True).stdout
    assert f"staging: ON, every email goes to {STAGING}" in check
    assert "retention: every body is kept (OUTREACH_RETENTION_DAYS is not set)" in check
    off = cli("check").stdout
    assert "staging: off, email goes to physicians" in off


def test_safety_settings_names_both_settings(settings):
    assert safety_settings(settings.with_(retention_days=30, redirect_all_to=("a@practice.example",))) == [
        "staging: ON, every email goes to a@practice.example instead of the physician "
        "(OUTREACH_REDIRECT_ALL_TO); redirected mail counts toward no cap, loop or last contact",
        "retention: the bodies of messages final for more than 30 days are removed once a day "
        "(OUTREACH_RETENTION_DAYS); their log entries and a SHA-256 stay",
    ]


def test_log_rows_are_never_rewritten_to_the_staging_address(run_cli, settings, smtp_server, tmp_path):
    cli, now = practice(run_cli, settings, smtp_server, tmp_path)
    cli("run", "--once", "--now", now, staging=True)
    engine = store.connect(settings.database_url)
    try:
        with store.read(engine) as conn:
            row = conn.execute(select(messages.c.recipient, messages.c.physician_id)).one()
    finally:
        engine.dispose()
    assert row.recipient == PHYSICIAN and row.physician_id is not None


def test_the_console_and_the_api_say_staging_is_on(engine, settings, quick_passwords):
    from outreach.web import create_app
    from tests.web_support import Clock, Console

    staged = settings.with_(redirect_all_to=("try@practice.example",))
    on = Console(create_app(staged, engine, Clock(NOW)), engine, Clock(NOW))
    browser = on.login("staff")
    for page in ("/", "/status", "/loops", "/physicians", "/clients"):
        html = browser.get(page, follow_redirects=True).get_data(as_text=True)
        assert "every email goes to try@practice.example instead of the physician" in html, page
    assert "<strong>on</strong>: every email goes to try@practice.example" in browser.get("/status").get_data(
        as_text=True
    )
    assert on.anonymous().get("/login").get_data(as_text=True).count("Staging") == 0  # nothing before a login
    status = on.anonymous().client.get("/api/v1/status", headers=on.token("viewer")).get_json()
    assert status["staging"] == ["try@practice.example"]

    off = Console(create_app(settings, engine, Clock(NOW)), engine, Clock(NOW))
    page = off.login("staff", "other@practice.example").get("/status").get_data(as_text=True)
    assert "off: email goes to physicians" in page and 'class="staging"' not in page


def test_a_bounce_from_a_staging_address_never_marks_the_physician(
    demo_engine, settings, imap_server, imap_user
):
    from outreach.inbox import fetch
    from outreach.models import REDIRECTED
    from outreach.settings import Secret
    from tests.test_inbox import DOCTOR, dsn, sent_message, trail_of

    cfg = settings.with_(
        imap_host=imap_server.host,
        imap_port=imap_server.tls_port,
        imap_username=imap_user.name,
        imap_password=Secret(imap_user.password),
        imap_ca_file=Path(imap_server.ca_file),
    )
    message_id, header = sent_message(demo_engine, status=REDIRECTED, redirected_to="try@practice.example")
    imap_server.append(imap_user, dsn("try@practice.example", "5.1.1", original_id=header))
    assert fetch(demo_engine, cfg, NOW).kinds == {"bounce": 1}
    with store.read(demo_engine) as conn:
        status = conn.execute(select(messages.c.status).where(messages.c.id == message_id)).scalar()
        doctor = conn.execute(select(physicians).where(physicians.c.email == DOCTOR)).one()
    assert status == REDIRECTED and doctor.undeliverable_on is None
    action, detail = trail_of(demo_engine, message_id)[-1]
    assert action == "bounced" and detail.startswith("staging address: ")


def test_the_banner_and_headers_hold_hostile_names_and_many_addresses(settings):
    from email import message_from_bytes, policy
    from types import SimpleNamespace

    from outreach.compose import build_email

    row = SimpleNamespace(
        id=7,
        message_id="<7.abc@practice.example>",
        recipient="doc@clinic.example.org",
        recipient_name='Dr <script>alert(1)</script> "Quote"\r\nBcc: evil@example.org',
        subject="Progress report: J.D. (ref C-1)",
        text="Dear Dr. Doe,\nAll well.\n",
        html="<html><head><style>p{}</style></head><BODY class='x'><p>All well.</p></body></html>",
        priority=0,
        kind="clinical",
        redirected_to=",".join(f"staging{i}@practice.example" for i in range(6)),
    )
    data = build_email(row, settings, NOW).data
    mail = message_from_bytes(data, policy=policy.default)
    assert mail["Bcc"] is None and b"\r\nBcc:" not in data
    assert [a.addr_spec for a in mail["To"].addresses] == [f"staging{i}@practice.example" for i in range(6)]
    assert str(mail["X-Outreach-Original-To"]).endswith("<doc@clinic.example.org>")
    assert all(len(line) <= 78 for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"))
    html = mail.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.index("<BODY class='x'>") < html.index("Staging:") < html.index("<p>All well.")
    text = mail.get_body(("plain",)).get_content()
    assert text.splitlines()[0].startswith("Staging: this email would have gone to Dr <script>")


def test_the_console_says_where_a_redirected_message_went_and_offers_to_send_it_for_real(
    engine, settings, quick_passwords
):
    from outreach.models import REDIRECTED
    from outreach.web import create_app
    from tests.factories import queue_message
    from tests.web_support import Clock, Console

    staged = queue_message(
        engine, status=REDIRECTED, sent_at=NOW, redirected_to="try@practice.example,owner@practice.example"
    )
    console = Console(create_app(settings, engine, Clock(NOW)), engine, Clock(NOW))
    page = console.login("staff").get(f"/messages/{staged}").get_data(as_text=True)
    assert "sent to try@practice.example, owner@practice.example, never to the physician" in page
    assert f'action="/messages/{staged}/resend"' in page
