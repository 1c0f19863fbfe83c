"""Settings from ``OUTREACH_*`` variables: defaults, one clear error per bad key, secrets, ``.env``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from outreach.errors import SettingsError
from outreach.settings import Secret, Settings
from tests.conftest import ROOT

PASSWORD = "Pw-7f3kQz-XYZZY-unguessable"

# key, bad value, a fragment of the message that follows the key
BAD_VALUES = [
    ("OUTREACH_EMAIL_BACKEND", "carrier-pigeon", "is not one of smtp, file, console"),
    ("OUTREACH_SMTP_PORT", "abc", "is not a whole number"),
    ("OUTREACH_SMTP_PORT", "70000", "out of range"),
    ("OUTREACH_SMTP_PORT", "0", "out of range"),
    ("OUTREACH_DATABASE_URL", "not a url", "is not a database URL"),
    ("OUTREACH_DATABASE_URL", "mysql://x", "'mysql' is not supported"),
    ("OUTREACH_TIMEZONE", "Mars/Olympus_Mons", "is not an IANA time zone"),
    ("OUTREACH_TIMEZONE", "/etc/passwd", "is not an IANA time zone"),
    ("OUTREACH_FROM", "updates-at-practice", "is not an email address"),
    ("OUTREACH_FROM", "a@b", "is not an email address"),
    ("OUTREACH_FROM", "büro@rehab.example.org", "is not a plain ASCII address"),
    ("OUTREACH_SMTP_SECURITY", "tls", "is not one of starttls, ssl, none"),
    ("OUTREACH_SMTP_ALLOW_INSECURE", "maybe", "is not true or false"),
    ("OUTREACH_CAMPAIGNS_DIR", "/no/such/folder/campaigns", "does not exist"),
    ("OUTREACH_TEMPLATES_DIR", "/no/such/folder/templates", "does not exist"),
    ("OUTREACH_SMTP_TIMEOUT", "nan", "out of range"),
    ("OUTREACH_LOG_LEVEL", "chatty", "is not one of DEBUG, INFO, WARNING, ERROR"),
]


# --- the library -------------------------------------------------------------------------


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no campaigns/ here: the checkout's folders are used
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///outreach.db"
    assert settings.email_backend == "file"
    assert settings.outbox_dir == Path("outbox")
    assert settings.smtp_host == "localhost"
    assert settings.smtp_port == 587
    assert settings.smtp_security == "starttls"
    assert settings.smtp_allow_insecure is False
    assert settings.smtp_ca_file is None
    assert settings.smtp_password == Secret("")
    assert settings.timezone == "UTC"
    assert settings.log_level == "INFO"
    assert settings.campaigns_dir == ROOT / "outreach" / "campaigns"
    assert settings.templates_dir == ROOT / "outreach" / "templates" / "email"


def test_folders_in_the_working_directory_win_over_the_checkout(monkeypatch, tmp_path):
    (tmp_path / "campaigns").mkdir()
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).campaigns_dir == Path("campaigns")


def test_values_are_parsed_and_normalised(tmp_path):
    settings = Settings.from_env(
        {
            "OUTREACH_EMAIL_BACKEND": " SMTP ",
            "OUTREACH_SMTP_PORT": "2525",
            "OUTREACH_SMTP_ALLOW_INSECURE": "yes",
            "OUTREACH_SMTP_SECURITY": "None",
            "OUTREACH_LOG_LEVEL": "debug",
            "OUTREACH_TIMEZONE": "America/Chicago",
            "OUTREACH_DATABASE_URL": "postgresql://outreach@db.internal/outreach",
            "OUTREACH_CAMPAIGNS_DIR": str(tmp_path),
            "OUTREACH_PRACTICE_NAME": "   ",  # blank means "not set"
        }
    )
    assert settings.email_backend == "smtp"
    assert settings.smtp_port == 2525
    assert settings.smtp_allow_insecure is True
    assert settings.smtp_security == "none"
    assert settings.log_level == "DEBUG"
    assert settings.timezone == "America/Chicago"
    assert settings.database_url == "postgresql://outreach@db.internal/outreach"
    assert settings.campaigns_dir == tmp_path
    assert settings.practice_name == Settings.practice_name


@pytest.mark.parametrize(("key", "value", "fragment"), BAD_VALUES)
def test_a_bad_value_names_its_key(key, value, fragment):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({key: value})
    message = str(caught.value)
    assert message.startswith(f"{key}: ")
    assert fragment in message
    assert "\n" not in message


def test_a_database_url_with_a_bad_port_names_its_key():
    with pytest.raises(SettingsError, match=r"^OUTREACH_DATABASE_URL: "):
        Settings.from_env({"OUTREACH_DATABASE_URL": "postgresql://outreach@db.internal:abc/outreach"})


def test_the_password_never_shows_in_repr_or_str():
    settings = Settings.from_env({"OUTREACH_SMTP_PASSWORD": PASSWORD})
    assert settings.smtp_password.reveal() == PASSWORD  # it was read...
    for text in (repr(settings), str(settings), repr(settings.smtp_password), f"{settings.smtp_password}"):
        assert PASSWORD not in text  # ...and is never shown
    assert "********" in repr(settings)


# --- through the CLI -----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "fragment"), BAD_VALUES)
def test_the_cli_reports_a_bad_value_in_one_line(run_cli, key, value, fragment):
    result = run_cli("check", extra_env={key: value})
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0] and fragment in lines[0]
    assert "Traceback" not in result.output


def test_the_cli_reports_a_database_url_with_a_bad_port_in_one_line(outreach):
    result = outreach(["init"], OUTREACH_DATABASE_URL="postgresql://outreach@db.internal:abc/outreach")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: OUTREACH_DATABASE_URL: ")


def test_check_does_not_print_the_password(run_cli):
    result = run_cli("check", extra_env={"OUTREACH_SMTP_PASSWORD": PASSWORD})
    assert result.output.strip()  # it said something (valid, or the problems found)
    assert PASSWORD not in result.output


def test_a_failing_command_does_not_print_the_password(run_cli):
    # Plain SMTP with a password to a remote host: check refuses, naming the setting.
    result = run_cli(
        "check",
        extra_env={
            "OUTREACH_EMAIL_BACKEND": "smtp",
            "OUTREACH_SMTP_HOST": "mail.example.org",
            "OUTREACH_SMTP_SECURITY": "none",
            "OUTREACH_SMTP_USERNAME": "outreach",
            "OUTREACH_SMTP_PASSWORD": PASSWORD,
        },
    )
    assert result.exit_code == 1
    assert "OUTREACH_SMTP_SECURITY" in result.stderr
    assert PASSWORD not in result.output


def test_a_settings_error_does_not_print_the_password(run_cli):
    result = run_cli("init", extra_env={"OUTREACH_SMTP_PASSWORD": PASSWORD, "OUTREACH_SMTP_PORT": "abc"})
    assert result.exit_code == 1
    assert "OUTREACH_SMTP_PORT" in result.stderr
    assert PASSWORD not in result.output


# --- .env, loaded by the console entry point only ---------------------------------------------


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def outreach(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    """``outreach ARGS`` through the console entry point (``cli.main``, which reads ``./.env``) in
    ``tmp_path``, in-process: ``tests/test_dotenv.py`` runs ``python -m outreach`` as a child process.

    The ``.env`` is loaded into ``os.environ``; the environment is put back as it was afterwards.
    """
    from outreach.cli import main

    saved = dict(os.environ)

    def run(args: list[str], **env: str) -> Ran:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", ["outreach", *args])
        os.environ.update(env)
        with pytest.raises(SystemExit) as stopped:
            main()
        out = capsys.readouterr()
        code = stopped.value.code
        if isinstance(code, str):  # sys.exit("error: ..."): the interpreter would print it to stderr
            return Ran(1, out.out, out.err + code + "\n")
        return Ran(code or 0, out.out, out.err)

    yield run
    os.environ.clear()
    os.environ.update(saved)


def test_dotenv_values_are_used(outreach, tmp_path):
    db = tmp_path / "from-dotenv.db"
    (tmp_path / ".env").write_text(f"OUTREACH_DATABASE_URL=sqlite:///{db}\n")
    result = outreach(["init"])
    assert result.returncode == 0, result.stderr
    assert db.is_file()


def test_a_bad_dotenv_value_is_reported_by_key(outreach, tmp_path):
    (tmp_path / ".env").write_text("OUTREACH_SMTP_PORT=abc\n")
    result = outreach(
        ["check"],
        OUTREACH_CAMPAIGNS_DIR=str(ROOT / "outreach" / "campaigns"),
        OUTREACH_TEMPLATES_DIR=str(ROOT / "outreach" / "templates" / "email"),
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: OUTREACH_SMTP_PORT: 'abc' is not a whole number"]
    assert "Traceback" not in result.stderr


def test_dotenv_never_overrides_the_environment(outreach, tmp_path):
    db = tmp_path / "outreach.db"
    (tmp_path / ".env").write_text(
        "OUTREACH_SMTP_PORT=abc\nOUTREACH_DATABASE_URL=sqlite:///" + str(tmp_path / "dotenv.db") + "\n"
    )
    result = outreach(
        ["init"],
        OUTREACH_SMTP_PORT="2525",
        OUTREACH_DATABASE_URL=f"sqlite:///{db}",
        OUTREACH_CAMPAIGNS_DIR=str(ROOT / "outreach" / "campaigns"),
        OUTREACH_TEMPLATES_DIR=str(ROOT / "outreach" / "templates" / "email"),
    )
    assert result.returncode == 0, result.stderr
    assert "schema revision" in result.stdout
    assert db.is_file() and not (tmp_path / "dotenv.db").exists()
