""".env.example documents every setting, with its real default."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from outreach.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / ".env.example").read_text()
SOURCE = (ROOT / "outreach" / "settings.py").read_text()


def documented() -> dict[str, str]:
    return dict(re.findall(r"^(OUTREACH_[A-Z_]+)=(.*)$", EXAMPLE, flags=re.M))


def test_every_key_read_by_settings_is_documented():
    read = {f"OUTREACH_{k}" for k in re.findall(r'reader\.\w+\(\s*"([A-Z_]+)"', SOURCE)}
    read |= set(re.findall(r'"(OUTREACH_[A-Z_]+)"', SOURCE))
    assert len(read) > 20
    assert read == set(documented()), read ^ set(documented())


def test_example_values_are_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    from_example = Settings.from_env(documented())
    defaults = Settings.from_env({})
    for field in fields(Settings):
        assert getattr(from_example, field.name) == getattr(defaults, field.name), field.name
