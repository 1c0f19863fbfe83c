"""``OUTREACH_FROM="Name <address>"``: the name goes in the From header, the bare address everywhere else."""

from __future__ import annotations

import io
import re

import pytest
from dotenv import dotenv_values

from outreach.compose import build_email
from outreach.errors import SettingsError
from outreach.settings import Settings
from tests.conftest import ROOT, smtp_settings
from tests.test_compose import SENT_AT, make_row, parse, rfc2047_mailbox

KINETIC = "Kinetic Bridge Exercise <care@kinetic-bridge.test>"
NOW_ARG = "2026-11-25T10:00"  # NOW in the practice's time zone, inside the send window


@pytest.mark.parametrize(
    ("value", "name", "address"),
    [
        (KINETIC, "Kinetic Bridge Exercise", "care@kinetic-bridge.test"),
        ('"Morgan, Alex" <care@kinetic-bridge.test>', "Morgan, Alex", "care@kinetic-bridge.test"),
        ("Dr. A. Morgan <care@kinetic-bridge.test>", "Dr. A. Morgan", "care@kinetic-bridge.test"),
        ("Clínica Puente <care@kinetic-bridge.test>", "Clínica Puente", "care@kinetic-bridge.test"),
        ("<care@kinetic-bridge.test>", "", "care@kinetic-bridge.test"),
        ("care@kinetic-bridge.test", "", "care@kinetic-bridge.test"),
    ],
    ids=["name", "quoted name with a comma", "periods", "non-ASCII name", "brackets only", "bare"],
)
def test_from_may_carry_a_display_name(value, name, address):
    settings = Settings.from_env({"OUTREACH_FROM": value})
    assert (settings.from_name, settings.from_addr) == (name, address)
    assert settings.from_domain == "kinetic-bridge.test"


def test_without_from_there_is_no_name():
    assert Settings.from_env({}).from_name == ""


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("Morgan, Alex <care@kinetic-bridge.test>", "put a name with a comma in double quotes"),
        ("a@kinetic-bridge.test, b@kinetic-bridge.test", "is not an email address"),
        ("Team <care@kinetic-bridge.test>, Other <x@kinetic-bridge.test>", "is more than one address"),
        ("Name <care@kinetic-bridge.test> trailing", "is not an address or one 'Name <address>'"),
        ("Name <care@kinetic-bridge.test", "is not an address or one 'Name <address>'"),
        ("Team: care@kinetic-bridge.test;", "is not an email address"),
        ("Team: Name <care@kinetic-bridge.test>;", "is not an address or one 'Name <address>'"),
        ("Name <not-an-address>", "'not-an-address' is not an email address"),
        ("Name <=1+2@kinetic-bridge.test>", "begins with '='"),
        ("Name <büro@kinetic-bridge.test>", "not a plain ASCII address"),
    ],
)
def test_a_from_that_is_not_one_mailbox_is_refused_naming_the_key(value, problem):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"OUTREACH_FROM": value})
    message = str(caught.value)
    assert message.startswith("OUTREACH_FROM: ") and problem in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("from_name", "header"),
    [
        ("Kinetic Bridge Exercise", 'From: "Kinetic Bridge Exercise" <care@kinetic-bridge.test>'),
        ("Morgan, Alex", 'From: "Morgan, Alex" <care@kinetic-bridge.test>'),
        ('Alex "AJ" Morgan', 'From: "Alex \\"AJ\\" Morgan" <care@kinetic-bridge.test>'),
    ],
)
def test_the_name_wins_in_the_from_header_quoted_as_it_must_be(from_name, header):
    settings = Settings(from_addr="care@kinetic-bridge.test", from_name=from_name, sender_name="Alex Morgan")
    data = build_email(make_row(), settings, SENT_AT).data
    assert header.encode() in data.split(b"\r\n")
    [sender] = parse(data)["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (from_name, "care@kinetic-bridge.test")


def test_a_non_ascii_name_is_encoded():
    settings = Settings(from_addr="care@kinetic-bridge.test", from_name="Clínica Puente")
    data = build_email(make_row(), settings, SENT_AT).data
    assert data.isascii()
    assert rfc2047_mailbox(data, "From") == ("Clínica Puente", "care@kinetic-bridge.test")


def test_without_a_name_the_sender_and_practice_are_the_from_name():
    settings = Settings(
        from_addr="care@kinetic-bridge.test", sender_name="Alex Morgan", practice_name="Kinetic"
    )
    [sender] = parse(build_email(make_row(), settings, SENT_AT).data)["From"].addresses
    assert sender.display_name == "Alex Morgan, Kinetic"


def test_planned_and_sent_through_smtp_the_envelope_and_message_id_use_the_bare_address(
    demo_engine, settings, smtp_server, run_cli
):
    env = smtp_settings(settings, smtp_server)
    extra = {"OUTREACH_FROM": KINETIC}
    planned = run_cli("plan", "--now", NOW_ARG, env_settings=env, extra_env=extra)
    assert planned.exit_code == 0, planned.stderr
    sent = run_cli("send", "--now", NOW_ARG, env_settings=env, extra_env=extra)
    assert sent.exit_code == 0, sent.stderr
    assert smtp_server.received
    for received in smtp_server.received:
        assert received.mail_from == "care@kinetic-bridge.test"
        message = received.message
        [sender] = message["From"].addresses
        assert (sender.display_name, sender.addr_spec) == (
            "Kinetic Bridge Exercise",
            "care@kinetic-bridge.test",
        )
        assert received.message_id.endswith("@kinetic-bridge.test>"), received.message_id
        assert "Email: care@kinetic-bridge.test" in message.get_body(("plain",)).get_content()


def test_the_examples_in_env_example_read_as_documented():
    """The commented OUTREACH_FROM examples, read as a .env file is, give the names they promise."""
    examples = re.findall(r"^#\s+(OUTREACH_FROM=.+)$", (ROOT / ".env.example").read_text(), flags=re.M)
    names = [Settings.from_env(dotenv_values(stream=io.StringIO(line))).from_name for line in examples]
    assert names == ["Kinetic Bridge Exercise", "Morgan, Alex"]
