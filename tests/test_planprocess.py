"""The plan in a forked child beside the sender: its report, its errors, and when it is not forked."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from outreach import store
from outreach.models import SENT
from outreach.planprocess import can_fork
from tests.conftest import NOW, ROOT
from tests.service_helpers import json_from_module, service_env, status_counts


def cycle_in_a_process(settings, tmp_path: Path, mode: str) -> tuple[dict, int | None]:
    """One ``Service.cycle`` in a fresh process (``tests.plan_child``); its result, and where the plan ran."""
    pid_file = tmp_path / "plan.pid"
    env = service_env(settings)
    env["PLAN_PID_FILE"] = str(pid_file)
    result = json_from_module("tests.plan_child", mode, env)
    return result, int(pid_file.read_text()) if pid_file.exists() else None


def test_the_plan_runs_in_a_child_and_its_report_comes_back(demo_engine, settings, tmp_path):
    result, planned_by = cycle_in_a_process(settings, tmp_path, "plan")
    assert result["forked"] is True
    assert planned_by is not None and planned_by != result["parent"]
    assert result["queued"] > 0 and "error" not in result, result
    assert status_counts(demo_engine).get(SENT, 0) >= result["sent"] > 0
    assert result["children_left"] is False


def test_an_error_in_the_child_is_raised_in_the_service_as_it_was(demo_engine, settings, tmp_path):
    result, planned_by = cycle_in_a_process(settings, tmp_path, "raise")
    assert planned_by != result["parent"]
    assert result["error"] == "RenderError"
    assert result["message"] == "template acknowledgement.html: 'client' is undefined"
    assert result["children_left"] is False


def test_a_child_killed_half_way_is_one_line_and_no_zombie(demo_engine, settings, tmp_path):
    result, _ = cycle_in_a_process(settings, tmp_path, "killed")
    assert result["error"] == "OutreachError"
    assert result["message"] == "the plan stopped half way: its process was killed by signal 9"
    assert result["children_left"] is False


def test_a_plan_whose_service_died_stops_at_its_next_chunk(demo_engine, settings, tmp_path):
    """Killed mid-plan, the service leaves no plan running on for ever beside its successor."""
    env = service_env(settings)
    env["PLAN_PID_FILE"] = str(tmp_path / "plan.pid")
    done = subprocess.run(
        [sys.executable, "-m", "tests.plan_child", "orphaned", NOW.isoformat()],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # (returns once the child, which holds its stdout, has exited too)
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert (tmp_path / "plan.pid.stopped").read_text() == "stopped"


def test_no_fork_beside_another_thread_or_for_an_in_memory_database(engine):
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        assert can_fork(engine) is False  # a lock held on that thread would stay held in the child
    finally:
        stop.set()
        other.join()
    assert can_fork(store.connect("sqlite://")) is False
    assert can_fork(store.connect("sqlite:///:memory:")) is False


def test_a_file_database_in_a_single_threaded_process_may_fork(tmp_path):
    """(The pytest process itself has threads: asked from a fresh process.)"""
    code = "import sys; from outreach import store; from outreach.planprocess import can_fork; "
    code += f"print(can_fork(store.connect('sqlite:///{tmp_path}/x.db')))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr
