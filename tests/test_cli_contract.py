"""The promises every ``outreach`` command keeps: help, usage errors, ``--now``, one-line errors."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from outreach.cli import cli
from tests.conftest import ROOT


def walk(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command and subcommand, with the words that invoke it."""
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found += walk(sub, (*path, name))
    return found


COMMANDS = walk(cli)
COMMAND_IDS = [" ".join(path) or "outreach" for path, _ in COMMANDS]
TOP_LEVEL = sorted({command.name for command in cli.commands.values()})
CLOCK_COMMANDS = [
    ("plan",),
    ("send",),
    ("run",),
    ("import",),
    ("event", "add"),
    ("measure", "add"),
    ("preview",),
    ("demo",),
    ("status",),
    ("retry",),
    ("cancel",),
    ("purge",),
    ("client", "export"),
    ("inbox", "fetch"),
]


def lookup(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group), path
        command = command.commands[name]
    return command


def test_the_walk_finds_the_subcommands():
    paths = {path for path, _ in COMMANDS}
    assert {("import",), ("event", "add"), ("measure", "add"), ("log", "show"), ("check",)} <= paths


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=COMMAND_IDS)
def test_every_command_has_help_text(path, command):
    assert (command.short_help or command.help or "").strip(), f"outreach {' '.join(path)} has no help"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=COMMAND_IDS)
def test_help_exits_0(run_cli, path, command):
    result = run_cli(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ")
    first_help_line = (command.help or "").strip().splitlines()[0]
    assert first_help_line in result.stdout


def test_no_command_is_listed_twice(run_cli):
    # Each command is registered once, under its own name (no "log-" alias for `def log_`).
    assert sorted(cli.commands) == TOP_LEVEL
    listed = [
        line.split()[0]
        for line in run_cli("--help").stdout.split("Commands:")[1].splitlines()
        if line.strip()
    ]
    assert listed == TOP_LEVEL


def test_the_readme_mentions_every_command():
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing"
    text = readme.read_text(encoding="utf-8")
    missing = [name for name in TOP_LEVEL if f"outreach {name}" not in text]
    assert missing == [], f"README.md does not mention: {', '.join(missing)}"


@pytest.mark.parametrize(
    "args",
    [
        ("--no-such-option",),
        ("no-such-command",),
        ("plan", "--bogus"),
        ("import",),
        ("import", "physicians"),
        ("import", "doctors", "doctors.csv"),
        ("event", "add", "C-1"),
        ("measure", "add", "C-1", "LEFS"),
        ("send", "--limit", "0"),
        ("log", "--format", "xml"),
        ("log", "show", "not-a-number"),
        ("preview",),
        ("retry",),
        ("cancel",),
        ("cancel", "not-a-number"),
    ],
    ids=lambda args: " ".join(args),
)
def test_usage_errors_exit_2(run_cli, args):
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert "Usage: " in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("path", CLOCK_COMMANDS, ids=lambda p: " ".join(p))
def test_clock_commands_accept_now(run_cli, path):
    options = {opt for param in lookup(path).params for opt in param.opts}
    assert "--now" in options
    assert "--now" in run_cli(*path, "--help").stdout


@pytest.fixture
def rule_env(tmp_path: Path) -> dict[str, str]:
    """One valid rule and template, so commands get as far as reading --now."""
    campaigns, note = tmp_path / "campaigns", tmp_path / "templates" / "note"
    campaigns.mkdir()
    note.mkdir(parents=True)
    (campaigns / "rules.toml").write_text(
        '[rules.note]\nwhen = { event = "discharged" }\ntemplate = "note"\n'
    )
    for part in ("subject.txt", "body.txt", "body.html"):
        (note / part).write_text("Update on {{ client.initials }}\n")
    return {"OUTREACH_CAMPAIGNS_DIR": str(campaigns), "OUTREACH_TEMPLATES_DIR": str(note.parent)}


@pytest.mark.parametrize(
    "args",
    [
        ("plan",),
        ("plan", "--dry-run"),
        ("send",),
        ("run", "--once"),
        ("import", "physicians", "{csv}"),
        ("event", "add", "C-1", "reassessment"),
        ("measure", "add", "C-1", "LEFS", "40"),
        ("preview", "note", "--client", "C-1"),
        ("demo", "--dir", "{demo}"),
        ("status",),
        ("retry", "--all-failed"),
        ("cancel", "1"),
    ],
    ids=lambda args: " ".join(args[:2]),
)
@pytest.mark.parametrize("bad", ["yesterday", "2026-13-45T10:00", "25/11/2026"])
def test_a_bad_now_is_one_line_and_exit_1(engine, run_cli, rule_env, tmp_path, args, bad):
    csv = tmp_path / "physicians.csv"
    csv.write_text("email,name\na@clinic.example.org,Anna Smith\n")
    args = [a.format(csv=csv, demo=tmp_path / "demo") for a in args]
    result = run_cli(*args, "--now", bad, extra_env=rule_env)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: --now: {bad!r} is not a date-time (ISO 8601, e.g. 2026-11-26T09:30)"]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_a_bad_now_leaves_the_demo_folder_alone(run_cli, tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "outreach-demo.db").write_text("previous demo")
    result = run_cli("demo", "--dir", str(folder), "--now", "yesterday")
    assert result.exit_code == 1
    assert (folder / "outreach-demo.db").read_text() == "previous demo"
