"""Importing again and importing the unexpected: statuses kept, big notes, duplicates, separators."""

from __future__ import annotations

import csv

import pytest

from outreach import store
from outreach.errors import ImportFileError, OutreachError
from outreach.importer import FIELD_LIMIT, TEXT_LIMIT, import_file, record_event
from outreach.models import clients, events, physicians
from outreach.planner import plan
from outreach.renderer import Renderer
from outreach.rules import load_rules
from tests.conftest import NOW
from tests.test_import import NOW_ARG, PHYSICIANS_CSV, client, counts, load, rows, write

ACTIVE_CLIENTS = """\
ref,first_name,last_name,physician_email,referral_date,consent_date,status
C-1,Jordan,Davis,a.smith@clinic.example.org,2026-09-01,2026-09-01,active
C-2,Maria,Lopez,a.smith@clinic.example.org,2026-09-01,2026-09-01,active
"""

# Assessed 84 days before NOW, so a progress report is due while a client is active.
ASSESSED = """\
client_ref,kind,occurred_at
C-1,initial_assessment,2026-09-02T10:00
C-2,initial_assessment,2026-09-02T10:00
"""


@pytest.fixture
def practice(engine, settings, tmp_path):
    """Two physicians; clients C-1 and C-2, active by the CSV and assessed."""
    load(engine, settings, tmp_path, "physicians", PHYSICIANS_CSV)
    load(engine, settings, tmp_path, "clients", ACTIVE_CLIENTS)
    load(engine, settings, tmp_path, "events", ASSESSED)
    return engine


def discharge(engine, ref: str) -> None:
    with store.write(engine) as conn:
        record_event(conn, client(engine, ref).id, "discharged", NOW.replace(day=20), "Goals met", NOW)


def planned(engine, settings) -> dict[str, list[str]]:
    """Rule names queued by one planning pass, per client ref."""
    rules = load_rules(settings.campaigns_dir, settings.templates_dir)
    report = plan(engine, settings, rules, Renderer(settings.templates_dir), NOW)
    refs = {c.id: c.ref for c in rows(engine, clients)}
    queued: dict[str, list[str]] = {}
    for draft in report.queued:
        queued.setdefault(refs[draft.client_id], []).append(draft.rule.name)
    return queued


# --- 7: milestones decide the status; a re-import does not undo them ----------------------------


def test_reimporting_the_same_csv_keeps_a_discharged_client_discharged(practice, settings, tmp_path):
    discharge(practice, "C-1")
    report = load(practice, settings, tmp_path, "clients", ACTIVE_CLIENTS)
    assert (report.updated, report.unchanged) == (0, 2)
    assert client(practice, "C-1").status == "discharged"
    queued = planned(practice, settings)
    assert "progress_report" not in queued["C-1"]
    assert "discharge_summary" in queued["C-1"]
    assert "progress_report" in queued["C-2"]  # the active client still gets one


def test_a_reimport_still_moves_a_client_to_a_new_physician(practice, settings, tmp_path):
    discharge(practice, "C-1")
    moved = ACTIVE_CLIENTS.replace("C-1,Jordan,Davis,a.smith", "C-1,Jordan,Davis,b.jones")
    report = load(practice, settings, tmp_path, "clients", moved)
    assert (report.updated, report.unchanged) == (1, 1)
    jones = next(p for p in rows(practice, physicians) if p.email == "b.jones@clinic.example.org")
    davis = client(practice, "C-1")
    assert (davis.physician_id, davis.status) == (jones.id, "discharged")


def test_the_status_column_still_sets_a_new_clients_status(practice, settings, tmp_path):
    text = ACTIVE_CLIENTS + "C-3,Ann,Lee,b.jones@clinic.example.org,2026-11-01,,on_hold\n"
    load(practice, settings, tmp_path, "clients", text)
    assert client(practice, "C-3").status == "on_hold"
    assert client(practice, "C-1").status == "active"


# --- 12: big notes are bad rows, not a broken file ----------------------------------------------


def events_with_note(note: str) -> str:
    return (
        "client_ref,kind,occurred_at,note\n"
        "C-1,session_attended,2026-11-02T10:00,Fine\n"
        f'C-1,session_attended,2026-11-03T10:00,"{note}"\n'
        "C-1,session_attended,2026-11-04T10:00,Fine\n"
    )


def test_a_one_megabyte_note_is_one_bad_row_naming_its_size_and_the_limit(practice, settings, tmp_path):
    path = write(tmp_path, "events.csv", events_with_note("x" * 1_048_576))
    before = counts(practice)
    with pytest.raises(ImportFileError) as caught:
        import_file(practice, settings, "events", path, NOW)
    assert caught.value.problems == [f"{path}:3: note: 1,048,576 characters, more than the limit of 65,536"]
    assert counts(practice) == before
    assert csv.field_size_limit() < FIELD_LIMIT  # the process-wide csv limit is put back


def test_skip_invalid_imports_the_rows_around_a_huge_note(practice, run_cli, tmp_path):
    path = write(tmp_path, "events.csv", events_with_note("x" * 1_048_576))
    result = run_cli("import", "events", str(path), "--skip-invalid", "--now", NOW_ARG)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"skipped: {path}:3: note: 1,048,576 characters, more than the limit of 65,536\n"
    assert result.stdout.startswith("events: 2 created")


def test_a_note_at_the_limit_is_kept_whole(practice, settings, tmp_path):
    load(practice, settings, tmp_path, "events", events_with_note("y" * TEXT_LIMIT))
    assert sorted(len(e.note) for e in rows(practice, events) if e.kind == "session_attended") == [
        4,
        4,
        TEXT_LIMIT,
    ]


def test_a_cell_beyond_what_the_reader_takes_is_one_line_naming_the_row(practice, run_cli, tmp_path):
    path = write(tmp_path, "events.csv", events_with_note("z" * (FIELD_LIMIT + 1)))
    result = run_cli("import", "events", str(path), "--skip-invalid", "--now", NOW_ARG)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {path}:3: a cell is longer than {FIELD_LIMIT:,} characters (a note may have {TEXT_LIMIT:,})\n"
    )


# --- 12: a repeated row is named by its lines -----------------------------------------------------

DUPLICATES = {
    "events": (
        "client_ref,kind,occurred_at\nC-1,reassessment,2026-11-01T10:00\nC-2,reassessment,2026-11-01T10:00\n"
        "C-1,reassessment,2026-11-01T10:00\n",
        "duplicate of line 2 (same client, kind and time)",
    ),
    "measures": (
        "client_ref,instrument,score,measured_at\nC-1,LEFS,40,2026-11-01\nC-2,LEFS,41,2026-11-01\n"
        "C-1,lefs,41,2026-11-01\n",
        "duplicate of line 2 (same client, instrument and day)",
    ),
    "physicians": (
        "email,name\nnew@clinic.example.org,New\nother@clinic.example.org,Other\nNEW@clinic.example.org,New\n",
        "duplicate of line 2 (same email)",
    ),
    "clients": (
        ACTIVE_CLIENTS + "C-1,Jordan,Davis,a.smith@clinic.example.org,,,\n",
        "duplicate of line 2 (same ref)",
    ),
}


@pytest.mark.parametrize(
    ("kind", "text", "message"), [(k, *v) for k, v in DUPLICATES.items()], ids=list(DUPLICATES)
)
def test_a_duplicated_row_is_reported_in_the_users_terms(practice, settings, tmp_path, kind, text, message):
    path = write(tmp_path, f"{kind}.csv", text)
    with pytest.raises(ImportFileError) as caught:
        import_file(practice, settings, kind, path, NOW)
    assert caught.value.problems == [f"{path}:4: {message}"]


# --- 12: a file saved with the wrong separator -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("email;name\nnew@clinic.example.org;New Doctor\n", "';'"),
        ("email\tname\nnew@clinic.example.org\tNew Doctor\n", "tabs"),
    ],
    ids=["semicolon", "tab"],
)
def test_a_file_separated_by_semicolons_or_tabs_gets_a_hint(engine, run_cli, tmp_path, text, named):
    path = write(tmp_path, "physicians.csv", text)
    result = run_cli("import", "physicians", str(path), "--now", NOW_ARG)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {path}: the header has no comma; is it separated by {named}? Save it as comma-separated CSV\n"
    )
    assert counts(engine)["physicians"] == 0


def test_a_one_column_header_without_a_separator_is_still_a_missing_column(engine, settings, tmp_path):
    path = write(tmp_path, "physicians.csv", "email\nnew@clinic.example.org\n")
    with pytest.raises(OutreachError, match="missing required column"):
        import_file(engine, settings, "physicians", path, NOW)
