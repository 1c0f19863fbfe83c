"""Consent, send windows, opt-outs and the loops report, through the CLI with --now."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from outreach import store
from outreach.models import messages
from outreach.windows import parse_window
from tests.conftest import smtp_settings

NY = "America/New_York"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def practice(run_cli, settings, smtp_server, tmp_path):
    """One physician in New York and two clients, one without consent, via the CLI."""
    cfg = smtp_settings(settings, smtp_server)

    def cli(*args, ok=True):
        result = run_cli(*args, env_settings=cfg)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    cli("init")
    now = "2026-11-23T09:00:00-05:00"  # a Monday morning in New York
    cli("import", "physicians", write(tmp_path, "p.csv",
        "email,name,credentials,timezone\nr.osei@ortho.example.org,Ruth Osei,MD,America/New_York\n"
        "l.park@fm.example.org,Lee Park,DO,America/Los_Angeles\n"), "--now", now)  # fmt: skip
    cli("import", "clients", write(tmp_path, "c.csv",
        "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n"
        "A-1,Ann,Lee,r.osei@ortho.example.org,2026-11-20,Left TKA,2026-11-20,referred\n"
        "B-2,Bo,Chan,r.osei@ortho.example.org,2026-11-20,Low back pain,,referred\n"), "--now", now)  # fmt: skip
    return cli, smtp_server


def sent_subjects(server):
    return [r.message["Subject"] for r in server.received]


def log(cli, *args):
    return json.loads(cli("log", "--format", "json", "--limit", "0", *args).stdout)


def test_no_consent_no_clinical_email_until_consent_is_recorded(practice):
    cli, server = practice
    at = "2026-11-24T10:00:00-05:00"
    cli("event", "add", "B-2", "initial_assessment", "--at", at, "--now", at)
    cli("run", "--once", "--now", at)
    assert not any("B.C." in s for s in sent_subjects(server))
    [entry] = log(cli, "--client", "B-2")
    assert entry["status"] == "suppressed" and "consent" in entry["last_error"]

    later = "2026-11-25T10:00:00-05:00"
    cli("client", "consent", "B-2", "--now", later)
    cli("run", "--once", "--now", later)
    assert any("Initial assessment report: B.C." in s for s in sent_subjects(server))
    [entry] = log(cli, "--client", "B-2")
    assert entry["status"] == "sent"


def test_consent_revoked_before_sending_stops_the_email(practice):
    cli, server = practice
    evening = "2026-11-24T22:00:00-05:00"
    cli("event", "add", "A-1", "initial_assessment", "--at", evening, "--now", evening)
    cli("plan", "--now", evening)  # held for the send window
    cli("client", "revoke-consent", "A-1", "--now", evening)
    cli("run", "--once", "--now", "2026-11-25T09:00:00-05:00")
    assert server.received == []
    [entry] = log(cli, "--client", "A-1")
    assert entry["status"] == "suppressed" and "revoked" in entry["last_error"]


def test_planned_at_night_leaves_at_the_next_business_morning_in_the_physicians_zone(practice):
    cli, server = practice
    friday_night = "2026-11-27T22:00:00-05:00"
    cli("event", "add", "A-1", "initial_assessment", "--at", friday_night, "--now", friday_night)
    cli("run", "--once", "--now", friday_night)
    assert server.received == []
    [entry] = log(cli, "--client", "A-1")
    assert entry["status"] == "pending"
    shown = cli("log", "show", str(entry["id"])).stdout
    assert "send window" in shown and "Mon 30 Nov 08:00" in shown

    cli("send", "--now", "2026-11-30T07:59:00-05:00")
    assert server.received == []
    cli("send", "--now", "2026-11-30T08:00:00-05:00")
    assert len(server.received) == 1


def test_an_urgent_alert_ignores_the_window(practice):
    cli, server = practice
    night = "2026-11-28T23:30:00-05:00"  # Saturday night
    cli(
        "event",
        "add",
        "A-1",
        "adverse_event",
        "--at",
        night,
        "--note",
        "Chest pain on exertion",
        "--now",
        night,
    )
    cli("run", "--once", "--now", night)
    assert [s for s in sent_subjects(server) if s.startswith("URGENT")]


def test_loops_show_overdue_then_done(practice):
    cli, _ = practice
    # The referral acknowledgement for A-1 and B-2 is due by the end of the next business day.
    # Nothing has run yet: on Wednesday it is overdue.
    loops = json.loads(cli("loops", "--format", "json", "--now", "2026-11-25T12:00:00-05:00").stdout)
    ack = [lp for lp in loops if lp["client_ref"] == "A-1" and lp["loop"] == "referral acknowledged"]
    assert ack and ack[0]["state"] == "overdue"
    cli("event", "add", "A-1", "referral_received", "--at", "2026-11-20T09:00:00-05:00",
        "--now", "2026-11-25T12:00:00-05:00")  # fmt: skip
    cli("run", "--once", "--now", "2026-11-25T12:00:00-05:00")
    loops = json.loads(cli("loops", "--format", "json", "--now", "2026-11-25T12:05:00-05:00").stdout)
    ack = [lp for lp in loops if lp["client_ref"] == "A-1" and lp["loop"] == "referral acknowledged"]
    assert ack[0]["state"] == "done" and ack[0]["done_at"]
    table = cli(
        "loops", "--physician", "r.osei@ortho.example.org", "--now", "2026-11-25T12:05:00-05:00"
    ).stdout
    assert table.splitlines()[0].startswith("STATE")


def test_blocked_loops_are_listed_first(practice):
    cli, _ = practice
    at = "2026-11-24T10:00:00-05:00"
    cli("event", "add", "B-2", "initial_assessment", "--at", at, "--now", at)
    cli("run", "--once", "--now", at)
    loops = json.loads(cli("loops", "--format", "json", "--now", at).stdout)
    assert loops[0]["state"] == "blocked" and loops[0]["client_ref"] == "B-2"
    assert "consent" in loops[0]["detail"]


def test_physicians_report(practice):
    cli, _ = practice
    at = "2026-11-24T10:00:00-05:00"
    cli("event", "add", "A-1", "initial_assessment", "--at", at, "--now", at)
    cli("run", "--once", "--now", at)
    rows = json.loads(cli("physicians", "--format", "json", "--now", at).stdout)
    osei = next(r for r in rows if r["email"] == "r.osei@ortho.example.org")
    assert osei["referrals_total"] == 2 and osei["referrals_90d"] == 2
    assert osei["conversion_pct"] == 50
    assert osei["emails_sent"] == 1 and osei["median_days_to_first_report"] == 4


def test_opt_out_stops_relationship_mail_but_not_clinical(demo_engine, settings, run_cli, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    doctor = "m.alvarez@riverside-ortho.example.org"
    assert run_cli("physician", "opt-out", doctor, env_settings=cfg).exit_code == 0
    quarter = "2027-01-05T10:00:00-05:00"
    result = run_cli("run", "--once", "--now", quarter, env_settings=cfg)
    assert result.exit_code == 0, result.output
    to_her = [r.message for r in smtp_server.received if r.rcpt_tos == [doctor]]
    assert not any("Quarterly" in m["Subject"] for m in to_her)
    others = [
        r.message
        for r in smtp_server.received
        if r.rcpt_tos != [doctor] and "Quarterly" in r.message["Subject"]
    ]
    assert others, "physicians who did not opt out get the summary"
    summary = others[0]
    assert summary["List-Unsubscribe"].startswith("<mailto:")
    text = summary.get_body(("plain",)).get_content()
    assert "12 Main Street" in text  # the practice's postal address
    with store.read(demo_engine) as conn:
        held = conn.execute(
            select(messages.c.status, messages.c.last_error).where(
                messages.c.rule == "quarterly_summary", messages.c.recipient == doctor
            )
        ).one()
    assert held.status == "suppressed" and "opted out" in held.last_error


@pytest.mark.parametrize(
    ("text", "moment", "expected"),
    [
        ("Mon-Fri 08:00-17:00", "2026-11-25T22:00:00-05:00", "2026-11-26T08:00:00-05:00"),
        ("Mon-Fri 08:00-17:00", "2026-11-27T17:00:00-05:00", "2026-11-30T08:00:00-05:00"),
        ("Mon-Fri 08:00-17:00", "2026-11-25T10:00:00-05:00", "2026-11-25T10:00:00-05:00"),
        ("Tue,Thu 13:00-15:30", "2026-11-25T10:00:00-05:00", "2026-11-26T13:00:00-05:00"),
    ],
)
def test_window_next_opening(text, moment, expected):
    from zoneinfo import ZoneInfo

    window = parse_window(text)
    got = window.next_opening(datetime.fromisoformat(moment), ZoneInfo(NY))
    assert got == datetime.fromisoformat(expected)


@pytest.mark.parametrize(
    "bad", ["weekdays 8-5", "Mon-Fri 17:00-08:00", "Mon-Fri 25:00-26:00", "Funday 08:00-09:00"]
)
def test_bad_windows_are_refused(bad):
    with pytest.raises(ValueError):
        parse_window(bad)


def test_window_spans_daylight_saving_change():
    from zoneinfo import ZoneInfo

    window = parse_window("Mon-Fri 08:00-17:00")
    # Saturday 31 Oct 2026 evening; clocks go back on Sunday 1 Nov in New York.
    opening = window.next_opening(datetime.fromisoformat("2026-10-31T20:00:00-04:00"), ZoneInfo(NY))
    assert opening.astimezone(ZoneInfo(NY)).hour == 8
    assert opening - datetime.fromisoformat("2026-10-31T20:00:00-04:00") == timedelta(hours=37)
