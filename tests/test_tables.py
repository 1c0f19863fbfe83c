"""One table formatter for ``outreach log``, ``loops``, ``physicians`` and the benchmark.

The expected texts are the outputs of the four hand-written aligners this
formatter replaced, byte for byte: people and scripts read these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from outreach.loops import Loop, format_loops, format_physicians
from outreach.review import format_table as log_table
from outreach.tables import format_table

NEW_YORK = ZoneInfo("America/New_York")
AT = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


def test_columns_are_as_wide_as_their_widest_cell_two_spaces_apart():
    text = format_table(("ID", "STATUS", "NOTE"), [("7", "pending", "due"), ("123", "sent", "")])
    assert text.splitlines() == [
        "ID   STATUS   NOTE",
        "7    pending  due",
        "123  sent",  # an empty last cell leaves no trailing spaces
    ]


def test_the_last_column_is_not_padded_so_a_long_note_widens_nothing():
    text = format_table(("A", "B"), [("x", "a very long note at the end"), ("yy", "short")])
    assert text == "A   B\nx   a very long note at the end\nyy  short"


def test_a_header_wider_than_every_cell_sets_the_width_and_no_rows_is_the_header_alone():
    assert format_table(("CLIENT", "X"), [("C1", "y")]) == "CLIENT  X\nC1      y"
    assert format_table(("CLIENT", "X"), []) == "CLIENT  X"


def test_outreach_log_table_is_unchanged():
    row = {
        "id": 5,
        "created_at": AT,
        "status": "sent",
        "rule": "progress_report",
        "to": "a@clinic.example.org",
        "subject": "Progress report: J.D. (ref C-1)",
        "attempts": 1,
        "last_error": None,
        "sent_at": AT,
        "digest_id": 9,
    }
    failed = {
        **row,
        "id": 12,
        "status": "failed",
        "sent_at": None,
        "digest_id": None,
        "last_error": "550  no",
    }
    assert log_table([failed, row], NEW_YORK) == (
        "ID  QUEUED            STATUS  RULE             TO                    "
        "SUBJECT                          TRIES  NOTE\n"
        "12  2026-11-25 10:00  failed  progress_report  a@clinic.example.org  "
        "Progress report: J.D. (ref C-1)  1      550 no\n"
        "5   2026-11-25 10:00  sent    progress_report  a@clinic.example.org  "
        "Progress report: J.D. (ref C-1)  1      in digest 9, sent 2026-11-25 10:00"
    )


def test_outreach_loops_table_is_unchanged():
    loops = [
        Loop(
            "C-1008",
            "p.nair@nf.example.org",
            "progress report",
            "blocked",
            None,
            None,
            "no consent on record",
        ),
        Loop("C-1", "j@x.example.org", "referral acknowledged", "done", AT, AT, "sent 2026-11-25 10:00"),
    ]
    assert format_loops(loops, "table") == (
        "STATE    CLIENT  PHYSICIAN              COMMUNICATION          DETAIL\n"
        "blocked  C-1008  p.nair@nf.example.org  progress report        no consent on record\n"
        "done     C-1     j@x.example.org        referral acknowledged  sent 2026-11-25 10:00"
    )
    assert format_loops([], "table") == "(no open referrals)"


def test_outreach_physicians_table_is_unchanged():
    rows = [
        {
            "physician": "Maria Alvarez",
            "email": "m@r.example.org",
            "referrals_90d": 3,
            "referrals_total": 12,
            "conversion_pct": 75,
            "median_days_to_first_report": 2.5,
            "emails_sent": 40,
            "last_contact": "2026-11-25 10:00",
            "undeliverable": None,
        },
        {
            "physician": "Priya Nair",
            "email": "p@n.example.org",
            "referrals_90d": 0,
            "referrals_total": 0,
            "conversion_pct": None,
            "median_days_to_first_report": None,
            "emails_sent": 0,
            "last_contact": None,
            "undeliverable": "since 2026-11-25: bounced: 550 5.1.1",
        },
    ]
    assert format_physicians(rows, "table") == (
        "PHYSICIAN      EMAIL            REF 90D  REF ALL  CONVERSION  DAYS TO 1ST REPORT  EMAILS  LAST CONTACT      ADDRESS\n"
        "Maria Alvarez  m@r.example.org  3        12       75 %        2.5                 40      2026-11-25 10:00\n"
        "Priya Nair     p@n.example.org  0        0        -           -                   0       never             "
        "undeliverable since 2026-11-25: bounced: 550 5.1.1"
    )
    assert format_physicians([], "table") == "(no physicians)"


def test_the_benchmark_table_is_unchanged():
    from benchmarks.bench import SCALES, Figure  # here: the bench loads the whole sending side
    from benchmarks.bench import format_table as bench_table

    figures = {
        "a": Figure("plan, steady state (one tick)", 0.123, "s", "< 1 s", True),
        "b": Figure("plan + render (200 urgent due)", 12.5, "s", "< 20 s", False),
        "c": Figure("idle CPU", 0.4, "%", None, None),
    }
    assert bench_table(figures, SCALES["small"]) == (
        "outreach bench, scale small (1,000 clients)\n"
        "figure                          value    target  met?\n"
        "plan, steady state (one tick)   0.123 s  < 1 s   yes\n"
        "plan + render (200 urgent due)  12.5 s   < 20 s  NO\n"
        "idle CPU                        0.400 %  -       -"
    )
