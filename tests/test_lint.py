"""ruff keeps the code consistent and mypy keeps it typed: both are part of the suite.

mypy reads its settings from pyproject.toml: the whole package checked, the
sending side and the one write path (dispatcher, outbox, records, backends)
strictly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which(name) or str(Path(sys.executable).with_name(name))
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("command", [("check", "."), ("format", "--check", ".")])
def test_ruff(command):
    result = tool("ruff", *command)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy():
    result = tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
