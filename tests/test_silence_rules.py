"""Rules that fire when something does NOT happen: no reply to an alert, no attendance.

``direction_reminder`` (``when = { no_reply = "adverse_event_alert", within =
"2 business days" }``) and ``attendance_lapse`` (``when = { no_event =
["session_attended", "reassessment"], for = "14d" }``), as shipped, on the
demo practice: at the edges of their clocks, once each, and what they say.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, update

from outreach import store
from outreach.models import SENT, SUPPRESSED, clients, events, inbound, messages
from outreach.outbox import with_body
from outreach.planner import find_due, plan
from outreach.records import record_event
from outreach.rules import check_rules, load_rules, parse_reply_within
from tests.conftest import NOW
from tests.factories import queue_message, renderer
from tests.test_rules import make_templates, write_rules

DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)
# 10:00 in New York (the practice's zone in the tests' settings)
WEDNESDAY = NOW  # 25 Nov 2026
FRIDAY = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
_uid = iter(range(1, 10_000))


def shipped(settings, name):
    return next(r for r in load_rules(settings.campaigns_dir, settings.templates_dir) if r.name == name)


def run_plan(engine, settings, now):
    rules = load_rules(settings.campaigns_dir, settings.templates_dir)
    return plan(engine, settings, rules, renderer(settings.templates_dir), now)


def due(engine, settings, name, now):
    with store.read(engine) as conn:
        return find_due(conn, [shipped(settings, name)], settings, now)


def rows(engine, rule, client_id=None):
    with store.read(engine) as conn:
        query = with_body().where(messages.c.rule == rule)
        if client_id is not None:
            query = query.where(messages.c.client_id == client_id)
        return conn.execute(query.order_by(messages.c.id)).all()


def client_id(engine, ref):
    with store.read(engine) as conn:
        return conn.execute(select(clients.c.id).where(clients.c.ref == ref)).scalar_one()


def set_client(engine, ref, **values):
    with store.write(engine) as conn:
        conn.execute(update(clients).where(clients.c.ref == ref).values(**values))


def add_event(engine, ref, kind, at, note=""):
    with store.write(engine) as conn:
        return record_event(conn, client_id(engine, ref), kind, at, note, at)


def add_inbound(engine, message_id, kind="reply", at=None):
    uid = next(_uid)
    with store.write(engine) as conn:
        conn.execute(
            insert(inbound).values(
                folder="INBOX",
                uidvalidity=1,
                uid=uid,
                header_message_id=f"<in{uid}@clinic.example>",
                kind=kind,
                message_id=message_id,
                sender="p.nair@northgate-fm.example.org",
                subject="Re: your email",
                received_at=at or NOW,
                text="Please hold exercise; I will see her Monday." if kind == "reply" else "Out of office",
                moved=False,
                created_at=at or NOW,
            )
        )


# --- the reminder: no reply to an adverse event alert ------------------------------------------------


@pytest.fixture
def alert(demo_engine, settings):
    """C-1006's adverse event alert, planned at NOW; ``send(at)`` marks it sent then."""
    run_plan(demo_engine, settings, NOW)
    [row] = rows(demo_engine, "adverse_event_alert")

    def send(at, status=SENT, **values):
        with store.write(demo_engine) as conn:
            conn.execute(
                update(messages).where(messages.c.id == row.id).values(status=status, sent_at=at, **values)
            )
        return row

    return send


def reminder_keys(engine, settings, now):
    return [d.dedupe_key for d in due(engine, settings, "direction_reminder", now)]


def test_the_shipped_rules_are_both_enabled(settings):
    reminder = shipped(settings, "direction_reminder")
    assert (reminder.no_reply, reminder.reply_within, reminder.reply_event) == (
        "adverse_event_alert",
        2,
        "adverse_event",
    )
    assert reminder.priority > 0 and reminder.trigger == "no_reply" and reminder.consent_required
    lapse = shipped(settings, "attendance_lapse")
    assert (lapse.no_event, lapse.lapse, lapse.priority) == (
        ("session_attended", "reassessment"),
        14 * DAY,
        0,
    )
    assert lapse.trigger == "no_event" and lapse.consent_required


@pytest.mark.parametrize("sent", [WEDNESDAY, FRIDAY], ids=["midweek", "over-a-weekend"])
def test_a_reminder_is_due_two_business_days_after_the_alert_went(demo_engine, settings, alert, sent):
    row = alert(sent)
    deadline = sent + (2 * DAY if sent == WEDNESDAY else 4 * DAY)  # Friday 10:00, or Tuesday 10:00
    assert reminder_keys(demo_engine, settings, deadline - MINUTE) == []
    assert reminder_keys(demo_engine, settings, deadline + MINUTE) == [f"direction_reminder:reply:{row.id}"]


def test_a_reply_stops_the_reminder_and_an_auto_reply_does_not(demo_engine, settings, alert):
    row = alert(WEDNESDAY)
    later = WEDNESDAY + 3 * DAY
    add_inbound(demo_engine, row.id, kind="auto_reply")
    assert reminder_keys(demo_engine, settings, later) == [f"direction_reminder:reply:{row.id}"]
    add_inbound(demo_engine, row.id, kind="reply")
    assert reminder_keys(demo_engine, settings, later) == []


def test_a_reply_to_the_digest_that_carried_the_alert_stops_it(demo_engine, settings, alert):
    digest = queue_message(demo_engine, kind="digest", status=SENT, sent_at=WEDNESDAY)
    row = alert(WEDNESDAY, digest_id=digest)
    later = WEDNESDAY + 3 * DAY
    assert reminder_keys(demo_engine, settings, later) == [f"direction_reminder:reply:{row.id}"]
    add_inbound(demo_engine, digest, kind="reply")
    assert reminder_keys(demo_engine, settings, later) == []


def test_an_alert_not_sent_gets_no_reminder(demo_engine, settings, alert):
    alert(None, status="bounced")
    assert reminder_keys(demo_engine, settings, WEDNESDAY + 10 * DAY) == []


def test_the_reminder_is_queued_once_and_says_what_it_should(demo_engine, settings, alert):
    row = alert(WEDNESDAY)
    later = WEDNESDAY + 2 * DAY + MINUTE
    first = run_plan(demo_engine, settings, later)
    assert [d.dedupe_key for d in first.queued if d.rule.name == "direction_reminder"] == [
        f"direction_reminder:reply:{row.id}"
    ]
    assert run_plan(demo_engine, settings, later).total == 0
    add_inbound(demo_engine, row.id, kind="reply", at=later + MINUTE)  # a reply after it: it stays as it is
    assert run_plan(demo_engine, settings, later + DAY).total == 0
    [reminder] = rows(demo_engine, "direction_reminder")
    assert (reminder.event_id, reminder.client_id) == (row.event_id, row.client_id)
    assert reminder.physician_id == row.physician_id and reminder.priority > 0
    assert reminder.status == "pending" and reminder.needs_consent
    assert reminder.subject == "URGENT reminder: awaiting your direction — H.W. (ref C-1006)"
    text = reminder.text
    for words in (
        "BOTTOM LINE: URGENT - AWAITING YOUR DIRECTION: adverse event for H.W. (ref C-1006)",
        "On 25 Nov 2026 I wrote to you about an adverse event",
        "exercise with us is still paused and we are awaiting your direction",
        "Light-headed on standing after seated exercise",  # the same facts as the alert
        "Please reply to this email",
        "Dear Priya Nair,",
    ):
        assert words in " ".join(text.split()), words
    assert "Helen" not in text and "Wright" not in text and "Recurrent falls" not in reminder.subject
    assert "On 25 Nov 2026 I wrote" in " ".join(reminder.html.split())


def test_without_consent_the_reminder_is_suppressed(demo_engine, settings, alert):
    alert(WEDNESDAY)
    set_client(demo_engine, "C-1006", consent_revoked_on=NOW.date())
    run_plan(demo_engine, settings, WEDNESDAY + 3 * DAY)
    [reminder] = rows(demo_engine, "direction_reminder")
    assert reminder.status == SUPPRESSED and reminder.reason == "consent"


def test_a_discharged_client_gets_no_reminder(demo_engine, settings, alert):
    alert(WEDNESDAY)
    set_client(demo_engine, "C-1006", status="discharged")
    assert reminder_keys(demo_engine, settings, WEDNESDAY + 3 * DAY) == []


# --- the lapse: no attendance for 14 days --------------------------------------------------------------


def lapse_keys(engine, settings, now, ref="C-1010"):
    mine = client_id(engine, ref)
    return [d.dedupe_key for d in due(engine, settings, "attendance_lapse", now) if d.client_id == mine]


def assessed(engine, ref):
    with store.read(engine) as conn:
        return conn.execute(
            select(func.min(events.c.occurred_at)).where(
                events.c.client_id == client_id(engine, ref), events.c.kind == "initial_assessment"
            )
        ).scalar_one()


def test_in_the_demo_only_the_client_who_stopped_coming_has_a_lapse(demo_engine, settings):
    # C-1010 was assessed 37 days ago and has only missed sessions since; the others attend.
    assert [d.client_ref for d in due(demo_engine, settings, "attendance_lapse", NOW)] == ["C-1010"]


def test_a_lapse_is_due_on_the_14th_day_not_before(demo_engine, settings):
    attended = NOW - timedelta(hours=1)
    event = add_event(demo_engine, "C-1002", "session_attended", attended)
    mine = client_id(demo_engine, "C-1002")
    assert lapse_keys(demo_engine, settings, attended + 14 * DAY - MINUTE, "C-1002") == []
    assert lapse_keys(demo_engine, settings, attended + 14 * DAY + MINUTE, "C-1002") == [
        f"attendance_lapse:lapse:{mine}:{event}"
    ]


def test_a_lapse_since_the_initial_assessment_has_key_0(demo_engine, settings):
    mine = client_id(demo_engine, "C-1010")
    start = assessed(demo_engine, "C-1010")
    assert lapse_keys(demo_engine, settings, start + 14 * DAY - MINUTE) == []
    assert lapse_keys(demo_engine, settings, start + 14 * DAY + MINUTE) == [
        f"attendance_lapse:lapse:{mine}:0"
    ]


def test_a_client_never_assessed_has_no_lapse(demo_engine, settings):
    set_client(demo_engine, "C-1005", status="active")  # referred yesterday, not assessed
    assert lapse_keys(demo_engine, settings, NOW + 60 * DAY, ref="C-1005") == []


def test_a_lapse_that_ends_and_starts_again_gives_a_second_note(demo_engine, settings):
    mine = client_id(demo_engine, "C-1010")
    first = run_plan(demo_engine, settings, NOW)
    assert [d.dedupe_key for d in first.queued if d.rule.name == "attendance_lapse"] == [
        f"attendance_lapse:lapse:{mine}:0"
    ]
    assert run_plan(demo_engine, settings, NOW).total == 0  # planned twice: once
    assert lapse_keys(demo_engine, settings, NOW + 5 * DAY) == []  # the same lapse: once
    back = NOW + 6 * DAY
    event = add_event(demo_engine, "C-1010", "session_attended", back)
    assert lapse_keys(demo_engine, settings, back + 14 * DAY - MINUTE) == []
    run_plan(demo_engine, settings, back + 14 * DAY + MINUTE)
    run_plan(demo_engine, settings, back + 20 * DAY)
    assert [n.dedupe_key for n in rows(demo_engine, "attendance_lapse", mine)] == [
        f"attendance_lapse:lapse:{mine}:0",
        f"attendance_lapse:lapse:{mine}:{event}",
    ]


def test_a_reassessment_also_ends_a_lapse_and_a_missed_session_does_not(demo_engine, settings):
    mine = client_id(demo_engine, "C-1010")
    add_event(demo_engine, "C-1010", "session_missed", NOW - 2 * DAY)
    assert lapse_keys(demo_engine, settings, NOW) == [f"attendance_lapse:lapse:{mine}:0"]
    event = add_event(demo_engine, "C-1010", "reassessment", NOW - DAY)
    assert lapse_keys(demo_engine, settings, NOW) == []
    assert lapse_keys(demo_engine, settings, NOW + 13 * DAY + MINUTE) == [
        f"attendance_lapse:lapse:{mine}:{event}"
    ]


@pytest.mark.parametrize("status", ["discharged", "on_hold", "referred"])
def test_a_client_not_active_gets_no_lapse_note(demo_engine, settings, status):
    set_client(demo_engine, "C-1010", status=status)
    assert lapse_keys(demo_engine, settings, NOW) == []
    run_plan(demo_engine, settings, NOW)
    assert rows(demo_engine, "attendance_lapse") == []


def test_without_consent_the_lapse_note_is_suppressed(demo_engine, settings):
    set_client(demo_engine, "C-1010", consent_date=None)
    run_plan(demo_engine, settings, NOW)
    [note] = rows(demo_engine, "attendance_lapse", client_id(demo_engine, "C-1010"))
    assert note.status == SUPPRESSED and note.reason == "consent"


def test_the_lapse_note_says_what_it_should(demo_engine, settings):
    later = NOW + 14 * DAY  # C-1002 last attended on 23 Nov 2026, 08:00: 16 days before
    add_event(demo_engine, "C-1002", "session_missed", NOW + DAY, "Phoned client, left voicemail")
    run_plan(demo_engine, settings, later)
    [note] = rows(demo_engine, "attendance_lapse", client_id(demo_engine, "C-1002"))
    assert note.subject == "Attendance lapse: M.L. (ref C-1002)"
    text = " ".join(note.text.split())
    for words in (
        "M.L. (ref C-1002) has not attended for 16 days (last attended 23 Nov 2026); 1 session missed since.",
        "Last attended: 23 Nov 2026 (session attended)",
        "Missed since: 1: 26 Nov 2026",
        "Contact: 26 Nov 2026: Phoned client, left voicemail",
        "We have contacted the client",
        "I will update you when the client resumes or is discharged.",
    ):
        assert words in text, note.text
    assert "has not attended for 16 days (last attended 23 Nov 2026)" in " ".join(note.html.split())


def test_the_lapse_note_claims_no_contact_that_is_not_recorded(demo_engine, settings):
    run_plan(demo_engine, settings, NOW)
    [note] = rows(demo_engine, "attendance_lapse", client_id(demo_engine, "C-1010"))
    assert note.subject == "Attendance lapse: O.B. (ref C-1010)"
    text = " ".join(note.text.split())
    for words in (
        "O.B. (ref C-1010) has not attended for 37 days (none since the initial assessment on 19 Oct 2026);"
        " 3 sessions missed since.",
        "Missed since: 3: 13 Nov 2026, 17 Nov 2026 and 20 Nov 2026",
        "Contact: none with the client recorded since 19 Oct 2026",
    ):
        assert words in text, words
    assert "We have contacted" not in text and "contacted" not in note.html


# --- the rule files -------------------------------------------------------------------------------------

REMINDER = '[rules.ping]\nwhen = {{ no_reply = "assessment_note", {within} }}\ntemplate = "note"\n'
BASE = '[rules.assessment_note]\nwhen = { event = "initial_assessment" }\ntemplate = "note"\n'
LAPSE = '[rules.lapse]\nwhen = {{ no_event = {kinds}, {extra} }}\ntemplate = "note"\n'

BAD_SILENCE = {
    "no_reply names no rule": (
        '[rules.ping]\nwhen = { no_reply = "no_such_rule", within = "2d" }\ntemplate = "note"\n',
        "ping/when.no_reply: no enabled rule named 'no_such_rule'",
    ),
    "no_reply names a recurring rule": (
        '[rules.monthly]\nwhen = { every = "30d" }\ntemplate = "note"\n'
        '[rules.ping]\nwhen = { no_reply = "monthly", within = "2d" }\ntemplate = "note"\n',
        "ping/when.no_reply: rule 'monthly' is not about an event",
    ),
    "within missing": (BASE + REMINDER.format(within='scope = "client"'), "ping/when.within: missing"),
    "within not business days": (
        BASE + REMINDER.format(within='within = "2 weeks"'),
        "ping/when.within: '2 weeks' is not a number of business days like '2d' or '2 business days'",
    ),
    "within of no days": (
        BASE + REMINDER.format(within='within = "0d"'),
        "ping/when.within: '0d': give from 1 to 30 business days",
    ),
    "for with no_reply": (
        BASE + REMINDER.format(within='within = "2d", for = "3d"'),
        "ping/when.for: does not go with 'no_reply'",
    ),
    "unknown kind in no_event": (
        LAPSE.format(kinds='["session_attended", "lunch"]', extra='for = "14d"'),
        "lapse/when.no_event: unknown event kind 'lunch'",
    ),
    "no_event not a list": (
        LAPSE.format(kinds="[]", extra='for = "14d"'),
        "lapse/when.no_event: must list event kinds",
    ),
    "for missing": (
        LAPSE.format(kinds='["session_attended"]', extra='scope = "client"'),
        "lapse/when.for: missing",
    ),
    "for not a duration": (
        LAPSE.format(kinds='["session_attended"]', extra='for = "two weeks"'),
        "lapse/when.for: 'two weeks' is not a duration",
    ),
    "for under a day": (
        LAPSE.format(kinds='["session_attended"]', extra='for = "2h"'),
        "lapse/when.for: must be at least 1d",
    ),
    "no_event and event": (
        '[rules.lapse]\nwhen = { no_event = ["session_attended"], event = "discharged", for = "14d" }\n'
        'template = "note"\n',
        "lapse/when: give exactly one of 'event' or 'every'",
    ),
    "loop on a silence rule": (
        LAPSE.format(kinds='["session_attended"]', extra='for = "14d"') + 'loop = "lapse"\n',
        "lapse/loop: does not apply to a no_event rule",
    ),
    "physician scope": (
        LAPSE.format(kinds='["session_attended"]', extra='for = "14d", scope = "physician"'),
        "lapse/when: a no_event rule is about one client",
    ),
}


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    return campaigns, make_templates(tmp_path / "templates")


@pytest.mark.parametrize(("text", "expected"), BAD_SILENCE.values(), ids=BAD_SILENCE.keys())
def test_each_silence_problem_names_file_rule_and_key(folders, text, expected):
    campaigns, templates = folders
    path = write_rules(campaigns, text)
    rules, problems = check_rules(campaigns, templates)
    assert any(p.startswith(f"{path}: {expected}") for p in problems), problems
    assert all(r.name not in ("ping", "lapse") for r in rules)


def test_a_reminder_may_name_a_rule_in_another_file(folders):
    campaigns, templates = folders
    write_rules(campaigns, BASE, "a.toml")
    write_rules(campaigns, REMINDER.format(within='within = " 3 business days "'), "b.toml")
    rules, problems = check_rules(campaigns, templates)
    assert problems == []
    [ping] = [r for r in rules if r.name == "ping"]
    assert (ping.no_reply, ping.reply_within, ping.reply_event) == (
        "assessment_note",
        3,
        "initial_assessment",
    )


@pytest.mark.parametrize(
    ("text", "days"), [("2d", 2), (" 5 d ", 5), ("2 business days", 2), ("1 business day", 1)]
)
def test_within_is_business_days_either_way(text, days):
    assert parse_reply_within(text) == days


def test_check_renders_both_shipped_templates_and_finds_a_leaky_subject(run_cli, tmp_path):
    """Both templates are rendered by ``check``: a leak in either subject is found. (That the
    shipped ones pass ``check`` as they are is ``test_rules``'s test of the shipped set.)"""
    import shutil

    copy = tmp_path / "templates"
    shutil.copytree(settings_templates(), copy)
    for name in ("direction_reminder", "attendance_lapse"):
        subject = copy / name / "subject.txt"
        subject.write_text(subject.read_text().rstrip("\n") + " {{ client.last_name }}\n")
    result = run_cli("check", extra_env={"OUTREACH_TEMPLATES_DIR": str(copy)})
    assert result.exit_code == 1
    for name in ("direction_reminder", "attendance_lapse"):
        assert (
            f"{name}/template: subject" in result.stderr
            and "contains the client's last name" in result.stderr
        )


def settings_templates() -> Path:
    from tests.conftest import ROOT

    return ROOT / "outreach" / "templates" / "email"
