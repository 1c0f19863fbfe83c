"""``outreach demo``: writes only into a folder of its own, and shows a whole cycle sent.

The demo is a newcomer's first look, often typed in the folder that holds the
practice's real database: it must refuse any folder it did not make, and on a
re-run replace only what it made. Run at night or on a weekend, it runs its
cycle as of the physicians' next office hours, so the log shows mail sent.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from outreach import store
from outreach.cli import cli
from outreach.demo import MARKER, demo_moment, shifted_note
from outreach.review import list_messages
from outreach.settings import Settings

NEW_YORK = ZoneInfo("America/New_York")
SATURDAY_NIGHT = datetime(2026, 11, 28, 23, 0, tzinfo=NEW_YORK)
MONDAY_MORNING = datetime(2026, 11, 30, 9, 0, tzinfo=NEW_YORK)
PRACTICE = Settings(timezone="America/New_York")


def demo(*args: str, timezone: str = "America/New_York") -> Result:
    """``outreach demo`` in-process, with only the practice's time zone set."""
    return CliRunner().invoke(cli, ["demo", *args], env={"OUTREACH_TIMEZONE": timezone})


def statuses(folder: Path) -> list[str]:
    """The status of every entry in the demo's log."""
    engine = store.connect(f"sqlite:///{folder / 'outreach-demo.db'}")
    try:
        with store.read(engine) as conn:
            return [entry["status"] for entry in list_messages(conn, limit=None)]
    finally:
        engine.dispose()


def a_practice_folder(folder: Path) -> Path:
    """What a practice's working folder holds: its database, its .env and a folder of its own."""
    folder.mkdir(exist_ok=True)
    (folder / "outreach.db").write_bytes(b"the practice's real database")
    (folder / ".env").write_text("OUTREACH_SMTP_PASSWORD=secret\n")
    (folder / "letters").mkdir()
    (folder / "letters" / "referral.pdf").write_bytes(b"%PDF")
    return folder


def assert_untouched(folder: Path) -> None:
    assert (folder / "outreach.db").read_bytes() == b"the practice's real database"
    assert (folder / ".env").read_text() == "OUTREACH_SMTP_PASSWORD=secret\n"
    assert (folder / "letters" / "referral.pdf").read_bytes() == b"%PDF"
    assert sorted(p.name for p in folder.iterdir()) == [".env", "letters", "outreach.db"]


def assert_refused(result: Result) -> None:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "not made by outreach demo" in line and "--dir" in line


# --- the folder ------------------------------------------------------------------------------


def test_a_folder_holding_a_database_and_env_is_refused_and_left_whole(tmp_path):
    folder = a_practice_folder(tmp_path / "practice")
    result = demo("--dir", str(folder), "--now", MONDAY_MORNING.isoformat())
    assert_refused(result)
    assert str(folder) in result.stderr
    assert_untouched(folder)


def test_dir_dot_in_a_practice_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(a_practice_folder(tmp_path / "practice"))
    result = demo("--dir", ".", "--now", MONDAY_MORNING.isoformat())
    assert_refused(result)
    assert str(tmp_path / "practice") in result.stderr  # "." named as the folder it is
    assert_untouched(Path.cwd())


def test_a_second_run_in_its_own_folder_replaces_only_what_it_made(tmp_path):
    folder = tmp_path / "demo"
    first = demo("--dir", str(folder), "--now", MONDAY_MORNING.isoformat())
    assert first.exit_code == 0, first.output
    assert (folder / MARKER).is_file()
    (folder / "outbox" / "old.eml").write_text("an email of the first run")
    for name in ("outreach-demo.db", "outreach-demo.db-wal", "outreach-demo.db-shm"):
        (folder / name).write_bytes(b"left by the first run")  # unreadable unless replaced
    (folder / "my-notes.txt").write_text("mine")
    (folder / "outbox" / "keep.txt").write_text("mine too")

    second = demo("--dir", str(folder), "--now", MONDAY_MORNING.isoformat())
    assert second.exit_code == 0, second.output
    assert (folder / "my-notes.txt").read_text() == "mine"
    assert (folder / "outbox" / "keep.txt").read_text() == "mine too"
    assert not (folder / "outbox" / "old.eml").exists()
    assert "sent" in statuses(folder)  # a fresh database, not the first run's leftovers


def test_an_empty_folder_that_exists_is_used(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    result = demo("--dir", str(folder), "--now", MONDAY_MORNING.isoformat())
    assert result.exit_code == 0, result.output
    assert (folder / MARKER).is_file() and (folder / "outreach-demo.db").is_file()


@pytest.fixture(scope="module")
def monday_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """One demo, run in a new folder as of the moment it picks for Saturday night (Monday morning).

    The tests that use it only read what it made, so they share the run (a demo is a whole cycle).
    """
    folder = tmp_path_factory.mktemp("monday") / "demo"
    with pytest.MonkeyPatch.context() as patch:  # before the per-test fixture that does the same
        for key in [key for key in os.environ if key.startswith("OUTREACH_")]:
            patch.delenv(key)
        result = demo("--dir", str(folder), "--now", demo_moment(SATURDAY_NIGHT, PRACTICE).isoformat())
    return folder, result


def test_every_file_holding_demo_health_information_is_owner_only(monday_demo):
    folder, result = monday_demo
    assert result.exit_code == 0, result.output
    private = [
        folder / "outreach-demo.db",
        *(folder / "csv").glob("*.csv"),
        *(folder / "outbox").glob("*.eml"),
    ]
    assert len(private) > 5
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in private} == {
        path.name: "0o600" for path in private
    }


# --- the moment it runs as of ---------------------------------------------------------------


def test_saturday_night_runs_as_of_monday_morning_when_every_physician_is_in():
    # 09:00 in New York is 08:00 in Chicago, where the second demo physician works.
    assert demo_moment(SATURDAY_NIGHT, PRACTICE) == MONDAY_MORNING


def test_inside_office_hours_it_runs_at_the_time_it_is():
    tuesday = datetime(2026, 12, 1, 10, 17, tzinfo=NEW_YORK)
    assert demo_moment(tuesday, PRACTICE) == tuesday


def test_a_practice_on_utc_waits_until_its_physicians_in_america_are_in():
    saturday = datetime(2026, 11, 28, 23, 0, tzinfo=UTC)
    moment = demo_moment(saturday, Settings(timezone="UTC"))
    assert moment == datetime(2026, 11, 30, 14, 0, tzinfo=UTC)  # 09:00 New York, 08:00 Chicago


def test_the_practice_send_window_is_the_one_waited_for():
    late = Settings(timezone="America/New_York", send_window="Mon-Fri 13:00-15:00")
    assert demo_moment(SATURDAY_NIGHT, late) == datetime(2026, 11, 30, 14, 0, tzinfo=NEW_YORK)


def test_a_practice_whose_hours_never_meet_its_physicians_gets_the_best_hour_and_is_told():
    tokyo = Settings(timezone="Asia/Tokyo")  # the third demo physician works in the practice's zone
    moment = demo_moment(SATURDAY_NIGHT, tokyo)
    assert SATURDAY_NIGHT < moment < SATURDAY_NIGHT + timedelta(days=7)
    note = shifted_note(moment, tokyo)
    assert note.startswith("Running the demo as of ") and "most of the physicians' office hours" in note


def test_run_as_of_that_moment_the_whole_cycle_is_sent(monday_demo):
    folder, result = monday_demo
    assert result.exit_code == 0, result.output
    found = statuses(folder)
    assert set(found) == {"sent", "suppressed"}, found  # nothing pending, waiting for a window
    assert found.count("suppressed") == 1  # the client without consent
    assert result.stdout.endswith("\n")


def test_with_now_given_the_demo_runs_exactly_then(tmp_path):
    folder = tmp_path / "demo"
    result = demo("--dir", str(folder), "--now", SATURDAY_NIGHT.isoformat())
    assert result.exit_code == 0, result.output
    assert "Running the demo as of" not in result.stdout
    assert "pending" in statuses(folder)  # Saturday night: updates wait for Monday


def test_without_now_nothing_is_left_waiting_for_office_hours(tmp_path):
    folder = tmp_path / "demo"
    result = demo("--dir", str(folder), timezone="UTC")  # the default; the physicians are in America
    assert result.exit_code == 0, result.output
    assert set(statuses(folder)) == {"sent", "suppressed"}
    first = result.stdout.splitlines()[0]
    assert first.startswith(("Running the demo as of", "Demo practice in"))
    if first.startswith("Running"):
        assert "inside the physicians' office hours" in first
    assert result.stdout.endswith("\n")
