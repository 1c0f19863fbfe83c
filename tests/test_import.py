"""CSV import (library and ``outreach import``) and ``outreach event add`` / ``measure add``."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from outreach import store
from outreach.errors import ImportFileError, OutreachError
from outreach.importer import import_file
from outreach.models import clients, events, measurements, physicians
from tests.conftest import NOW

NOW_ARG = "2026-11-25T10:00"  # NOW in the practice's time zone (America/New_York)
TABLES = (physicians, clients, events, measurements)

PHYSICIANS_CSV = """\
email,name,credentials,specialty,clinic,phone,fax,timezone
A.Smith@Clinic.Example.org,Anna Smith,MD,Orthopaedics,Riverside Clinic,555-0101,,America/Chicago
b.jones@clinic.example.org,Ben Jones,DO,Sports Medicine,Lakeside Clinic,,,
"""

CLIENTS_CSV = """\
ref,first_name,last_name,physician_email,referral_date,diagnosis,precautions,goals,consent_date,status
C-1,Jordan,Davis,a.smith@clinic.example.org,2026-10-01,Left ACL reconstruction,No pivoting,Run 5 km,2026-10-01,
C-2,Maria,Lopez,b.jones@clinic.example.org,2026-10-15,Low back pain,,Lift 10 kg,,
"""

EVENTS_CSV = """\
client_ref,kind,occurred_at,note
C-1,referral_received,2026-10-01T09:30,Referral by fax
C-1,session_attended,2026-10-05,
"""

MEASURES_CSV = """\
client_ref,instrument,score,measured_at
C-1,lefs,38,2026-10-05
C-1,NPRS,5.5,2026-10-05
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def counts(engine) -> dict[str, int]:
    with store.read(engine) as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar() for t in TABLES}


def rows(engine, table, order=None):
    with store.read(engine) as conn:
        return conn.execute(select(table).order_by(order if order is not None else table.c.id)).all()


def client(engine, ref: str):
    with store.read(engine) as conn:
        return conn.execute(select(clients).where(clients.c.ref == ref)).one()


def load(engine, settings, tmp_path, kind: str, text: str, **kwargs):
    return import_file(engine, settings, kind, write(tmp_path, f"{kind}.csv", text), NOW, **kwargs)


@pytest.fixture
def seeded(engine, settings, tmp_path):
    """Two physicians and two clients (C-1, C-2) on record."""
    load(engine, settings, tmp_path, "physicians", PHYSICIANS_CSV)
    load(engine, settings, tmp_path, "clients", CLIENTS_CSV)
    return engine


# --- the happy path ----------------------------------------------------------------------


def test_import_physicians(engine, settings, tmp_path):
    report = load(engine, settings, tmp_path, "physicians", PHYSICIANS_CSV)
    assert (report.created, report.updated, report.unchanged, report.skipped) == (2, 0, 0, [])
    smith, jones = rows(engine, physicians, physicians.c.email)
    assert smith.email == "a.smith@clinic.example.org"  # addresses are stored lower-case
    assert (smith.name, smith.credentials, smith.clinic, smith.timezone) == (
        "Anna Smith",
        "MD",
        "Riverside Clinic",
        "America/Chicago",
    )
    assert jones.timezone is None and jones.phone == ""


def test_import_clients(seeded):
    davis, lopez = rows(seeded, clients, clients.c.ref)
    smith = rows(seeded, physicians, physicians.c.email)[0]
    assert davis.physician_id == smith.id
    assert davis.referral_date == date(2026, 10, 1) and davis.consent_date == date(2026, 10, 1)
    assert (davis.first_name, davis.last_name, davis.diagnosis) == (
        "Jordan",
        "Davis",
        "Left ACL reconstruction",
    )
    assert davis.status == "referred"  # the default when the column is empty
    assert lopez.consent_date is None


def test_import_events(seeded, settings, tmp_path):
    report = load(seeded, settings, tmp_path, "events", EVENTS_CSV)
    assert (report.created, report.unchanged) == (2, 0)
    referral, session = rows(seeded, events, events.c.occurred_at)
    assert referral.kind == "referral_received" and referral.note == "Referral by fax"
    # Local time without a zone is the practice's (New York, UTC-4 in October).
    assert referral.occurred_at == datetime(2026, 10, 1, 13, 30, tzinfo=UTC)
    # A date alone is 09:00 local.
    assert session.occurred_at == datetime(2026, 10, 5, 13, 0, tzinfo=UTC)
    assert referral.client_id == session.client_id == client(seeded, "C-1").id


def test_import_measures(seeded, settings, tmp_path):
    report = load(seeded, settings, tmp_path, "measures", MEASURES_CSV)
    assert report.created == 2
    stored = {(m.instrument, m.score, m.measured_on) for m in rows(seeded, measurements)}
    assert stored == {("LEFS", 38.0, date(2026, 10, 5)), ("NPRS", 5.5, date(2026, 10, 5))}


def test_import_all_four_kinds_through_the_cli(engine, run_cli, tmp_path):
    expected = {
        "physicians": "physicians: 2 created, 0 updated, 0 already on record",
        "clients": "clients: 2 created, 0 updated, 0 already on record",
        "events": "events: 2 created, 0 updated, 0 already on record",
        "measures": "measures: 2 created, 0 updated, 0 already on record",
    }
    texts = {
        "physicians": PHYSICIANS_CSV,
        "clients": CLIENTS_CSV,
        "events": EVENTS_CSV,
        "measures": MEASURES_CSV,
    }
    for kind, summary in expected.items():
        path = write(tmp_path, f"{kind}.csv", texts[kind])
        result = run_cli("import", kind, str(path), "--now", NOW_ARG)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.strip() == summary
        assert result.stderr == ""
    assert counts(engine) == {"physicians": 2, "clients": 2, "events": 2, "measurements": 2}


# --- re-importing -------------------------------------------------------------------------


def test_reimport_updates_physicians_by_email(seeded, settings, tmp_path):
    changed = PHYSICIANS_CSV.replace("Riverside Clinic", "Riverside Orthopaedics")
    report = load(seeded, settings, tmp_path, "physicians", changed)
    assert (report.created, report.updated, report.unchanged) == (0, 1, 1)
    assert counts(seeded)["physicians"] == 2
    smith = rows(seeded, physicians, physicians.c.email)[0]
    assert smith.clinic == "Riverside Orthopaedics"


def test_reimport_updates_clients_by_ref(seeded, settings, tmp_path):
    changed = CLIENTS_CSV.replace("Low back pain", "Lumbar disc herniation L4-5")
    report = load(seeded, settings, tmp_path, "clients", changed)
    assert (report.created, report.updated, report.unchanged) == (0, 1, 1)
    assert counts(seeded)["clients"] == 2
    assert client(seeded, "C-2").diagnosis == "Lumbar disc herniation L4-5"


def test_reimport_of_events_and_measures_creates_no_duplicates(seeded, settings, tmp_path):
    load(seeded, settings, tmp_path, "events", EVENTS_CSV)
    load(seeded, settings, tmp_path, "measures", MEASURES_CSV)
    before = counts(seeded)
    again_events = load(seeded, settings, tmp_path, "events", EVENTS_CSV)
    again_measures = load(seeded, settings, tmp_path, "measures", MEASURES_CSV)
    assert (again_events.created, again_events.unchanged) == (0, 2)
    assert (again_measures.created, again_measures.unchanged) == (0, 2)
    assert counts(seeded) == before


def test_a_new_score_for_the_same_day_replaces_the_old_one(seeded, settings, tmp_path):
    load(seeded, settings, tmp_path, "measures", MEASURES_CSV)
    report = load(seeded, settings, tmp_path, "measures", MEASURES_CSV.replace(",38,", ",41,"))
    assert (report.updated, report.unchanged) == (1, 1)
    assert {m.score for m in rows(seeded, measurements) if m.instrument == "LEFS"} == {41.0}


# --- bad rows: nothing imported, every bad row reported with its line -------------------------

BAD_ROWS = {
    "unknown physician": (
        "clients",
        "ref,first_name,last_name,physician_email\n"
        "C-3,Ann,Lee,a.smith@clinic.example.org\n"
        "C-4,Bo,Ng,nobody@clinic.example.org\n",
        3,
        "physician_email: 'nobody@clinic.example.org' is not a known physician",
    ),
    "bad email": (
        "physicians",
        "email,name\nnew@clinic.example.org,New Doctor\nnot-an-email,Bad Doctor\n",
        3,
        "email: 'not-an-email' is not an email address",
    ),
    "non-ASCII email": (
        "physicians",
        "email,name\nnew@clinic.example.org,New Doctor\ndr.müller@klinik.example.de,Dr Müller\n",
        3,
        "email: 'dr.müller@klinik.example.de' is not a plain ASCII address",
    ),
    "bad date": (
        "clients",
        "ref,first_name,last_name,physician_email,referral_date\n"
        "C-3,Ann,Lee,a.smith@clinic.example.org,2026-13-01\n",
        2,
        "referral_date: '2026-13-01' is not a date",
    ),
    "bad date-time": (
        "events",
        "client_ref,kind,occurred_at\nC-1,reassessment,2026-11-01\nC-1,reassessment,last tuesday\n",
        3,
        "occurred_at: 'last tuesday' is not a date-time",
    ),
    "unknown event kind": (
        "events",
        "client_ref,kind,occurred_at\nC-1,reassessment,2026-11-01\nC-1,lunch,2026-11-02\n",
        3,
        "kind: 'lunch' is not a known event kind",
    ),
    "required value empty": (
        "clients",
        "ref,first_name,last_name,physician_email\nC-3,Ann,,a.smith@clinic.example.org\n",
        2,
        "last_name: required but empty",
    ),
    "LEFS above range": (
        "measures",
        "client_ref,instrument,score,measured_at\nC-1,LEFS,40,2026-11-01\nC-1,LEFS,95,2026-11-02\n",
        3,
        "score: 95 is outside the LEFS range (0 to 80)",
    ),
    "NPRS below range": (
        "measures",
        "client_ref,instrument,score,measured_at\nC-1,NPRS,-1,2026-11-01\n",
        2,
        "score: -1 is outside the NPRS range (0 to 10)",
    ),
    "unknown instrument": (
        "measures",
        "client_ref,instrument,score,measured_at\nC-1,FOO,3,2026-11-01\n",
        2,
        "instrument: 'FOO' is not a known outcome measure",
    ),
    "event for unknown client": (
        "events",
        "client_ref,kind,occurred_at\nC-1,reassessment,2026-11-01\nC-404,reassessment,2026-11-01\n",
        3,
        "client_ref: no client with ref 'C-404'",
    ),
    "line break in a name": (
        "physicians",
        'email,name\nnew@clinic.example.org,New Doctor\nodd@clinic.example.org,"Anna\nSmith"\n',
        3,
        "name: must be a single line",
    ),
    "line break in a client name": (
        "clients",
        'ref,first_name,last_name,physician_email\nC-3,"Ann\nMarie",Lee,a.smith@clinic.example.org\n',
        2,
        "first_name: must be a single line",
    ),
    "event in the future": (
        "events",
        "client_ref,kind,occurred_at\nC-1,reassessment,2026-12-25T10:00\n",
        2,
        "occurred_at: 2026-12-25 10:00:00-05:00 is in the future",
    ),
    "same row twice": (
        "measures",
        "client_ref,instrument,score,measured_at\nC-1,LEFS,40,2026-11-01\nC-1,LEFS,41,2026-11-01\n",
        3,
        "duplicate of line 2 (same client, instrument and day)",
    ),
}


@pytest.mark.parametrize(("kind", "text", "line", "message"), BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_a_bad_row_imports_nothing(seeded, settings, tmp_path, kind, text, line, message):
    path = write(tmp_path, f"bad-{kind}.csv", text)
    before = counts(seeded)
    with pytest.raises(ImportFileError) as caught:
        import_file(seeded, settings, kind, path, NOW)
    assert len(caught.value.problems) == 1
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}:{line}: "), problem
    assert message in problem
    assert counts(seeded) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("email\nnew@clinic.example.org\n", "missing required column(s): name"),
        ("email,name,colour\nnew@clinic.example.org,New Doctor,blue\n", "unknown column(s): colour"),
    ],
    ids=["missing column", "unknown column"],
)
def test_a_bad_header_is_one_error_on_line_1(engine, settings, tmp_path, text, message):
    path = write(tmp_path, "physicians.csv", text)
    with pytest.raises(OutreachError) as caught:
        import_file(engine, settings, "physicians", path, NOW)
    assert str(caught.value).startswith(f"{path}:1: ")
    assert message in str(caught.value)
    assert counts(engine)["physicians"] == 0


MIXED_CLIENTS = """\
ref,first_name,last_name,physician_email,referral_date
C-3,Ann,Lee,a.smith@clinic.example.org,2026-11-01
C-4,Bo,Ng,nobody@clinic.example.org,2026-11-01
C-5,Cy,Ode,b.jones@clinic.example.org,2026-11-01
C-6,Di,Park,b.jones@clinic.example.org,not-a-date
C-7,Ed,Quinn,a.smith@clinic.example.org,
"""


def test_two_bad_rows_without_skip_invalid(seeded, run_cli, tmp_path):
    path = write(tmp_path, "clients.csv", MIXED_CLIENTS)
    before = counts(seeded)
    result = run_cli("import", "clients", str(path), "--now", NOW_ARG)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: {path}:3: physician_email:")
    assert lines[1].startswith(f"error: {path}:5: referral_date:")
    assert "nothing imported (2 problem(s)" in lines[2]
    assert len(lines) == 3
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert counts(seeded) == before


def test_two_bad_rows_with_skip_invalid(seeded, run_cli, tmp_path):
    path = write(tmp_path, "clients.csv", MIXED_CLIENTS)
    result = run_cli("import", "clients", str(path), "--skip-invalid", "--now", NOW_ARG)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == (
        "clients: 3 created, 0 updated, 0 already on record, 2 invalid row(s) skipped"
    )
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines] == [f"{path}:3", f"{path}:5"]
    assert all(line.startswith("skipped: ") for line in lines)
    with store.read(seeded) as conn:
        refs = set(conn.execute(select(clients.c.ref)).scalars())
    assert refs == {"C-1", "C-2", "C-3", "C-5", "C-7"}


def test_line_numbers_count_the_lines_of_a_multi_line_note(seeded, settings, tmp_path):
    text = (
        "client_ref,kind,occurred_at,note\n"  # 1
        'C-1,reassessment,2026-11-01T10:00,"Knee flexion 0-120.\n'  # 2
        'Full weight bearing."\n'  # 3
        "C-1,lunch,2026-11-02T10:00,\n"  # 4
        'C-1,reassessment,2026-11-03T10:00,"One\nTwo\nThree"\n'  # 5-7
        "C-404,reassessment,2026-11-04T10:00,\n"  # 8
    )
    path = write(tmp_path, "events.csv", text)
    with pytest.raises(ImportFileError) as caught:
        import_file(seeded, settings, "events", path, NOW)
    assert [p.split(": ")[0] for p in caught.value.problems] == [f"{path}:4", f"{path}:8"]


def test_a_multi_line_note_is_kept(seeded, settings, tmp_path):
    text = 'client_ref,kind,occurred_at,note\nC-1,reassessment,2026-11-01T10:00,"Knee flexion 0-120.\nFWB."\n'
    load(seeded, settings, tmp_path, "events", text)
    [event] = rows(seeded, events)
    assert event.note == "Knee flexion 0-120.\nFWB."


def test_line_numbers_count_blank_lines(engine, settings, tmp_path):
    path = write(tmp_path, "physicians.csv", "email,name\nok@clinic.example.org,Ok\n\nnot-an-email,Bad\n")
    with pytest.raises(ImportFileError) as caught:
        import_file(engine, settings, "physicians", path, NOW)
    assert caught.value.problems[0].startswith(f"{path}:4: ")


@pytest.mark.parametrize("score", ["inf", "1e999"])
def test_an_infinite_score_is_rejected(seeded, settings, tmp_path, score):
    text = f"client_ref,instrument,score,measured_at\nC-1,TUG,{score},2026-11-01\n"
    with pytest.raises(ImportFileError) as caught:
        load(seeded, settings, tmp_path, "measures", text)
    [problem] = caught.value.problems
    assert problem.startswith(f"{tmp_path / 'measures.csv'}:2: score: ")
    assert counts(seeded)["measurements"] == 0


# --- files that are not usable at all -----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"email,name,fav_colour\nx@clinic.example.org,X,blue\n", ":1: unknown column(s): fav_colour"),
        ("email,name\nj@clinic.example.org,José Núñez\n".encode("latin-1"), "not UTF-8 text"),
    ],
    ids=["empty", "unknown column", "not UTF-8"],
)
def test_an_unusable_file_is_one_clear_error(engine, run_cli, tmp_path, content, message):
    path = tmp_path / "physicians.csv"
    path.write_bytes(content)
    result = run_cli("import", "physicians", str(path), "--now", NOW_ARG)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}") and message in lines[0]
    assert "Traceback" not in result.output
    assert counts(engine)["physicians"] == 0


def test_a_missing_file_is_one_clear_error(engine, run_cli, tmp_path):
    result = run_cli("import", "physicians", str(tmp_path / "nope.csv"), "--now", NOW_ARG)
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "cannot open" in result.stderr


def test_import_before_init_says_run_init(run_cli, tmp_path):
    path = write(tmp_path, "physicians.csv", PHYSICIANS_CSV)
    result = run_cli("import", "physicians", str(path), "--now", NOW_ARG)
    assert result.exit_code == 1
    assert "outreach init" in result.stderr and "Traceback" not in result.output


# --- event add / measure add ---------------------------------------------------------------


def test_event_add(seeded, run_cli):
    result = run_cli(
        "event",
        "add",
        "C-1",
        "reassessment",
        "--at",
        "2026-11-20T10:00",
        "--note",
        "12-week check",
        "--now",
        NOW_ARG,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("recorded reassessment for C-1 at 2026-11-20T10:00:00-05:00")
    [event] = rows(seeded, events)
    assert (event.kind, event.note, event.occurred_at) == (
        "reassessment",
        "12-week check",
        datetime(2026, 11, 20, 15, 0, tzinfo=UTC),
    )
    again = run_cli("event", "add", "C-1", "reassessment", "--at", "2026-11-20T10:00", "--now", NOW_ARG)
    assert again.exit_code == 0 and "already recorded" in again.stdout
    assert counts(seeded)["events"] == 1


def test_event_add_defaults_to_now(seeded, run_cli):
    result = run_cli("event", "add", "C-1", "session_attended", "--now", NOW_ARG)
    assert result.exit_code == 0, result.stderr
    assert rows(seeded, events)[0].occurred_at == NOW


def test_measure_add(seeded, run_cli):
    result = run_cli("measure", "add", "C-1", "lefs", "42", "--at", "2026-11-20", "--now", NOW_ARG)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "LEFS 42 on 2026-11-20 for C-1: created"
    [m] = rows(seeded, measurements)
    assert (m.instrument, m.score, m.measured_on) == ("LEFS", 42.0, date(2026, 11, 20))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("event", "add", "C-404", "reassessment"), "error: no client with ref 'C-404'"),
        (("event", "add", "C-1", "lunch"), "error: kind: 'lunch' is not a known event kind"),
        (("event", "add", "C-1", "reassessment", "--at", "soon"), "error: --at: 'soon' is not a date-time"),
        (("event", "add", "C-1", "reassessment", "--at", "2027-01-01T09:00"), "is in the future"),
        (("measure", "add", "C-404", "LEFS", "40"), "error: no client with ref 'C-404'"),
        (("measure", "add", "C-1", "LEFS", "95"), "error: score: 95 is outside the LEFS range (0 to 80)"),
        (
            ("measure", "add", "--", "C-1", "NPRS", "-1"),
            "error: score: -1 is outside the NPRS range (0 to 10)",
        ),
        (("measure", "add", "C-1", "FOO", "3"), "error: instrument: 'FOO' is not a known outcome measure"),
        (("measure", "add", "C-1", "LEFS", "lots"), "error: score: 'lots' is not a number"),
    ],
    ids=[
        "event unknown client",
        "event unknown kind",
        "event bad --at",
        "event in future",
        "measure unknown client",
        "measure above range",
        "measure below range",
        "measure unknown instrument",
        "measure not a number",
    ],
)
def test_event_and_measure_add_errors(seeded, run_cli, args, message):
    before = counts(seeded)
    result = run_cli(*args[:2], "--now", NOW_ARG, *args[2:])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert counts(seeded) == before


# --- milestones move the client's status ---------------------------------------------------


def test_initial_assessment_then_discharge_moves_the_status(seeded, run_cli):
    assert client(seeded, "C-1").status == "referred"
    run_cli("event", "add", "C-1", "initial_assessment", "--at", "2026-11-02T10:00", "--now", NOW_ARG)
    assert client(seeded, "C-1").status == "active"
    run_cli("event", "add", "C-1", "discharged", "--at", "2026-11-24T10:00", "--now", NOW_ARG)
    assert client(seeded, "C-1").status == "discharged"
    assert client(seeded, "C-2").status == "referred"  # only the client named


def test_imported_milestones_move_the_status(seeded, settings, tmp_path):
    text = (
        "client_ref,kind,occurred_at\n"
        "C-1,initial_assessment,2026-10-03T10:00\n"
        "C-2,initial_assessment,2026-10-16T10:00\n"
        "C-2,discharged,2026-11-20T10:00\n"
    )
    load(seeded, settings, tmp_path, "events", text)
    assert client(seeded, "C-1").status == "active"
    assert client(seeded, "C-2").status == "discharged"


def test_a_late_initial_assessment_does_not_reopen_a_discharged_client(seeded, run_cli):
    run_cli("event", "add", "C-1", "discharged", "--at", "2026-11-20T10:00", "--now", NOW_ARG)
    run_cli("event", "add", "C-1", "initial_assessment", "--at", "2026-11-21T10:00", "--now", NOW_ARG)
    assert client(seeded, "C-1").status == "discharged"
