"""``outreach log`` starts quickly because it loads only what reading the log needs.

Checked on the modules a fresh process has loaded, never on timings (the
machines are noisy): alembic, Jinja and premailer (with lxml and cssutils)
together take longer to import than the whole command may take.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from outreach import store
from outreach.models import physicians
from tests.conftest import settings_env

HEAVY = ("alembic", "mako", "jinja2", "premailer", "lxml", "cssutils", "schedule")

# Runs the CLI as the console script does, then lists every module it loaded.
PROBE = """
import json, sys
from outreach.cli import main
args, report = json.loads(sys.argv[1]), sys.argv[2]
sys.argv = ["outreach", *args]
try:
    main()
finally:
    with open(report, "w", encoding="utf-8") as out:
        json.dump(sorted(sys.modules), out)
"""


def loaded_by(args: list[str], env: dict[str, str], folder: Path) -> tuple[subprocess.CompletedProcess, set]:
    """Run ``outreach ARGS`` in a fresh interpreter; its result and the top-level packages it imported."""
    report = folder / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), str(report)],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    modules = json.loads(report.read_text(encoding="utf-8"))
    return done, {name.partition(".")[0] for name in modules}


def first_physician(engine) -> str:
    with store.read(engine) as conn:
        return conn.execute(select(physicians.c.email).order_by(physicians.c.id)).scalars().first()


@pytest.mark.parametrize("which", ["status", "physician", "since", "version"])
def test_outreach_log_loads_no_heavy_module(which, demo_engine, settings, tmp_path):
    args = {
        "status": ["log", "--status", "failed"],
        "physician": ["log", "--physician", first_physician(demo_engine), "--format", "json"],
        "since": ["log", "--since", "2026-01-01", "--format", "csv"],
        "version": ["--version"],
    }[which]
    env = {**os.environ, **settings_env(settings)}
    done, packages = loaded_by(args, env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not packages & set(HEAVY), f"outreach {' '.join(args)} imported {sorted(packages & set(HEAVY))}"
