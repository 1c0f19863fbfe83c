"""Retention (``OUTREACH_RETENTION_DAYS``): old bodies go, the log stays.

At the edges (a second either side of the cutoff), never a pending or
sending message, a digest with all it carried or not at all, inbound text
and raw mail, the dry run, the command, ``log show``, the console, retry and
resend refused, no revival by consent, the service's daily job, and chunks
(on PostgreSQL, rows another process holds are skipped and left for later).
"""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta
from time import monotonic, perf_counter
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from outreach import records, retention, store
from outreach.daemon import Jobs, Service
from outreach.errors import OutreachError
from outreach.models import (
    BOUNCED,
    CANCELLED,
    CONSENT,
    FAILED,
    PENDING,
    REDIRECTED,
    SENDING,
    SENT,
    SUPPRESSED,
    audit,
    clients,
    inbound,
    message_bodies,
    messages,
)
from outreach.planner import plan, reconsider_consent
from outreach.renderer import Renderer
from outreach.replies import format_replies, list_replies
from outreach.retention import NOT_SET, purge
from outreach.review import show_message
from tests.conftest import DATABASES, NOW
from tests.factories import message, queue_message, record_inbound, shipped_rules, trail

DAYS = 30
CUTOFF = NOW - timedelta(days=DAYS)
SECOND = timedelta(seconds=1)
PURGED = ("purged", f"body removed under the retention setting ({DAYS} days)")


@pytest.fixture
def kept(settings):
    """The settings with a 30-day retention."""
    return settings.with_(retention_days=DAYS)


def old(status: str = SENT, age: timedelta = timedelta(days=DAYS + 1), **overrides) -> dict:
    """A message's columns: ``status`` since ``age`` before NOW."""
    at = NOW - age
    return {"status": status, "created_at": at, "updated_at": at, "next_attempt_at": None, **overrides}


def body_of(engine, message_id: int):
    with store.read(engine) as conn:
        return conn.execute(
            select(message_bodies.c.html, message_bodies.c.text).where(
                message_bodies.c.message_id == message_id
            )
        ).first()


def removed(engine, message_id: int) -> bool:
    """The body is gone and the entry says so; the body row and the mark always go together."""
    row, body = message(engine, message_id), body_of(engine, message_id)
    assert (row.body_removed_at is None) == (body is not None), message_id
    return row.body_removed_at is not None


def expected_digest(html: str, text: str) -> str:
    """The recipe the README gives a person checking a copy they hold."""
    return hashlib.sha256(html.encode() + b"\0" + text.encode()).hexdigest()


# --- what goes and what stays ----------------------------------------------------------------


def test_a_body_goes_a_second_after_the_cutoff_and_not_at_it(engine, kept):
    before = queue_message(engine, **old(age=timedelta(days=DAYS) + SECOND))
    at = queue_message(engine, **old(age=timedelta(days=DAYS)))
    after = queue_message(engine, **old(age=timedelta(days=DAYS) - SECOND))
    day_after = queue_message(engine, **old(age=timedelta(days=DAYS - 1)))
    day_before = queue_message(engine, **old(age=timedelta(days=DAYS + 1)))
    entry, body = message(engine, before), body_of(engine, before)

    report = purge(engine, kept, NOW)

    assert (report.messages, report.inbound, report.cutoff, report.finished) == (2, 0, CUTOFF, True)
    assert [removed(engine, i) for i in (before, at, after, day_after, day_before)] == [
        True,
        False,
        False,
        False,
        True,
    ]
    gone = message(engine, before)
    assert gone.body_removed_at == NOW
    assert gone.body_sha256 == expected_digest(body.html, body.text)
    assert gone.html is None and gone.text is None
    kept_columns = ("status", "message_id", "subject", "recipient", "created_at", "updated_at", "sent_at")
    assert [getattr(gone, c) for c in kept_columns] == [getattr(entry, c) for c in kept_columns]
    assert trail(engine, before) == [("queued", ""), PURGED]
    assert purge(engine, kept, NOW).messages == 0  # once only


@pytest.mark.parametrize("status", [SENT, FAILED, BOUNCED, SUPPRESSED, CANCELLED, REDIRECTED])
def test_every_final_status_loses_its_body(engine, kept, status):
    made = queue_message(engine, **old(status))
    assert purge(engine, kept, NOW).messages == 1
    assert removed(engine, made) and message(engine, made).status == status


def test_a_pending_or_sending_message_is_never_touched_however_old(engine, kept):
    ancient = timedelta(days=10 * 365)
    waiting = queue_message(engine, **old(PENDING, ancient, next_attempt_at=NOW - ancient))
    claimed = queue_message(engine, **old(SENDING, ancient, lease_until=NOW - ancient))
    assert purge(engine, kept, NOW).messages == 0
    assert not removed(engine, waiting) and not removed(engine, claimed)
    assert trail(engine, waiting) == trail(engine, claimed) == [("queued", "")]


# --- a digest and the updates it carried ------------------------------------------------------


def digest_of(engine, *members: dict, **digest: object) -> tuple[int, list[int]]:
    """A digest message and the updates it carries (``members``: each one's columns)."""
    digest_id = queue_message(engine, kind="digest", rule="digest", template="digest", **digest)
    return digest_id, [queue_message(engine, digest_id=digest_id, **member) for member in members]


def test_a_digest_and_its_updates_go_together(engine, kept):
    digest_id, updates = digest_of(engine, old(), old(), **old())
    assert purge(engine, kept, NOW).messages == 3
    assert all(removed(engine, i) for i in [digest_id, *updates])


def test_a_digest_waits_for_every_update_it_carried(engine, kept):
    # The digest is final and old; one update it carried is not final (or was final only lately).
    digest_id, updates = digest_of(engine, old(), old(PENDING), **old())
    recent_id, recent = digest_of(engine, old(), old(age=timedelta(days=2)), **old())
    assert purge(engine, kept, NOW).messages == 0
    assert not any(removed(engine, i) for i in [digest_id, *updates, recent_id, *recent])


def test_an_update_waits_for_its_digest(engine, kept):
    _, updates = digest_of(engine, old(), **old(age=timedelta(days=3)))
    assert purge(engine, kept, NOW).messages == 0
    assert not removed(engine, updates[0])
    assert purge(engine, kept, NOW + timedelta(days=DAYS)).messages == 2  # a month later, both


# --- inbound mail ------------------------------------------------------------------------------

RAW = b"From: a.smith@clinic.example.org\r\nSubject: Re: update\r\n\r\nHold exercise until Tuesday.\r\n"


def receive(engine, age: timedelta, raw: bytes | None = RAW, message_id: int | None = None) -> int:
    """An inbound email as the inbox records it, ``age`` before NOW."""
    return record_inbound(
        engine,
        message_id=message_id,
        received_at=NOW - age,
        created_at=NOW - age,
        text="Hold exercise until Tuesday.",
        raw=raw,
    )


def inbound_row(engine, inbound_id: int):
    with store.read(engine) as conn:
        return conn.execute(select(inbound).where(inbound.c.id == inbound_id)).one()


def test_inbound_text_and_raw_are_cleared_and_the_row_stays(engine, kept):
    with_raw = receive(engine, timedelta(days=DAYS) + SECOND)
    text_only = receive(engine, timedelta(days=DAYS + 5), raw=None)
    recent = receive(engine, timedelta(days=DAYS) - SECOND)
    assert purge(engine, kept, NOW).inbound == 2
    first, second, third = (inbound_row(engine, i) for i in (with_raw, text_only, recent))
    assert (first.text, first.raw, first.body_removed_at) == ("", None, NOW)
    assert first.body_sha256 == hashlib.sha256(RAW).hexdigest()
    assert second.body_sha256 == hashlib.sha256(b"Hold exercise until Tuesday.").hexdigest()
    assert (second.kind, second.sender, second.subject) == (
        "reply",
        "a.smith@clinic.example.org",
        "Re: update",
    )
    assert (third.text, third.raw, third.body_removed_at) == ("Hold exercise until Tuesday.", RAW, None)


# --- dry run, the setting unset, the audit line ------------------------------------------------


def test_a_dry_run_counts_and_changes_nothing(engine, kept):
    made = queue_message(engine, **old())
    receive(engine, timedelta(days=DAYS + 1))
    report = purge(engine, kept, NOW, dry_run=True)
    assert (report.messages, report.inbound, report.dry_run) == (1, 1, True)
    assert not removed(engine, made) and trail(engine, made) == [("queued", "")]
    assert purge(engine, kept, NOW).messages == 1  # what the dry run counted


def test_without_the_setting_nothing_is_removed(engine, settings):
    made = queue_message(engine, **old(age=timedelta(days=3650)))
    report = purge(engine, settings, NOW)
    assert report.cutoff is None and report.summary(settings.tz) == NOT_SET
    assert not removed(engine, made)


def test_a_purge_is_one_audit_line(engine, kept):
    queue_message(engine, **old())
    purge(engine, kept, NOW, actor="tester")
    purge(engine, kept, NOW, actor="tester")  # nothing left: no line
    with store.read(engine) as conn:
        lines = conn.execute(select(audit.c.actor, audit.c.action, audit.c.detail)).all()
    assert [(actor, action) for actor, action, _ in lines] == [("tester", "purge")]
    assert lines[0].detail.startswith("1 message bodies and 0 inbound emails")


# --- the command -------------------------------------------------------------------------------

NOW_ARG = "2026-11-25T10:00"  # NOW in the practice's time zone (America/New_York)


def test_outreach_purge_says_what_it_removed(engine, run_cli):
    made = queue_message(engine, **old())
    receive(engine, timedelta(days=DAYS + 1))
    env = {"OUTREACH_RETENTION_DAYS": str(DAYS)}
    dry = run_cli("purge", "--dry-run", "--now", NOW_ARG, extra_env=env)
    assert dry.exit_code == 0, dry.output
    assert dry.stdout == (
        "would remove the bodies of 1 message and 1 inbound email "
        "(final or received before 2026-10-26 10:00 EDT); nothing changed (dry run)\n"
    )
    assert not removed(engine, made)
    done = run_cli("purge", "--now", NOW_ARG, extra_env=env)
    assert done.exit_code == 0, done.output
    assert done.stdout == (
        "removed the bodies of 1 message and 1 inbound email (final or received before 2026-10-26 10:00 EDT)\n"
    )
    assert removed(engine, made)


def test_outreach_purge_without_the_setting_keeps_everything(engine, run_cli):
    made = queue_message(engine, **old(age=timedelta(days=3650)))
    result = run_cli("purge")
    assert (result.exit_code, result.stdout) == (0, NOT_SET + "\n")
    assert not removed(engine, made)


@pytest.mark.parametrize(
    ("env", "args", "error"),
    [
        ({"OUTREACH_RETENTION_DAYS": "a month"}, (), "OUTREACH_RETENTION_DAYS"),
        ({"OUTREACH_RETENTION_DAYS": "0"}, (), "OUTREACH_RETENTION_DAYS"),
        ({"OUTREACH_RETENTION_DAYS": "30"}, ("--now", "yesterday"), "error: --now: 'yesterday'"),
    ],
)
def test_outreach_purge_refuses_bad_input_in_one_line(engine, run_cli, env, args, error):
    made = queue_message(engine, **old())
    result = run_cli("purge", *args, extra_env=env)
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and error in line and "Traceback" not in result.output
    assert not removed(engine, made)


# --- what a person sees ------------------------------------------------------------------------


def test_log_show_says_when_the_body_went_and_its_digest(engine, kept):
    made = queue_message(engine, **old())
    receive(engine, timedelta(days=DAYS + 1), message_id=made)
    purge(engine, kept, NOW)
    with store.read(engine) as conn:
        shown = show_message(conn, made, kept.tz)
    sha = message(engine, made).body_sha256
    assert f"Body:        removed on 2026-11-25 under the retention setting (SHA-256 {sha})" in shown
    assert "Text part:" not in shown and "Report" not in shown.split("Trail:")[1]
    assert (
        "reply from a.smith@clinic.example.org: (text removed on 2026-11-25 under the retention setting)"
        in (shown)
    )
    assert "purged" in shown


def test_outreach_replies_says_the_text_was_removed(engine, kept):
    receive(engine, timedelta(days=DAYS + 1))
    purge(engine, kept, NOW)
    with store.read(engine) as conn:
        rows = list_replies(conn)
    assert rows[0]["text_removed_at"] == NOW
    assert "(text removed on 2026-11-25 under the retention setting)" in format_replies(
        rows, "table", kept.tz
    )
    assert "text_removed_at" in format_replies(rows, "csv", kept.tz).splitlines()[0]


def test_the_console_says_the_body_was_removed_and_offers_no_resend(console, kept):
    made = queue_message(console.engine, **old())
    purge(console.engine, kept, NOW)
    browser = console.login("staff")
    page = browser.get(f"/messages/{made}").get_data(as_text=True)
    sha = message(console.engine, made).body_sha256
    assert f"Body removed on 2026-11-25 under the retention setting (SHA-256 {sha})." in page
    assert "<iframe" not in page and "Resend</button>" not in page
    frame = browser.get(f"/messages/{made}/html")
    assert frame.status_code == 200 and "removed on 2026-11-25" in frame.get_data(as_text=True)
    refused = browser.post(f"/messages/{made}/resend", {"confirmed": "yes"})
    assert refused.status_code == 409 and "cannot be sent again" in refused.get_data(as_text=True)
    found = console.app.test_client().get(f"/api/v1/messages/{made}", headers=console.token("viewer"))
    assert (found.status_code, found.get_json()["body_sha256"], found.get_json()["html"]) == (200, sha, "")
    assert found.get_json()["body_removed_at"].startswith("2026-11-25T15:00:00")


# --- never sent again --------------------------------------------------------------------------


def test_retry_and_resend_refuse_a_message_without_its_body(engine, kept, settings, run_cli):
    failed = queue_message(engine, **old(FAILED, last_error="550 no such user"))
    sent = queue_message(engine, **old(SENT, sent_at=NOW - timedelta(days=DAYS + 1)))
    purge(engine, kept, NOW)
    refusal = "its body was removed on 2026-11-25 under the retention setting; it cannot be sent again"
    with pytest.raises(OutreachError, match=f"^message {failed}: {refusal}$"):
        records.retry(engine, settings, NOW, [failed])
    with pytest.raises(OutreachError, match=f"^message {sent}: {refusal}$"):
        records.resend(engine, sent, NOW)
    assert records.retry(engine, settings, NOW) == 0  # --all-failed passes it by
    assert (message(engine, failed).status, message(engine, sent).status) == (FAILED, SENT)
    result = run_cli("retry", str(failed))
    assert (result.exit_code, result.stderr) == (1, f"error: message {failed}: {refusal}\n")


def test_consent_given_later_never_revives_a_message_without_its_body(demo_engine, settings):
    rules, renderer = shipped_rules(settings), Renderer(settings.templates_dir)
    plan(demo_engine, settings, rules, renderer, NOW)
    with store.read(demo_engine) as conn:
        held, grace = conn.execute(
            select(messages.c.id, messages.c.client_id).where(
                messages.c.status == SUPPRESSED, messages.c.reason == CONSENT
            )
        ).one()
        control = conn.execute(select(messages.c.id).where(messages.c.rule == "progress_report")).scalar()
    later = NOW + timedelta(days=2)
    with store.write(demo_engine) as conn:
        # The control: a report (taken out of its digest) held for want of consent too, but lately.
        conn.execute(
            update(messages)
            .where(messages.c.id == control)
            .values(status=SUPPRESSED, reason=CONSENT, digest_id=None, updated_at=later - timedelta(hours=1))
        )
    assert purge(demo_engine, settings.with_(retention_days=1), later).messages >= 1
    assert removed(demo_engine, held) and not removed(demo_engine, control)
    with store.write(demo_engine) as conn:
        conn.execute(update(clients).where(clients.c.id == grace).values(consent_date=later.date()))
    assert reconsider_consent(demo_engine, settings, rules, renderer, later) == (0, 1)
    assert message(demo_engine, held).status == SUPPRESSED and removed(demo_engine, held)
    assert message(demo_engine, control).status == PENDING


# --- the service -------------------------------------------------------------------------------


def test_the_service_purges_at_start_then_once_a_day(engine, kept):
    clock = [NOW]
    jobs = Jobs(Service.load(kept, engine=engine), lambda: clock[0], threading.Event())
    job = dict(jobs.named())["purge"]
    first = queue_message(engine, **old())
    job()
    assert removed(engine, first)
    second = queue_message(engine, **old())
    clock[0] = NOW + timedelta(hours=23)
    job()
    assert not removed(engine, second)  # not yet a day
    clock[0] = NOW + timedelta(days=1)
    job()
    assert removed(engine, second)
    with store.read(engine) as conn:
        assert conn.execute(select(audit.c.actor).where(audit.c.action == "purge")).scalars().all() == [
            "service",
            "service",
        ]


def test_the_service_has_no_purge_job_without_the_setting(engine, settings):
    jobs = Jobs(Service.load(settings, engine=engine), lambda: NOW, threading.Event())
    assert "purge" not in dict(jobs.named())


# --- chunks --------------------------------------------------------------------------------------


def test_a_long_purge_goes_in_passes_and_a_budget_stops_it_between_chunks(engine, kept, monkeypatch):
    monkeypatch.setattr(retention, "PASS", 2)  # ids read per pass: several passes over five messages
    made = [queue_message(engine, **old()) for _ in range(5)]
    report = purge(engine, kept, NOW)
    assert (report.messages, report.batches, report.finished) == (5, 3, True)
    assert report.longest_batch_s > 0
    assert all(removed(engine, i) for i in made)
    more = [queue_message(engine, **old()) for _ in range(3)]
    stopped = purge(engine, kept, NOW, budget=0)  # spent at once: one chunk, then stop
    assert (stopped.messages, stopped.finished) == (2, False)
    assert [removed(engine, i) for i in more] == [True, True, False]


def test_on_sqlite_a_purge_leaves_the_write_lock_free_between_chunks(engine, kept, monkeypatch):
    """SQLite picks no waiting writer: the purge gives one a turn longer than its busy handler's 100 ms sleep.

    In each turn another connection that does not wait at all gets the lock.
    """
    monkeypatch.setattr(retention, "PASS", 2)
    made = [queue_message(engine, **old()) for _ in range(5)]
    turns: list[float] = []
    other = store.connect(kept.database_url, busy=0)

    def turn(seconds: float) -> None:
        turns.append(seconds)
        with store.write(other) as conn:  # refused at once if the purge held the lock
            conn.execute(update(messages).where(messages.c.id == made[0]).values(updated_at=NOW))

    monkeypatch.setattr(
        retention, "time", SimpleNamespace(perf_counter=perf_counter, monotonic=monotonic, sleep=turn)
    )
    try:
        report = purge(engine, kept, NOW)
    finally:
        other.dispose()
    assert report.batches == 3 and all(removed(engine, i) for i in made)
    expected = [] if store.is_postgres(engine) else [retention.TURN] * 2  # between chunks, not after the last
    assert turns == expected
    assert retention.TURN > 0.1


# SQLite writers queue for the one write lock: there is nothing to skip there.
@pytest.mark.parametrize("database_url", [d for d in DATABASES if d == "postgresql"], indirect=True)
def test_postgresql_skips_a_message_another_process_holds(engine, kept):
    held, free = queue_message(engine, **old()), queue_message(engine, **old())
    with engine.connect() as other, other.begin():
        other.execute(select(messages.c.id).where(messages.c.id == held).with_for_update())
        assert purge(engine, kept, NOW).messages == 1
        assert removed(engine, free) and not removed(engine, held)
    assert purge(engine, kept, NOW).messages == 1  # the next run takes it
    assert removed(engine, held)
