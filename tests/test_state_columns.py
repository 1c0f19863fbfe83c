"""State in columns: why a message was stopped (``reason``), the event it reports on
(``event_id``), a digest's attention flag from data, expected loops from the rules."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import event, select, update

from outreach import gate, store
from outreach.compose import is_address as compose_is_address
from outreach.loops import open_loops
from outreach.models import (
    ADDRESS_CHANGED,
    CANCELLED,
    CONSENT,
    DEIDENTIFICATION,
    DIGEST_REBUILT,
    DISCHARGED,
    FAILED,
    MOVED,
    OPTED_OUT,
    PENDING,
    REASONS,
    SUPPRESSED,
    UNDELIVERABLE,
    clients,
    events,
    message_bodies,
    message_events,
    messages,
    physicians,
)
from outreach.planner import find_due, plan, reconsider_consent
from outreach.records import add_event
from outreach.rerender import Rerenderer
from outreach.settings import address_problem, is_address
from tests.conftest import NOW, checked_cli
from tests.factories import renderer, shipped_rules

EARLY_QUARTER = datetime(2027, 1, 5, 15, 0, tzinfo=UTC)
OSEI = "r.osei@ortho.example.org"


def run_plan(engine, settings, now=NOW):
    return plan(engine, settings, shipped_rules(settings), renderer(settings.templates_dir), now)


def entries(engine, *where) -> list:
    with store.read(engine) as conn:
        return conn.execute(select(messages).where(*where).order_by(messages.c.id)).all()


def client_id(engine, ref: str) -> int:
    with store.read(engine) as conn:
        return conn.execute(select(clients.c.id).where(clients.c.ref == ref)).scalar_one()


def event_id(engine, ref: str, kind: str) -> int:
    with store.read(engine) as conn:
        return conn.execute(
            select(events.c.id).where(events.c.client_id == client_id(engine, ref), events.c.kind == kind)
        ).scalar_one()


# --- the migration ------------------------------------------------------------------------------

OLD_MESSAGES = [
    # (id, rule/template, dedupe key, status, last_error) -> expected (event_id, reason)
    (1, "initial_assessment_report", "initial_assessment_report:event:10", "sent", None),
    (2, "reassessment_report", "reassessment_report:event:11~replanned:2", "cancelled",
     "the client is now referred to c@d.org: not sent to the former physician; what is still due goes to the new one"),
    (3, "goal_achieved", "goal_achieved:event:999", "suppressed", "consent revoked on 2026-01-05: not sent"),
    (4, "progress_report", "progress_report:client:1:2", "suppressed",
     "no consent to share health information on record"),
    (5, "quarterly_summary", "quarterly_summary:physician:1:2026Q3", "suppressed",
     "physician opted out of non-clinical mail on 2026-01-02"),
    (6, "quarterly_summary", "quarterly_summary:physician:1:2026Q2", "suppressed",
     "fewer than 3 clients: the summary could identify them"),
    (7, "discharge_summary", "discharge_summary:event:12", "suppressed",
     "address a@b.org marked undeliverable on 2026-01-03 (550 5.1.1 no such user, consent ok): not sent"),
    (8, "initial_assessment_report", "initial_assessment_report:event:11", "cancelled",
     "the physician's address is now n@b.org: not sent to a@b.org"),
    (9, "digest", "digest:3:0123456789abcdef", "cancelled",
     "rebuilt without the updates that may not go (message 3: consent revoked on 2026-01-05: not sent)"),
    (10, "progress_report", "progress_report:client:1:1", "cancelled", None),
    (11, "progress_report", "progress_report:client:1:3", "pending", None),
]  # fmt: skip
EXPECTED = {
    1: (10, None),
    2: (11, MOVED),
    3: (None, CONSENT),  # event 999 does not exist: no dangling reference
    4: (None, CONSENT),
    5: (None, OPTED_OUT),
    6: (None, DEIDENTIFICATION),
    7: (12, UNDELIVERABLE),  # mentions consent, but says what stopped it first
    8: (11, ADDRESS_CHANGED),
    9: (None, DIGEST_REBUILT),
    10: (None, DISCHARGED),  # from its trail: "client discharged"
    11: (None, None),
}


def test_the_migration_backfills_reason_and_event_id_from_what_was_written(database_url):
    engine = store.connect(database_url)
    store.migrate(engine, "0008")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            physicians.insert().values(id=1, email="a@b.org", name="A B", created_at=at, updated_at=at)
        )
        conn.execute(
            clients.insert().values(
                id=1, ref="R-1", first_name="R", last_name="One", physician_id=1, status="active",
                created_at=at, updated_at=at,
            )
        )  # fmt: skip
        for number, kind in ((10, "initial_assessment"), (11, "reassessment"), (12, "discharged")):
            conn.execute(
                events.insert().values(
                    id=number, client_id=1, kind=kind, occurred_at=at + timedelta(days=number), created_at=at
                )
            )
        for number, rule, key, status, error in OLD_MESSAGES:
            conn.execute(
                messages.insert().values(
                    id=number, rule=rule, template=rule, dedupe_key=key, client_id=1, physician_id=1,
                    recipient="a@b.org", subject=f"s{number}", status=status, last_error=error,
                    message_id=f"<{number}@b.org>", created_at=at, updated_at=at,
                )
            )  # fmt: skip
        conn.execute(
            message_events.insert().values(
                message_id=10, at=at, action="cancelled", detail="client discharged"
            )
        )
    store.migrate(engine)
    with engine.connect() as conn:
        found = conn.execute(
            select(messages.c.id, messages.c.event_id, messages.c.reason).order_by(messages.c.id)
        ).all()
    engine.dispose()
    assert {row.id: (row.event_id, row.reason) for row in found} == EXPECTED


# --- reasons, written where a message is stopped -------------------------------------------------


def test_the_planner_records_the_event_and_why_it_held_a_message_back(demo_engine, settings):
    run_plan(demo_engine, settings)
    [report] = entries(
        demo_engine,
        messages.c.client_id == client_id(demo_engine, "C-1008"),  # no consent on record
        messages.c.rule == "initial_assessment_report",
    )
    assert (report.status, report.reason) == (SUPPRESSED, CONSENT)
    assert "consent" in report.last_error  # the sentence stays, for people
    assert report.event_id == event_id(demo_engine, "C-1008", "initial_assessment")
    for row in entries(demo_engine):
        milestone = ":event:" in row.dedupe_key
        assert row.event_id == (int(row.dedupe_key.rsplit(":", 1)[1]) if milestone else None), row.dedupe_key
        assert (row.reason is None) == (row.status not in (SUPPRESSED, CANCELLED)), row.dedupe_key
        assert row.reason is None or row.reason in REASONS


def test_opted_out_moved_and_too_few_clients_each_have_their_reason(demo_engine, settings):
    run_plan(demo_engine, settings)
    aisha = client_id(demo_engine, "C-1004")
    [waiting] = entries(demo_engine, messages.c.client_id == aisha, messages.c.status == PENDING)
    with store.write(demo_engine) as conn:
        conn.execute(
            update(physicians)
            .where(physicians.c.email == "j.chen@lakeside-sports.example.org")
            .values(opted_out_on=NOW.date())
        )
        alone = conn.execute(
            physicians.insert()
            .values(email="solo@clinic.example.org", name="Sam Solo", created_at=NOW, updated_at=NOW)
            .returning(physicians.c.id)
        ).scalar_one()
        conn.execute(update(clients).where(clients.c.id == aisha).values(physician_id=alone))
    run_plan(demo_engine, settings, EARLY_QUARTER)
    summaries = {row.recipient: row for row in entries(demo_engine, messages.c.rule == "quarterly_summary")}
    assert summaries["j.chen@lakeside-sports.example.org"].reason == OPTED_OUT
    assert summaries["solo@clinic.example.org"].reason == DEIDENTIFICATION
    assert summaries["m.alvarez@riverside-ortho.example.org"].reason == DEIDENTIFICATION  # two left
    assert summaries["p.nair@northgate-fm.example.org"].reason is None
    [moved] = entries(demo_engine, messages.c.id == waiting.id)
    assert (moved.status, moved.reason) == (CANCELLED, MOVED)


def test_a_report_cancelled_for_a_discharge_says_so(demo_engine, settings):
    run_plan(demo_engine, settings)
    aisha = client_id(demo_engine, "C-1004")
    [report] = entries(demo_engine, messages.c.client_id == aisha, messages.c.rule == "progress_report")
    add_event(demo_engine, "C-1004", "discharged", NOW + timedelta(hours=1), NOW + timedelta(hours=1))
    run_plan(demo_engine, settings, NOW + timedelta(hours=2))
    [cancelled] = entries(demo_engine, messages.c.id == report.id)
    assert (cancelled.status, cancelled.reason) == (CANCELLED, DISCHARGED)


def test_consent_on_record_revives_by_reason_not_by_wording(demo_engine, settings):
    """The revival selects on ``reason``; the event it renders comes from ``event_id``, not the key."""
    run_plan(demo_engine, settings)
    grace = client_id(demo_engine, "C-1008")
    [held] = entries(
        demo_engine, messages.c.client_id == grace, messages.c.rule == "initial_assessment_report"
    )
    [other] = entries(
        demo_engine, messages.c.client_id == client_id(demo_engine, "C-1007"), messages.c.status == PENDING
    )[:1]
    with store.write(demo_engine) as conn:
        # Wording without the word, and a key that names no event: only the columns can tell.
        conn.execute(
            update(messages)
            .where(messages.c.id == held.id)
            .values(last_error="held back", dedupe_key="legacy:1")
        )
        conn.execute(
            update(messages)
            .where(messages.c.id == other.id)
            .values(status=SUPPRESSED, reason=UNDELIVERABLE, last_error="mailbox gone; consent is fine")
        )
        conn.execute(update(clients).where(clients.c.id == grace).values(consent_date=NOW.date()))
        conn.execute(
            update(events).where(events.c.id == held.event_id).values(note="Findings read from the event row")
        )
    rules = shipped_rules(settings)
    later = NOW + timedelta(hours=1)
    assert reconsider_consent(demo_engine, settings, rules, renderer(settings.templates_dir), later) == (0, 1)
    [revived] = entries(demo_engine, messages.c.id == held.id)
    assert (revived.status, revived.reason, revived.last_error) == (PENDING, None, None)
    with store.read(demo_engine) as conn:
        text = conn.execute(
            select(message_bodies.c.text).where(message_bodies.c.message_id == held.id)
        ).scalar()
    assert "Findings read from the event row" in text
    [still] = entries(demo_engine, messages.c.id == other.id)
    assert (still.status, still.reason) == (SUPPRESSED, UNDELIVERABLE)


def test_a_failed_update_rendered_again_reports_on_its_event_column(demo_engine, settings, tmp_path):
    broken = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, broken)
    subject = broken / "initial_assessment_report" / "subject.txt"
    subject.write_text(subject.read_text().strip() + " {{ no_such_variable }}\n")
    run_plan(demo_engine, settings.with_(templates_dir=broken))
    [failed] = entries(
        demo_engine,
        messages.c.client_id == client_id(demo_engine, "C-1007"),
        messages.c.rule == "initial_assessment_report",
    )
    assert failed.status == FAILED and failed.event_id is not None
    with store.write(demo_engine) as conn:
        conn.execute(update(messages).where(messages.c.id == failed.id).values(dedupe_key="legacy:x"))
        conn.execute(
            update(events).where(events.c.id == failed.event_id).values(note="Read from the event row")
        )
    redo = Rerenderer(settings, shipped_rules(settings), renderer(settings.templates_dir))
    with store.read(demo_engine) as conn:
        [again] = redo.render(conn, [failed.id], NOW)
    assert "Assessment findings: Read from the event row" in again.rendered.text


def _pending_about(engine, ref: str):
    [row] = entries(
        engine,
        messages.c.client_id == client_id(engine, ref),
        messages.c.status == PENDING,
        messages.c.rule == "initial_assessment_report",
    )
    return row


CHANGES = {
    "consent revoked": (
        lambda conn, row: conn.execute(
            update(clients).where(clients.c.id == row.client_id).values(consent_revoked_on=NOW.date())
        ),
        SUPPRESSED,
        CONSENT,
    ),
    "client moved": (
        lambda conn, row: conn.execute(
            update(clients)
            .where(clients.c.id == row.client_id)
            .values(
                physician_id=select(physicians.c.id)
                .where(physicians.c.id != row.physician_id)
                .limit(1)
                .scalar_subquery()
            )
        ),
        CANCELLED,
        MOVED,
    ),
    "address changed": (
        lambda conn, row: conn.execute(
            update(physicians)
            .where(physicians.c.id == row.physician_id)
            .values(email="new@clinic.example.org")
        ),
        CANCELLED,
        ADDRESS_CHANGED,
    ),
    "address undeliverable": (
        lambda conn, row: conn.execute(
            update(physicians).where(physicians.c.id == row.physician_id).values(undeliverable_on=NOW.date())
        ),
        SUPPRESSED,
        UNDELIVERABLE,
    ),
}


@pytest.mark.parametrize(("change", "status", "reason"), CHANGES.values(), ids=CHANGES.keys())
def test_the_gate_records_why_it_refused(demo_engine, settings, change, status, reason):
    run_plan(demo_engine, settings)
    row = _pending_about(demo_engine, "C-1007")
    with store.write(demo_engine) as conn:
        change(conn, row)
    with store.write(demo_engine) as conn:
        verdicts = gate.screen(conn, [row.id], NOW.date())
        assert gate.refuse(conn, list(verdicts.refused.values()), NOW) == [row.id]
    [refused] = entries(demo_engine, messages.c.id == row.id)
    assert (refused.status, refused.reason) == (status, reason)
    assert refused.last_error == verdicts.refused[row.id].detail


def test_the_gate_records_an_opt_out(demo_engine, settings):
    run_plan(demo_engine, settings, EARLY_QUARTER)
    [summary] = entries(
        demo_engine, messages.c.rule == "quarterly_summary", messages.c.recipient.like("m.alvarez@%")
    )
    with store.write(demo_engine) as conn:
        conn.execute(
            update(physicians).where(physicians.c.id == summary.physician_id).values(opted_out_on=NOW.date())
        )
        verdicts = gate.screen(conn, [summary.id], NOW.date())
        gate.refuse(conn, list(verdicts.refused.values()), NOW)
    assert entries(demo_engine, messages.c.id == summary.id)[0].reason == OPTED_OUT


def test_a_digest_taken_apart_at_the_gate_is_marked_rebuilt(demo_engine, settings):
    run_plan(demo_engine, settings)
    [digest, *_] = entries(demo_engine, messages.c.kind == "digest", messages.c.status == PENDING)
    members = entries(demo_engine, messages.c.digest_id == digest.id)
    refused = members[0]
    with store.write(demo_engine) as conn:
        conn.execute(
            update(clients).where(clients.c.id == refused.client_id).values(consent_revoked_on=NOW.date())
        )
        verdicts = gate.screen(conn, [digest.id], NOW.date())
        gate.take_apart(conn, digest.id, verdicts, NOW)
    assert entries(demo_engine, messages.c.id == digest.id)[0].reason == DIGEST_REBUILT
    for member in entries(demo_engine, messages.c.id.in_([m.id for m in members])):
        if member.client_id == refused.client_id:
            assert (member.status, member.reason) == (SUPPRESSED, CONSENT)
        else:
            assert (member.status, member.reason) == (PENDING, None)


# --- a digest's attention flag, from the data the section is rendered from --------------------------


@pytest.fixture
def practice(run_cli, settings, engine, tmp_path):
    """One physician in New York and three consenting clients, through the CLI."""
    cli = checked_cli(run_cli, settings)
    start = "2026-11-02T09:00:00-05:00"
    (tmp_path / "p.csv").write_text(
        f"email,name,credentials,timezone\n{OSEI},Ruth Osei,MD,America/New_York\n"
    )
    rows = "".join(
        f"K-{i},First{i},Last{i},{OSEI},2026-10-01,Knee pain,2026-10-01,active\n" for i in (1, 2, 3)
    )
    (tmp_path / "c.csv").write_text(
        "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n" + rows
    )
    cli("import", "physicians", str(tmp_path / "p.csv"), "--now", start)
    cli("import", "clients", str(tmp_path / "c.csv"), "--now", start)
    return cli


def digest_bottom_line(engine) -> str:
    """The digest's bottom line, unwrapped, and its whole text."""
    with store.read(engine) as conn:
        text = conn.execute(
            select(message_bodies.c.text)
            .join(messages, messages.c.id == message_bodies.c.message_id)
            .where(messages.c.kind == "digest")
        ).scalar_one()
    return " ".join(text.split("BOTTOM LINE:", 1)[1].split("\n\n", 1)[0].split()), text


MORNING = "2026-11-03T10:00:00-05:00"  # a Tuesday: inside the send window


def test_a_digest_does_not_flag_an_update_whose_note_merely_says_the_words(practice, engine):
    note = "Nothing here needs your attention."
    practice("event", "add", "K-1", "initial_assessment", "--at", "2026-11-03T08:00:00-05:00", "--note", note)
    practice("event", "add", "K-2", "initial_assessment", "--at", "2026-11-03T08:30:00-05:00")
    practice("plan", "--now", MORNING)
    bottom_line, text = digest_bottom_line(engine)
    assert f"Assessment findings: {note}" in text  # the words are there: a text search flagged them
    assert bottom_line == "2 client updates in one email, to respect your time."


def test_a_digest_flags_an_adherence_concern_from_its_data(practice, engine):
    for day in ("2026-10-27", "2026-10-29", "2026-11-02"):
        practice("event", "add", "K-3", "session_missed", "--at", f"{day}T09:00:00-05:00", "--now", MORNING)
    practice("event", "add", "K-1", "initial_assessment", "--at", "2026-11-03T08:00:00-05:00")
    practice("plan", "--now", MORNING)
    bottom_line, _ = digest_bottom_line(engine)
    assert bottom_line == "2 client updates in one email, to respect your time. 1 needs your attention: K-3."


# --- expected loops, read from the rules ---------------------------------------------------------------


def test_loops_follow_what_the_rules_declare(demo_engine, settings):
    rules = shipped_rules(settings)
    with store.read(demo_engine) as conn:
        shipped = open_loops(conn, settings, NOW, rules=rules)
        names = {loop.loop for loop in shipped}
        assert names == {
            "referral acknowledged",
            "initial assessment report",
            "progress report",
            "discharge summary",
            "adverse event alert",
        }
        later = [replace(r, loop_within=5) if r.name == "referral_acknowledgement" else r for r in rules]
        untracked = [replace(r, loop=None) if r.name == "discharge_summary" else r for r in rules]
        moved = {(lp.client_ref, lp.loop): lp.due_at for lp in open_loops(conn, settings, NOW, rules=later)}
        assert "discharge summary" not in {lp.loop for lp in open_loops(conn, settings, NOW, rules=untracked)}
        assert open_loops(conn, settings, NOW, rules=[]) == []
    for loop in shipped:
        due = moved[(loop.client_ref, loop.loop)]
        if loop.loop == "referral acknowledged":
            assert due.date() - loop.due_at.date() >= timedelta(days=4)  # four business days more
        else:
            assert due == loop.due_at


def test_loops_ask_about_many_referrals_in_bounded_lists(engine, settings):
    with store.write(engine) as conn:
        doctor = conn.execute(
            physicians.insert()
            .values(email="many@clinic.example.org", name="Many", created_at=NOW, updated_at=NOW)
            .returning(physicians.c.id)
        ).scalar_one()
        conn.execute(
            clients.insert(),
            [
                {"ref": f"M-{i:04d}", "first_name": "M", "last_name": str(i), "physician_id": doctor,
                 "referral_date": date(2026, 11, 24), "consent_date": date(2026, 11, 1), "status": "active",
                 "created_at": NOW, "updated_at": NOW}
                for i in range(store.IN_LIMIT * 2 + 7)
            ],
        )  # fmt: skip
    sizes: list[int] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if not executemany:
            sizes.append(len(parameters or ()))

    event.listen(engine, "before_cursor_execute", count)
    try:
        with store.read(engine) as conn:
            found = open_loops(conn, settings, NOW)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(found) == store.IN_LIMIT * 2 + 7  # one acknowledgement each
    assert max(sizes) <= store.IN_LIMIT + 10


# --- small things ----------------------------------------------------------------------------------


def test_opt_outs_are_read_once_per_rule_not_once_per_email(demo_engine, settings):
    [summary_rule] = [r for r in shipped_rules(settings) if r.name == "quarterly_summary"]
    asked: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "opted_out_on" in statement:
            asked.append(statement)

    event.listen(demo_engine, "before_cursor_execute", count)
    try:
        with store.read(demo_engine) as conn:
            drafts = find_due(conn, [summary_rule], settings, EARLY_QUARTER)
    finally:
        event.remove(demo_engine, "before_cursor_execute", count)
    assert len(drafts) == 3 and len(asked) == 1


def test_one_address_rule_for_what_a_person_enters_and_what_goes_on_the_wire():
    assert compose_is_address is is_address
    for bad in ("back\\slash@clinic.example.org", "bell\x07@clinic.example.org", "a" * 250 + "@b.org"):
        assert not is_address(bad)
        assert address_problem(bad) == f"{bad!r} is not an email address"
    assert address_problem("dr.lee@clinic.example.org") is None
    assert address_problem("dr.lee@localhost") == "'dr.lee@localhost' is not an email address"
