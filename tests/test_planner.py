"""Which email is due for whom: idempotence, consent, recurrence, cancellation."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from outreach import store
from outreach.context import SESSION_KINDS
from outreach.importer import record_event
from outreach.models import CANCELLED, FAILED, PENDING, SUPPRESSED, clients, events, messages, physicians
from outreach.outbox import with_body
from outreach.planner import _streak_ends, find_due, plan
from outreach.rules import load_rules
from tests.conftest import NOW
from tests.factories import renderer

DAY = timedelta(days=1)


def run_plan(engine, settings, now=NOW):
    rules = load_rules(settings.campaigns_dir, settings.templates_dir)
    return plan(engine, settings, rules, renderer(settings.templates_dir), now)


def rows(engine, **where):
    with store.read(engine) as conn:
        query = with_body()
        for key, value in where.items():
            query = query.where(messages.c[key] == value)
        return conn.execute(query.order_by(messages.c.id)).all()


def client_id(engine, ref):
    with store.read(engine) as conn:
        return conn.execute(select(clients.c.id).where(clients.c.ref == ref)).scalar_one()


def test_planning_twice_queues_nothing_the_second_time(demo_engine, settings):
    first = run_plan(demo_engine, settings)
    assert len(first.queued) >= 8
    second = run_plan(demo_engine, settings)
    assert second.total == 0
    with store.read(demo_engine) as conn:
        total = conn.execute(
            select(func.count()).select_from(messages).where(messages.c.kind != "digest")
        ).scalar()
    assert total == first.total


def test_every_demo_milestone_gets_its_email(demo_engine, settings):
    run_plan(demo_engine, settings)
    by_rule = {}
    for row in rows(demo_engine):
        by_rule.setdefault(row.rule, []).append(row)
    for rule in (
        "referral_acknowledgement",
        "initial_assessment_report",
        "reassessment_report",
        "goal_achieved",
        "discharge_summary",
        "adverse_event_alert",
        "progress_report",
    ):
        assert rule in by_rule, rule
    [alert] = by_rule["adverse_event_alert"]
    assert alert.priority > 0


def test_no_consent_means_suppressed_not_sent(demo_engine, settings):
    run_plan(demo_engine, settings)
    grace = client_id(demo_engine, "C-1008")  # no consent on record
    [report] = rows(demo_engine, client_id=grace, rule="initial_assessment_report")
    assert report.status == SUPPRESSED
    assert "consent" in report.last_error
    # The referral acknowledgement carries no health information: it goes.
    [ack] = rows(demo_engine, client_id=grace, rule="referral_acknowledgement")
    assert ack.status == PENDING


def test_recurring_report_sends_only_the_latest_period_after_downtime(demo_engine, settings):
    run_plan(demo_engine, settings)
    maria = client_id(demo_engine, "C-1002")  # assessed 61 days before NOW: period 2
    [report] = rows(demo_engine, client_id=maria, rule="progress_report")
    assert report.dedupe_key.endswith(":2")
    assert run_plan(demo_engine, settings, NOW + 10 * DAY).queued == [] or all(
        d.client_id != maria for d in run_plan(demo_engine, settings, NOW + 10 * DAY).queued
    )
    later = run_plan(demo_engine, settings, NOW + 31 * DAY)
    assert maria in [d.client_id for d in later.queued if d.rule.name == "progress_report"]


def test_reassessment_report_replaces_the_recurring_one(demo_engine, settings):
    run_plan(demo_engine, settings)
    jordan = client_id(demo_engine, "C-1001")  # reassessed yesterday, assessed 70 days ago
    templates = [r.rule for r in rows(demo_engine, client_id=jordan) if r.template == "progress_report"]
    assert templates == ["reassessment_report"]


def test_discharge_cancels_waiting_recurring_reports(demo_engine, settings):
    run_plan(demo_engine, settings)
    aisha = client_id(demo_engine, "C-1004")
    [report] = rows(demo_engine, client_id=aisha, rule="progress_report")
    assert report.status == PENDING
    with store.write(demo_engine) as conn:
        record_event(conn, aisha, "discharged", NOW + timedelta(hours=1), "Goals met", NOW)
    result = run_plan(demo_engine, settings, NOW + timedelta(hours=2))
    assert result.cancelled == 1
    assert rows(demo_engine, id=report.id)[0].status == CANCELLED
    assert [d.rule.name for d in result.queued if d.client_id == aisha] == ["discharge_summary"]


def test_old_history_does_not_email_physicians(engine, settings, tmp_path):
    """Importing years of events must not send acknowledgements for old referrals."""
    from outreach.demo import load_demo

    load_demo(engine, settings, tmp_path / "csv", NOW - 400 * DAY)
    result = run_plan(engine, settings)
    assert [d for d in result.queued if d.rule.trigger == "event"] == []


def test_quarterly_summary_is_de_identified_and_respects_opt_out(demo_engine, settings):
    early_quarter = datetime(2027, 1, 5, 15, 0, tzinfo=UTC)
    run_plan(demo_engine, settings)
    with store.write(demo_engine) as conn:
        conn.execute(
            update(physicians)
            .where(physicians.c.email == "j.chen@lakeside-sports.example.org")
            .values(opted_out_on=NOW.date())
        )
    run_plan(demo_engine, settings, early_quarter)
    summaries = rows(demo_engine, rule="quarterly_summary")
    assert summaries, "each physician with active referrals gets one"
    by_email = {r.recipient: r for r in summaries}
    assert by_email["j.chen@lakeside-sports.example.org"].status == SUPPRESSED
    assert "opted out" in by_email["j.chen@lakeside-sports.example.org"].last_error
    with store.read(demo_engine) as conn:
        people = conn.execute(select(clients.c.first_name, clients.c.last_name, clients.c.ref)).all()
    for row in summaries:
        assert row.client_id is None
        for first, last, ref in people:
            for word in (first, last, ref, f"{first[0]}.{last[0]}."):
                assert word not in row.subject and word not in row.text, (word, row.recipient)
    assert run_plan(demo_engine, settings, early_quarter + DAY).total == 0


def test_a_template_error_fails_that_message_and_the_others_still_go(demo_engine, settings, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, templates)
    subject = templates / "goal_achieved" / "subject.txt"
    subject.write_text(subject.read_text().strip() + " {{ no_such_variable }}\n")
    broken = settings.with_(templates_dir=templates)
    result = run_plan(demo_engine, broken)
    assert result.failed
    for draft, error in result.failed:
        assert draft.rule.name == "goal_achieved"
        assert "no_such_variable" in error
    for row in rows(demo_engine, rule="goal_achieved"):
        assert row.status == FAILED and "no_such_variable" in row.last_error
    assert len(result.queued) >= 8


def test_dry_run_lists_and_queues_nothing(demo_engine, settings, run_cli):
    result = run_cli("plan", "--dry-run", "--now", NOW.isoformat())
    assert result.exit_code == 0, result.output
    assert "adverse_event_alert: client C-1006" in result.stdout
    assert "would be suppressed" in result.stdout
    assert rows(demo_engine) == []


def test_find_due_is_empty_once_everything_is_queued(demo_engine, settings):
    run_plan(demo_engine, settings)
    rules = load_rules(settings.campaigns_dir, settings.templates_dir)
    with store.read(demo_engine) as conn:
        assert find_due(conn, rules, settings, NOW) == []


def test_a_streak_ends_at_exactly_its_length_th_miss_in_a_row(demo_engine):
    """Missed (M) and attended (A) sessions, in time order; which misses end a streak of 2 and of 3.

    The first client's misses open their history (nothing before them); the
    second's streaks are broken by an attended session; the third never
    misses enough.
    """
    histories = {"C-1001": "MMMM", "C-1002": "AMMAMMMA", "C-1003": "MAMAM"}
    ids: dict[str, list[int]] = {}
    with store.write(demo_engine) as conn:
        for n, (ref, history) in enumerate(histories.items()):
            client = conn.execute(select(clients.c.id).where(clients.c.ref == ref)).scalar_one()
            conn.execute(
                events.delete().where(events.c.client_id == client, events.c.kind.in_(SESSION_KINDS))
            )
            kinds = {"M": "session_missed", "A": "session_attended"}
            start = NOW - timedelta(days=30 - n)
            ids[ref] = [
                record_event(conn, client, kinds[mark], start + timedelta(hours=day * 24 + n), "", NOW)
                for day, mark in enumerate(history)
            ]
    of_clients = select(clients.c.id).where(clients.c.ref.in_(histories))
    with store.read(demo_engine) as conn:
        ends = {length: set(conn.execute(_streak_ends(of_clients, length)).scalars()) for length in (2, 3)}
    first, second = ids["C-1001"], ids["C-1002"]
    assert ends[2] == {first[1], second[2], second[5]}  # the 2nd miss in a row, not the 3rd or 4th
    assert ends[3] == {first[2], second[6]}
