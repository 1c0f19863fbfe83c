"""A built-in demo practice: three physicians, ten clients at different stages.

Dates are relative to "now", so the demo always has something due. The data
is written as the same CSV files a practice would import, and goes in
through the same importer, so the demo also shows the import format.

The demo writes only into a folder it made (marked with ``.outreach-demo``)
or an empty one: ``--dir .`` in a practice's folder must never cost its
database. And it runs its cycle at a moment when the physicians' send
windows are open, so a newcomer trying it at night sees the whole cycle sent.
"""

from __future__ import annotations

import csv
import os
import tomllib
from datetime import UTC, date, datetime, time, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from outreach.csvsafe import safe_row
from outreach.errors import OutreachError
from outreach.importer import SPECS, import_file
from outreach.models import IMPORT_KINDS
from outreach.settings import Settings
from outreach.windows import parse_window

# The file that marks a folder as the demo's own, and what the demo makes in it.
MARKER = ".outreach-demo"
DATABASE = "outreach-demo.db"
MADE_FILES = (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", f"{DATABASE}-journal")
MADE_IN = {"csv": tuple(f"{kind}.csv" for kind in IMPORT_KINDS), "outbox": ("*.eml", "*.tmp")}
MARKER_TEXT = (
    "This folder was made by `outreach demo`. Running the demo here again replaces only\n"
    f"what it made: {DATABASE}, csv/ and outbox/. Anything else you put here is left alone.\n"
)


def _practice() -> dict[str, Any]:
    """The demo practice as ``demo.toml`` describes it."""
    return tomllib.loads(files("outreach").joinpath("demo.toml").read_text(encoding="utf-8"))


PRACTICE = _practice()
PHYSICIANS: list[dict[str, str]] = PRACTICE["physician"]
CLIENTS: list[dict[str, Any]] = PRACTICE["client"]
ATTENDING: dict[str, int] = PRACTICE["attending"]


def demo_rows(now: datetime, settings: Settings) -> dict[str, list[dict]]:
    """The demo practice as CSV rows, dated relative to ``now``."""
    local = now.astimezone(settings.tz)
    today = local.date()

    def at(days: int, hour: int) -> str:
        moment = (local - timedelta(days=days)).replace(hour=hour, minute=0, second=0, microsecond=0)
        if moment > local:
            moment = local - timedelta(minutes=5)
        return moment.replace(tzinfo=None).isoformat(timespec="minutes")

    def on(days: int) -> str:
        return (today - timedelta(days=days)).isoformat()

    columns = SPECS["physicians"].columns
    physicians = [{**dict.fromkeys(columns, ""), **p} for p in PHYSICIANS]
    clients, events, measures = [], [], []
    for client in CLIENTS:
        ref, referred = client["ref"], on(client["referred"])
        clients.append(
            {
                **{column: client.get(column, "") for column in SPECS["clients"].columns},
                "referral_date": referred,
                "consent_date": referred if client["consent"] else "",
                "next_reassessment": _in_days(today, client.get("reassess_in")),
            }
        )
        events += [
            {"client_ref": ref, "kind": kind, "occurred_at": at(days, hour), "note": note}
            for days, hour, kind, note in client["events"]
        ]
        measures += [
            {"client_ref": ref, "instrument": code, "score": f"{score:g}", "measured_at": on(days)}
            for code, series in client.get("measures", {}).items()
            for days, score in series
        ]
    for ref, since in ATTENDING.items():
        for days in range(since - 3, 1, -4):
            events.append(
                {"client_ref": ref, "kind": "session_attended", "occurred_at": at(days, 8), "note": ""}
            )
    return {"physicians": physicians, "clients": clients, "events": events, "measures": measures}


def _in_days(today: date, days: int | None) -> str:
    return "" if days is None else (today + timedelta(days=days)).isoformat()


def write_csvs(folder: Path, rows: dict[str, list[dict]]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in IMPORT_KINDS:
        path = folder / f"{kind}.csv"
        # Owner-only, as every file holding (here, made-up) health information is.
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with open(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=SPECS[kind].columns)
            writer.writeheader()
            writer.writerows(safe_row(row) for row in rows[kind])  # opened in a spreadsheet too
        paths[kind] = path
    return paths


def load_demo(engine: Engine, settings: Settings, folder: Path, now: datetime) -> dict[str, Path]:
    """Write the demo CSVs into ``folder`` and import them (the one write path); returns their paths."""
    paths = write_csvs(folder, demo_rows(now, settings))
    for kind in IMPORT_KINDS:
        import_file(engine, settings, kind, paths[kind], now, actor="demo")
    return paths


def prepare_folder(folder: Path) -> None:
    """Make ``folder`` ready for a fresh demo, or refuse without touching anything.

    A new or empty folder is claimed with the marker file; a marked folder
    has what an earlier demo made removed, and nothing else. Any other folder
    with something in it (a practice's database, a project) is refused.
    """
    if folder.exists() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise OutreachError(
            f"{folder.resolve()}: this folder is not empty and was not made by outreach demo; "
            "nothing was changed. Give --dir a new or empty folder, e.g. --dir outreach-demo"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
        _remove_made(folder)
    except OSError as exc:
        raise OutreachError(f"{folder.resolve()}: cannot prepare the demo folder: {exc.strerror}") from None


def _remove_made(folder: Path) -> None:
    """Remove what an earlier demo wrote here: its database, CSV files and emails."""
    for name in MADE_FILES:
        (folder / name).unlink(missing_ok=True)
    for sub, patterns in MADE_IN.items():
        place = folder / sub
        if place.is_symlink() or not place.is_dir():
            continue
        for pattern in patterns:
            for path in place.glob(pattern):
                path.unlink()
        if not any(place.iterdir()):
            place.rmdir()


def demo_moment(now: datetime, settings: Settings) -> datetime:
    """When to run the demo's cycle: ``now`` if every demo physician's send window is open.

    Otherwise the first whole hour (practice time) within a week at which
    they all are, so non-urgent mail is sent instead of waiting for Monday.
    The demo data is dated relative to this moment, so the story holds.
    If no hour suits them all (a practice far from its physicians' zones),
    the first hour that suits the most of them.
    """
    if _open_windows(now, settings) == len(PHYSICIANS):
        return now
    tz = settings.tz
    start = now.astimezone(tz).date()
    best, best_open = now, -1
    for offset in range(8):
        for hour in range(24):
            candidate = datetime.combine(start + timedelta(days=offset), time(hour), tz)
            candidate = candidate.astimezone(UTC).astimezone(tz)  # an hour a clock change skips moves on
            if candidate <= now:
                continue
            opened = _open_windows(candidate, settings)
            if opened > best_open:
                best, best_open = candidate, opened
            if opened == len(PHYSICIANS):
                return candidate
    return best


def _open_windows(moment: datetime, settings: Settings) -> int:
    """How many demo physicians' send windows are open at ``moment``."""
    window = parse_window(settings.send_window)
    zones = [ZoneInfo(p["timezone"]) if p["timezone"] else settings.tz for p in PHYSICIANS]
    return sum(window.contains(moment.astimezone(zone)) for zone in zones)


def shifted_note(moment: datetime, settings: Settings) -> str:
    """The one line that says the demo runs as of ``moment``, and why."""
    when = f"{moment.astimezone(settings.tz):%a %d %b %H:%M %Z}"
    if _open_windows(moment, settings) == len(PHYSICIANS):
        why = "inside the physicians' office hours, so its whole cycle is sent now"
    else:
        why = "when most of the physicians' office hours are open, so most of its cycle is sent now"
    return f"Running the demo as of {when}, {why} (--now ISO picks another time)."
