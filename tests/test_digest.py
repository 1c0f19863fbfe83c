"""The weekly cap and digests: several updates in one email, never more than N a week."""

from __future__ import annotations

import json

import pytest

from tests.conftest import smtp_settings

OSEI = "r.osei@ortho.example.org"


@pytest.fixture
def clinic(run_cli, settings, smtp_server, tmp_path):
    """One physician (cap 3, New York) with five consenting clients, through the CLI."""
    cfg = smtp_settings(settings, smtp_server)

    def cli(*args):
        result = run_cli(*args, env_settings=cfg)
        assert result.exit_code == 0, result.output
        return result

    cli("init")
    now = "2026-11-02T09:00:00-05:00"
    (tmp_path / "p.csv").write_text(
        f"email,name,credentials,timezone,weekly_cap\n{OSEI},Ruth Osei,MD,America/New_York,3\n"
    )
    rows = "".join(
        f"K-{i},First{i},Last{i},{OSEI},2026-10-01,Knee pain,2026-10-01,referred\n" for i in range(1, 6)
    )
    (tmp_path / "c.csv").write_text(
        "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n" + rows
    )
    cli("import", "physicians", str(tmp_path / "p.csv"), "--now", now)
    cli("import", "clients", str(tmp_path / "c.csv"), "--now", now)
    return cli, smtp_server


def assess(cli, ref, at):
    cli("event", "add", ref, "initial_assessment", "--at", at, "--now", at)


def entries(cli):
    return json.loads(cli("log", "--format", "json", "--limit", "0").stdout)


def test_four_due_updates_arrive_as_one_digest_containing_all_four(clinic):
    cli, server = clinic
    at = "2026-11-03T10:00:00-05:00"
    for ref in ("K-1", "K-2", "K-3", "K-4"):
        assess(cli, ref, at)
    cli("run", "--once", "--now", at)

    [received] = server.received
    mail = received.message
    assert mail["Subject"].startswith("Clinical updates: 4 clients")
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    for ref in ("K-1", "K-2", "K-3", "K-4"):
        assert f"INITIAL ASSESSMENT REPORT: F.L. (REF {ref})" in text
        assert f"(ref {ref})" in html
    listed = [line for line in text.splitlines() if line[:3] in ("1. ", "2. ", "3. ", "4. ")][:4]
    assert len(listed) == 4 and all(line.endswith(": BASELINE ESTABLISHED") for line in listed), listed
    assert text.count("Dear Dr. Osei") == 1  # one greeting, four self-contained sections
    assert text.count("Kind regards") == 1

    log = entries(cli)
    [digest] = [e for e in log if e["rule"] == "digest"]
    updates = [e for e in log if e["rule"] == "initial_assessment_report"]
    assert len(updates) == 4
    assert all(e["digest_id"] == digest["id"] and e["status"] == "sent" for e in updates)
    assert digest["status"] == "sent" and digest["message_id"] == mail["Message-ID"]
    shown = cli("log", "show", str(updates[0]["id"])).stdout
    assert f"carried by message {digest['id']}" in shown


def test_the_weekly_cap_holds_what_would_exceed_it_and_sends_it_later(clinic):
    cli, server = clinic
    days = ["2026-11-02T10:00:00-05:00", "2026-11-03T10:00:00-05:00", "2026-11-04T10:00:00-05:00"]
    for ref, at in zip(("K-1", "K-2", "K-3"), days, strict=True):
        assess(cli, ref, at)
        cli("run", "--once", "--now", at)
    assert len(server.received) == 3  # one a day, each alone

    thursday = "2026-11-05T10:00:00-05:00"
    assess(cli, "K-4", thursday)
    cli("run", "--once", "--now", thursday)
    assert len(server.received) == 3  # the cap of 3 in 7 days is reached
    [held] = [e for e in entries(cli) if e["client_ref"] == "K-4"]
    assert held["status"] == "pending"
    shown = cli("log", "show", str(held["id"])).stdout
    assert "weekly cap of 3" in shown and "Mon 09 Nov 10:00" in shown

    assess(cli, "K-5", "2026-11-06T10:00:00-05:00")
    cli("run", "--once", "--now", "2026-11-06T10:00:00-05:00")
    assert len(server.received) == 3

    cli("run", "--once", "--now", "2026-11-09T10:05:00-05:00")  # the first email left 7 days ago
    assert len(server.received) == 4
    combined = server.received[-1].message
    assert combined["Subject"].startswith("Clinical updates: 2 clients")  # K-4 and K-5, never dropped


def test_urgent_alerts_ignore_the_cap(clinic):
    cli, server = clinic
    days = ["2026-11-02T10:00:00-05:00", "2026-11-03T10:00:00-05:00", "2026-11-04T10:00:00-05:00"]
    for ref, at in zip(("K-1", "K-2", "K-3"), days, strict=True):
        assess(cli, ref, at)
        cli("run", "--once", "--now", at)
    night = "2026-11-04T23:00:00-05:00"
    cli("event", "add", "K-1", "adverse_event", "--at", night, "--note", "Syncope", "--now", night)
    cli("run", "--once", "--now", night)
    assert len(server.received) == 4
    assert server.received[-1].message["Subject"].startswith("URGENT")


def test_a_failed_digest_fails_the_updates_it_carried(clinic):
    cli, server = clinic
    server.handler.script.append("550 5.1.1 Mailbox unavailable")
    at = "2026-11-03T10:00:00-05:00"
    for ref in ("K-1", "K-2"):
        assess(cli, ref, at)
    cli("run", "--once", "--now", at)
    log = entries(cli)
    [digest] = [e for e in log if e["rule"] == "digest"]
    assert digest["status"] == "failed" and "550" in digest["last_error"]
    updates = [e for e in log if e["rule"] == "initial_assessment_report"]
    assert [e["status"] for e in updates] == ["failed", "failed"]
    assert all(f"digest message {digest['id']}" in e["last_error"] for e in updates)


def test_a_digest_subject_counts_clients_not_updates(clinic):
    cli, server = clinic
    at = "2026-11-03T10:00:00-05:00"
    assess(cli, "K-1", at)
    cli("event", "add", "K-1", "goal_achieved", "--at", at, "--note", "Stairs unaided", "--now", at)
    cli("run", "--once", "--now", at)
    [received] = server.received
    assert received.message["Subject"] == "Clinical updates: 1 client, 2 updates (K-1)"


def test_a_digest_member_shows_the_message_id_the_physician_received(clinic):
    cli, server = clinic
    at = "2026-11-03T10:00:00-05:00"
    for ref in ("K-1", "K-2"):
        assess(cli, ref, at)
    cli("run", "--once", "--now", at)
    [received] = server.received
    log = entries(cli)
    [digest] = [e for e in log if e["rule"] == "digest"]
    updates = [e for e in log if e["digest_id"] == digest["id"]]
    assert len(updates) == 2
    assert all(e["sent_message_id"] == received.message["Message-ID"] for e in updates)
    assert all(e["message_id"] != received.message["Message-ID"] for e in updates)
    assert digest["sent_message_id"] == received.message["Message-ID"]
    shown = cli("log", "show", str(updates[0]["id"])).stdout
    assert f"{received.message['Message-ID']} (sent inside digest {digest['id']})" in shown
    csv_header = cli("log", "--format", "csv").stdout.splitlines()[0]
    assert "sent_message_id" in csv_header.split(",")


def test_a_message_not_yet_sent_has_no_sent_message_id(clinic):
    cli, _ = clinic
    night = "2026-11-03T23:00:00-05:00"
    assess(cli, "K-1", night)
    cli("plan", "--now", night)
    [entry] = entries(cli)
    assert entry["status"] == "pending" and entry["sent_message_id"] is None
