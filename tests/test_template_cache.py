"""Compiled templates kept between runs: no command compiles an unchanged template twice.

Every command validates the templates by compiling them all; kept in a
private folder, that third of a second is paid once. An edited template is
compiled again (Jinja checks the source), and a folder others could write
to is never used: its files would be code this process runs.
"""

from __future__ import annotations

import shutil
import stat

import jinja2
import pytest

from outreach import renderer
from tests.factories import SHIPPED_TEMPLATES


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A cache with nothing in memory, its folder under ``tmp_path``: as a new process would have."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def new_process() -> None:
        monkeypatch.setattr(renderer, "_COMPILED", renderer._CompiledTemplates())

    new_process()
    return new_process


def compiled_count(monkeypatch) -> list[str]:
    names: list[str] = []
    original = jinja2.Environment.compile

    def counting(self, source, name=None, filename=None, raw=False, defer_init=False):
        names.append(name)
        return original(self, source, name, filename, raw, defer_init)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    return names


def test_the_next_run_loads_the_compiled_templates_instead_of_compiling(tmp_path, fresh_cache, monkeypatch):
    templates = tmp_path / "templates"
    shutil.copytree(SHIPPED_TEMPLATES, templates)
    compiled = compiled_count(monkeypatch)
    renderer.load_renderer(templates)
    first = len(compiled)
    assert first > 10

    fresh_cache()
    renderer.load_renderer(templates)
    assert len(compiled) == first  # none compiled again

    [folder] = (tmp_path / "cache" / "outreach").iterdir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in folder.iterdir()} == {0o600}


def test_an_edited_template_is_compiled_again(tmp_path, fresh_cache, monkeypatch):
    templates = tmp_path / "templates"
    shutil.copytree(SHIPPED_TEMPLATES, templates)
    renderer.load_renderer(templates)
    page = templates / "digest" / "body.html"
    page.write_text(page.read_text(encoding="utf-8") + "{# edited #}\n", encoding="utf-8")

    fresh_cache()
    compiled = compiled_count(monkeypatch)
    renderer.load_renderer(templates)
    assert compiled == ["digest/body.html"]


def test_a_folder_others_can_write_to_is_not_used(tmp_path, fresh_cache, monkeypatch):
    renderer.load_renderer(SHIPPED_TEMPLATES)
    [folder] = (tmp_path / "cache" / "outreach").iterdir()
    folder.chmod(0o777)

    fresh_cache()
    compiled = compiled_count(monkeypatch)
    renderer.load_renderer(SHIPPED_TEMPLATES)
    assert len(compiled) > 10  # every template compiled, nothing taken from that folder
