"""outreach user / token / audit / web at the command line: the accounts the console and the API trust."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from outreach import accounts, store
from outreach.cli import cli
from outreach.models import api_tokens, users
from tests.conftest import NOW, settings_env
from tests.web_support import PASSWORD


@pytest.fixture
def outreach(settings, engine):
    """Run ``outreach ARGS`` with ``input`` on standard input (not a terminal, as in a script)."""

    def run(*args: str, input: str | None = None, code: int = 0):
        result = CliRunner().invoke(cli, list(args), env=settings_env(settings), input=input)
        assert result.exit_code == code, result.output
        return result

    return run


def test_user_add_reads_the_password_from_standard_input(outreach, engine):
    result = outreach("user", "add", "Front.Desk@Practice.example", "--role", "staff", input=PASSWORD + "\n")
    assert result.output == "Front.Desk@Practice.example: added as staff\n"
    with store.read(engine) as conn:
        row = conn.execute(select(users)).one()
    assert (row.email, row.role) == ("front.desk@practice.example", "staff")
    assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash
    assert accounts.log_in(engine, "front.desk@practice.example", PASSWORD, NOW).principal.role == "staff"


def test_user_add_refuses_what_is_wrong_in_one_line(outreach):
    short = outreach("user", "add", "a@practice.example", "--role", "staff", input="short\n", code=1)
    assert short.output == "error: password: at least 10 characters, please\n"
    bad = outreach("user", "add", "not-an-email", "--role", "staff", input=PASSWORD + "\n", code=1)
    assert bad.output.startswith("error: email:") and bad.output.count("\n") == 1
    outreach("user", "add", "a@practice.example", "--role", "admin", input=PASSWORD + "\n")
    again = outreach("user", "add", "a@practice.example", "--role", "viewer", input=PASSWORD + "\n", code=1)
    assert "already a user" in again.output
    role = outreach("user", "add", "b@practice.example", "--role", "owner", input=PASSWORD + "\n", code=2)
    assert "owner" in role.output


def test_user_list_disable_and_password(outreach, engine):
    outreach("user", "add", "a@practice.example", "--role", "admin", input=PASSWORD + "\n")
    outreach("user", "add", "b@practice.example", "--role", "viewer", input=PASSWORD + "\n")
    listed = outreach("user", "list").output
    assert "a@practice.example" in listed and "admin" in listed and "viewer" in listed
    login = accounts.log_in(engine, "b@practice.example", PASSWORD, NOW)
    outreach("user", "password", "b@practice.example", input="a new long password\n")
    assert accounts.session(engine, login.key, NOW, accounts.LOCK_WINDOW) is None  # the old login ended
    accounts.log_in(engine, "b@practice.example", "a new long password", NOW)
    outreach("user", "disable", "b@practice.example")
    assert "disabled" in outreach("user", "list").output
    with pytest.raises(accounts.LoginRefused):
        accounts.log_in(engine, "b@practice.example", "a new long password", NOW)
    assert "no user" in outreach("user", "disable", "c@practice.example", code=1).output


def test_a_token_is_printed_once_and_stored_hashed(outreach, engine):
    token = outreach("token", "create", "ehr").stdout.strip()  # the warning goes to stderr
    assert token.startswith(accounts.TOKEN_PREFIX) and len(token) > 40
    with store.read(engine) as conn:
        stored = conn.execute(select(api_tokens)).one()
    assert stored.token_hash == accounts.digest(token) and token not in stored.token_hash
    listed = outreach("token", "list").output
    assert "ehr" in listed and "staff" in listed and token not in listed
    assert accounts.token_principal(engine, token, NOW).name == "token:ehr"
    outreach("token", "revoke", "ehr")
    assert accounts.token_principal(engine, token, NOW) is None
    assert "no live token" in outreach("token", "revoke", "ehr", code=1).output
    admin = outreach("token", "create", "x", "--role", "admin", code=2)
    assert "admin" in admin.output


def test_audit_lists_who_did_what(outreach):
    outreach("user", "add", "a@practice.example", "--role", "admin", input=PASSWORD + "\n")
    table = outreach("audit").output
    assert "user add" in table and "user a@practice.example" in table and "command line" not in table
    rows = json.loads(outreach("audit", "--format", "json").output)
    assert rows[0]["action"] == "user add" and rows[0]["address"] is None
    assert outreach("audit", "--format", "csv").output.startswith(
        "id,at,actor,address,action,subject,detail\n"
    )
    assert json.loads(outreach("audit", "--format", "json", "--user", "nobody").output) == []
    assert "--since" in outreach("audit", "--since", "yesterday", code=1).output


def test_web_will_not_start_before_anyone_can_log_in(outreach):
    result = outreach("web", "--port", "1", code=1)
    assert (
        result.output
        == "error: no one can log in yet: add a user first (outreach user add EMAIL --role admin)\n"
    )
