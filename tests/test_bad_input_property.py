"""Bad input never crashes: random and malformed CSV files and rule files (hypothesis).

Whatever a spreadsheet or a text editor produces, the library raises only
``OutreachError`` (one line per problem) and a failed import leaves every
table exactly as it was. A few examples go through the CLI as well: exit 1,
one ``error:`` line per problem, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from outreach import store
from outreach.errors import ImportFileError, OutreachError
from outreach.importer import SPECS, import_file
from outreach.models import IMPORT_KINDS, metadata
from outreach.rules import check_rules
from tests.conftest import NOW, ROOT

EXAMPLES = hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

BASE = {
    "physicians": "email,name,credentials\nr.osei@ortho.example.org,Ruth Osei,MD\nj.chen@sports.example.org,James Chen,DO\n",
    "clients": (
        "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n"
        "C-1,Jamie,Doyle,r.osei@ortho.example.org,2026-10-01,Right ACL reconstruction,2026-10-01,active\n"
        "C-2,Sam,Ruiz,j.chen@sports.example.org,2026-11-01,Low back pain,,referred\n"
    ),
}

# Cells that are nearly right, plainly wrong, or hostile.
PLAUSIBLE = st.sampled_from(
    [
        "",
        " ",
        "C-1",
        "C-2",
        "C-404",
        "r.osei@ortho.example.org",
        "new.doc@clinic.example.org",
        "not-an-email",
        "a@b@c.org",
        "dr.müller@klinik.example.de",
        "2026-11-20",
        "2026-02-30",
        "0001-01-01",
        "9999-12-31",
        "2026-11-20T09:30",
        "2026-11-20T09:30+14:00",
        "0001-01-01T00:00+05:00",
        "9999-12-31T23:59-05:00",
        "2026-11-20T25:61",
        "LEFS",
        "lefs",
        "ODI",
        "NPRS",
        "XYZ",
        "55",
        "-1",
        "1e309",
        "nan",
        "inf",
        "80.5",
        "initial_assessment",
        "adverse_event",
        "Discharged",
        "exploded",
        "active",
        "on_hold",
        "America/New_York",
        "Mars/Olympus",
        "Mon-Fri 08:00-17:00",
        "Sun-Sat 25:00-26:00",
        "3",
        "0",
        "101",
        "MD",
        "x" * 400,
        "line\nbreak",
        "nul\x00byte",
        '"quoted"',
        "=cmd|' /C calc'!A0",
        "; ; ;",
        "\ufeffbom",
        "😀",
    ]
)
CELL = st.one_of(PLAUSIBLE, st.text(max_size=30))


TEXT = st.one_of(
    st.sampled_from(
        ["Ruth Osei", "O'Brien-Smith", "Zoë", "x" * 400, "nul\x00byte", "line\nbreak", "  padded  "]
    ),
    st.text(max_size=40),
)
DATES = st.one_of(st.dates().map(str), st.sampled_from(["2026-11-20", "2026-02-30", "11/20/2026", ""]))
TIMES = st.one_of(
    st.datetimes().map(lambda d: d.isoformat(timespec="minutes")),
    st.sampled_from(["2026-11-20T09:30", "2026-11-20T09:30+14:00", "0001-01-01T00:00+05:00", "2026-11-20"]),
)
# What a column usually holds; a cell is sometimes replaced by anything at all.
GOOD = {
    "email": st.sampled_from(["r.osei@ortho.example.org", "new.doc@clinic.example.org", "x@y.example.org"]),
    "physician_email": st.sampled_from(["r.osei@ortho.example.org", "j.chen@sports.example.org"]),
    "ref": st.sampled_from(["C-1", "C-2", "C-3", "C-" + "9" * 80]),
    "client_ref": st.sampled_from(["C-1", "C-2"]),
    "kind": st.sampled_from(["initial_assessment", "reassessment", "discharged", "adverse_event"]),
    "instrument": st.sampled_from(["LEFS", "ODI", "NPRS", "TUG", "PSFS"]),
    "score": st.one_of(st.integers(-5, 120).map(str), st.floats(allow_nan=True).map(str)),
    "status": st.sampled_from(["referred", "active", "on_hold", "discharged", "ACTIVE"]),
    "timezone": st.sampled_from(["America/New_York", "Europe/Berlin", "", "Mars/Olympus"]),
    "send_window": st.sampled_from(["Mon-Fri 08:00-17:00", "", "Sat 09:00-12:00"]),
    "weekly_cap": st.sampled_from(["", "1", "3", "100"]),
    "occurred_at": TIMES,
}
for _date in ("referral_date", "consent_date", "consent_expires", "measured_at", "next_reassessment"):
    GOOD[_date] = DATES


@st.composite
def csv_file(draw, kind: str) -> bytes:
    """A CSV for ``kind``: right or wrong header, rows of likely and hostile cells."""
    shape = draw(st.sampled_from(["rows", "rows", "rows", "rows", "text", "bytes"]))
    if shape == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    if shape == "bytes":
        return draw(st.binary(max_size=300))
    columns = list(SPECS[kind].columns)
    header = draw(
        st.one_of(
            st.just(columns),
            st.just(columns),
            st.permutations(columns),
            st.lists(st.sampled_from([*columns, "Email ", "unknown", ""]), min_size=1, max_size=12),
        )
    )
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        row = [draw(GOOD.get(column.strip().lower(), TEXT)) for column in header]
        for _ in range(draw(st.integers(0, 2))):  # spoil a cell or two
            if row:
                row[draw(st.integers(0, len(row) - 1))] = draw(CELL)
        rows.append(row + draw(st.lists(CELL, max_size=1)))
    quote = draw(st.booleans())
    lines = [",".join(_cell(c, quote) for c in header)] + [",".join(_cell(c, quote) for c in r) for r in rows]
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return ending.join(lines).encode("utf-8", "surrogatepass")


def _cell(value: str, quote: bool) -> str:
    return '"' + value.replace('"', '""') + '"' if quote else value


def dump(engine) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""
    with store.read(engine) as conn:
        return {
            table.name: sorted(conn.execute(select(table)).all(), key=repr)
            for table in metadata.sorted_tables
        }


def reset(engine, settings, folder: Path) -> None:
    """Back to two physicians and two clients, cheaply (no new database per example)."""
    with store.write(engine) as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(delete(table))
    for kind, text in BASE.items():
        path = folder / f"base-{kind}.csv"
        path.write_text(text, encoding="utf-8")
        import_file(engine, settings, kind, path, NOW)


@pytest.mark.parametrize("kind", IMPORT_KINDS)
def test_a_random_csv_imports_or_fails_cleanly_and_a_failure_changes_nothing(
    kind, engine, settings, tmp_path
):
    path = tmp_path / f"{kind}.csv"
    known: list[dict] = []  # the base state, when the last example is known to have left it so

    @EXAMPLES
    @given(content=csv_file(kind), skip_invalid=st.booleans())
    def check(content: bytes, skip_invalid: bool):
        if known:  # a failed import just checked to have changed nothing: no reset needed
            before = known.pop()
        else:
            reset(engine, settings, tmp_path)
            before = dump(engine)
        path.write_bytes(content)
        try:
            import_file(engine, settings, kind, path, NOW, skip_invalid)
        except OutreachError as exc:
            assert str(exc).strip(), "an error with nothing to say"
            assert dump(engine) == before, "a failed import changed the database"
            known.append(before)

    check()


# --- rule files -------------------------------------------------------------------------

RULE_KEYS = ["description", "when", "template", "to", "delay", "max_age", "priority", "consent_required"]
RULE_KEYS += ["kind", "enabled", "unknown_key"]
WHEN_KEYS = ["event", "every", "since", "scope", "consecutive", "bogus"]
VALUES = st.recursive(
    st.one_of(
        st.sampled_from(
            ["30d", "2w", "12h", "15m", "0d", "99999999999d", "1" * 5000 + "d", "quarter", "month", "urgent"]
        ),
        st.sampled_from(
            ["initial_assessment", "session_missed", "discharged", "progress_report", "physician"]
        ),
        st.text(max_size=20),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
        st.booleans(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(WHEN_KEYS), inner, max_size=4)
    ),
    max_leaves=8,
)


def toml_value(value) -> str:
    """A tiny TOML writer for what ``VALUES`` makes (json strings are TOML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if not isinstance(value, float) or value == value else "nan"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


@st.composite
def rule_file(draw) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=300))
    sections = []
    # Line breaks in a name are pinned separately below (a known problem in rules.py).
    printable = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=10)
    names = st.one_of(st.sampled_from(["progress_report", "alert", "Bad-Name", "x y", "Zoë"]), printable)
    for name in draw(st.lists(names, max_size=3)):
        body = draw(st.dictionaries(st.sampled_from(RULE_KEYS), VALUES, max_size=6))
        if draw(st.booleans()):
            body.setdefault("template", "progress_report")
        lines = [f"[rules.{json.dumps(name)}]"] + [f"{k} = {toml_value(v)}" for k, v in body.items()]
        sections.append("\n".join(lines))
    if draw(st.integers(0, 5)) == 0:
        sections.append(draw(st.sampled_from(["rules = 3", "[other]\nx = 1", "[[rules]]\nx = 1"])))
    return "\n\n".join(sections) + "\n"


@EXAMPLES
@given(text=rule_file())
def test_a_random_rule_file_gives_problems_never_a_crash(tmp_path_factory, text):
    campaigns = tmp_path_factory.mktemp("campaigns")
    (campaigns / "random.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    rules, problems = check_rules(campaigns, ROOT / "outreach" / "templates" / "email")
    for problem in problems:
        assert problem.strip() and len(problem.splitlines()) == 1, problem
    if not problems:
        assert all(rule.template for rule in rules)


@pytest.mark.parametrize("name", ["\\n", "a\\u2028b", "tab\\there"])
def test_a_rule_name_with_a_line_break_is_still_one_problem_per_line(tmp_path, name):
    (tmp_path / "names.toml").write_text(f'[rules."{name}"]\nwhen = {{ event = "x" }}\n', encoding="utf-8")
    _, problems = check_rules(tmp_path, ROOT / "outreach" / "templates" / "email")
    assert problems and all(len(p.splitlines()) == 1 for p in problems), problems
    assert all("\t" not in p for p in problems)


@EXAMPLES
@given(data=st.binary(max_size=200))
def test_a_rule_file_that_is_not_text_is_one_problem(tmp_path_factory, data):
    campaigns = tmp_path_factory.mktemp("campaigns")
    (campaigns / "binary.toml").write_bytes(data)
    _, problems = check_rules(campaigns, ROOT / "outreach" / "templates" / "email")
    assert all(len(p.splitlines()) == 1 for p in problems)


# --- through the command line -------------------------------------------------------------

CLI_IMPORTS = [
    ("physicians", "email,name\nnot-an-email,Dr X\nok@clinic.example.org,\n"),
    ("clients", "ref,first_name,last_name,physician_email\nC-9,A,B,nobody@clinic.example.org\n"),
    ("events", "client_ref,kind,occurred_at\nC-404,exploded,yesterday\nC-1,reassessment,2026-11-20T25:61\n"),
    ("measures", "client_ref,instrument,score,measured_at\nC-1,LEFS,999,2026-11-20\nC-1,XYZ,1,soon\n"),
    ("measures", "client_ref,instrument\n"),
    ("events", '"unclosed,quote\n'),
    ("physicians", ""),
]


@pytest.mark.parametrize(("kind", "text"), CLI_IMPORTS)
def test_the_cli_reports_a_bad_csv_one_line_per_problem(kind, text, run_cli, engine, settings, tmp_path):
    reset(engine, settings, tmp_path)
    before = dump(engine)
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    result = run_cli("import", kind, str(path), "--now", NOW.isoformat())
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert dump(engine) == before


def test_the_cli_reports_bad_rules_one_line_per_problem(run_cli, engine, settings, tmp_path):
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "bad.toml").write_text(
        '[rules.one]\nwhen = { every = "soon" }\ntemplate = "nope"\ncolour = "red"\n'
        '[rules.two]\nwhen = { event = "exploded", consecutive = 99 }\npriority = "high"\n',
        encoding="utf-8",
    )
    (campaigns / "broken.toml").write_text("[rules.three\nwhen = ", encoding="utf-8")
    cfg = settings.with_(campaigns_dir=campaigns)
    for command in (["check"], ["plan", "--now", NOW.isoformat()]):
        result = run_cli(*command, env_settings=cfg)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output + result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) >= 6, result.stderr
        assert any("bad.toml" in line and "colour" in line for line in lines)
        assert any("broken.toml" in line for line in lines)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("events", "client_ref,kind,occurred_at\nC-1,reassessment,0001-01-01T00:00+05:00\n"),
        ("physicians", "email,name\nlong.name@clinic.example.org," + "N" * 300 + "\n"),
        (
            "clients",
            "ref,first_name,last_name,physician_email,diagnosis\nC-5,A,B,r.osei@ortho.example.org,a\x00b\n",
        ),
        ("events", "client_ref,kind,occurred_at,note\nC-1,reassessment,2026-11-20T09:30,a\x00b\n"),
    ],
)
def test_a_value_the_database_cannot_hold_is_reported_with_its_line(kind, text, engine, settings, tmp_path):
    """Found by the property above on PostgreSQL: the file and line, not a bare database error."""
    reset(engine, settings, tmp_path)
    path = tmp_path / "edge.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ImportFileError) as caught:
        import_file(engine, settings, kind, path, NOW)
    assert caught.value.problems[0].startswith(f"{path}:2: ")
