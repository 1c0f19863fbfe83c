"""SMTP PIPELINING (RFC 2920): MAIL, RCPT and DATA in one round trip where the server offers it.

Every other SMTP test runs against a server that offers PIPELINING, as
Postfix and the big providers do; these check what pipelining changes:
that it is used only when offered, that a refusal of any pipelined command
is that message's alone, and that nothing is ever handed over when the
caller's hook (the previous outcome's recording) fails after the 354.
"""

from __future__ import annotations

import re

import pytest

from outreach.backends import SMTPBackend, get_backend
from outreach.compose import Email
from outreach.dispatcher import Dispatcher
from outreach.errors import PermanentError, TransientError
from outreach.models import FAILED, PENDING
from tests.conftest import NOW, smtp_settings
from tests.factories import message, queue_message


def deliver(engine, settings):
    return Dispatcher(engine, settings, get_backend(settings), lambda: NOW).send_due()


def email(body: bytes = b"Hello.\r\n") -> Email:
    data = b"From: a@rehab.example.org\r\nTo: b@clinic.example.org\r\nSubject: t\r\n\r\n" + body
    return Email(data=data, message_id="<t@rehab.example.org>")


@pytest.mark.parametrize("offered", [True, False])
def test_the_envelope_is_pipelined_only_where_the_server_offers_it(engine, settings, smtp_server, offered):
    smtp_server.handler.pipelining = offered
    ids = [queue_message(engine) for _ in range(3)]
    report = deliver(engine, smtp_settings(settings, smtp_server))
    assert sorted(report.sent) == ids
    assert smtp_server.handler.data_waiting == [offered] * 3
    assert len(smtp_server.handler.peers) == 1  # one connection for the batch either way


def test_a_refused_recipient_fails_that_message_and_the_next_goes_on_the_same_connection(
    engine, settings, smtp_server
):
    refused = queue_message(engine, recipient="gone@clinic.example.org")
    taken = queue_message(engine)
    smtp_server.handler.refuse_rcpt["gone@clinic.example.org"] = "550 5.1.1 no such mailbox"
    report = deliver(engine, smtp_settings(settings, smtp_server))
    assert report.sent == [taken]
    row = message(engine, refused)
    assert row.status == FAILED and "RCPT TO <gone@clinic.example.org>" in row.last_error
    assert "550 5.1.1" in row.smtp_response
    assert [r.rcpt_tos for r in smtp_server.received] == [[message(engine, taken).recipient]]
    assert len(smtp_server.handler.peers) == 1


def test_a_refused_sender_defers_the_message_and_hands_nothing_over(engine, settings, smtp_server):
    first = queue_message(engine)
    smtp_server.handler.refuse_mail = "451 4.3.0 try again later"
    report = deliver(engine, smtp_settings(settings, smtp_server))
    row = message(engine, first)
    assert report.deferred == [first] and row.status == PENDING
    assert row.last_error.startswith("MAIL FROM: server replied 451 4.3.0")
    assert smtp_server.received == []


def test_leading_dots_arrive_intact(settings, smtp_server):
    body = b"Line one\r\n.starts with a dot\r\n..two dots\r\n.\r\nlast\r\n"
    with SMTPBackend(smtp_settings(settings, smtp_server)) as backend:
        reply = backend.send(email(body), "a@rehab.example.org", "b@clinic.example.org")
    assert reply.startswith("250")
    [received] = smtp_server.received
    assert received.data.endswith(body)
    assert smtp_server.handler.data_waiting == [True]


def test_a_hook_that_fails_after_the_354_hands_nothing_over_and_the_next_email_goes(settings, smtp_server):
    def failing() -> None:
        raise RuntimeError("the previous outcome could not be recorded")

    backend = SMTPBackend(smtp_settings(settings, smtp_server))
    with backend:
        with pytest.raises(RuntimeError):
            backend.send(email(b"never\r\n"), "a@rehab.example.org", "b@clinic.example.org", failing)
        # The server was waiting for content: the connection is gone, a new one is made.
        reply = backend.send(email(b"second\r\n"), "a@rehab.example.org", "b@clinic.example.org")
    assert reply.startswith("250")
    assert [r.data.endswith(b"second\r\n") for r in smtp_server.received] == [True]


def test_closing_while_the_server_waits_for_content_does_not_wait_for_it(settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server, smtp_timeout=30.0)
    backend = SMTPBackend(cfg)
    backend.open()

    def close_instead() -> None:
        backend.close()  # QUIT now would be read as content, and its reply would never come
        raise TransientError("stopping")

    with pytest.raises(TransientError):
        backend.send(email(), "a@rehab.example.org", "b@clinic.example.org", close_instead)
    assert smtp_server.received == []


def test_one_refused_staging_address_of_two_sends_to_neither(settings, smtp_server):
    """The server takes one RCPT and says 354: only dropping the connection can stop the email."""
    smtp_server.handler.refuse_rcpt["second@practice.example"] = "550 5.1.1 no such mailbox"
    with SMTPBackend(smtp_settings(settings, smtp_server)) as backend:
        with pytest.raises(PermanentError, match=re.escape("RCPT TO <second@practice.example>")):
            backend.send(
                email(), "a@rehab.example.org", ["first@practice.example", "second@practice.example"]
            )
        assert backend.send(email(b"next\r\n"), "a@rehab.example.org", "b@clinic.example.org").startswith(
            "250"
        )
    assert [r.rcpt_tos for r in smtp_server.received] == [["b@clinic.example.org"]]


@pytest.mark.parametrize("offered", [True, False])
def test_meanwhile_runs_once_the_email_is_out_while_the_server_judges_it(settings, smtp_server, offered):
    """The dispatcher builds the next email there: the wait for the server's verdict costs nothing."""
    smtp_server.handler.pipelining = offered
    smtp_server.handler.delay = 0.2  # the server takes its time over the verdict
    seen: list[int] = []
    with SMTPBackend(smtp_settings(settings, smtp_server)) as backend:
        reply = backend.send(
            email(),
            "a@rehab.example.org",
            "b@clinic.example.org",
            meanwhile=lambda: seen.append(len(smtp_server.received)),
        )
    assert reply.startswith("250 ") and seen == [0] and len(smtp_server.received) == 1
