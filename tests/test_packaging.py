"""A built wheel carries the rules and templates, and ``outreach init`` gives the practice its own copy.

A practice installs ``outreach`` with pip, not from a checkout: the wheel must
hold everything the demo and ``outreach check`` need, and ``init`` must put
the rules and templates where the practice can edit them, never over edits.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from outreach.cli import cli
from outreach.settings import Settings
from tests.conftest import ROOT

SHIPPED_RULES = ROOT / "outreach" / "campaigns"
SHIPPED_TEMPLATES = ROOT / "outreach" / "templates" / "email"
# What pip says when it cannot reach a package index (no network, no DNS, proxy refused).
NO_INDEX = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution|Network is unreachable"
    r"|Max retries exceeded|No matching distribution found|Could not find a version that satisfies"
    r"|ProxyError|Name or service not known|Connection refused",
)


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` by relative path, with its content."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def init(folder: Path, **env: str) -> Result:
    """``outreach init`` in-process, in ``folder``, with a database there."""
    variables = {"OUTREACH_DATABASE_URL": f"sqlite:///{folder / 'outreach.db'}", **env}
    return CliRunner().invoke(cli, ["init"], env=variables)


# --- outreach init ----------------------------------------------------------------------------


def test_init_copies_the_shipped_rules_and_templates_for_the_practice_to_edit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = init(tmp_path)
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path / "campaigns") == files_under(SHIPPED_RULES)
    assert files_under(tmp_path / "templates" / "email") == files_under(SHIPPED_TEMPLATES)
    assert "rules: copied to campaigns/" in result.stdout
    assert "email templates: copied to templates/email/" in result.stdout
    assert "to edit" in result.stdout
    settings = Settings.from_env({})  # from now on the practice's copies are the ones used
    assert (settings.campaigns_dir, settings.templates_dir) == (Path("campaigns"), Path("templates/email"))


def test_a_second_init_leaves_an_edited_template_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert init(tmp_path).exit_code == 0
    subject = tmp_path / "templates" / "email" / "progress_report" / "subject.txt"
    subject.write_text("Our progress note: {{ client.initials }}\n")
    (tmp_path / "campaigns" / "relationship.toml").unlink()  # the practice switched those off

    again = init(tmp_path)
    assert again.exit_code == 0, again.output
    assert subject.read_text() == "Our progress note: {{ client.initials }}\n"
    assert not (tmp_path / "campaigns" / "relationship.toml").exists()
    assert "campaigns/ is already here, left as it is" in again.stdout
    assert "templates/email/ is already here, left as it is" in again.stdout


def test_init_uses_a_folder_named_in_the_settings_as_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = tmp_path / "our-rules"
    shutil.copytree(SHIPPED_RULES, rules)
    result = init(tmp_path, OUTREACH_CAMPAIGNS_DIR=str(rules))
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "campaigns").exists()
    assert f"rules: {rules} (set by OUTREACH_CAMPAIGNS_DIR), used as it is" in result.stdout
    assert (tmp_path / "templates" / "email").is_dir()


def test_init_that_cannot_copy_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "templates").write_text("a file where the templates folder would go")
    result = init(tmp_path)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: templates/email: could not copy the shipped email templates there: ")
    assert (tmp_path / "templates").read_text() == "a file where the templates folder would go"
    assert not list(tmp_path.glob(".outreach-init-*"))  # no half-made copy left behind


# --- a built wheel, installed the way a practice installs it ------------------------------------


def run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def pip(python: Path | str, args: list[str | Path], cwd: Path) -> None:
    """Run pip; skip (fail in CI) when it cannot reach a package index, fail on anything else."""
    done = run([python, "-m", "pip", "--disable-pip-version-check", "--retries", "2", *args], cwd)
    if done.returncode == 0:
        return
    output = done.stdout + done.stderr
    if NO_INDEX.search(output):
        reason = f"pip cannot reach a package index: {NO_INDEX.search(output)[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    pytest.fail(f"pip {' '.join(map(str, args))} failed:\n{output[-3000:]}")


def project_copy(target: Path) -> Path:
    """The project's sources, copied so that building writes nothing into the working tree."""
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", "tests", ".env", "*.db*"
    )
    shutil.copytree(ROOT, target, ignore=ignore)
    return target


@pytest.mark.slow
def test_a_built_wheel_runs_the_demo_and_init_from_an_empty_folder(tmp_path):
    source = project_copy(tmp_path / "source")
    pip(sys.executable, ["wheel", "--no-deps", "-q", "-w", tmp_path / "wheels", source], tmp_path)
    [wheel] = (tmp_path / "wheels").glob("outreach-*.whl")
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", venv], tmp_path).returncode == 0
    python, outreach = venv / "bin" / "python", venv / "bin" / "outreach"
    pip(python, ["install", "-q", wheel], tmp_path)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTREACH_", "PYTHON"))}
    empty = tmp_path / "practice"
    empty.mkdir()
    where = run([python, "-c", "import outreach; print(outreach.__file__)"], empty, env)
    assert str(venv) in where.stdout, where  # the installed wheel, not this checkout

    demo = run([outreach, "demo", "--dir", empty / "demo"], empty, env)
    assert demo.returncode == 0, demo.stderr
    assert list((empty / "demo" / "outbox").glob("*.eml")), demo.stdout

    first = run([outreach, "init"], empty, env)
    assert first.returncode == 0, first.stderr
    assert files_under(empty / "templates" / "email") == files_under(SHIPPED_TEMPLATES)
    assert files_under(empty / "campaigns") == files_under(SHIPPED_RULES)
    check = run([outreach, "check"], empty, env)
    assert check.returncode == 0, check.stderr
