"""CSV the project writes opens in a spreadsheet as text, never as a formula (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from outreach.csvsafe import safe_cell, safe_row
from outreach.demo import write_csvs
from outreach.errors import ImportFileError
from outreach.importer import import_file
from outreach.models import IMPORT_KINDS
from outreach.settings import address_problem
from tests.conftest import NOW, ROOT
from tests.factories import queue_message
from tests.test_import import write

DANGEROUS = ['=HYPERLINK("http://x.example","y")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.parametrize("text", DANGEROUS)
def test_a_cell_that_starts_a_formula_is_prefixed_with_a_quote(text):
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["Progress report", "C-1001", "a=b", "", 3, -4, 2.5, None])
def test_other_cells_are_left_as_they_are(value):
    assert safe_cell(value) == value


def test_the_log_as_csv_quotes_what_a_spreadsheet_would_run(engine, run_cli):
    queue_message(engine, subject='=HYPERLINK("http://evil.example","Report")', recipient_name="Dr X")
    queue_message(engine, subject="-1+1", last_error="@SUM(1)")
    queue_message(engine, subject="Progress report: J.D. (ref C-1)", priority=-1)
    result = run_cli("log", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    cells = {row["subject"]: row for row in csv.DictReader(io.StringIO(result.stdout))}
    assert set(cells) == {
        '\'=HYPERLINK("http://evil.example","Report")',
        "'-1+1",
        "Progress report: J.D. (ref C-1)",
    }
    assert cells["'-1+1"]["last_error"] == "'@SUM(1)"
    assert cells["Progress report: J.D. (ref C-1)"]["priority"] == "-1"  # a number stays a number


def test_the_demo_csv_files_quote_what_a_spreadsheet_would_run(tmp_path: Path):
    rows = {kind: [] for kind in IMPORT_KINDS}
    rows["events"] = [{"client_ref": "C-1", "kind": "reassessment", "occurred_at": "", "note": "=1+2"}]
    paths = write_csvs(tmp_path, rows)
    with paths["events"].open(newline="", encoding="utf-8") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["note"] == "'=1+2"


def test_every_csv_writer_in_the_package_goes_through_csvsafe():
    writers = [
        path
        for path in (ROOT / "outreach").rglob("*.py")
        if "csv.writer" in path.read_text() or "DictWriter" in path.read_text()
    ]
    assert writers, "no CSV writer found: this test looks in the wrong place"
    for path in writers:
        text = path.read_text()
        assert "safe_cell" in text or "safe_row" in text, f"{path} writes CSV without csvsafe"


def test_safe_row_makes_every_cell_safe():
    assert safe_row({"a": "=x", "b": "y", "c": 1}) == {"a": "'=x", "b": "y", "c": 1}


# --- and at the door: no address that a spreadsheet would run -------------------------------------


@pytest.mark.parametrize("address", ["=1+2@x.example", "+15550100@x.example", "-cmd@x.example"])
def test_an_address_that_starts_a_formula_is_refused(address):
    assert address_problem(address) == (
        f"{address!r} begins with {address[0]!r}, which a spreadsheet runs as a formula"
    )


@pytest.mark.parametrize(
    ("kind", "text", "column"),
    [
        ("physicians", "email,name\nok@x.example,Ok\n=1+2@x.example,Evil\n", "email"),
        (
            "clients",
            "ref,first_name,last_name,physician_email\nC-9,Ann,Lee,=1+2@x.example\n",
            "physician_email",
        ),
    ],
    ids=["physicians", "clients"],
)
def test_an_import_refuses_it_naming_the_row_and_column(engine, settings, tmp_path, kind, text, column):
    path = write(tmp_path, f"{kind}.csv", text)
    with pytest.raises(ImportFileError) as caught:
        import_file(engine, settings, kind, path, NOW)
    line = text.count("\n")
    assert caught.value.problems == [
        f"{path}:{line}: {column}: '=1+2@x.example' begins with '=', which a spreadsheet runs as a formula"
    ]
