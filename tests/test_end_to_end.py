"""The whole service through its CLI: CSVs in, a milestone, an email out, the log."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from tests.conftest import NOW, smtp_settings

DAY = timedelta(days=1)


def _day(offset: int) -> str:
    return (NOW + offset * DAY).date().isoformat()


def write_practice(folder: Path) -> dict[str, Path]:
    files = {
        "physicians": (
            "email,name,credentials,specialty,clinic,phone,fax,timezone\n"
            "r.osei@ortho.example.org,Ruth Osei,MD,Orthopaedic Surgery,Harbor Orthopaedics,555-0100,,America/New_York\n"
        ),
        "clients": (
            "ref,first_name,last_name,physician_email,referral_date,diagnosis,precautions,goals,consent_date,status\n"
            f"C-77,Jamie,Doyle,r.osei@ortho.example.org,{_day(-45)},Right ACL reconstruction,"
            f'No pivoting,"Descend stairs without rail; Return to cycling",{_day(-45)},referred\n'
        ),
        "events": (
            "client_ref,kind,occurred_at,note\n"
            f"C-77,referral_received,{_day(-45)}T09:00,\n"
            f"C-77,initial_assessment,{_day(-40)}T10:00,\n"
            + "".join(f"C-77,session_attended,{_day(-d)}T08:00,\n" for d in range(38, 1, -4))
        ),
        "measures": (
            f"client_ref,instrument,score,measured_at\nC-77,LEFS,38,{_day(-40)}\nC-77,LEFS,55,{_day(-1)}\n"
        ),
    }
    paths = {}
    for kind, text in files.items():
        paths[kind] = folder / f"{kind}.csv"
        paths[kind].write_text(text, encoding="utf-8")
    return paths


def test_milestone_in_clinical_email_out_logged(run_cli, settings, smtp_server, tmp_path):
    cfg = smtp_settings(settings, smtp_server)
    now = NOW.isoformat()

    def cli(*args):
        result = run_cli(*args, env_settings=cfg)
        assert result.exit_code == 0, result.output
        return result

    cli("init")
    for kind, path in write_practice(tmp_path).items():
        cli("import", kind, str(path), "--now", now)
    cli(
        "event",
        "add",
        "C-77",
        "reassessment",
        "--at",
        NOW.isoformat(),
        "--note",
        "12-week reassessment",
        "--now",
        now,
    )
    run = cli("run", "--once", "--now", now)
    assert "sent 1," in run.stdout

    [received] = smtp_server.received
    assert received.rcpt_tos == ["r.osei@ortho.example.org"]
    mail = received.message
    assert "Ruth Osei" in str(mail["To"])
    subject = mail["Subject"]
    assert "J.D." in subject and "C-77" in subject
    assert "Jamie" not in subject and "Doyle" not in subject and "ACL" not in subject
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    for part in (text, html):
        assert "LEFS" in part and "38" in part and "55" in part and "+17" in part
        assert "clinically meaningful improvement" in part
        assert "Dr. Osei" in part
    assert "Alex Morgan" in text and "ACSM-CEP" in text
    assert "Jamie" not in text and "Doyle" not in text  # initials and ref only

    log = json.loads(cli("log", "--format", "json").stdout)
    assert len(log) == 1
    entry = log[0]
    assert entry["status"] == "sent" and entry["rule"] == "reassessment_report"
    assert entry["to"] == "r.osei@ortho.example.org" and entry["client_ref"] == "C-77"
    assert entry["message_id"] == mail["Message-ID"] and entry["attempts"] == 1
    for key in ("id", "created_at", "sent_at", "template", "subject", "physician_email", "last_error"):
        assert key in entry

    again = cli("run", "--once", "--now", now)
    assert "sent 0," in again.stdout
    assert len(smtp_server.received) == 1

    shown = cli("log", "show", str(entry["id"]))
    assert "Trail:" in shown.stdout and "sent" in shown.stdout and "LEFS" in shown.stdout


def test_demo_command_builds_a_practice_and_prints_the_log(run_cli, tmp_path):
    folder = tmp_path / "demo"
    result = run_cli("demo", "--dir", str(folder), "--now", NOW.isoformat())
    assert result.exit_code == 0, result.output
    assert "STATUS" in result.stdout and "sent" in result.stdout
    assert "suppressed" in result.stdout  # the client without consent
    emails = list((folder / "outbox").glob("*.eml"))
    assert len(emails) >= 4  # updates for one physician due together go as one digest
    assert "digest" in result.stdout and "in digest" in result.stdout
    assert (folder / "outreach-demo.db").exists()
    for kind in ("physicians", "clients", "events", "measures"):
        assert (folder / "csv" / f"{kind}.csv").exists()
