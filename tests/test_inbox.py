"""Hearing back, against a real IMAP server (Dovecot): replies, automatic answers, bounces, unmatched mail.

Each email is handled exactly once: a second fetch, two fetches at once, and a
fetch killed half-way leave one record per email and every handled one moved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from outreach import inbox, store, verp
from outreach.cli import cli
from outreach.inbox import InboxError, fetch
from outreach.models import BOUNCED, SENT, clients, inbound, message_events, messages, physicians
from outreach.replies import list_replies
from outreach.review import show_message
from outreach.settings import Secret
from tests.conftest import NOW, ROOT, settings_env
from tests.factories import queue_message

DONE = "outreach-done"
DOCTOR = "m.alvarez@riverside-ortho.example.org"


@pytest.fixture
def mail_settings(settings, imap_server, imap_user):
    """Settings that read ``imap_user``'s mailbox over IMAPS, the certificate verified."""
    return settings.with_(
        imap_host=imap_server.host,
        imap_port=imap_server.tls_port,
        imap_security="ssl",
        imap_username=imap_user.name,
        imap_password=Secret(imap_user.password),
        imap_ca_file=Path(imap_server.ca_file),
    )


def sent_message(engine, ref: str = "C-1001", **changes) -> tuple[int, str]:
    """A message about ``ref`` to the client's physician, sent an hour before NOW: (id, Message-ID)."""
    with store.read(engine) as conn:
        client = conn.execute(select(clients).where(clients.c.ref == ref)).one()
        doctor = conn.execute(select(physicians).where(physicians.c.id == client.physician_id)).one()
    row = {
        "client_id": client.id,
        "physician_id": doctor.id,
        "recipient": doctor.email,
        "status": SENT,
        "sent_at": NOW - timedelta(hours=1),
        **changes,
    }
    message_id = queue_message(engine, **row)
    with store.read(engine) as conn:
        return message_id, conn.execute(
            select(messages.c.message_id).where(messages.c.id == message_id)
        ).scalar()


def email(
    sender: str = DOCTOR, subject: str = "Re: Progress report", body: str = "Thanks, noted.\n", **headers
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Dr Alvarez <{sender}>"
    msg["To"] = "updates@rehab.example.org"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(NOW)
    msg["Message-ID"] = make_msgid(domain="riverside-ortho.example.org")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return bytes(msg)


def reply_to(message_id: str, body: str = "Hold exercise, I'll see her Tuesday.\n", **headers) -> bytes:
    quoted = "\n".join(
        ["", "On Tue, Nov 24, 2026 at 9:00 AM Alex Morgan wrote:", "> Progress report", "> LEFS 38 to 55"]
    )
    return email(body=body + quoted + "\n", In_Reply_To=message_id, References=message_id, **headers)


def dsn(
    recipient: str,
    status: str = "5.1.1",
    original_id: str | None = None,
    to: str = "updates@rehab.example.org",
    action: str | None = None,
) -> bytes:
    """An RFC 3464 delivery status notification, as Postfix writes one (quoting the headers or not)."""
    action = action or ("failed" if status.startswith("5") else "delayed")
    quoted = (
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {original_id}\r\n"
        f"Subject: Progress report\r\nTo: {recipient}\r\n\r\n"
        if original_id
        else ""
    )
    text = (
        "From: MAILER-DAEMON@mx.riverside-ortho.example.org (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {format_datetime(NOW)}\r\n"
        f"Message-ID: {make_msgid(domain='mx.riverside-ortho.example.org')}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.riverside-ortho.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{recipient}>: User unknown\r\n\r\n"
        f"{quoted}--B--\r\n"
    )
    return text.encode()


def trail_of(engine, message_id: int) -> list[tuple[str, str]]:
    with store.read(engine) as conn:
        rows = conn.execute(
            select(message_events.c.action, message_events.c.detail)
            .where(message_events.c.message_id == message_id)
            .order_by(message_events.c.id)
        )
        return [tuple(row) for row in rows]


def recorded(engine) -> list:
    with store.read(engine) as conn:
        return list(conn.execute(select(inbound).order_by(inbound.c.uid)))


def test_a_reply_is_matched_recorded_and_moved(demo_engine, mail_settings, imap_server, imap_user):
    message_id, header = sent_message(demo_engine)
    imap_server.append(imap_user, reply_to(header))
    report = fetch(demo_engine, mail_settings, NOW)
    assert report.kinds == {"reply": 1} and report.moved == 1
    (row,) = recorded(demo_engine)
    assert (row.kind, row.message_id, row.sender) == ("reply", message_id, DOCTOR)
    assert "Hold exercise, I'll see her Tuesday." in row.text and "LEFS 38 to 55" not in row.text
    assert trail_of(demo_engine, message_id)[-1] == ("replied", f"reply from {DOCTOR}")
    assert imap_server.folder_messages(imap_user, "INBOX") == []
    assert len(imap_server.folder_messages(imap_user, DONE)) == 1
    (listed,) = _replies(demo_engine, client="C-1001")
    assert listed["client_ref"] == "C-1001" and listed["physician_email"] == DOCTOR
    assert listed["kind"] == "reply" and listed["auto"] is False
    with store.read(demo_engine) as conn:
        shown = show_message(conn, message_id, mail_settings.tz)
    assert "Replies:" in shown and f"reply from {DOCTOR}: Hold exercise" in shown


def _replies(engine, **filters) -> list[dict]:
    with store.read(engine) as conn:
        return list_replies(conn, **filters)


def test_an_automatic_answer_is_recorded_as_such(demo_engine, mail_settings, imap_server, imap_user):
    message_id, header = sent_message(demo_engine)
    out_of_office = reply_to(
        header, body="I am out of the office until 1 December.\n", Auto_Submitted="auto-replied"
    )
    imap_server.append(imap_user, out_of_office)
    assert fetch(demo_engine, mail_settings, NOW).kinds == {"auto_reply": 1}
    (row,) = recorded(demo_engine)
    assert row.kind == "auto_reply"
    assert trail_of(demo_engine, message_id)[-1] == ("replied", f"automatic reply from {DOCTOR}")
    assert _replies(demo_engine)[0]["auto"] is True


def test_mail_that_matches_nothing_stays_unread_and_is_listed_once(
    demo_engine, mail_settings, imap_server, imap_user
):
    imap_server.append(
        imap_user, email(subject="Lunch and learn, Thursday?", body="Would your team join us?\n")
    )
    assert fetch(demo_engine, mail_settings, NOW).kinds == {"unmatched": 1}
    assert fetch(demo_engine, mail_settings, NOW).kinds == {}  # not again
    assert len(imap_server.folder_messages(imap_user, "INBOX")) == 1  # left where it was ...
    assert "\\Seen" not in imap_server.flags(imap_user, "INBOX")[0]  # ... unread
    (row,) = _replies(demo_engine, unmatched=True)
    assert (
        row["kind"] == "unmatched" and row["message_id"] is None and "none of our messages" in row["reason"]
    )
    result = CliRunner().invoke(
        cli, ["replies", "--unmatched", "--format", "json"], env=settings_env(mail_settings)
    )
    assert result.exit_code == 0, result.output
    (listed,) = json.loads(result.output)
    assert set(listed) >= {
        "id",
        "message_id",
        "client_ref",
        "physician_email",
        "from",
        "received_at",
        "subject",
        "text",
        "auto",
        "kind",
    }
    assert listed["kind"] == "unmatched" and listed["message_id"] is None


def test_a_bounce_marks_the_message_and_the_address(demo_engine, mail_settings, imap_server, imap_user):
    message_id, header = sent_message(demo_engine)
    imap_server.append(imap_user, dsn(DOCTOR, "5.1.1", original_id=header))
    assert fetch(demo_engine, mail_settings, NOW).kinds == {"bounce": 1}
    with store.read(demo_engine) as conn:
        status = conn.execute(select(messages.c.status).where(messages.c.id == message_id)).scalar()
        doctor = conn.execute(select(physicians).where(physicians.c.email == DOCTOR)).one()
    assert status == BOUNCED
    action, detail = trail_of(demo_engine, message_id)[-1]
    assert action == "bounced" and "5.1.1" in detail
    assert doctor.undeliverable_on == NOW.date() and "5.1.1" in doctor.undeliverable_reason
    assert imap_server.folder_messages(imap_user, "INBOX") == []


def test_a_bounce_that_quotes_nothing_is_matched_by_its_envelope_address(
    demo_engine, mail_settings, imap_server, imap_user
):
    cfg = mail_settings.with_(bounce_address="bounces@rehab.example.org")
    message_id, header = sent_message(demo_engine)
    other_id, _ = sent_message(demo_engine)  # the latest to the same address: a recipient guess would pick it
    verp_to = verp.address(cfg.bounce_address, verp.token(message_id, header))
    imap_server.append(imap_user, dsn(DOCTOR, "5.1.1", original_id=None, to=verp_to))
    assert fetch(demo_engine, cfg, NOW).kinds == {"bounce": 1}
    (row,) = recorded(demo_engine)
    assert row.message_id == message_id != other_id


def test_a_delay_notice_is_written_to_the_trail_only(demo_engine, mail_settings, imap_server, imap_user):
    message_id, header = sent_message(demo_engine)
    imap_server.append(imap_user, dsn(DOCTOR, "4.4.7", original_id=header))
    assert fetch(demo_engine, mail_settings, NOW).kinds == {"bounce": 1}
    with store.read(demo_engine) as conn:
        assert conn.execute(select(messages.c.status).where(messages.c.id == message_id)).scalar() == SENT
        assert (
            conn.execute(select(physicians.c.undeliverable_on).where(physicians.c.email == DOCTOR)).scalar()
            is None
        )
    assert trail_of(demo_engine, message_id)[-1][0] == "delayed"


def test_a_server_that_gave_up_bounces_the_message_but_not_the_address(
    demo_engine, mail_settings, imap_server, imap_user
):
    """Postfix after its queue lifetime: "Action: failed", 4.4.7. It never arrived; the address may be fine."""
    message_id, header = sent_message(demo_engine)
    imap_server.append(imap_user, dsn(DOCTOR, "4.4.7", original_id=header, action="failed"))
    assert fetch(demo_engine, mail_settings, NOW).kinds == {"bounce": 1}
    with store.read(demo_engine) as conn:
        row = conn.execute(
            select(messages.c.status, messages.c.last_error).where(messages.c.id == message_id)
        ).one()
        doctor = conn.execute(
            select(physicians.c.undeliverable_on).where(physicians.c.email == DOCTOR)
        ).scalar()
    assert row.status == BOUNCED and "gave up after retrying" in row.last_error
    assert doctor is None
    action, detail = trail_of(demo_engine, message_id)[-1]
    assert action == "bounced" and detail.startswith("the server gave up after retrying: 550 4.4.7")


def test_two_fetches_at_once_handle_each_email_once(demo_engine, mail_settings, imap_server, imap_user):
    headers = [sent_message(demo_engine)[1] for _ in range(12)]
    for header in headers:
        imap_server.append(imap_user, reply_to(header))
    imap_server.append(imap_user, email(subject="unrelated"))
    reports = []
    threads = [
        threading.Thread(target=lambda: reports.append(fetch(demo_engine, mail_settings, NOW)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.kinds.get("reply", 0) for r in reports) == 12
    assert sum(r.kinds.get("unmatched", 0) for r in reports) == 1
    rows = recorded(demo_engine)
    assert len(rows) == 13 and len({r.uid for r in rows}) == 13
    assert len(imap_server.folder_messages(imap_user, DONE)) == 12
    assert fetch(demo_engine, mail_settings, NOW).kinds == {}


def test_a_fetch_that_stops_before_moving_is_finished_by_the_next(
    demo_engine, mail_settings, imap_server, imap_user, monkeypatch
):
    _, header = sent_message(demo_engine)
    imap_server.append(imap_user, reply_to(header))

    def crash(*args, **kwargs):
        raise InboxError("the connection dropped")

    monkeypatch.setattr(inbox, "_move_handled", crash)
    with pytest.raises(InboxError):
        fetch(demo_engine, mail_settings, NOW)
    monkeypatch.undo()
    report = fetch(demo_engine, mail_settings, NOW)
    assert report.kinds == {} and report.moved == 1  # recorded once, moved now
    assert len(recorded(demo_engine)) == 1 and imap_server.folder_messages(imap_user, "INBOX") == []


@pytest.mark.slow
def test_a_fetch_killed_half_way_handles_each_email_exactly_once(
    demo_engine, mail_settings, imap_server, imap_user, tmp_path
):
    headers = [sent_message(demo_engine)[1] for _ in range(150)]
    for header in headers:
        imap_server.append(imap_user, reply_to(header))
    env = {**os.environ, **settings_env(mail_settings)}
    env.update(
        OUTREACH_IMAP_HOST=mail_settings.imap_host,
        OUTREACH_IMAP_PORT=str(mail_settings.imap_port),
        OUTREACH_IMAP_USERNAME=mail_settings.imap_username,
        OUTREACH_IMAP_PASSWORD=mail_settings.imap_password.reveal(),
        OUTREACH_IMAP_CA_FILE=str(mail_settings.imap_ca_file),
    )
    with open(tmp_path / "fetch.log", "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "outreach", "inbox", "fetch"], env=env, stdout=out, stderr=out, cwd=ROOT
        )
        deadline = time.monotonic() + 60
        while len(recorded(demo_engine)) < 20 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
    half = len(recorded(demo_engine))
    assert 0 < half < 150, f"killed after {half} of 150"
    fetch(demo_engine, mail_settings, NOW)
    rows = recorded(demo_engine)
    assert len(rows) == 150 and len({r.uid for r in rows}) == 150 and {r.kind for r in rows} == {"reply"}
    assert imap_server.folder_messages(imap_user, "INBOX") == []
    assert len(imap_server.folder_messages(imap_user, DONE)) == 150
    with store.read(demo_engine) as conn:
        replied = conn.execute(
            select(func.count()).select_from(message_events).where(message_events.c.action == "replied")
        ).scalar()
    assert replied == 150


def test_a_wrong_password_is_one_clear_line(demo_engine, mail_settings):
    cfg = mail_settings.with_(imap_password=Secret("not the password"))
    with pytest.raises(InboxError, match=r"^IMAP 127\.0\.0\.1:\d+: login refused for '\w+'"):
        fetch(demo_engine, cfg, NOW)
    result = CliRunner().invoke(cli, ["inbox", "fetch"], env={**settings_env(cfg), **imap_env(cfg)})
    assert result.exit_code == 1
    assert result.output.startswith("error: IMAP 127.0.0.1:") and result.output.count("\n") == 1
    assert "not the password" not in result.output


def imap_env(cfg) -> dict[str, str]:
    return {
        "OUTREACH_IMAP_HOST": cfg.imap_host,
        "OUTREACH_IMAP_PORT": str(cfg.imap_port),
        "OUTREACH_IMAP_USERNAME": cfg.imap_username,
        "OUTREACH_IMAP_PASSWORD": cfg.imap_password.reveal(),
        "OUTREACH_IMAP_CA_FILE": str(cfg.imap_ca_file),
    }


def test_an_unreachable_server_and_plain_text_elsewhere_are_refused(demo_engine, mail_settings):
    with pytest.raises(InboxError, match="cannot connect"):
        fetch(demo_engine, mail_settings.with_(imap_port=1), NOW)
    with pytest.raises(InboxError, match=r"refusing unencrypted IMAP to mail\.example\.org"):
        fetch(demo_engine, mail_settings.with_(imap_host="mail.example.org", imap_security="none"), NOW)


def test_starttls_on_the_plain_port(demo_engine, mail_settings, imap_server, imap_user):
    _, header = sent_message(demo_engine)
    imap_server.append(imap_user, reply_to(header))
    cfg = mail_settings.with_(imap_security="starttls", imap_port=imap_server.plain_port)
    assert fetch(demo_engine, cfg, NOW).kinds == {"reply": 1}


def test_an_email_over_the_size_limit_is_recorded_unread(
    demo_engine, mail_settings, imap_server, imap_user, monkeypatch
):
    monkeypatch.setattr(inbox, "LARGEST", 10_000)
    imap_server.append(imap_user, email(body="x" * 20_000 + "\n"))
    assert fetch(demo_engine, mail_settings, NOW).kinds == {"unmatched": 1}
    (row,) = recorded(demo_engine)
    assert row.raw is None and row.reason.startswith("too large to read")
    assert (row.sender, row.subject) == (DOCTOR, "Re: Progress report")  # from its header alone


def alert_loop(engine, cfg, when=NOW):
    from outreach.loops import open_loops

    with store.read(engine) as conn:
        (found,) = [lp for lp in open_loops(conn, cfg, when) if lp.loop == "adverse event alert"]
    return found


def test_end_to_end_the_physicians_answer_closes_the_alerts_loop(
    demo_engine, mail_settings, imap_server, imap_user, smtp_server
):
    """Sent through a real SMTP server, answered through a real IMAP server, read by the CLI."""
    from outreach.daemon import Service, make_clock
    from tests.conftest import smtp_settings

    cfg = smtp_settings(mail_settings, smtp_server, bounce_address="bounces@rehab.example.org")
    Service.load(cfg, engine=demo_engine).cycle(make_clock(NOW))
    (alert,) = [r for r in smtp_server.received if "URGENT: adverse event" in str(r.message["Subject"])]
    with store.read(demo_engine) as conn:
        ours = conn.execute(select(messages).where(messages.c.message_id == alert.message_id)).one()
    expected = verp.address("bounces@rehab.example.org", verp.token(ours.id, ours.message_id))
    assert alert.mail_from == expected and alert.message["Return-Path"] == f"<{expected}>"
    assert alert_loop(demo_engine, cfg).state == "awaiting direction"

    doctor = alert.rcpt_tos[0]
    out_of_office = reply_to(
        alert.message_id, body="I am away until Monday.\n", Auto_Submitted="auto-replied"
    )
    imap_server.append(imap_user, out_of_office.replace(DOCTOR.encode(), doctor.encode()))
    env = {**settings_env(cfg), **imap_env(cfg)}
    assert CliRunner().invoke(cli, ["inbox", "fetch"], env=env).exit_code == 0
    assert alert_loop(demo_engine, cfg).state == "awaiting direction"  # an automatic answer is no answer

    answer = reply_to(alert.message_id, body="Hold exercise. I will see her on Tuesday.\n")
    imap_server.append(imap_user, answer.replace(DOCTOR.encode(), doctor.encode()))
    fetched = CliRunner().invoke(cli, ["inbox", "fetch"], env=env)
    assert fetched.exit_code == 0 and "1 reply" in fetched.output
    loops = json.loads(CliRunner().invoke(cli, ["loops", "--format", "json"], env=env).output)
    (closed,) = [lp for lp in loops if lp["loop"] == "adverse event alert"]
    assert closed["state"] == "answered" and f"by {doctor}" in closed["detail"]
    shown = CliRunner().invoke(cli, ["log", "show", str(ours.id)], env=env).output
    assert "reply from" in shown and "Hold exercise. I will see her on Tuesday." in shown


def test_a_bounced_report_blocks_its_loop(demo_engine, mail_settings, imap_server, imap_user, smtp_server):
    from outreach.daemon import Service, make_clock
    from tests.conftest import smtp_settings

    cfg = smtp_settings(mail_settings, smtp_server)
    Service.load(cfg, engine=demo_engine).cycle(make_clock(NOW))
    (alert,) = [r for r in smtp_server.received if "URGENT: adverse event" in str(r.message["Subject"])]
    imap_server.append(imap_user, dsn(alert.rcpt_tos[0], "5.1.1", original_id=alert.message_id))
    fetch(demo_engine, cfg, NOW)
    blocked = alert_loop(demo_engine, cfg)
    assert blocked.state == "blocked" and blocked.detail.startswith("address bounced: 550 5.1.1")


@pytest.mark.parametrize(
    "sample", ["broken_mime.eml", "no_message_id.eml", "unknown_charset.eml", "malformed.eml"]
)
def test_bad_mail_is_recorded_with_its_problem_and_never_stops_the_fetch(
    demo_engine, mail_settings, imap_server, imap_user, sample
):
    _, header = sent_message(demo_engine)
    imap_server.append(imap_user, (ROOT / "tests" / "mail" / sample).read_bytes())
    imap_server.append(imap_user, reply_to(header))  # the next email is still read
    report = fetch(demo_engine, mail_settings, NOW)
    assert report.kinds.get("reply", 0) >= 1 and sum(report.kinds.values()) == 2
    bad = next(row for row in recorded(demo_engine) if row.uid == 1)
    assert bad.reason  # what could not be read, or why it matched nothing


def test_a_non_standard_bounce_is_matched_by_the_address_it_names(
    demo_engine, mail_settings, imap_server, imap_user
):
    """A qmail bounce (no RFC 3464 report, no Message-ID, no VERP of ours): matched by its recipient."""
    raw = (ROOT / "tests" / "mail" / "bounce_qmail.eml").read_bytes()
    address = "r.nguyen@westbrook-clinic.example"
    sent_at = datetime(2026, 11, 25, 9, 29, tzinfo=UTC)  # a minute before the bounce's Date
    message_id, _ = sent_message(demo_engine, recipient=address, sent_at=sent_at)
    imap_server.append(imap_user, raw)
    assert fetch(demo_engine, mail_settings, NOW).kinds == {"bounce": 1}
    with store.read(demo_engine) as conn:
        assert conn.execute(select(messages.c.status).where(messages.c.id == message_id)).scalar() == BOUNCED


def test_status_says_when_the_inbox_cannot_be_read(demo_engine):
    from outreach import status

    status.started(demo_engine, "worker-1", NOW)
    status.record_error(
        demo_engine, "worker-1", NOW, "inbox: IMAP mail.example.org:993: login refused for 'x'"
    )
    with store.read(demo_engine) as conn:
        health = status.health(conn, NOW, 60)
    assert health.problems == [
        "inbox not read since "
        f"{NOW:%Y-%m-%d %H:%M} UTC: inbox: IMAP mail.example.org:993: login refused for 'x'"
    ]


@pytest.mark.slow
def test_a_thirty_megabyte_email_is_recorded_without_being_downloaded(
    demo_engine, mail_settings, imap_server, imap_user
):
    _, header = sent_message(demo_engine)
    attachment = "A" * (30 * 1024 * 1024)
    imap_server.append(imap_user, email(body=f"Scan attached.\n{attachment}\n", In_Reply_To=header))
    imap_server.append(imap_user, reply_to(header))  # the fetch goes on past it
    assert fetch(demo_engine, mail_settings, NOW).kinds == {"unmatched": 1, "reply": 1}
    big = next(row for row in recorded(demo_engine) if row.kind == "unmatched")
    assert big.raw is None and big.reason.startswith("too large to read (3")
    assert big.reason.endswith("MB; the limit is 25 MB)") and big.sender == DOCTOR
    assert len(imap_server.folder_messages(imap_user, "INBOX")) == 1  # left for a person


def test_the_service_reads_the_inbox_every_tick_and_survives_a_wrong_password(
    demo_engine, mail_settings, imap_server, imap_user
):
    from outreach import status
    from outreach.daemon import Jobs, Service, guarded, make_clock

    _, header = sent_message(demo_engine)
    imap_server.append(imap_user, reply_to(header))
    jobs = Jobs(Service.load(mail_settings, engine=demo_engine), make_clock(NOW), threading.Event())
    inbox_job = dict(jobs.named())["inbox"]
    inbox_job()
    assert [row.kind for row in recorded(demo_engine)] == ["reply"]

    wrong = Service.load(mail_settings.with_(imap_password=Secret("wrong password")), engine=demo_engine)
    failing = Jobs(wrong, make_clock(NOW), threading.Event())
    status.started(demo_engine, wrong.worker, NOW)
    guarded("inbox", dict(failing.named())["inbox"], failing.record_error)()  # logged, never raised
    with store.read(demo_engine) as conn:
        health = status.health(conn, NOW, 60)
    assert any(p.startswith("inbox not read since") and "login refused" in p for p in health.problems)
    assert "wrong password" not in " ".join(health.problems)
    no_mailbox = Jobs(
        Service.load(mail_settings.with_(imap_host=""), engine=demo_engine),
        make_clock(NOW),
        threading.Event(),
    )
    assert "inbox" not in dict(no_mailbox.named())
