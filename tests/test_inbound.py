"""Reading one email from the practice's mailbox (``outreach.inbound``): bytes in, plain facts out.

The samples in tests/mail/ are written the way each program writes them:
Outlook, Gmail and Apple Mail replies (and an HTML-only one), an Exchange
out-of-office and a Lotus "Abwesenheitsnotiz", RFC 3464 reports from Postfix
(quoting the original's headers), Exchange (quoting nothing) and sendmail (a
4.x.x delay, quoting the whole original), the qmail and old Exim bounces that
predate RFC 3464, unrelated mail, and broken mail of several kinds. No
database: these tests are fast.
"""

from __future__ import annotations

import time
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from outreach.inbound import (
    KINDS,
    MOST_MULTIPARTS,
    TEXT_LIMIT,
    Bounce,
    Inbound,
    _tidy,
    html_to_text,
    new_text,
    parse,
    verp_tokens,
)
from outreach.verp import address as verp_address
from outreach.verp import token_in as verp_token

MAIL = Path(__file__).parent / "mail"
SAMPLES = sorted(p.name for p in MAIL.glob("*.eml"))
BOUNCES = "bounces@practice.example"
QUOTED_ORIGINAL = ("wrote:", "From:", "Sent:", "Dear Dr", ">", "Riverside Rehab")


def sample(name: str) -> bytes:
    return (MAIL / name).read_bytes()


def read(name: str) -> Inbound:
    return parse(sample(name))


def email_with(headers: str, body: str = "Thanks.\n") -> bytes:
    """A small email: these headers, a Message-ID, plain text."""
    head = "Message-ID: <t1@clinic.example>\nFrom: Dr. A <a@clinic.example>\nTo: updates@practice.example\n"
    return f"{head}{headers}Content-Type: text/plain; charset=utf-8\n\n{body}".encode()


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_the_kinds_the_matcher_records():
    assert KINDS == ("reply", "auto_reply", "bounce", "unmatched")


# --- replies ------------------------------------------------------------------------------------


def test_an_outlook_reply_keeps_the_physicians_words_and_drops_the_signature_and_the_original():
    mail = read("reply_outlook.eml")
    assert mail.message_id == (
        "<AM0PR02MB57316C0D9A1B2E3F4A5B6C7D8E9FA@AM0PR02MB5731.eurprd02.prod.outlook.example>"
    )
    assert (mail.sender, mail.sender_name) == ("a.keller@lakeside-clinic.example", "Anna Keller")
    assert mail.subject == "RE: Progress update: M.R., week 4"
    assert mail.date == at(2026, 11, 23, 16, 2, 38)
    # In-Reply-To first, then References newest first, each once.
    assert mail.references == (
        "<20261123.42.outreach@practice.example>",
        "<20261116.31.outreach@practice.example>",
    )
    assert mail.recipients == ("updates@practice.example", "frontdesk@lakeside-clinic.example")
    assert (mail.auto, mail.bounce, mail.problem) == (False, None, None)
    assert mail.text == (
        "Thank you for the update. Please hold the resistance exercises until I have seen her - "
        "her blood pressure was high last week. I'll see her Tuesday and will let you know."
    )


def test_a_gmail_reply_keeps_a_hyphen_list_and_drops_the_on_wrote_line_split_over_two_lines():
    mail = read("reply_gmail.eml")
    assert mail.references == ("<20261123.57.outreach@practice.example>",)
    assert mail.date == at(2026, 11, 24, 15, 40, 52)  # -0500 read as UTC
    assert (mail.auto, mail.bounce, mail.problem) == (False, None, None)
    assert mail.text == (
        "Thanks, this is helpful. Agree with discharge.\n"
        "Please send me the final outcome scores (LEFS and NPRS) when you have them.\n\n"
        "- keep the home programme for 6 weeks\n"
        "- no running before the follow-up"
    )
    assert "Maria Lopez, MD" not in mail.text  # the "-- " signature
    assert not any(quoted in mail.text for quoted in QUOTED_ORIGINAL)


def test_an_apple_mail_reply_loses_sent_from_my_iphone_and_the_quoted_original():
    mail = read("reply_apple_mail.eml")
    assert mail.subject == "Re: Progress update: Jü.Ö., week 2"  # RFC 2047, UTF-8
    assert mail.message_id == "<6F0C2A9B-3E41-4D8F-A0B7-1C2D3E4F5A6B@hillcrest-medical.example>"
    assert mail.references == ("<20261123.61.outreach@practice.example>",)
    assert mail.date == at(2026, 11, 25, 7, 3, 17)
    assert mail.text == (
        "Stop the balance training for now – she fell at home on Sunday. "
        "X-ray is booked for Friday, I’ll let you know the result."
    )
    assert (mail.auto, mail.bounce, mail.problem) == (False, None, None)


def test_an_html_only_reply_is_turned_into_text_before_the_original_is_cut():
    mail = read("reply_html_only.eml")
    assert (mail.sender, mail.sender_name) == ("c.okafor@northside-health.example", "Okafor, Chidi")
    assert mail.references == ("<20261123.73.outreach@practice.example>",)
    assert mail.text == (
        "Good progress. Please add gentle cardio (10 min bike) from next week; "
        "stop if she gets chest pain & call me.\nDr. C. Okafor"
    )
    assert (mail.auto, mail.bounce, mail.problem) == (False, None, None)


def test_the_html_of_each_client_reads_as_its_plain_text_does():
    """Outlook's and Gmail's HTML part alone give the same new words as their text/plain part."""
    for name in ("reply_outlook.eml", "reply_gmail.eml"):
        raw = sample(name)
        boundary = raw.split(b'boundary="', 1)[1].split(b'"', 1)[0]
        pieces = raw.split(b"--" + boundary)
        html_only = pieces[0] + b"--" + boundary + pieces[2] + b"--" + boundary + b"--\n"
        assert parse(html_only).text == parse(raw).text


def test_a_reply_written_below_the_quote_keeps_the_answer():
    text = "On Mon, 23 Nov 2026, Riverside Rehab <updates@practice.example> wrote:\n> Dear Dr. Keller,\n> She did well.\n\nGood. Continue as planned.\n"
    assert new_text(text) == ("Good. Continue as planned.", True)


@pytest.mark.parametrize(
    "words",
    [
        "Hello,\n\nThanks, please hold the exercise until Tuesday.\nAnna",  # "Thanks," starts a sentence
        "Plan:\n- hold exercise\n- recheck BP on Friday",  # a hyphen list is not a signature
        "Warning: she reported chest pain; see my email from Monday.",  # not a disclaimer
        "Kind regards,\nAnna\n\nP.S. Please hold the exercise.",  # a postscript
        "Dose > 5 kg is too much\n> 5 kg only after the scan",  # a lone ">" line
    ],
)
def test_the_physicians_words_are_never_taken_for_a_signature_or_a_quote(words):
    assert new_text(words)[0] == words


@pytest.mark.parametrize(
    ("words", "kept"),
    [
        ("Hold the exercise.\n\nKind regards,\nAnna Keller, MD\nLakeside", "Hold the exercise."),
        ("Hold the exercise.\n\nThanks, Anna", "Hold the exercise."),
        ("Hold the exercise.\n\n--\nAnna Keller\nTel. 555-0142", "Hold the exercise."),
        ("Hold the exercise.\n\nSent from my iPhone", "Hold the exercise."),
        ("Hold the exercise.\n\n> quoted one\n> quoted two", "Hold the exercise."),
    ],
)
def test_a_signature_or_a_trailing_quote_is_cut(words, kept):
    assert new_text(words)[0] == kept


def test_a_reply_that_is_all_quote_keeps_its_first_2000_characters():
    only_quote = "On Mon, 23 Nov 2026, Riverside Rehab wrote:\n" + "> Dear Dr. Keller, she did well.\n" * 100
    assert new_text(only_quote) == (_tidy(only_quote)[:TEXT_LIMIT].rstrip(), True)
    long = "Hold the exercise. " * 500  # nothing to cut: all of it
    assert new_text(long)[0] == long.strip()


def test_html_to_text_leaves_out_styles_scripts_and_quoted_blocks():
    markup = (
        "<html><head><style>p{color:red}</style><script>alert(1)</script></head><body>"
        "<p>Hold&nbsp;the exercise &amp; call.</p><ul><li>one</li><li>two</li></ul>"
        "<blockquote>On Monday you wrote: quoted</blockquote><div>After</div></body></html>"
    )
    assert html_to_text(markup) == "Hold the exercise & call.\n- one\n- two\nAfter"
    assert html_to_text("<![if foo]>x<p>ok") == "x\nok"  # html.parser's own complaints are not ours


# --- automatic answers --------------------------------------------------------------------------


def test_an_exchange_out_of_office_is_an_automatic_answer_not_a_reply():
    mail = read("auto_reply_exchange.eml")
    assert mail.auto is True
    assert mail.bounce is None
    assert mail.references == ("<20261123.88.outreach@practice.example>",)
    assert mail.subject == "Automatic reply: Progress update: A.B., week 6"
    assert mail.text.startswith("I am out of the office until Monday, 30 November")
    assert mail.problem is None


def test_an_abwesenheitsnotiz_is_known_by_its_subject_alone():
    mail = read("auto_reply_abwesenheitsnotiz.eml")
    assert mail.auto is True
    assert mail.bounce is None
    assert mail.references == ("<20261123.91.outreach@practice.example>",)
    assert mail.text.startswith("Ich bin bis einschließlich 4. Dezember nicht im Büro")  # ISO-8859-1
    assert mail.problem is None


@pytest.mark.parametrize(
    ("headers", "auto"),
    [
        ("Auto-Submitted: auto-replied\n", True),
        ("Auto-Submitted: auto-generated (vacation)\n", True),
        ("Auto-Submitted: no\n", False),
        ("X-Autoreply: yes\n", True),
        ("X-Autorespond: Vacation\n", True),
        ("Precedence: bulk\n", True),
        ("Precedence: junk\n", True),
        ("Precedence: auto_reply\n", True),
        ("Precedence: list\n", False),
        ("Subject: Out of Office: Progress update\n", True),
        ("Subject: Automatische Antwort: Progress update\n", True),
        ("Subject: Réponse automatique : Progress update\n", True),
        ("Subject: Respuesta automática: Progress update\n", True),
        ("Subject: Re: Progress update: M.R., week 4\n", False),
    ],
)
def test_automatic_answers_by_their_headers_and_subject(headers, auto):
    assert parse(email_with(headers)).auto is auto


def test_an_absence_notice_without_headers_is_known_by_its_opening_but_a_reply_is_not():
    notice = "I am currently out of the office with no access to email until 1 December.\n"
    assert parse(email_with("Subject: Re: Progress update\n", notice)).auto is True
    # A physician who says so in a real reply quotes the message answered: a reply.
    reply = (
        notice
        + "Please hold the exercise.\n\nOn Mon, 23 Nov 2026, Riverside Rehab wrote:\n> Dear Dr.\n> Hello\n"
    )
    assert parse(email_with("Subject: Re: Progress update\n", reply)).auto is False


def test_a_read_receipt_is_an_automatic_answer():
    raw = (
        b"Message-ID: <r@clinic.example>\nFrom: a@clinic.example\nSubject: Read: Progress update\n"
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\n\n'
        b"--b\nContent-Type: text/plain\n\nYour message was read.\n"
        b"--b\nContent-Type: message/disposition-notification\n\nFinal-Recipient: rfc822; a@clinic.example\n"
        b"Disposition: manual-action/MDN-sent-manually; displayed\n--b--\n"
    )
    mail = parse(raw)
    assert (mail.auto, mail.bounce) == (True, None)


# --- bounces: RFC 3464 --------------------------------------------------------------------------


def test_a_postfix_report_quoting_the_original_headers():
    mail = read("dsn_postfix.eml")
    assert mail.bounce == Bounce(
        recipients=("dr.okafor@northside-health.example",),  # Original-Recipient, lower case
        status="5.1.1",
        permanent=True,
        diagnostic=(
            "550 5.1.1 <dr.okafor@northside-health.example>: Recipient address rejected: "
            "User unknown in virtual mailbox table"
        ),
        original_message_id="<20261123.42.outreach@practice.example>",  # from text/rfc822-headers
    )
    assert mail.auto is False  # Postfix sends it Auto-Submitted: auto-replied; a bounce all the same
    assert mail.sender == "mailer-daemon@mail.practice.example"
    assert mail.sender_name == "Mail Delivery System"
    assert mail.recipients == ("bounces+42.38360344@practice.example",)
    assert verp_tokens(mail, BOUNCES) == ("42.38360344",)
    assert mail.text.startswith("This is the mail system at host mail.practice.example.")
    assert "Recipient address rejected" in mail.text
    assert len(mail.text) <= TEXT_LIMIT
    assert mail.problem is None


def test_an_exchange_report_quoting_nothing():
    mail = read("dsn_exchange.eml")
    assert mail.bounce == Bounce(
        recipients=("hanna.weiss@hillcrest-medical.example",),
        status="5.1.10",
        permanent=True,
        diagnostic="550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        original_message_id=None,
    )
    assert verp_tokens(mail, BOUNCES) == ("57.e367fff8",)
    assert mail.text.startswith(
        "Your message to hanna.weiss@hillcrest-medical.example couldn't be delivered."
    )
    assert "<html>" not in mail.text and len(mail.text) <= TEXT_LIMIT
    assert (mail.auto, mail.problem) == (False, None)


def test_a_delay_report_is_a_bounce_that_is_not_permanent():
    mail = read("dsn_delayed.eml")
    assert mail.bounce == Bounce(
        recipients=("t.brandt@hillcrest-medical.example",),
        status="4.4.7",
        permanent=False,
        diagnostic="",  # the report gives no Diagnostic-Code
        original_message_id="<20261123.61.outreach@practice.example>",  # from message/rfc822
    )
    assert verp_tokens(mail, BOUNCES) == ("61.e491434b",)
    assert "THIS IS A WARNING MESSAGE ONLY" in mail.text
    assert (mail.auto, mail.problem) == (False, None)


DSN = (
    "Message-ID: <d@mx.example>\nFrom: MAILER-DAEMON@mx.example\nTo: bounces+7.0badc0de@practice.example\n"
    "Subject: Delivery Status Notification\n"
    'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
    "--b\nContent-Type: text/plain\n\nSorry.\n--b\nContent-Type: {kind}\n{encoding}\n{fields}\n--b--\n"
)
PER_MESSAGE = "Reporting-MTA: dns; mx.example\n\n"


def dsn(fields: str, kind: str = "message/delivery-status", encoding: str = "") -> bytes:
    return DSN.format(kind=kind, encoding=encoding, fields=PER_MESSAGE + fields).encode()


def test_a_report_naming_several_recipients_puts_the_permanent_failures_first():
    raw = dsn(
        "Final-Recipient: rfc822; late@clinic.example\nAction: delayed\nStatus: 4.4.1\n\n"
        "Final-Recipient: rfc822; Gone@Clinic.example\nAction: failed\nStatus: 5.2.1\n"
        "Diagnostic-Code: smtp; 550 5.2.1 mailbox disabled\n\n"
        "Final-Recipient: rfc822; fine@clinic.example\nAction: delivered\nStatus: 2.0.0\n"
    )
    bounce = parse(raw).bounce
    assert bounce == Bounce(("gone@clinic.example",), "5.2.1", True, "550 5.2.1 mailbox disabled", None)


def test_a_failure_with_a_4xx_status_is_not_permanent():
    """Postfix gives up after its queue lifetime with "Action: failed" and 4.4.7: the address is fine."""
    raw = dsn("Final-Recipient: rfc822; slow@clinic.example\nAction: failed\nStatus: 4.4.7\n")
    bounce = parse(raw).bounce
    assert bounce is not None
    assert (bounce.status, bounce.permanent, bounce.gave_up) == ("4.4.7", False, True)
    assert read("dsn_delayed.eml").bounce.gave_up is False  # "Action: delayed": still trying


def test_a_report_of_deliveries_only_is_an_automatic_answer_not_a_bounce():
    mail = parse(dsn("Final-Recipient: rfc822; a@clinic.example\nAction: delivered\nStatus: 2.0.0\n"))
    assert (mail.bounce, mail.auto) == (None, True)


def test_a_base64_report_and_a_utf8_global_report_are_read_too():
    fields = "Final-Recipient: rfc822; a@clinic.example\nAction: failed\nStatus: 5.1.1\n"
    import base64

    encoded = dsn(
        base64.encodebytes((PER_MESSAGE + fields).encode()).decode(),
        encoding="Content-Transfer-Encoding: base64\n",
    )
    encoded = encoded.replace(PER_MESSAGE.encode(), b"", 1)
    bounce = parse(encoded).bounce
    assert bounce is not None and bounce.recipients == ("a@clinic.example",)
    utf8 = dsn(
        "Final-Recipient: utf-8; Jürgen@clinic.example\nAction: failed\nStatus: 5.1.1\n",
        kind="message/global-delivery-status",
    )
    bounce = parse(utf8).bounce
    assert bounce is not None and (bounce.recipients, bounce.status) == (("jürgen@clinic.example",), "5.1.1")
    assert parse(utf8).problem is None


def test_a_report_that_cannot_be_read_is_still_a_bounce_named_as_a_problem():
    mail = parse(dsn("this is not a header block\n"))
    assert mail.bounce == Bounce((), "", False, "", None)
    assert mail.problem is not None and "delivery report" in mail.problem
    assert verp_tokens(mail, BOUNCES) == ("7.0badc0de",)


# --- bounces: before RFC 3464 (flufl.bounce) ------------------------------------------------------


def test_a_qmail_bounce():
    mail = read("bounce_qmail.eml")
    assert mail.bounce == Bounce(
        recipients=("r.nguyen@westbrook-clinic.example",),
        status="5.1.1",
        permanent=True,
        diagnostic="Sorry, no mailbox here by that name. (#5.1.1)",
        original_message_id="<20261123.73.outreach@practice.example>",  # from the copy below its text
    )
    assert mail.problem == "no Message-ID"  # qmail writes none; the bounce is read all the same
    assert mail.date == at(2026, 11, 25, 9, 30, 12)
    assert verp_tokens(mail, BOUNCES) == ("73.b4b5c5d1",)
    assert mail.text.startswith("Hi. This is the qmail-send program")
    assert "Below this line" not in mail.text and "Dear Dr. Nguyen" not in mail.text
    assert mail.auto is False


def test_an_old_exim_bounce():
    mail = read("bounce_exim_old.eml")
    assert mail.bounce == Bounce(
        recipients=("dr.jones@oldtownsurgery.example",),
        status="5.1.1",
        permanent=True,
        diagnostic=(
            "550 5.1.1 <dr.jones@oldtownsurgery.example>: Recipient address rejected: "
            "User unknown in local recipient table"
        ),
        original_message_id="<20261123.88.outreach@practice.example>",
    )
    assert mail.sender_name == "Mail Delivery System"
    assert verp_tokens(mail, BOUNCES) == ("88.cff5cab3",)
    assert mail.text.startswith("This message was created automatically by mail delivery software.")
    assert "This is a copy of the message" not in mail.text
    assert (mail.auto, mail.problem) == (False, None)


def test_an_old_exim_bounce_flufl_cannot_place_is_a_bounce_without_recipients():
    """flufl.bounce's pattern for this format refuses a domain with a hyphen: VERP still places it."""
    mail = parse(sample("bounce_exim_old.eml").replace(b"oldtownsurgery", b"oldtown-surgery"))
    assert mail.bounce is not None
    assert mail.bounce.recipients == ()
    assert (mail.bounce.status, mail.bounce.permanent) == ("5.1.1", True)
    assert mail.bounce.original_message_id == "<20261123.88.outreach@practice.example>"
    assert verp_tokens(mail, BOUNCES) == ("88.cff5cab3",)


def test_an_address_between_commas_in_a_reply_or_an_absence_notice_is_no_bounce():
    """flufl.bounce's LLNL pattern takes ", someone@host," for a bounce: it is not asked about such mail."""
    words = "Please copy my nurse, nurse.kim@lakeside-clinic.example, on the next update.\n"
    reply = parse(
        email_with(
            "Subject: Re: Progress update\nIn-Reply-To: <20261123.42.outreach@practice.example>\n", words
        )
    )
    assert (reply.bounce, reply.auto, reply.text) == (None, False, words.strip())
    notice = parse(
        email_with("Return-Path: <>\nAuto-Submitted: auto-replied\nSubject: Out of office\n", words)
    )
    assert (notice.bounce, notice.auto) == (None, True)


# --- the rest -------------------------------------------------------------------------------------


def test_unrelated_mail_is_read_as_a_reply_to_nothing():
    mail = read("unrelated.eml")
    assert mail.references == ()
    assert (mail.auto, mail.bounce, mail.problem) == (False, None, None)
    assert mail.sender == "reception@lakeside-clinic.example"
    assert mail.date == at(2026, 11, 27, 18, 12, 44)
    assert mail.text.startswith("Hello,\n\nplease note our new fax number from 1 December: 555-0199.")


def test_a_malformed_message_is_read_as_far_as_it_goes():
    mail = read("malformed.eml")
    assert mail.message_id is None
    assert (mail.sender, mail.date, mail.references, mail.bounce) == ("", None, (), None)
    assert mail.problem is not None
    for named in ("no Message-ID", "unknown charset x-unknown", "broken MIME:", "multipart has no boundary"):
        assert named in mail.problem
    assert "\x00" not in mail.text and "\x00" not in mail.subject
    assert mail.subject.endswith("follow-up")


def test_a_message_without_message_id_and_date_zone():
    mail = read("no_message_id.eml")
    assert mail.message_id is None
    assert mail.problem == "no Message-ID"
    assert mail.date == at(2026, 11, 26, 17, 45)  # no zone: UTC
    assert mail.references == ("<20261123.95.outreach@practice.example>",)
    assert (
        mail.text == "Fine to continue as planned.\n\nKen Ito"
    )  # Outlook's "-----Original Message-----" cut


def test_a_multipart_without_its_closing_boundary_still_gives_its_text():
    mail = read("broken_mime.eml")
    assert mail.problem == "broken MIME: a multipart has no closing boundary"
    assert mail.text == "Please reduce the load by half; the scan shows a partial tear.\n\nKen Ito"
    assert mail.references == ("<20261123.96.outreach@practice.example>",)


def test_an_unknown_charset_is_read_as_utf8_and_named():
    mail = read("unknown_charset.eml")
    assert mail.problem == "unknown charset x-no-such"
    assert mail.text == "Knieschmerzen seit Montag – bitte die Kniebeugen pausieren, Größe."
    assert mail.date == at(2026, 11, 28, 0, 10)


def test_an_empty_message():
    mail = parse(b"")
    assert mail.problem == "empty message; no Message-ID"
    assert (mail.text, mail.sender, mail.bounce, mail.auto) == ("", "", None, False)


def test_references_keep_their_order_once_each_and_at_most_a_hundred():
    mail = parse(
        email_with("In-Reply-To: <c@x> (Dr. A's message of Monday)\nReferences: <a@x>\n <b@x> <c@x>\n")
    )
    assert mail.references == ("<c@x>", "<b@x>", "<a@x>")
    many = " ".join(f"<{n}@x>" for n in range(500))
    assert parse(email_with(f"References: {many}\n")).references[:2] == ("<499@x>", "<498@x>")
    assert len(parse(email_with(f"References: {many}\n")).references) == 100


def test_headers_come_back_decoded_on_one_line():
    mail = parse(
        email_with(
            "Subject: =?utf-8?q?Fortschritt_f=C3=BCr?=\n =?utf-8?q?_J=C3=BC=2E?= week\t2\n"
            "Delivered-To: Bounces+9.ABCDEF12@Practice.example\nX-Original-To: bounces+9.abcdef12@practice.example\n"
            'Cc: "Front, Desk" <Front@Clinic.example>, undisclosed-recipients:;\n'
        )
    )
    assert mail.subject == "Fortschritt für Jü. week 2"
    assert mail.recipients == (
        "bounces+9.abcdef12@practice.example",
        "updates@practice.example",
        "front@clinic.example",
    )


@pytest.mark.parametrize(
    "head",
    [
        b"From: =?utf-8?q?Dr=2E_J=C3=BCrgen_M=C3=BCller?= <J.Mueller@Clinic.example>\n"
        b"Subject: =?iso-8859-1?q?Gr=FC=DFe?=\n",
        "From: Dr. Jürgen Müller <J.Mueller@Clinic.example>\nSubject: Grüße\n".encode(),  # RFC 6532
    ],
)
def test_a_name_and_subject_in_encoded_words_or_raw_utf8_are_decoded(head):
    mail = parse(b"Message-ID: <x@clinic.example>\n" + head + b"\nHello\n")
    assert (mail.sender, mail.sender_name, mail.subject) == (
        "j.mueller@clinic.example",
        "Dr. Jürgen Müller",
        "Grüße",
    )
    assert mail.problem is None


# --- VERP -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["42.ab12cd34", "1.00000000", "9999999999.ffffffff", "a", "x_y=z-1"])
def test_verp_round_trip(token):
    address = verp_address(BOUNCES, token)
    assert address == f"bounces+{token}@practice.example"
    assert verp_token(address, BOUNCES) == token
    assert verp_token(address.upper().replace(token.upper(), token), BOUNCES) == token  # any case domain
    assert verp_token(f"<{address}>", BOUNCES) == token


def test_verp_address_of_the_brief():
    assert verp_address("bounces@practice.example", "42.ab12cd34") == "bounces+42.ab12cd34@practice.example"


@pytest.mark.parametrize("token", ["", "42 ab", "a@b", "a+b", ".42", "42\n", "ä", "x" * 60, "<42>"])
def test_verp_address_refuses_what_would_not_come_back(token):
    with pytest.raises(ValueError):
        verp_address(BOUNCES, token)


@pytest.mark.parametrize(
    "bounce_address",
    ["", "bounces", "@practice.example", "bounces@", "a b@practice.example", "bounces@localhost"],
)
def test_verp_refuses_a_bounce_address_that_is_not_one(bounce_address):
    with pytest.raises(ValueError):
        verp_address(bounce_address, "42.ab12cd34")
    with pytest.raises(ValueError):
        verp_token("bounces+42.ab12cd34@practice.example", bounce_address)


@pytest.mark.parametrize(
    "address",
    [
        "bounces@practice.example",  # no token
        "bounces+@practice.example",  # an empty token
        "bounces+42.ab12cd34@other.example",  # another domain
        "bounces+42.ab12cd34@mail.practice.example",  # a subdomain is another domain
        "bouncesx+42.ab12cd34@practice.example",  # another local part
        "updates@practice.example",
        "dr.okafor@northside-health.example",
        "not an address",
        "",
    ],
)
def test_verp_token_is_none_for_other_addresses(address):
    assert verp_token(address, BOUNCES) is None


def test_verp_tokens_reads_every_recipient_once():
    mail = parse(
        email_with(
            "Delivered-To: bounces+1.aaaaaaaa@practice.example\nX-Original-To: bounces+1.aaaaaaaa@practice.example\n"
            "Cc: bounces+2.bbbbbbbb@practice.example, someone@clinic.example\n"
        )
    )
    assert verp_tokens(mail, BOUNCES) == ("1.aaaaaaaa", "2.bbbbbbbb")
    assert verp_tokens(read("reply_outlook.eml"), BOUNCES) == ()


# --- never raises, stays fast -------------------------------------------------------------------------


def check(mail: Inbound) -> None:
    """What any Inbound must be, whatever it was read from."""
    assert isinstance(mail, Inbound)
    for field in fields(Inbound):
        value = getattr(mail, field.name)
        for text in value if isinstance(value, tuple) else [value]:
            if isinstance(text, str):
                text.encode("utf-8")  # no surrogates left from undecodable bytes
                assert "\x00" not in text
    assert mail.date is None or mail.date.tzinfo is not None
    for one_line in (mail.subject, mail.sender, mail.sender_name):
        assert "\n" not in one_line and "\r" not in one_line
    assert all(m.startswith("<") and m.endswith(">") for m in mail.references)
    assert mail.message_id is None or (mail.message_id.startswith("<") and mail.message_id.endswith(">"))
    assert not (mail.auto and mail.bounce is not None)
    if mail.bounce is not None:
        assert len(mail.text) <= TEXT_LIMIT
        assert "\n" not in mail.bounce.diagnostic


@pytest.mark.parametrize("name", SAMPLES)
def test_each_sample_reads_the_same_with_crlf_line_ends(name):
    raw = sample(name)
    check(parse(raw))
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert parse(crlf) == parse(raw)


FUZZ = hsettings(max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096))
def test_parse_never_raises_on_any_bytes(raw):
    check(parse(raw))


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    """A sample with a few slices deleted, repeated, overwritten or cut short."""
    raw = bytearray(sample(draw(st.sampled_from(SAMPLES))))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(raw)))
        end = draw(st.integers(start, min(len(raw), start + 200)))
        how = draw(st.sampled_from(["delete", "repeat", "overwrite", "truncate", "insert"]))
        if how == "delete":
            del raw[start:end]
        elif how == "repeat":
            raw[start:start] = raw[start:end] * draw(st.integers(1, 5))
        elif how == "overwrite":
            raw[start:end] = draw(st.binary(min_size=end - start, max_size=end - start))
        elif how == "truncate":
            del raw[start:]
        else:
            raw[start:start] = draw(
                st.sampled_from(
                    [
                        b"\n",
                        b"\r\n\r\n",
                        b"--",
                        b"\x00",
                        b"\xff\xfe",
                        b"=?x-no?Q?=FF?=",
                        b"Content-Type: multipart/mixed\n",
                    ]
                )
                | st.binary(max_size=40)
            )
    return bytes(raw)


@FUZZ
@given(mutated_samples())
def test_parse_never_raises_on_mutated_samples(raw):
    check(parse(raw))


ODD = {
    "nested multiparts": b"Message-ID: <n@x>\n"
    + b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (n, n) for n in range(3000)),
    "blank lines": b"\n" * 10_000,
    "colons": b":" * 10_000,
    "angle brackets": b"From: " + b"<" * 50_000,
    "parentheses": b"From: " + b"(" * 50_000 + b"\nTo: " + b"(" * 50_000,  # the stdlib recurses on comments
    "quotes": b"To: "
    + b'"' * 100_000
    + b"\nCc: "
    + b"\\" * 100_000,  # its header registry is quadratic on these
    "encoded words": b"Subject: " + b"=?" * 50_000,
    "message ids": b"Message-ID: " + b"<" * 50_000 + b"\nReferences: " + b"(" * 50_000,
    # The stdlib's parameter parser is quadratic: 20 s for this at 100 kB, 571 s with the default policy.
    "content type": b'Content-Type: text/plain; charset="' + b";" * 100_000 + b"\n\nHold the exercise.\n",
    "charset": b"Content-Type: text/plain; charset=" + b"x" * 100_000 + b"\n\nHold the exercise.\n",
}


# A guard against parsing that runs away (a quadratic or exponential pattern on
# hostile input takes minutes to hours), not a speed target: timings on a shared
# machine are noise, so the bound is far above a normal parse (about 0.1 s).
RUNAWAY_SECONDS = 20.0


@pytest.mark.parametrize("shape", list(ODD))
def test_parse_never_raises_on_odd_input_and_never_runs_away(shape):
    start = time.perf_counter()
    mail = parse(ODD[shape])
    assert time.perf_counter() - start < RUNAWAY_SECONDS
    check(mail)
    assert mail.problem


def test_deep_nesting_is_read_up_to_a_point():
    mail = parse(ODD["nested multiparts"])
    assert mail.message_id == "<n@x>"
    assert mail.problem is not None and f"over {MOST_MULTIPARTS} multiparts" in mail.problem


FIVE_MB = 5 * 1024 * 1024
HEAD = (
    b"Message-ID: <big@clinic.example>\nFrom: Dr. A <a@clinic.example>\nTo: updates@practice.example\n"
    b"Subject: Re: Progress update\nIn-Reply-To: <20261123.42.outreach@practice.example>\nMIME-Version: 1.0\n"
)


def five_mb_messages() -> dict[str, bytes]:
    hostile_part = b'--b\nContent-Type: text/plain; a="' + b";" * 2000 + b'"\n\nx\n'
    chunk = b"Please hold the exercise until I see her on Tuesday; blood pressure is high. " * 13 + b"\n"
    attachment = (b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\n") * (
        FIVE_MB // 77
    )
    return {
        "an attachment": HEAD
        + b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\n'
        b"Hold the exercise.\n\nOn Mon, Riverside Rehab <updates@practice.example> wrote:\n> Dear Dr. A\n> Hello\n\n"
        b'--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename="scan.pdf"\n'
        b"Content-Transfer-Encoding: base64\n\n" + attachment + b"--b--\n",
        "a text body": HEAD + b"Content-Type: text/plain\n\n" + chunk * (FIVE_MB // len(chunk)),
        "an html body": HEAD
        + b"Content-Type: text/html\n\n<html><body>"
        + b"<div><p>Hold the <b>exercise</b> &amp; call.</p></div>\n" * (FIVE_MB // 50),
        "one long line": HEAD + b"Content-Type: text/plain\n\n" + b"On " * (FIVE_MB // 3),
        "a bounce": sample("bounce_qmail.eml") + chunk * (FIVE_MB // len(chunk)),
        "a report": sample("dsn_delayed.eml").replace(
            b"J=C3=BC.=C3=96. finished week 2.", chunk * (FIVE_MB // len(chunk))
        ),
        "tiny parts": HEAD
        + b'Content-Type: multipart/mixed; boundary="b"\n\n'
        + b"--b\nContent-Type: text/plain\n\nx\n" * (FIVE_MB // 32),
        "headers": HEAD + b"X-Junk: a\n" * (FIVE_MB // 10) + b"\nHold the exercise.\n",
        "hostile part headers": HEAD
        + b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nHold the exercise.\n'
        + hostile_part * (FIVE_MB // len(hostile_part)),
    }


@pytest.mark.parametrize("shape", list(five_mb_messages()))
def test_a_5_mb_message_is_read_without_running_away(shape):
    raw = five_mb_messages()[shape]
    assert len(raw) >= FIVE_MB * 0.95
    parse(raw[:1000])  # imports and regular expressions compiled before the clock starts
    start = time.perf_counter()
    mail = parse(raw)
    elapsed = time.perf_counter() - start
    check(mail)
    assert elapsed < RUNAWAY_SECONDS, f"{shape}: {elapsed:.2f} s"
    assert mail.text
