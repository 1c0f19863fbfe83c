"""The hand-built email equals what ``EmailMessage`` built, and nothing can be injected.

``outreach.compose`` assembles the wire form itself, for speed. The former
builder is kept here as the reference (``reference_email``): for every shipped
template rendered for the demo practice, and for hypothesis-generated hostile
subjects, names and bodies, both are parsed back with the stdlib parser and
must give the same headers (the MIME boundary aside) and the same decoded text
and html. The wire form itself is checked too: CRLF only, short lines, and
exactly the expected headers, whatever the text held.
"""

from __future__ import annotations

import email
import email.policy
import io
import re
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select

from outreach import store
from outreach.backends import ConsoleBackend, FileBackend, SMTPBackend
from outreach.compose import Email, build_email, one_line
from outreach.errors import PermanentError
from outreach.models import clients, physicians
from outreach.planner import preview
from outreach.renderer import Renderer
from outreach.settings import Settings
from tests.conftest import NOW, smtp_settings
from tests.factories import demo_clients_for, shipped_rules

SENT_AT = datetime(2026, 11, 25, 15, 30, 5, tzinfo=UTC)
BASE_HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"]
PART_HEADERS = ["Content-Type", "Content-Transfer-Encoding"]


def reference_email(row, settings: Settings, sent_at: datetime) -> bytes:
    """The former ``compose.build_email`` + ``to_bytes``, through ``EmailMessage``, unchanged."""
    msg = EmailMessage(policy=email.policy.SMTP)
    sender = one_line(f"{settings.sender_name}, {settings.practice_name}")
    msg["From"] = Address(display_name=sender, addr_spec=settings.from_addr)
    msg["To"] = Address(display_name=one_line(row.recipient_name or ""), addr_spec=row.recipient)
    if settings.reply_to:
        msg["Reply-To"] = settings.reply_to
    msg["Subject"] = one_line(row.subject)
    msg["Date"] = format_datetime(sent_at)
    msg["Message-ID"] = row.message_id
    if getattr(row, "kind", "clinical") == "relationship":
        msg["List-Unsubscribe"] = f"<mailto:{settings.reply_to or settings.from_addr}?subject=unsubscribe>"
    if row.priority > 0:
        msg["Importance"] = "high"
        msg["X-Priority"] = "1"
    msg.set_content(row.text, subtype="plain", cte="quoted-printable")
    msg.add_alternative(row.html, subtype="html", cte="quoted-printable")
    return msg.as_bytes(policy=email.policy.SMTP)


def make_row(**changes) -> SimpleNamespace:
    values = {
        "recipient": "m.alvarez@riverside-ortho.example.org",
        "recipient_name": "Maria Alvarez, MD",
        "subject": "Progress report: J.D. (ref C-1001)",
        "text": "Dear Dr. Alvarez,\n\nProgress.\n",
        "html": "<html><body><p>Progress.</p></body></html>",
        "message_id": "<0123456789abcdef@rehab.example.org>",
        "priority": 0,
        "kind": "clinical",
    }
    return SimpleNamespace(**(values | changes))


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def rfc2047_mailbox(data: bytes, name: str) -> tuple[str, str]:
    """(display name, address) of a header, encoded words decoded as RFC 2047 says.

    The stdlib's new parser keeps the space between two adjacent encoded words
    in a display name (RFC 2047: it is not part of the text), so a long
    encoded name, from either builder, is read here with the legacy decoder.
    """
    raw = email.message_from_bytes(data, policy=email.policy.compat32)[name]
    display, address = parseaddr(raw.replace("\r\n", ""))
    return str(make_header(decode_header(display))), address


def expected_headers(row, settings: Settings) -> list[str]:
    names = BASE_HEADERS[:2] + (["Reply-To"] if settings.reply_to else []) + BASE_HEADERS[2:5]
    names += ["List-Unsubscribe"] if row.kind == "relationship" else []
    names += ["Importance", "X-Priority"] if row.priority > 0 else []
    return [*names, *BASE_HEADERS[5:]]


def lf_body(text: str) -> str:
    """A body as it reads after the trip: lines split as bytes are, one final line end."""
    return "".join(line.decode() + "\n" for line in text.encode().splitlines()) or "\n"


def check_wire(data: bytes) -> None:
    """CRLF only, no line over 998 octets, quoted-printable lines within 76."""
    assert data.endswith(b"\r\n")
    lines = data[:-2].split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines), "a bare CR or LF"
    assert max(map(len, lines)) <= 998
    boundary = re.search(rb'boundary="([^"]+)"', data)[1]
    parts = data.split(b"\r\n--" + boundary)
    assert len(parts) == 4 and parts[-1] == b"--\r\n"  # two parts between the delimiters
    for part in parts[1:3]:
        body = part.partition(b"\r\n\r\n")[2]
        assert max(map(len, body.split(b"\r\n"))) <= 76, "quoted-printable line too long"


def same_text(new: str, reference: str, intended: str, strict: bool) -> None:
    """Header text reads exactly as intended; ``strict``: the reference's did too.

    Not strict for generated text, where the reference has defects the
    rewrite does not share (see ``test_generated_emails_are_the_same_email``).
    """
    assert new == intended
    if strict:
        assert reference == intended


def check_same(row, settings: Settings, strict: bool = True) -> EmailMessage:
    """Build with both, compare everything a reader sees; returns the new email parsed.

    ``strict``: the reference must read exactly as intended too. Otherwise its
    header text is not compared (see ``test_generated_emails_are_the_same_email``)
    and its bodies come from the same row with tame headers.
    """
    built = build_email(row, settings, SENT_AT)
    assert isinstance(built, Email) and built.message_id == row.message_id
    check_wire(built.data)
    new = parse(built.data)
    ref_raw = reference_email(row, settings, SENT_AT)
    check_headers(built.data, ref_raw, row, settings, strict)
    if not strict:
        tame = settings.with_(sender_name="Alex Morgan", practice_name="Summit Post-Rehab")
        ref_raw = reference_email(make_row(text=row.text, html=row.html), tame, SENT_AT)
    check_bodies(new, parse(ref_raw), row)
    return new


def check_headers(new_raw: bytes, ref_raw: bytes, row, settings: Settings, strict: bool) -> None:
    new, ref = parse(new_raw), parse(ref_raw)
    expected = expected_headers(row, settings)
    assert list(new.keys()) == expected, "a header was added or lost"
    if strict:
        assert list(ref.keys()) == expected
    for name in ("Reply-To", "Date", "Message-ID", "List-Unsubscribe", "Importance", "X-Priority"):
        if name in expected and (strict or name in ref):
            assert new[name] == ref[name], name
    assert new["MIME-Version"] == "1.0"
    assert new.get_content_type() == "multipart/alternative"
    assert set(new["Content-Type"].params) == {"boundary"}
    same_text(new["Subject"], ref["Subject"], one_line(row.subject), strict)

    sender = one_line(f"{settings.sender_name}, {settings.practice_name}")
    recipient = one_line(row.recipient_name or "")
    for name, display, address in (("From", sender, settings.from_addr), ("To", recipient, row.recipient)):
        [mailbox] = new[name].addresses  # one mailbox: nothing slipped in through the name
        assert mailbox.addr_spec == address
        assert rfc2047_mailbox(new_raw, name) == (display, address)
        if strict:
            assert rfc2047_mailbox(ref_raw, name) == (display, address)
            assert new[name] == ref[name]


def check_bodies(new: EmailMessage, ref: EmailMessage, row) -> None:
    new_parts, ref_parts = list(new.iter_parts()), list(ref.iter_parts())
    assert [p.get_content_type() for p in new_parts] == ["text/plain", "text/html"]
    assert [p.get_content_type() for p in ref_parts] == ["text/plain", "text/html"]
    for new_part, ref_part, source in zip(new_parts, ref_parts, (row.text, row.html), strict=True):
        assert list(new_part.keys()) == PART_HEADERS  # the reference adds MIME-Version to its html part
        for name in PART_HEADERS:
            assert new_part[name] == ref_part[name]
        assert new_part["Content-Transfer-Encoding"] == "quoted-printable"
        assert new_part.get_content_charset() == "utf-8"
        assert new_part.get_content() == ref_part.get_content()
        assert new_part.get_content().replace("\r\n", "\n") == lf_body(source)


@pytest.fixture
def cfg(tmp_path) -> Settings:
    return Settings(
        outbox_dir=tmp_path / "outbox",
        from_addr="updates@rehab.example.org",
        practice_name="Summit Post-Rehab",
        sender_name="Alex Morgan",
    )


# --- every shipped template, the demo practice -----------------------------------------


@pytest.mark.slow
def test_every_shipped_template_for_every_demo_client_is_the_same_email(demo_engine, settings):
    renderer = Renderer(settings.templates_dir)
    with store.read(demo_engine) as conn:
        doctors = {
            row.ref: row
            for row in conn.execute(
                select(clients.c.ref, physicians.c.email, physicians.c.name, physicians.c.credentials).join(
                    physicians, physicians.c.id == clients.c.physician_id
                )
            )
        }
    compared = 0
    for rule in shipped_rules(settings):
        for client in demo_clients_for(demo_engine, rule):
            rendered = preview(demo_engine, settings, rule, renderer, client.ref, NOW)
            doctor = doctors[client.ref]
            row = make_row(
                recipient=doctor.email,
                recipient_name=f"{doctor.name}, {doctor.credentials}",
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                priority=rule.priority,
                kind=rule.kind,
            )
            for variant in (settings, settings.with_(reply_to="front-desk@rehab.example.org")):
                new = check_same(row, variant)
                head = build_email(row, variant, SENT_AT).data.partition(b"\r\n\r\n")[0]
                assert max(map(len, head.split(b"\r\n"))) <= 78
                # Short names: the stdlib parser reads them whole, as mail clients do.
                assert new["To"].addresses[0].display_name == row.recipient_name
            compared += 1
    assert compared >= 40


# --- hostile text, generated -----------------------------------------------------------

NASTY = st.sampled_from(
    [
        "\r\n",
        "\n",
        "\r",
        "\r\nBcc: victim@example.com",
        "\nSubject: injected",
        "From ",
        ".",
        "\n.\n",
        "=",
        "==",
        "=3D",
        "=\n",
        "=?utf-8?q?hi?=",
        "=?",
        "  ",
        "\t",
        " \n",
        '"',
        "\\",
        "<>",
        ",;:@",
        "\x00\x0b\x0c\x1b\x7f",
        "\x85\u2028",
        "é",
        "Müller",
        "—",
        "日本語",
        "😀",
        "x" * 120,
        "é" * 90,
        " ".join(["word"] * 40),
    ]
)
TEXT = st.lists(st.one_of(st.text(max_size=30), NASTY), max_size=12).map("".join)
LONG_LINE = st.integers(min_value=1, max_value=3000).map(lambda n: "é=x " * (n // 4) + "a" * (n % 97))
BODY = st.lists(st.one_of(TEXT, LONG_LINE), max_size=6).map("\n".join)

PROPERTY = hsettings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(
    subject=TEXT,
    recipient_name=TEXT,
    sender_name=TEXT,
    practice_name=TEXT,
    text=BODY,
    html=BODY,
    priority=st.sampled_from([0, 10]),
    kind=st.sampled_from(["clinical", "relationship", "digest"]),
    reply_to=st.sampled_from(["", "front-desk@rehab.example.org"]),
)
@example(
    subject="Report\r\nBcc: victim@example.com",
    recipient_name="Dr Evil\r\nBcc: victim@example.com",
    sender_name="Alex\nCc: x@y.org",
    practice_name="Summit\r\n\r\nbody",
    text="From here\n.\nend  \n=\n",
    html="<p>" + "x" * 5000 + "</p>",
    priority=10,
    kind="relationship",
    reply_to="front-desk@rehab.example.org",
)
@pytest.mark.slow
def test_generated_emails_are_the_same_email(
    cfg, subject, recipient_name, sender_name, practice_name, text, html, priority, kind, reply_to
):
    settings = cfg.with_(sender_name=sender_name, practice_name=practice_name, reply_to=reply_to)
    row = make_row(
        subject=subject, recipient_name=recipient_name, text=text, html=html, priority=priority, kind=kind
    )
    # Subjects and names are compared with what was meant, not with the reference's
    # reading: for such text EmailMessage decodes look-alike encoded words
    # ("=?...?="), doubles or drops a space when folding a long run of words,
    # cuts an encoded word short in a long mixed-script name (losing characters,
    # or leaving it undecodable) and can leave a comma in a long sender name
    # unquoted (two addresses in From) or, given two long words, write an empty
    # line in From, ending the header block there.
    check_same(row, settings, strict=False)


@pytest.mark.parametrize(
    ("recipient_name", "subject"),
    [
        ("Renée Côté, MD", "Progress report: R.C. (ref C-1009)"),
        ("Dr. José Núñez-García, MD", "URGENT: adverse event — J.N. (ref C-2001) — your direction requested"),
        ("Zoë O'Brien, DO", "Quarterly referral outcomes summary — Q3 2026"),
        ("田中 太郎, MD", "経過報告: T.T. (ref C-3001)"),
        (
            'Sam "Doc" Lee \\ PA-C',
            "Clinical updates: 12 clients (" + ", ".join(f"C-{n}" for n in range(12)) + ")",
        ),
        ("", "Discharge summary: " + "Ünïcödé " * 12),
    ],
)
def test_realistic_names_and_subjects_read_exactly_as_with_emailmessage(cfg, recipient_name, subject):
    row = make_row(recipient_name=recipient_name, subject=subject, text="Grüße\n" * 50, priority=10)
    check_same(row, cfg.with_(practice_name="Praxis Müller & Söhne"))


def test_header_lines_stay_within_78_characters(cfg):
    row = make_row(
        subject=" ".join(["Quarterly referral outcomes summary — Q3 2026"] * 4),
        recipient_name="Dr " + "Ünïcödé " * 20 + "Name",
    )
    data = build_email(row, cfg.with_(practice_name="A " * 60 + "Practice"), SENT_AT).data
    head = data.partition(b"\r\n\r\n")[0]
    assert max(map(len, head.split(b"\r\n"))) <= 78
    check_same(
        row, cfg.with_(practice_name="A " * 60 + "Practice"), strict=False
    )  # the reference: two addresses


def test_a_subject_that_looks_encoded_reads_as_written(cfg):
    row = make_row(subject="Code =?utf-8?q?x?= in the note")
    assert parse(build_email(row, cfg, SENT_AT).data)["Subject"] == "Code =?utf-8?q?x?= in the note"


@pytest.mark.parametrize(
    "changes",
    [
        {"recipient": "doc@clinic.example.org\r\nBcc: victim@example.com"},
        {"recipient": "Dr <doc@clinic.example.org>"},
        {"recipient": "a\x01b@clinic.example.org"},
        {"recipient": "not-an-address"},
        {"message_id": "<a@b>\r\nBcc: victim@example.com"},
        {"message_id": "<a b@c>"},
        {"message_id": ""},
    ],
)
def test_an_address_or_message_id_that_would_break_the_header_is_refused(cfg, changes):
    with pytest.raises(ValueError, match="cannot be written"):
        build_email(make_row(**changes), cfg, SENT_AT)


def test_a_reply_to_that_would_break_the_header_is_refused(cfg):
    with pytest.raises(ValueError, match="cannot be written"):
        build_email(make_row(), cfg.with_(reply_to="a@b.org\nBcc: c@d.org"), SENT_AT)


def test_the_same_row_is_the_same_email_and_each_email_has_its_own_boundary(cfg):
    first, again = (build_email(make_row(), cfg, SENT_AT).data for _ in range(2))
    assert first == again  # a copy (the client export) is the email as it went
    other = build_email(make_row(message_id="<other@rehab.example.org>"), cfg, SENT_AT).data
    boundaries = [re.search(rb'boundary="(=_[0-9a-f]{24})"', data)[1] for data in (first, other)]
    assert boundaries[0] != boundaries[1]


# --- the backends take the built email -------------------------------------------------


def test_the_smtp_server_receives_the_built_bytes_exactly(cfg, smtp_server):
    row = make_row(
        recipient_name="Dr Renée Côté, MD",
        subject="URGENT: adverse event — R.C. (ref C-1009) — your direction requested",
        text="Line one\n.\nFrom the clinic\ntrailing  \n" + "ü" * 300 + "\n",
        html="<p>" + "=" * 200 + "</p>",
        priority=10,
    )
    built = build_email(row, cfg, SENT_AT)
    backend = SMTPBackend(smtp_settings(cfg, smtp_server))
    with backend:
        assert backend.send(built, cfg.from_addr, row.recipient).startswith("250")
    [received] = smtp_server.received
    assert received.data == built.data
    assert received.rcpt_tos == [row.recipient]
    assert received.message_id == row.message_id


def test_smtp_refuses_a_non_ascii_address_before_talking_to_the_server(cfg, smtp_server):
    row = make_row(recipient="dr.müller@klinik.example.de")
    built = build_email(row, cfg, SENT_AT)
    backend = SMTPBackend(smtp_settings(cfg, smtp_server))
    with backend, pytest.raises(PermanentError, match="not ASCII"):
        backend.send(built, cfg.from_addr, row.recipient)
    reply_to = build_email(make_row(), cfg.with_(reply_to="büro@rehab.example.org"), SENT_AT)
    with backend, pytest.raises(PermanentError, match="cannot be encoded"):
        backend.send(reply_to, cfg.from_addr, "doc@clinic.example.org")
    assert smtp_server.received == []


@pytest.mark.parametrize(
    "recipient",
    ["dr smith@clinic.example.org", "<dr@clinic.example.org>", "dr@clinic.example.org>x", "nobody"],
)
def test_smtp_refuses_an_address_that_cannot_go_in_the_envelope(cfg, smtp_server, recipient):
    """MAIL FROM and RCPT TO are written as given: an address that would break them never goes out."""
    built = build_email(make_row(), cfg, SENT_AT)
    backend = SMTPBackend(smtp_settings(cfg, smtp_server))
    with backend, pytest.raises(PermanentError, match="SMTP envelope"):
        backend.send(built, cfg.from_addr, recipient)
    with backend:  # the connection is still good for the next message
        assert backend.send(built, cfg.from_addr, "doc@clinic.example.org").startswith("250")
    assert [r.rcpt_tos for r in smtp_server.received] == [["doc@clinic.example.org"]]


def test_the_file_backend_names_the_eml_after_the_message_id(cfg):
    built = build_email(make_row(), cfg, SENT_AT)
    with FileBackend(cfg.outbox_dir) as backend:
        backend.send(built, cfg.from_addr, "m.alvarez@riverside-ortho.example.org")
    path = cfg.outbox_dir / "0123456789abcdef@rehab.example.org.eml"
    assert path.read_bytes() == built.data


def test_the_console_backend_prints_the_email_with_plain_line_ends(cfg):
    built = build_email(make_row(), cfg, SENT_AT)
    stream = io.StringIO()
    ConsoleBackend(stream).send(built, cfg.from_addr, "m.alvarez@riverside-ortho.example.org")
    printed = stream.getvalue()
    assert "\r" not in printed
    assert printed.startswith(built.data.decode().replace("\r\n", "\n"))
