"""Delivery through a real SMTP server: plain, STARTTLS with AUTH, and its replies."""

from __future__ import annotations

import email.policy
from datetime import timedelta

import pytest

from outreach.backends import SMTPBackend, get_backend
from outreach.backends.smtp import classify
from outreach.dispatcher import Dispatcher
from outreach.errors import RecipientUnknown, SettingsError, TransientError
from outreach.models import FAILED, PENDING, SENT
from outreach.settings import Secret
from tests.conftest import NOW, smtp_settings, tls_settings
from tests.factories import message, queue_message, trail


def deliver(engine, settings, now=NOW, **kwargs):
    return Dispatcher(engine, settings, get_backend(settings), lambda: now).send_due(**kwargs)


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def test_plain_smtp_delivers_multipart_with_crlf(engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    message_id = queue_message(engine, subject="Progress report: J.D. (ref C-1)")
    report = deliver(engine, cfg)
    assert report.sent == [message_id]
    [received] = smtp_server.received
    assert received.rcpt_tos == [message(engine, message_id).recipient]
    assert b"\r\n" in received.data and b"\n" not in received.data.replace(b"\r\n", b"")
    mail = received.message
    assert mail["Subject"] == "Progress report: J.D. (ref C-1)"
    assert mail["Message-ID"] == message(engine, message_id).message_id
    assert mail.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in mail.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    row = message(engine, message_id)
    assert row.status == SENT and row.attempts == 1 and row.smtp_response.startswith("250")
    assert [a for a, _ in trail(engine, message_id)] == ["queued", "claimed", "sent"]


def test_starttls_with_auth_delivers(engine, settings, tls_smtp_server, ca_file):
    cfg = tls_settings(settings, tls_smtp_server, ca_file)
    message_id = queue_message(engine)
    report = deliver(engine, cfg)
    assert report.sent == [message_id] and report.aborted is None
    assert len(tls_smtp_server.received) == 1


def test_implicit_tls_with_auth_delivers(engine, settings, ssl_smtp_server, ca_file):
    cfg = tls_settings(settings, ssl_smtp_server, ca_file, smtp_security="ssl")
    message_id = queue_message(engine)
    report = deliver(engine, cfg)
    assert report.sent == [message_id] and report.aborted is None
    assert len(ssl_smtp_server.received) == 1


def test_implicit_tls_verifies_the_certificate(engine, settings, ssl_smtp_server, ca_file):
    cfg = tls_settings(settings, ssl_smtp_server, ca_file, smtp_security="ssl", smtp_ca_file=None)
    message_id = queue_message(engine)
    report = deliver(engine, cfg)
    assert report.aborted and "TLS" in report.aborted
    assert message(engine, message_id).status == PENDING and ssl_smtp_server.received == []


def test_wrong_password_stops_the_batch_and_keeps_messages_queued(engine, settings, tls_smtp_server, ca_file):
    cfg = tls_settings(settings, tls_smtp_server, ca_file, smtp_password=Secret("wrong-password-QQQ"))
    ids = [queue_message(engine) for _ in range(3)]
    report = deliver(engine, cfg)
    assert report.aborted and "login" in report.aborted and "refused" in report.aborted
    assert "wrong-password-QQQ" not in report.aborted
    assert tls_smtp_server.received == []
    for message_id in ids:
        row = message(engine, message_id)
        assert row.status == PENDING and row.attempts == 0
        assert "login" in row.last_error
        assert "wrong-password-QQQ" not in row.last_error


def test_untrusted_certificate_is_refused(engine, settings, tls_smtp_server, ca_file):
    cfg = tls_settings(settings, tls_smtp_server, ca_file, smtp_ca_file=None)
    message_id = queue_message(engine)
    report = deliver(engine, cfg)
    assert report.aborted and "TLS" in report.aborted
    assert message(engine, message_id).status == PENDING
    assert tls_smtp_server.received == []


def test_starttls_required_is_never_downgraded(engine, settings, smtp_server):
    # The plain server offers no STARTTLS: a starttls configuration must not fall back.
    cfg = smtp_settings(settings, smtp_server, smtp_security="starttls")
    message_id = queue_message(engine)
    report = deliver(engine, cfg)
    assert report.aborted and "STARTTLS" in report.aborted
    assert smtp_server.received == []
    assert message(engine, message_id).status == PENDING


def test_plain_smtp_to_a_remote_host_is_refused(settings):
    cfg = settings.with_(email_backend="smtp", smtp_host="mail.example.org", smtp_security="none")
    with pytest.raises(SettingsError, match="OUTREACH_SMTP_SECURITY"):
        SMTPBackend(cfg)
    SMTPBackend(cfg.with_(smtp_allow_insecure=True))  # explicitly allowed


def test_transient_reply_is_retried_later_and_delivered(engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    smtp_server.handler.script.append("451 4.3.0 Try again later")
    message_id = queue_message(engine)

    first = deliver(engine, cfg)
    row = message(engine, message_id)
    assert first.deferred == [message_id]
    assert row.status == PENDING and row.attempts == 1 and "451" in row.last_error
    assert row.next_attempt_at == NOW + timedelta(seconds=cfg.retry_base_seconds)

    assert deliver(engine, cfg).sent == []  # not due yet
    later = deliver(engine, cfg, now=NOW + timedelta(minutes=2))
    assert later.sent == [message_id]
    row = message(engine, message_id)
    assert row.status == SENT and row.attempts == 2
    assert len(smtp_server.received) == 1
    assert [a for a, _ in trail(engine, message_id)] == ["queued", "claimed", "deferred", "claimed", "sent"]


def test_backoff_grows_and_gives_up_after_max_attempts(engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server, max_attempts=3)
    smtp_server.handler.script.extend(["452 4.2.2 Mailbox full"] * 3)
    message_id = queue_message(engine)
    now = NOW
    delays = []
    for _ in range(3):
        deliver(engine, cfg, now=now)
        row = message(engine, message_id)
        if row.status == PENDING:
            delays.append(row.next_attempt_at - now)
            now = row.next_attempt_at
    assert delays == [timedelta(seconds=60), timedelta(seconds=120)]
    row = message(engine, message_id)
    assert row.status == FAILED and row.attempts == 3
    assert "gave up after 3 attempts" in row.last_error and "452" in row.last_error


def test_permanent_reply_fails_with_the_reply_kept(engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    smtp_server.handler.script.append("550 5.1.1 No such user here")
    bad = queue_message(engine)
    good = queue_message(engine)
    report = deliver(engine, cfg)
    assert report.failed == [bad] and report.sent == [good]
    row = message(engine, bad)
    assert row.status == FAILED
    assert "550 5.1.1 No such user here" in row.smtp_response
    assert "550" in row.last_error
    assert len(smtp_server.received) == 1  # the good one, once


def test_server_down_leaves_messages_queued_with_the_error(engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    smtp_server.stop()
    message_id = queue_message(engine)
    report = deliver(engine, cfg)
    assert report.aborted and "cannot reach SMTP server" in report.aborted
    row = message(engine, message_id)
    assert row.status == PENDING and row.attempts == 0
    assert "cannot reach" in row.last_error
    assert row.next_attempt_at > NOW


def test_dropped_connection_is_transient_and_the_batch_goes_on(engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    smtp_server.handler.script.append("drop")
    first, second = queue_message(engine), queue_message(engine)
    report = deliver(engine, cfg)
    assert report.deferred == [first] and report.sent == [second]
    assert "lost" in message(engine, first).last_error


def test_one_connection_is_reused_for_a_batch(engine, settings, smtp_server, monkeypatch):
    import smtplib

    connects = []
    original = smtplib.SMTP.connect

    def counting_connect(self, *args, **kwargs):
        connects.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(smtplib.SMTP, "connect", counting_connect)
    cfg = smtp_settings(settings, smtp_server, batch_size=10)
    for _ in range(5):
        queue_message(engine)
    assert len(deliver(engine, cfg).sent) == 5
    assert len(connects) == 1


def test_large_html_with_long_lines_arrives_intact(engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    row_html = "".join(f'<td style="padding:4px;border:1px solid #ccc">cell {i} ✓</td>' for i in range(400))
    html = f"<html><body><table><tr>{row_html}</tr></table><p>. leading dot line</p></body></html>"
    assert len(html) > 20_000
    message_id = queue_message(engine, html=html, text="Ünïcode text part\n.\nEnd\n")
    assert deliver(engine, cfg).sent == [message_id]
    data = smtp_server.received[0].data
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    mail = smtp_server.received[0].message
    html_part = mail.get_body(("html",))
    assert html_part["Content-Transfer-Encoding"] == "quoted-printable"
    assert _lf(html_part.get_content()).rstrip("\n") == html
    assert _lf(mail.get_body(("plain",)).get_content()) == "Ünïcode text part\n.\nEnd\n"


def test_name_with_line_break_cannot_inject_headers(engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    message_id = queue_message(
        engine,
        recipient_name="Dr Evil\r\nBcc: victim@example.com",
        subject="Report\nBcc: victim@example.com",
    )
    assert deliver(engine, cfg).sent == [message_id]
    [received] = smtp_server.received
    assert received.rcpt_tos == [message(engine, message_id).recipient]
    mail = received.message
    assert mail["Bcc"] is None
    assert "Dr Evil Bcc" in str(mail["To"])
    headers = received.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in headers


def test_file_backend_writes_one_eml_per_message(engine, settings):
    ids = [queue_message(engine) for _ in range(2)]
    report = deliver(engine, settings)
    assert report.sent == ids
    files = sorted(settings.outbox_dir.glob("*.eml"))
    assert len(files) == 2
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] in {message(engine, i).message_id for i in ids}
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"


def test_only_a_mailbox_refusal_at_rcpt_means_the_address_is_unknown():
    assert isinstance(classify(550, b"5.1.1 No such user", "RCPT TO <a@b.example>"), RecipientUnknown)
    assert not isinstance(classify(550, b"5.7.1 Relaying denied", "RCPT TO <a@b.example>"), RecipientUnknown)
    assert not isinstance(classify(550, b"5.1.1 odd", "DATA"), RecipientUnknown)
    assert isinstance(classify(451, b"4.1.1 later", "RCPT TO <a@b.example>"), TransientError)


def test_the_connection_is_kept_from_one_claim_to_the_next_and_closed_before_a_wait(
    engine, settings, smtp_server
):
    """Claims of 2, seven urgent emails: one connection; while the plan beside goes on, none is left open."""
    import threading
    import time

    from outreach.dispatcher import Planning

    cfg = smtp_settings(settings, smtp_server, batch_size=2)
    ids = [queue_message(engine, priority=10) for _ in range(7)]  # urgent: no plan needs to release them
    planning = Planning(NOW)
    dispatcher = Dispatcher(engine, cfg, get_backend(cfg), lambda: NOW)
    sent: list = []
    sender = threading.Thread(target=lambda: sent.append(dispatcher.send_due(planning=planning)))
    sender.start()
    deadline = time.monotonic() + 20
    while len(smtp_server.received) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # the sender finds nothing more and waits for the plan
    try:
        assert sender.is_alive()
        assert smtp_server.handler.open == 0  # closed before waiting
    finally:
        planning.finish()
        sender.join(20)
    assert sorted(sent[0].sent) == ids
    assert len(smtp_server.handler.peers) == 1  # every claim on the one connection
