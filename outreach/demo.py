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
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
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

PHYSICIANS = [
    ("m.alvarez@riverside-ortho.example.org", "Maria Alvarez", "MD", "Orthopaedic Surgery",
     "Riverside Orthopaedics", "555-0101", "555-0102", "America/New_York"),
    ("j.chen@lakeside-sports.example.org", "James Chen", "DO", "Sports Medicine",
     "Lakeside Sports Medicine", "555-0201", "", "America/Chicago"),
    ("p.nair@northgate-fm.example.org", "Priya Nair", "PA-C", "Family Medicine",
     "Northgate Family Practice", "555-0301", "555-0302", ""),
]  # fmt: skip

ALVAREZ, CHEN, NAIR = (p[0] for p in PHYSICIANS)

# ref, first, last, physician, referred (days ago), diagnosis, precautions, goals, consent?, status
CLIENTS = [
    ("C-1001", "Jordan", "Davis", ALVAREZ, 75, "Left ACL reconstruction (hamstring autograft)",
     "No open-chain knee extension 0-45 degrees until 12 weeks; no pivoting",
     "Descend stairs reciprocally without rail; Return to recreational cycling; Jog 10 minutes pain-free",
     True, "active"),
    ("C-1002", "Maria", "Lopez", CHEN, 64, "Lumbar disc herniation L4-5 with left radiculopathy",
     "Avoid loaded spinal flexion; stop if leg symptoms peripheralise",
     "Sit through a 1-hour work meeting; Lift a 10 kg grocery bag from the floor", True, "active"),
    ("C-1003", "Robert", "Kim", ALVAREZ, 96, "Right total knee arthroplasty",
     "Weight bearing as tolerated; no kneeling on the operated knee",
     "Walk 30 minutes in the community; Climb one flight of stairs without a rail", True, "active"),
    ("C-1004", "Aisha", "Patel", ALVAREZ, 58, "Right rotator cuff repair (supraspinatus)",
     "No lifting over 2 kg with the right arm; no resisted external rotation until cleared",
     "Reach an overhead shelf; Carry a 5 kg bag", True, "active"),
    ("C-1005", "Thomas", "Becker", CHEN, 1, "Patellofemoral pain syndrome, bilateral",
     "", "Run 5 km", False, "referred"),
    ("C-1006", "Helen", "Wright", NAIR, 70, "Recurrent falls; deconditioning after hospital stay",
     "Orthostatic hypotension: rise slowly, monitor blood pressure before exercise",
     "Walk to the mailbox without a cane; Get up from the floor independently", True, "active"),
    ("C-1007", "Samuel", "Okafor", CHEN, 6, "Mechanical neck pain with cervicogenic headache",
     "No end-range cervical manipulation", "Work at the computer for 2 hours without headache",
     True, "referred"),
    ("C-1008", "Grace", "Liu", NAIR, 5, "Type 2 diabetes with peripheral neuropathy; low back pain",
     "Check feet before and after sessions; glucose above 100 mg/dL before exercise",
     "Walk 20 minutes daily", False, "referred"),
    ("C-1009", "Daniel", "Reyes", CHEN, 50, "Right Achilles tendinopathy (mid-portion)",
     "Progress loading by pain monitoring (at most 3/10 during, settled next morning)",
     "Jog 20 minutes; Single-leg heel raise x 20", True, "active"),
    ("C-1010", "Olivia", "Brooks", NAIR, 40, "Chronic low back pain", "", "Garden for 1 hour",
     True, "active"),
]  # fmt: skip

# Plan of care as the clinician records it; next reassessment in days from now.
PLANS = {
    "C-1001": (
        "2 sessions/week for 8 weeks: progressive quadriceps and hip strengthening, "
        "balance, graded return to cycling",
        27,
    ),
    "C-1002": ("2 sessions/week for 6 weeks: graded loading in neutral spine, walking programme", 20),
    "C-1003": ("Discharged to a home programme: strength 3x/week, daily walking", None),
    "C-1004": (
        "2 sessions/week for 8 weeks: scapular control, progressive rotator cuff loading "
        "within the lifting limit",
        25,
    ),
    "C-1006": (
        "2 sessions/week for 10 weeks: lower-limb strength, balance and gait training, floor transfers",
        24,
    ),
    "C-1007": (
        "2 sessions/week for 6 weeks: deep neck flexor endurance, posture and work-station breaks",
        28,
    ),
    "C-1009": ("1 session/week for 4 weeks: heavy slow calf loading, return-to-run progression", 26),
    "C-1010": ("2 sessions/week for 8 weeks: graded activity and trunk endurance", 21),
}

# ref, kind, days ago, hour, note
EVENTS = [
    ("C-1001", "referral_received", 75, 9, "Referral by fax"),
    ("C-1001", "initial_assessment", 70, 10, ""),
    ("C-1001", "reassessment", 1, 10, "12-week reassessment"),
    ("C-1002", "referral_received", 64, 9, ""),
    ("C-1002", "initial_assessment", 61, 11, ""),
    ("C-1003", "referral_received", 96, 9, ""),
    ("C-1003", "initial_assessment", 92, 14, ""),
    ("C-1003", "goal_achieved", 20, 11, "Walk 30 minutes in the community: achieved, no gait aid"),
    ("C-1003", "goal_achieved", 6, 11, "Climb one flight of stairs without a rail: achieved reciprocally"),
    ("C-1003", "discharged", 1, 15,
     "Goals met; independent with home programme (3x/week strength, daily walking)"),
    ("C-1004", "referral_received", 58, 9, ""),
    ("C-1004", "initial_assessment", 55, 9, ""),
    ("C-1005", "referral_received", 1, 11, ""),
    ("C-1006", "referral_received", 70, 8, ""),
    ("C-1006", "initial_assessment", 66, 10, ""),
    ("C-1006", "adverse_event", 0, 1,
     "Light-headed on standing after seated exercise; BP 92/60 seated. Session stopped, "
     "client seated and monitored 20 minutes, symptoms resolved; BP 118/74 before leaving "
     "with her daughter."),
    ("C-1007", "referral_received", 6, 9, ""),
    ("C-1007", "initial_assessment", 2, 13, ""),
    ("C-1008", "referral_received", 5, 9, ""),
    ("C-1008", "initial_assessment", 1, 9, ""),
    ("C-1009", "referral_received", 50, 10, ""),
    ("C-1009", "initial_assessment", 47, 10, ""),
    ("C-1009", "goal_achieved", 1, 16,
     "Jog 20 minutes: achieved continuously, pain 1/10, settled by the next morning"),
    ("C-1010", "referral_received", 40, 10, ""),
    ("C-1010", "initial_assessment", 37, 10, ""),
    ("C-1010", "session_missed", 12, 10, ""),
    ("C-1010", "session_missed", 8, 10, ""),
    ("C-1010", "session_missed", 5, 10, ""),
]  # fmt: skip

# Sessions attended: twice a week for the active clients with an assessment.
ATTENDING = {"C-1001": 70, "C-1002": 61, "C-1004": 55, "C-1006": 66, "C-1009": 47, "C-1003": 92}

# ref, instrument, [(days ago, score), ...]
MEASURES: list[tuple[str, str, list[tuple[int, float]]]] = [
    ("C-1001", "LEFS", [(70, 38), (40, 47), (1, 55)]),
    ("C-1001", "NPRS", [(70, 5), (1, 2)]),
    ("C-1002", "ODI", [(61, 42), (31, 34), (2, 24)]),
    ("C-1002", "NPRS", [(61, 7), (2, 3)]),
    ("C-1003", "LEFS", [(92, 30), (50, 48), (1, 62)]),
    ("C-1003", "6MWT", [(92, 280), (1, 410)]),
    ("C-1004", "QuickDASH", [(55, 61), (5, 40)]),
    ("C-1006", "TUG", [(66, 16.2), (3, 12.8)]),
    ("C-1006", "BERG", [(66, 41), (3, 47)]),
    ("C-1007", "NDI", [(2, 22)]),
    ("C-1007", "NPRS", [(2, 6)]),
    ("C-1008", "ODI", [(1, 36)]),
    ("C-1009", "LEFS", [(47, 52), (1, 71)]),
    ("C-1009", "PSFS", [(47, 3), (1, 8)]),
    ("C-1010", "ODI", [(37, 30), (15, 28)]),
]


def demo_rows(now: datetime, settings: Settings) -> dict[str, list[dict]]:
    """The demo practice as CSV rows, dated relative to ``now``."""
    local = now.astimezone(settings.tz)
    today = local.date()

    def at(days: int, hour: int) -> str:
        moment = (local - timedelta(days=days)).replace(hour=hour, minute=0, second=0, microsecond=0)
        if moment > local:
            moment = local - timedelta(minutes=5)
        return moment.replace(tzinfo=None).isoformat(timespec="minutes")

    columns = SPECS["physicians"].columns
    physicians = [{**dict.fromkeys(columns, ""), **dict(zip(columns, p, strict=False))} for p in PHYSICIANS]
    clients = []
    for ref, first, last, email, referred, dx, precautions, goals, consent, status in CLIENTS:
        clients.append(
            {
                "ref": ref, "first_name": first, "last_name": last, "physician_email": email,
                "referral_date": (today - timedelta(days=referred)).isoformat(), "diagnosis": dx,
                "precautions": precautions, "goals": goals,
                "consent_date": (today - timedelta(days=referred)).isoformat() if consent else "",
                "status": status, "consent_expires": "",
                "plan": PLANS.get(ref, ("", None))[0],
                "next_reassessment": _in_days(today, PLANS.get(ref, ("", None))[1]),
            }
        )  # fmt: skip
    events = [
        {"client_ref": ref, "kind": kind, "occurred_at": at(days, hour), "note": note}
        for ref, kind, days, hour, note in EVENTS
    ]
    for ref, since in ATTENDING.items():
        for days in range(since - 3, 1, -4):
            events.append(
                {"client_ref": ref, "kind": "session_attended", "occurred_at": at(days, 8), "note": ""}
            )
    measures = [
        {"client_ref": ref, "instrument": code, "score": f"{score:g}",
         "measured_at": (today - timedelta(days=days)).isoformat()}
        for ref, code, series in MEASURES
        for days, score in series
    ]  # fmt: skip
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
    zones = [ZoneInfo(p[7]) if p[7] else settings.tz for p in PHYSICIANS]
    return sum(window.contains(moment.astimezone(zone)) for zone in zones)


def shifted_note(moment: datetime, settings: Settings) -> str:
    """The one line that says the demo runs as of ``moment``, and why."""
    when = f"{moment.astimezone(settings.tz):%a %d %b %H:%M %Z}"
    if _open_windows(moment, settings) == len(PHYSICIANS):
        why = "inside the physicians' office hours, so its whole cycle is sent now"
    else:
        why = "when most of the physicians' office hours are open, so most of its cycle is sent now"
    return f"Running the demo as of {when}, {why} (--now ISO picks another time)."
