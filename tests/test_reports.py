"""Every default rule end to end: the email a physician receives, and what it says first."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from outreach import store
from outreach.daemon import Service
from outreach.importer import record_event
from outreach.models import clients, messages
from outreach.outbox import with_body
from tests.conftest import NOW, smtp_settings

CLIENT_RULES = (
    "referral_acknowledgement",
    "initial_assessment_report",
    "progress_report",
    "reassessment_report",
    "goal_achieved",
    "discharge_summary",
    "adverse_event_alert",
    "adherence_concern",
)


def run_once(engine, cfg, now=NOW):
    service = Service.load(cfg, engine=engine)
    return service.cycle(lambda: now)


def texts(server):
    return [r.message.get_body(("plain",)).get_content().replace("\r\n", "\n") for r in server.received]


def test_every_default_rule_reaches_the_physician(demo_engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    run_once(demo_engine, cfg)
    with store.read(demo_engine) as conn:
        logged = conn.execute(select(messages).where(messages.c.status == "sent")).all()
    subjects = {r.message["Subject"] for r in smtp_server.received}
    digests = "\n".join(t for t in texts(smtp_server) if "client updates in one email" in t)
    for rule in CLIENT_RULES:
        mine = [m for m in logged if m.rule == rule]
        assert mine, f"{rule}: nothing sent"
        for m in mine:  # alone, or as a section of the digest that carried it
            assert (m.subject.upper() in digests) if m.digest_id else (m.subject in subjects), (
                rule,
                m.subject,
            )
    for text in texts(smtp_server):
        assert text.split("=" * 78)[1].strip().startswith("BOTTOM LINE:"), "the bottom line comes first"
        assert max(len(line) for line in text.splitlines()) <= 80


def test_adverse_event_alert_is_urgent_and_asks_for_direction(demo_engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    run_once(demo_engine, cfg)
    [alert] = [r.message for r in smtp_server.received if r.message["Subject"].startswith("URGENT")]
    assert alert["Importance"] == "high"
    text = alert.get_body(("plain",)).get_content()
    assert "NEEDS YOUR ATTENTION" in text.upper()
    assert "BP 92/60" in text  # what was observed, as recorded
    assert smtp_server.received[0].message["Subject"].startswith("URGENT")  # it left first


def test_adherence_concern_fires_once_on_the_third_miss_in_a_row(demo_engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    run_once(demo_engine, cfg)
    with store.write(demo_engine) as conn:
        olivia = conn.execute(select(clients.c.id).where(clients.c.ref == "C-1010")).scalar_one()
        record_event(conn, olivia, "session_missed", NOW + timedelta(hours=1), "", NOW)  # 4th in a row
    run_once(demo_engine, cfg, NOW + timedelta(hours=2))
    with store.read(demo_engine) as conn:
        concerns = conn.execute(select(messages).where(messages.c.rule == "adherence_concern")).all()
    assert len(concerns) == 1
    with store.write(demo_engine) as conn:
        record_event(conn, olivia, "session_attended", NOW + timedelta(days=2), "", NOW)
        for day in (3, 4, 5):
            record_event(conn, olivia, "session_missed", NOW + timedelta(days=day), "", NOW)
    run_once(demo_engine, cfg, NOW + timedelta(days=5, hours=1))
    with store.read(demo_engine) as conn:
        concerns = conn.execute(select(messages).where(messages.c.rule == "adherence_concern")).all()
    assert len(concerns) == 2  # a new streak is a new milestone


def test_discharge_summary_lists_goals_met_and_not_met(demo_engine, settings, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    run_once(demo_engine, cfg)
    with store.read(demo_engine) as conn:
        summary = conn.execute(with_body().where(messages.c.rule == "discharge_summary")).one()
    assert "Walk 30 minutes in the community" in summary.text
    assert "GOALS MET: 2 OF 2" in summary.text.upper()
    assert "LEFS" in summary.text and "6MWT" in summary.text


def test_quarterly_summary_is_aggregate_and_suppressed_below_three_clients(
    demo_engine, settings, smtp_server
):
    cfg = smtp_settings(settings, smtp_server)
    quarter = NOW.replace(year=2027, month=1, day=6)
    run_once(demo_engine, cfg, quarter)
    with store.read(demo_engine) as conn:
        summaries = conn.execute(with_body().where(messages.c.rule == "quarterly_summary")).all()
    assert {s.status for s in summaries} <= {"sent", "suppressed"}
    sent = [s for s in summaries if s.status == "sent"]
    assert sent
    for s in sent:
        assert "C-10" not in s.text and "C-10" not in s.subject
        assert "referred" in s.text.lower()
