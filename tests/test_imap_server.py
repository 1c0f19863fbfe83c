"""The test IMAP server itself (Dovecot from .ci/dovecot.sh): TLS verified, logins, folders, MOVE."""

from __future__ import annotations

import imaplib
import ssl
from email.message import EmailMessage

import pytest

from tests.imap_server import ImapServer, ImapUser


def message(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Dr. Rivera <rivera@clinic.example.org>"
    msg["To"] = "updates@rehab.example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@clinic.example.org>"
    msg.set_content(f"{subject}: thank you for the update.\n")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def test_starttls_login_verifies_the_certificate(imap_server: ImapServer, imap_user: ImapUser):
    conn = imaplib.IMAP4("localhost", imap_server.plain_port, timeout=10)
    try:
        assert "STARTTLS" in conn.capabilities
        conn.starttls(ssl.create_default_context(cafile=str(imap_server.ca_file)))
        assert conn.login(imap_user.name, imap_user.password)[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"
    finally:
        conn.logout()


def test_imaps_login_verifies_the_certificate(imap_server: ImapServer, imap_user: ImapUser):
    context = ssl.create_default_context(cafile=str(imap_server.ca_file))
    conn = imaplib.IMAP4_SSL("127.0.0.1", imap_server.tls_port, ssl_context=context, timeout=10)
    try:
        assert conn.login(imap_user.name, imap_user.password)[0] == "OK"
        typ, data = conn.capability()  # after login: the full list
        assert typ == "OK"
        assert b"MOVE" in data[0].split()
    finally:
        conn.logout()


def test_a_certificate_from_an_unknown_ca_is_refused(imap_server: ImapServer):
    context = ssl.create_default_context()  # the system's CAs, not the test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL("localhost", imap_server.tls_port, ssl_context=context, timeout=10)
    conn = imaplib.IMAP4("localhost", imap_server.plain_port, timeout=10)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.starttls(context)
    finally:
        conn.sock.close()


def test_a_wrong_password_is_refused(imap_server: ImapServer, imap_user: ImapUser):
    conn = imaplib.IMAP4_SSL(
        "localhost", imap_server.tls_port, ssl_context=imap_server.ssl_context(), timeout=10
    )
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login(imap_user.name, "not-" + imap_user.password)
    finally:
        conn.shutdown()


def test_append_and_read_back(imap_server: ImapServer, imap_user: ImapUser):
    first, second = message("Re: week 4 progress"), message("Re: discharge summary")
    uids = [imap_server.append(imap_user, first), imap_server.append(imap_user, second, flags=["\\Seen"])]
    assert uids[0] < uids[1]
    assert imap_server.folder_messages(imap_user, "INBOX") == [first, second]
    assert imap_server.flags(imap_user, "INBOX") == [frozenset(), frozenset({"\\Seen"})]
    # reading them changed nothing (EXAMINE, BODY.PEEK)
    assert imap_server.flags(imap_user, "INBOX") == [frozenset(), frozenset({"\\Seen"})]


def test_create_a_folder_and_move_a_message_into_it(imap_server: ImapServer, imap_user: ImapUser):
    keep, move = message("Re: keep me"), message("Re: file me")
    imap_server.append(imap_user, keep)
    uid = imap_server.append(imap_user, move)
    with imap_server.connect(imap_user) as conn:
        assert conn.create("Outreach/Replies")[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"
        assert conn.uid("MOVE", str(uid), "Outreach/Replies")[0] == "OK"
    assert imap_server.folders(imap_user) == ["INBOX", "Outreach", "Outreach/Replies"]
    assert imap_server.folder_messages(imap_user, "INBOX") == [keep]
    assert imap_server.folder_messages(imap_user, "Outreach/Replies") == [move]


def test_each_user_has_a_mailbox_of_its_own(imap_server: ImapServer, imap_user: ImapUser):
    other = imap_server.add_user()
    imap_server.append(imap_user, message("Re: mine"), folder="Archive")
    assert imap_server.folders(imap_user) == ["Archive", "INBOX"]
    assert imap_server.folders(other) == ["INBOX"]
    assert imap_server.folder_messages(other) == []
    assert imap_user.maildir.is_dir()
