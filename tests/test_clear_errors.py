"""Faults a person can fix are one line naming the setting, argument or folder: never a traceback.

Also: files holding health information are the owner's alone (the HTML of
``preview --html``), and a database file others can read is reported.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from outreach import status, store
from outreach.errors import ImportFileError, RuleError
from outreach.models import PENDING, events, messages
from outreach.settings import Settings
from tests.conftest import NOW
from tests.factories import queue_message, trail
from tests.service_helpers import service_env

# --- the file backend's outbox ------------------------------------------------------------------


def queue_three(engine) -> list[int]:
    return [queue_message(engine, next_attempt_at=NOW) for _ in range(3)]


def assert_left_queued(engine, ids: list[int], reason: str) -> None:
    with store.read(engine) as conn:
        rows = conn.execute(select(messages).where(messages.c.id.in_(ids))).all()
    for row in rows:
        assert (row.status, row.attempts, row.claimed_by) == (PENDING, 0, None)
        assert row.last_error == reason
    assert all(trail(engine, i)[-1] == ("deferred", reason) for i in ids)


def test_an_outbox_folder_that_cannot_be_created_stops_the_batch_in_one_line(
    engine, settings, run_cli, tmp_path
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be\n")
    outbox = blocker / "outbox"
    ids = queue_three(engine)
    result = run_cli("send", "--now", NOW.isoformat(), env_settings=settings.with_(outbox_dir=outbox))
    reason = f"cannot create the outbox folder {outbox}: {blocker} is a file, not a folder"
    assert result.exit_code == 1
    assert f"error: sending stopped, messages left queued: {reason}" in result.stderr.splitlines()
    assert "Traceback" not in result.output
    assert_left_queued(engine, ids, reason)


def unwritable_folder() -> Path:
    """A folder that exists and takes no new file, even from root (sysfs)."""
    folder = Path("/sys/kernel")
    try:
        os.close(os.open(folder / "outreach-probe.tmp", os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError:
        return folder
    os.unlink(folder / "outreach-probe.tmp")
    pytest.skip("/sys/kernel takes new files here")


def test_an_outbox_that_cannot_be_written_stops_the_batch_in_one_line(engine, settings, run_cli):
    folder = unwritable_folder()
    ids = queue_three(engine)
    result = run_cli("send", "--now", NOW.isoformat(), env_settings=settings.with_(outbox_dir=folder))
    assert result.exit_code == 1
    assert result.stdout.startswith("sent 0, deferred 0, failed 0")
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    reason = line.removeprefix("error: sending stopped, messages left queued: ")
    assert reason.startswith(f"cannot write to the outbox folder {folder}: ")  # and the system's reason
    assert_left_queued(engine, ids, reason)


# --- files that hold health information ----------------------------------------------------------


@pytest.fixture
def loose_umask():
    """The usual umask (files 0644 unless a program says otherwise)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("existing", [False, True])
def test_preview_html_is_written_owner_only(demo_engine, run_cli, tmp_path, loose_umask, existing):
    html = tmp_path / "preview.html"
    if existing:
        html.write_text("old\n")
        html.chmod(0o644)
    result = run_cli("preview", "adverse_event_alert", "--client", "C-1006", "--html", str(html))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(html.stat().st_mode) == 0o600
    assert "<html" in html.read_text(encoding="utf-8")


def test_preview_html_into_a_missing_folder_is_one_line(demo_engine, run_cli, tmp_path):
    html = tmp_path / "no-such-folder" / "preview.html"
    result = run_cli("preview", "adverse_event_alert", "--client", "C-1006", "--html", str(html))
    assert result.exit_code == 1
    assert result.stderr == f"error: --html {html}: cannot write: No such file or directory\n"


@pytest.fixture
def sqlite_settings(settings: Settings, tmp_path: Path) -> Settings:
    """This test's own SQLite file, whatever database the others run on."""
    own = settings.with_(database_url=f"sqlite:///{tmp_path / 'own.db'}")
    engine = store.connect(own.database_url)
    store.migrate(engine)
    status.started(engine, "host:1:abc", NOW)
    engine.dispose()
    return own


def test_a_database_file_others_can_read_is_reported(run_cli, sqlite_settings, tmp_path):
    db = tmp_path / "own.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    fine = run_cli("status", "--now", NOW.isoformat(), env_settings=sqlite_settings)
    assert fine.exit_code == 0 and "warning" not in fine.stderr
    db.chmod(0o644)
    warned = run_cli("status", "--now", NOW.isoformat(), env_settings=sqlite_settings)
    assert warned.exit_code == 0, "a warning alone does not page anyone"
    [line] = [line for line in warned.stderr.splitlines() if line.startswith("warning: ")]
    assert line.startswith(f"warning: database file {db} has mode 0644: ")
    assert f"run chmod 600 {db}" in line  # and its -wal and -shm, which SQLite makes like it
    checked = run_cli("check", env_settings=sqlite_settings)
    assert checked.exit_code == 1
    [problem] = [line for line in checked.stderr.splitlines() if line.startswith(f"database file {db} ")]
    assert problem.startswith(f"database file {db} has mode 0644: ") and f"run chmod 600 {db}" in problem


# --- settings and arguments ---------------------------------------------------------------------


def test_a_sqlite_folder_that_cannot_be_created_is_one_line(run_cli, tmp_path):
    blocker = tmp_path / "file-as-parent"
    blocker.write_text("")
    url = f"sqlite:///{blocker}/x/y.db"
    result = run_cli("init", extra_env={"OUTREACH_DATABASE_URL": url})
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: OUTREACH_DATABASE_URL: cannot create the folder {blocker}/x: {blocker} is a file, not a folder\n"
    )


@pytest.mark.skipif(importlib.util.find_spec("psycopg2") is not None, reason="psycopg2 is installed here")
def test_a_postgresql_driver_that_is_not_installed_is_one_line(run_cli):
    url = "postgresql+psycopg2://outreach@localhost/outreach"
    result = run_cli("status", extra_env={"OUTREACH_DATABASE_URL": url})
    assert result.exit_code == 1
    assert result.stderr == (
        "error: OUTREACH_DATABASE_URL: the psycopg2 driver is not installed; "
        "use postgresql+psycopg:// (installed with outreach[postgres])\n"
    )


def test_a_ca_file_that_holds_no_certificate_is_refused_by_check(run_cli, tmp_path, ca_file):
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    result = run_cli("check", extra_env={"OUTREACH_SMTP_CA_FILE": str(junk)})
    assert result.exit_code == 1
    assert result.stderr == f"error: OUTREACH_SMTP_CA_FILE: '{junk}' holds no PEM certificate\n"
    assert Settings.from_env({"OUTREACH_SMTP_CA_FILE": str(ca_file)}).smtp_ca_file == ca_file


def event_count(engine) -> int:
    with store.read(engine) as conn:
        return conn.execute(select(func.count()).select_from(events)).scalar()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("event", "add", "C-1006", "goal_achieved", "--note", "caf\udce9"), "--note"),
        (("event", "add", "C-\udcff", "goal_achieved"), "CLIENT_REF"),
        (("client", "consent", "C-\udcff"), "CLIENT_REF"),
        (("log", "--client", "\udcff"), "--client"),
    ],
)
def test_an_argument_that_is_not_utf8_is_named_and_nothing_is_written(demo_engine, run_cli, args, named):
    before = event_count(demo_engine)
    result = run_cli(*args, "--now", NOW.isoformat()) if args[0] != "log" else run_cli(*args)
    assert result.exit_code == 1
    assert result.stderr == f"error: {named}: not valid UTF-8 text\n"
    assert event_count(demo_engine) == before


def test_a_note_that_is_not_utf8_from_a_real_command_line(demo_engine, settings, tmp_path):
    """The bytes as a shell hands them over, decoded by Python itself (surrogate escapes)."""
    before = event_count(demo_engine)
    done = subprocess.run(
        [sys.executable, "-m", "outreach", "event", "add", "C-1006", "goal_achieved", "--note", b"caf\xe9"],
        env=service_env(settings),
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == b"error: --note: not valid UTF-8 text\n"
    assert event_count(demo_engine) == before


# --- errors through a pipe ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        RuleError(["campaigns/a.toml: rule 'x': unknown key 'evry'", "campaigns/b.toml: no template"]),
        ImportFileError("clients.csv", ["row 3: referral_date: not a date", "row 9: email: missing"]),
    ],
)
def test_an_error_with_its_problems_crosses_a_pipe_whole(error):
    """A plan's helper process raises to the planner through a pipe (``planprocess``): the same lines arrive."""
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), str(back), back.problems) == (type(error), str(error), error.problems)
    assert getattr(back, "path", None) == getattr(error, "path", None)
