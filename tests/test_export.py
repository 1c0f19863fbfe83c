"""A client's record on request (``outreach client export``): one zip, owner-only, audited, no one else in it."""

from __future__ import annotations

import email
import io
import json
import os
import stat
import zipfile
from datetime import date, timedelta
from email.message import EmailMessage
from email.policy import default as email_policy
from email.utils import format_datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from outreach import outbox, records, store
from outreach.errors import NotFound, OutreachError
from outreach.export import client_zip, default_name, export_client
from outreach.models import FAILED, SENT, audit, clients, inbound, message_bodies, messages, physicians
from tests.conftest import NOW
from tests.factories import queue_message, record_inbound

DOCTOR = "r.osei@ortho.example.org"
OURS = ("Maria Quintero", "left ACL reconstruction")
# The other client: in the digest, its reply and her own email; never in K-1's export.
THEIRS = ("Zimmer", "rotator cuff", "K-2")
SENT_AT = NOW - timedelta(days=2)


def client_id(engine, ref: str) -> int:
    with store.read(engine) as conn:
        return conn.execute(select(clients.c.id).where(clients.c.ref == ref)).scalar_one()


def sent(engine, **row) -> int:
    """A message sent two days before NOW, with its trail."""
    message_id = queue_message(engine, status=SENT, sent_at=SENT_AT, **row)
    with store.write(engine) as conn:
        outbox.trail(conn, message_id, SENT_AT, "sent", "250 2.0.0 queued as 1A2B")
    return message_id


def header_id(engine, message_id: int) -> str:
    with store.read(engine) as conn:
        return conn.execute(select(messages.c.message_id).where(messages.c.id == message_id)).scalar_one()


def reply(engine, uid: int, to: int, body: str, client: int | None) -> int:
    """The physician's answer to message ``to``, stored as the inbox stores it (raw email included)."""
    mail = EmailMessage()
    mail["From"] = f"Dr Ruth Osei <{DOCTOR}>"
    mail["To"] = "updates@rehab.example.org"
    mail["Subject"] = "Re: your update"
    mail["Date"] = format_datetime(NOW - timedelta(days=1))
    mail["Message-ID"] = f"<reply{uid}@ortho.example.org>"
    mail["In-Reply-To"] = header_id(engine, to)
    mail.set_content(body)
    return record_inbound(
        engine,
        uid=uid,
        header_message_id=mail["Message-ID"],
        message_id=to,
        client_id=client,
        sender=DOCTOR,
        subject=mail["Subject"],
        received_at=NOW - timedelta(days=1),
        text=body,
        raw=bytes(mail),
    )


@pytest.fixture
def practice(engine):
    """K-1 with events, measures, a sent update, a failed one, an update in a digest shared with K-2,
    the physician's reply to K-1's update and their reply to the digest; K-2 with an email of her own."""
    with store.write(engine) as conn:
        records.save_physician(conn, {"email": DOCTOR, "name": "Ruth Osei", "credentials": "MD"}, NOW)
        doctor = conn.execute(select(physicians.c.id)).scalar_one()
        for ref, first, last, diagnosis in (
            ("K-1", "Maria", "Quintero", "left ACL reconstruction"),
            ("K-2", "Bartholomew", "Zimmer", "rotator cuff repair"),
        ):
            values = {"ref": ref, "first_name": first, "last_name": last, "physician_id": doctor}
            records.save_client(
                conn, {**values, "diagnosis": diagnosis, "consent_date": date(2026, 10, 1)}, NOW
            )
    k1, k2 = client_id(engine, "K-1"), client_id(engine, "K-2")
    with store.write(engine) as conn:
        records.record_event(conn, k1, "referral_received", NOW - timedelta(days=30), "", NOW)
        records.record_event(
            conn, k1, "initial_assessment", NOW - timedelta(days=20), "Baseline LEFS 40", NOW
        )
        records.record_measure(conn, k1, "LEFS", 40, date(2026, 11, 5), NOW)
        records.record_measure(conn, k1, "LEFS", 52, date(2026, 11, 20), NOW)
    person = {"physician_id": doctor, "recipient": DOCTOR, "recipient_name": "Ruth Osei, MD"}
    ids = {
        "report": sent(
            engine,
            client_id=k1,
            subject="Initial assessment report: M.Q. (ref K-1)",
            text="Maria Quintero, left ACL reconstruction: LEFS 40 at baseline.\n",
            html="<p>Maria Quintero, left ACL reconstruction: LEFS 40 at baseline.</p>",
            **person,
        ),
        "failed": queue_message(
            engine,
            client_id=k1,
            status=FAILED,
            attempts=3,
            last_error="550 5.7.1 message refused",
            subject="Progress report: M.Q. (ref K-1)",
            text="Maria Quintero: LEFS 52, up 12 points.\n",
            **person,
        ),
        "digest": sent(
            engine,
            kind="digest",
            rule="digest",
            template="digest",
            subject="Clinical updates: 2 clients",
            text="1. Maria Quintero, knee.\n2. Bartholomew Zimmer, rotator cuff repair.\n",
            html="<p>Maria Quintero</p><p>Bartholomew Zimmer, rotator cuff repair</p>",
            **person,
        ),
        "theirs": sent(
            engine,
            client_id=k2,
            subject="Report (ref K-2)",
            text="Bartholomew Zimmer, rotator cuff.\n",
            **person,
        ),
    }
    for client, text in (
        (k1, "Maria Quintero reassessed: knee extension full.\n"),
        (k2, "Zimmer: rotator cuff.\n"),
    ):
        key = "member" if client == k1 else "their_member"
        ids[key] = sent(
            engine,
            client_id=client,
            digest_id=ids["digest"],
            subject="Reassessment report",
            text=text,
            smtp_response=f"sent in digest message {ids['digest']}",
            **person,
        )
    ids["reply"] = reply(engine, 1, ids["report"], "Thanks, continue the program for Maria.\n", k1)
    ids["digest_reply"] = reply(engine, 2, ids["digest"], "Zimmer's rotator cuff: see him Monday.\n", None)
    reply(engine, 3, ids["theirs"], "Zimmer: rotator cuff noted.\n", k2)
    return ids


def opened(path: Path) -> tuple[zipfile.ZipFile, dict]:
    archive = zipfile.ZipFile(path)
    return archive, json.loads(archive.read("record.json"))


def parsed(archive: zipfile.ZipFile, name: str) -> email.message.EmailMessage:
    return email.message_from_bytes(archive.read(name), policy=email_policy)  # type: ignore[return-value]


def readable(archive: zipfile.ZipFile) -> str:
    """Every member as bytes read, and every email's headers and parts decoded (no quoted-printable hides)."""
    seen = []
    for name in archive.namelist():
        data = archive.read(name)
        seen.append(data.decode("utf-8", "replace"))
        if name.endswith(".eml"):
            mail = parsed(archive, name)
            seen += [f"{key}: {value}" for key, value in mail.items()]
            seen += [part.get_content() for part in mail.walk() if part.get_content_maintype() == "text"]
    return "\n".join(seen)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Where the exports go: a folder of their own (the SQLite file is in ``tmp_path``)."""
    path = tmp_path / "exports"
    path.mkdir()
    return path


def audits(engine) -> list:
    with store.read(engine) as conn:
        return list(conn.execute(select(audit).where(audit.c.action == "export")))


# --- the library ----------------------------------------------------------------------------


def test_the_zip_holds_the_clients_record_and_emails_and_nothing_of_another_client(
    engine, settings, practice, folder
):
    out = folder / "k1.zip"
    summary = export_client(engine, settings, "K-1", out, NOW, actor="a.morgan")

    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no staged file left
    assert (summary.messages, summary.emails, summary.replies, summary.reply_emails) == (3, 3, 2, 1)
    assert (summary.events, summary.measures) == (2, 2)
    archive, record = opened(out)
    ids = practice
    assert sorted(archive.namelist()) == sorted(
        [
            "README.txt",
            "record.json",
            f"messages/{ids['report']}.eml",
            f"messages/{ids['failed']}.eml",
            f"messages/{ids['member']}.eml",
            f"replies/{ids['reply']}.eml",
        ]
    )
    assert all(info.external_attr >> 16 == 0o100600 for info in archive.infolist())

    assert record["client"]["ref"] == "K-1" and record["client"]["diagnosis"] == "left ACL reconstruction"
    assert set(record["client"]) >= {"first_name", "last_name", "consent_date", "status", "created_at"}
    assert record["consent"] == {
        "given_on": "2026-10-01",
        "expires": None,
        "revoked_on": None,
        "on_export_day": "in effect",
    }
    assert record["physician"]["email"] == DOCTOR
    assert [e["kind"] for e in record["events"]] == ["referral_received", "initial_assessment"]
    assert [(m["instrument"], m["score"], m["measured_on"]) for m in record["measures"]] == [
        ("LEFS", 40, "2026-11-05"),
        ("LEFS", 52, "2026-11-20"),
    ]
    assert record["exported_by"] == "a.morgan"

    by_id = {m["id"]: m for m in record["messages"]}
    assert set(by_id) == {ids["report"], ids["failed"], ids["member"]}
    report = by_id[ids["report"]]
    assert report["status"] == "sent" and report["recipient"] == DOCTOR
    assert [step["action"] for step in report["trail"]] == ["queued", "sent"]
    failed = by_id[ids["failed"]]
    assert failed["status"] == "failed" and failed["last_error"] == "550 5.7.1 message refused"
    member = by_id[ids["member"]]
    assert member["digest"] == {
        "id": ids["digest"],
        "message_id": header_id(engine, ids["digest"]),
        "status": "sent",
        "sent_at": SENT_AT.isoformat(),
    }

    mail = parsed(archive, report["eml"])
    assert mail["Message-ID"] == report["message_id"] == header_id(engine, ids["report"])
    assert mail["Subject"] == "Initial assessment report: M.Q. (ref K-1)"
    assert mail["To"].addresses[0].addr_spec == DOCTOR
    assert "LEFS 40 at baseline" in mail.get_body(("plain",)).get_content()
    assert "knee extension full" in parsed(archive, member["eml"]).get_body(("plain",)).get_content()

    answer, to_digest = sorted(record["replies"], key=lambda r: r["id"])
    assert answer["message_id"] == ids["report"] and answer["text"].startswith("Thanks, continue")
    assert "continue the program" in parsed(archive, answer["eml"]).get_body(("plain",)).get_content()
    assert set(to_digest) == {"id", "kind", "received_at", "sender", "digest_id", "note"}
    assert to_digest["digest_id"] == ids["digest"] and to_digest["sender"] == DOCTOR
    assert "reply to a digest that carried this client's update" in to_digest["note"]

    everything = readable(archive)
    assert all(ours in everything for ours in OURS)
    assert [theirs for theirs in THEIRS if theirs.lower() in everything.lower()] == []
    assert "K-1" in archive.read("README.txt").decode()

    [line] = audits(engine)
    assert (line.actor, line.subject) == ("a.morgan", "K-1")
    assert line.detail == "k1.zip: 3 messages (3 as .eml), 2 replies (1 as .eml), 2 events, 2 measures"


def test_a_body_removed_under_retention_is_named_with_its_hash_not_exported(
    engine, settings, practice, folder
):
    removed = NOW - timedelta(days=1)
    with store.write(engine) as conn:
        conn.execute(delete(message_bodies).where(message_bodies.c.message_id == practice["report"]))
        conn.execute(
            update(messages)
            .where(messages.c.id == practice["report"])
            .values(body_removed_at=removed, body_sha256="ab" * 32)
        )
        conn.execute(
            update(inbound)
            .where(inbound.c.id == practice["reply"])
            .values(body_removed_at=removed, body_sha256="cd" * 32, raw=None, text="")
        )
    out = folder / "k1.zip"
    summary = export_client(engine, settings, "K-1", out, NOW, actor="a.morgan")

    assert (summary.emails, summary.reply_emails) == (2, 0)
    archive, record = opened(out)
    assert f"messages/{practice['report']}.eml" not in archive.namelist()
    assert not [name for name in archive.namelist() if name.startswith("replies/")]
    [report] = [m for m in record["messages"] if m["id"] == practice["report"]]
    assert report["eml"] is None and report["body_sha256"] == "ab" * 32
    assert report["eml_missing"] == "body removed on 2026-11-24 under the retention setting"
    [answer] = [r for r in record["replies"] if r["id"] == practice["reply"]]
    assert answer["eml"] is None and answer["body_sha256"] == "cd" * 32
    assert answer["eml_missing"] == "body removed on 2026-11-24 under the retention setting"


def test_an_existing_file_or_link_is_never_written_over(engine, settings, practice, folder):
    taken = folder / "taken.zip"
    taken.write_text("someone else's file")
    dangling = folder / "link.zip"
    dangling.symlink_to(folder / "nowhere.zip")
    for out in (taken, dangling, folder):
        with pytest.raises(OutreachError, match=r"exists; choose another --out$"):
            export_client(engine, settings, "K-1", out, NOW)
    assert taken.read_text() == "someone else's file"
    assert not (folder / "nowhere.zip").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["link.zip", "taken.zip"]
    assert audits(engine) == []


def test_an_unknown_reference_writes_nothing(engine, settings, practice, folder):
    with pytest.raises(NotFound, match=r"^no client with reference K-404$"):
        export_client(engine, settings, "K-404", folder / "x.zip", NOW)
    assert list(folder.iterdir()) == []
    assert audits(engine) == []


def test_a_folder_that_is_not_there_is_one_line(engine, settings, practice, folder):
    with pytest.raises(OutreachError, match=r"x\.zip: cannot write: No such file or directory$"):
        export_client(engine, settings, "K-1", folder / "missing" / "x.zip", NOW)
    assert audits(engine) == []


def test_the_bytes_for_the_console_are_the_same_record_and_audited(engine, settings, practice):
    data, summary = client_zip(engine, settings, "K-1", NOW, actor="admin@practice.example")
    assert summary.path.name == "client-K-1-20261125.zip"
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert json.loads(archive.read("record.json"))["client"]["ref"] == "K-1"
    [line] = audits(engine)
    assert line.actor == "admin@practice.example" and line.detail.startswith(
        "client-K-1-20261125.zip: 3 messages"
    )


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("K-1", "client-K-1-20261125.zip"),
        ("../etc/pass wd", "client-etc_pass_wd-20261125.zip"),
        ("..", "client-client-20261125.zip"),
    ],
)
def test_the_default_name_is_safe_for_any_reference(ref, name):
    assert default_name(ref, date(2026, 11, 25)) == name


# --- the command ----------------------------------------------------------------------------


def test_the_command_writes_the_default_file_here_and_says_what_is_in_it(
    engine, practice, run_cli, folder, monkeypatch
):
    monkeypatch.chdir(folder)
    result = run_cli("client", "export", "K-1", "--now", NOW.isoformat())
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "wrote client-K-1-20261125.zip: 3 messages (3 as .eml), 2 replies (1 as .eml), 2 events, "
        "2 measures (readable by you only)\n"
    )
    assert stat.S_IMODE(os.stat(folder / "client-K-1-20261125.zip").st_mode) == 0o600
    [line] = audits(engine)
    assert line.subject == "K-1" and line.actor == records.person()

    again = run_cli("client", "export", "K-1", "--now", NOW.isoformat())
    assert again.exit_code == 1
    assert again.stderr == "error: client-K-1-20261125.zip exists; choose another --out\n"
    assert len(audits(engine)) == 1


def test_the_command_refuses_an_unknown_reference_in_one_line(engine, run_cli, folder):
    out = folder / "x.zip"
    result = run_cli("client", "export", "NOPE", "--out", str(out))
    assert result.exit_code == 1
    assert result.stderr == "error: no client with reference NOPE\n"
    assert result.stdout == "" and not out.exists()


# --- a real digest, made by the planner and sent ----------------------------------------------


def test_a_real_digest_and_a_reply_to_it_leave_the_other_client_out(
    run_cli, settings, smtp_server, engine, tmp_path
):
    from tests.conftest import smtp_settings

    cfg = smtp_settings(settings, smtp_server)

    def cli(*args):
        result = run_cli(*args, env_settings=cfg)
        assert result.exit_code == 0, result.output
        return result

    at = "2026-11-03T10:00:00-05:00"
    (tmp_path / "p.csv").write_text(
        f"email,name,credentials,timezone\n{DOCTOR},Ruth Osei,MD,America/New_York\n"
    )
    (tmp_path / "c.csv").write_text(
        "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n"
        f"K-1,Maria,Quintero,{DOCTOR},2026-10-01,left ACL reconstruction,2026-10-01,referred\n"
        f"K-2,Bartholomew,Zimmer,{DOCTOR},2026-10-01,rotator cuff repair,2026-10-01,referred\n"
    )
    cli("import", "physicians", str(tmp_path / "p.csv"), "--now", at)
    cli("import", "clients", str(tmp_path / "c.csv"), "--now", at)
    for ref in ("K-1", "K-2"):
        cli("event", "add", ref, "initial_assessment", "--at", at, "--now", at)
    cli("run", "--once", "--now", at)
    [received] = smtp_server.received
    carried = received.message.get_body(("plain",)).get_content()
    assert "B.Z. (ref K-2)" in carried and "rotator cuff repair" in carried  # the digest carried both
    with store.read(engine) as conn:
        digest = conn.execute(select(messages.c.id).where(messages.c.kind == "digest")).scalar_one()
    reply(engine, 7, digest, "Zimmer's rotator cuff: agree with the plan.\n", None)

    out = tmp_path / "k1.zip"
    cli("client", "export", "K-1", "--out", str(out), "--now", "2026-11-04T10:00:00-05:00")
    archive, record = opened(out)
    [update_] = record["messages"]
    assert update_["digest"]["id"] == digest and update_["status"] == "sent"
    own = parsed(archive, update_["eml"]).get_body(("plain",)).get_content()
    assert "M.Q. (ref K-1)" in own and "left ACL reconstruction" in own
    assert [r["digest_id"] for r in record["replies"]] == [digest]
    everything = readable(archive).lower()
    assert [theirs for theirs in (*THEIRS, "B.Z.") if theirs.lower() in everything] == []


# --- the console's download, for admins -------------------------------------------------------


def test_an_admin_downloads_the_record_from_the_client_page_audited_and_never_cached(console, practice):
    browser = console.login("admin")
    page = browser.get("/clients/K-1").get_data(as_text=True)
    assert 'action="/clients/K-1/export"' in page and "Download the client's record" in page

    response = browser.post("/clients/K-1/export")
    assert response.status_code == 200
    assert response.mimetype == "application/zip"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Disposition"] == "attachment; filename=client-K-1-20261125.zip"
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    assert json.loads(archive.read("record.json"))["client"]["ref"] == "K-1"
    assert [theirs for theirs in THEIRS if theirs.lower() in readable(archive).lower()] == []
    [line] = audits(console.engine)
    assert (line.actor, line.subject, line.address) == ("admin@practice.example", "K-1", "127.0.0.1")


def test_staff_see_no_button_and_are_refused_and_a_form_without_its_token_is_refused(console, practice):
    staff = console.login("staff")
    assert "/clients/K-1/export" not in staff.get("/clients/K-1").get_data(as_text=True)
    assert staff.post("/clients/K-1/export").status_code == 403
    admin = console.login("admin")
    admin.get("/clients/K-1")
    assert admin.client.post("/clients/K-1/export", data={}).status_code == 400  # no CSRF token
    assert admin.post("/clients/K-404/export").status_code == 404
    assert audits(console.engine) == []
