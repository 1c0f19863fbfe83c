"""``outreach`` reads ``./.env`` only: never one in a parent folder, never over the real environment.

Each test runs the real command in a child process (the ``.env`` is read by
``cli.main``, before click), and tells which settings won by the database
URL that ``outreach log`` names when the database is not initialised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """A parent folder and the working directory inside it."""
    child = tmp_path / "practice"
    child.mkdir()
    return tmp_path, child


def outreach_log(cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "outreach", "log"],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def dotenv(folder: Path, database: Path) -> None:
    (folder / ".env").write_text(f"OUTREACH_DATABASE_URL=sqlite:///{database}\n", encoding="utf-8")


def test_a_dotenv_in_a_parent_folder_is_ignored(folders):
    parent, here = folders
    dotenv(parent, parent / "parent.db")
    result = outreach_log(here)
    assert result.returncode == 1
    assert result.stderr == "error: database sqlite:///outreach.db is not initialised: run `outreach init`\n"


def test_the_dotenv_in_the_working_directory_is_read(folders):
    parent, here = folders
    dotenv(parent, parent / "parent.db")
    dotenv(here, here / "here.db")
    result = outreach_log(here)
    assert f"database sqlite:///{here / 'here.db'} is not initialised" in result.stderr, result.stderr


def test_a_real_environment_variable_wins_over_the_dotenv(folders):
    parent, here = folders
    dotenv(here, here / "here.db")
    result = outreach_log(here, OUTREACH_DATABASE_URL=f"sqlite:///{parent / 'real.db'}")
    assert f"database sqlite:///{parent / 'real.db'} is not initialised" in result.stderr, result.stderr


def test_a_dotenv_that_is_not_utf8_is_one_line(folders):
    _, here = folders
    (here / ".env").write_bytes("OUTREACH_PRACTICE_NAME=Cl\xednica\n".encode("latin-1"))
    result = outreach_log(here)
    assert (result.returncode, result.stderr) == (1, f"error: {here / '.env'}: not UTF-8 text\n")
