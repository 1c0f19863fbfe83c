"""``records``: the one write path for every change a person, the importer or the demo makes.

Each change checks its values, writes in one transaction, and leaves an
``audit`` row; a refused change writes nothing at all, audit included.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from outreach import records, store
from outreach.errors import NotFound, OutreachError
from outreach.models import (
    BY_PERSON,
    CANCELLED,
    FAILED,
    PENDING,
    SENDING,
    SENT,
    SUPPRESSED,
    audit,
    clients,
    events,
    measurements,
    messages,
    physicians,
)
from tests.conftest import NOW
from tests.factories import queue_message, trail

NOW_ARG = "2026-11-25T10:00"  # NOW in the practice's time zone (America/New_York)
TODAY = date(2026, 11, 25)
DOCTOR = "a.smith@clinic.example.org"


@pytest.fixture
def practice(engine):
    """One physician and one client (C-1, referred), written through ``records``' row writers."""
    with store.write(engine) as conn:
        records.save_physician(conn, {"email": DOCTOR, "name": "Anna Smith"}, NOW)
        doctor = conn.execute(select(physicians.c.id)).scalar()
        client = {"ref": "C-1", "first_name": "Jordan", "last_name": "Davis", "physician_id": doctor}
        records.save_client(conn, {**client, "status": "referred"}, NOW)
    return engine


def audit_rows(engine) -> list[tuple[str, str, str, str]]:
    with store.read(engine) as conn:
        found = conn.execute(select(audit).order_by(audit.c.id)).all()
    return [(row.actor, row.action, row.subject, row.detail) for row in found]


def count(engine, table) -> int:
    with store.read(engine) as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def one(engine, table, column, key):
    with store.read(engine) as conn:
        return conn.execute(select(table).where(column == key)).one()


# --- events, measures, consent, opt-out -------------------------------------------------


def test_an_event_is_recorded_once_moves_the_status_and_is_audited(practice):
    at = NOW - timedelta(days=1)
    added = records.add_event(
        practice, "C-1", " Initial_Assessment", at, NOW, note="first visit", actor="alex"
    )
    assert added.kind == "initial_assessment" and added.event_id is not None
    assert one(practice, clients, clients.c.ref, "C-1").status == "active"
    assert audit_rows(practice) == [
        ("alex", "event", "client C-1", f"initial_assessment at {at.isoformat()}")
    ]

    again = records.add_event(practice, "C-1", "initial_assessment", at, NOW, actor="alex")
    assert again.event_id is None
    assert count(practice, events) == 1
    assert len(audit_rows(practice)) == 1  # nothing changed, nothing audited


@pytest.mark.parametrize(
    ("ref", "kind", "days", "note", "error"),
    [
        ("C-1", "lunch", 0, "", "kind: 'lunch' is not a known event kind"),
        ("C-1", "reassessment", -2, "", "occurred_at: "),
        ("C-1", "reassessment", 0, "a\x00b", "note: contains a NUL character"),
        ("C-404", "reassessment", 0, "", "no client with ref 'C-404'"),
    ],
    ids=["unknown kind", "in the future", "NUL in the note", "unknown client"],
)
def test_a_refused_event_writes_nothing(practice, ref, kind, days, note, error):
    with pytest.raises(OutreachError) as refused:
        records.add_event(practice, ref, kind, NOW - timedelta(days=days), NOW, note=note)
    assert str(refused.value).startswith(error)
    assert (count(practice, events), audit_rows(practice)) == (0, [])


def test_a_future_event_names_its_field_as_the_csv_column(practice):
    with pytest.raises(records.RowError) as refused:
        records.add_event(practice, "C-1", "reassessment", NOW + timedelta(days=2), NOW)
    assert refused.value.field == "occurred_at" and refused.value.problem.endswith("is in the future")


def test_a_measure_is_created_then_replaced_and_an_unchanged_one_is_not_audited(practice):
    day = TODAY - timedelta(days=3)
    outcomes = [
        records.add_measure(practice, "C-1", "lefs", score, day, NOW).outcome for score in ("40", 42, 42)
    ]
    assert outcomes == ["created", "updated", "unchanged"]
    assert one(practice, measurements, measurements.c.instrument, "LEFS").score == 42
    assert [row[1:] for row in audit_rows(practice)] == [
        ("measure", "client C-1", f"LEFS 40 on {day}: created"),
        ("measure", "client C-1", f"LEFS 42 on {day}: updated"),
    ]


def test_a_measure_out_of_range_writes_nothing(practice):
    with pytest.raises(records.RowError, match=r"score: 95 is outside the LEFS range \(0 to 80\)"):
        records.add_measure(practice, "C-1", "LEFS", "95", TODAY, NOW)
    assert (count(practice, measurements), audit_rows(practice)) == (0, [])


def test_consent_given_lifts_a_revocation_and_both_are_audited(practice):
    records.revoke_consent(practice, "C-1", TODAY, NOW, actor="alex")
    assert one(practice, clients, clients.c.ref, "C-1").consent_revoked_on == TODAY
    later = NOW + timedelta(days=1)
    records.give_consent(
        practice, "C-1", TODAY + timedelta(days=1), later, expires=date(2027, 6, 1), actor="alex"
    )
    client = one(practice, clients, clients.c.ref, "C-1")
    assert (client.consent_date, client.consent_expires, client.consent_revoked_on) == (
        date(2026, 11, 26),
        date(2027, 6, 1),
        None,
    )
    assert client.updated_at == later
    assert [row[1:] for row in audit_rows(practice)] == [
        ("revoke consent", "client C-1", f"revoked on {TODAY}"),
        ("consent", "client C-1", "given on 2026-11-26, until 2027-06-01"),
    ]


def test_consent_dated_in_the_future_is_refused(practice):
    with pytest.raises(records.RowError, match="consent_date: 2026-12-25 is in the future"):
        records.give_consent(practice, "C-1", date(2026, 12, 25), NOW)
    assert one(practice, clients, clients.c.ref, "C-1").consent_date is None


def test_opt_out_opt_in_and_deliverable_change_the_physician_named_in_any_case(practice):
    records.opt_out(practice, "  A.Smith@Clinic.Example.org ", TODAY, NOW)
    assert one(practice, physicians, physicians.c.email, DOCTOR).opted_out_on == TODAY
    records.opt_in(practice, DOCTOR, NOW)
    assert one(practice, physicians, physicians.c.email, DOCTOR).opted_out_on is None
    with store.write(practice) as conn:
        conn.execute(physicians.update().values(undeliverable_on=TODAY, undeliverable_reason="550 5.1.1"))
    records.mark_deliverable(practice, DOCTOR, NOW)
    doctor = one(practice, physicians, physicians.c.email, DOCTOR)
    assert (doctor.undeliverable_on, doctor.undeliverable_reason) == (None, None)
    assert [row[1:3] for row in audit_rows(practice)] == [
        ("opt out", f"physician {DOCTOR}"),
        ("opt in", f"physician {DOCTOR}"),
        ("deliverable", f"physician {DOCTOR}"),
    ]


def test_an_unknown_physician_or_client_is_not_found_and_nothing_is_audited(practice):
    with pytest.raises(NotFound, match=r"no physician with email 'nobody@clinic\.example\.org'"):
        records.opt_out(practice, "nobody@clinic.example.org", TODAY, NOW)
    with pytest.raises(NotFound, match="no client with ref 'C-9'"):
        records.revoke_consent(practice, "C-9", TODAY, NOW)
    assert audit_rows(practice) == []


def test_an_import_that_changes_something_is_audited_once_per_file(practice, settings, tmp_path):
    from outreach.importer import import_file

    path = tmp_path / "events.csv"
    path.write_text(
        "client_ref,kind,occurred_at\nC-1,referral_received,2026-10-01\nC-1,session_attended,2026-10-05\n"
    )
    import_file(practice, settings, "events", path, NOW, actor="front desk")
    import_file(practice, settings, "events", path, NOW, actor="front desk")  # already on record: no change
    assert audit_rows(practice) == [
        ("front desk", "import", "events", f"{path}: events: 2 created, 0 updated, 0 already on record")
    ]


def test_the_demo_goes_in_through_the_importer_as_the_demo(demo_engine):
    assert {row[:3] for row in audit_rows(demo_engine)} == {
        ("demo", "import", kind) for kind in ("physicians", "clients", "events", "measures")
    }


# --- retry and cancel ---------------------------------------------------------------------


def test_retry_goes_through_the_dispatcher_and_is_audited(engine, settings):
    failed = queue_message(engine, status=FAILED, attempts=5)
    assert records.retry(engine, settings, NOW, [failed], actor="alex") == 1
    assert one(engine, messages, messages.c.id, failed).status == PENDING
    assert audit_rows(engine) == [("alex", "retry", "messages", f"{failed}: 1 queued again")]


def test_cancel_stops_pending_and_suppressed_messages_with_a_trail_and_an_audit_row(engine):
    pending = queue_message(engine)
    held = queue_message(engine, status=SUPPRESSED, reason="consent", last_error="no consent on record")
    done = records.cancel(engine, [pending, held, pending], NOW, actor="alex")
    assert done == records.Cancelled([pending, held], [], [])
    for message_id in (pending, held):
        row = one(engine, messages, messages.c.id, message_id)
        assert (row.status, row.last_error, row.reason) == (CANCELLED, "cancelled by a person", BY_PERSON)
        assert trail(engine, message_id)[-1] == ("cancelled", "cancelled by a person")
    assert audit_rows(engine) == [
        ("alex", "cancel", f"message {pending}", "cancelled by a person"),
        ("alex", "cancel", f"message {held}", "cancelled by a person"),
    ]


@pytest.mark.parametrize("status", [SENDING, SENT, FAILED, CANCELLED])
def test_cancel_refuses_any_other_status_and_changes_nothing(engine, status):
    pending = queue_message(engine)
    other = queue_message(engine, status=status)
    with pytest.raises(OutreachError) as refused:
        records.cancel(engine, [pending, other], NOW)
    assert str(refused.value) == f"only pending or suppressed messages can be cancelled: {other} is {status}"
    assert one(engine, messages, messages.c.id, pending).status == PENDING  # all or nothing
    assert audit_rows(engine) == []


def test_cancel_of_a_message_that_does_not_exist_names_it(engine):
    pending = queue_message(engine)
    with pytest.raises(NotFound, match=f"no message with id {pending + 1}, {pending + 7}$"):
        records.cancel(engine, [pending, pending + 1, pending + 7], NOW)
    assert one(engine, messages, messages.c.id, pending).status == PENDING


def digest_with(engine, updates: int, status: str = PENDING) -> tuple[int, list[int]]:
    """A waiting digest and the updates it carries."""
    digest = queue_message(engine, kind="digest", rule="digest", template="digest", status=status)
    return digest, [queue_message(engine, digest_id=digest) for _ in range(updates)]


def test_a_cancelled_digest_takes_the_updates_it_carries_with_it(engine):
    digest, updates = digest_with(engine, 2)
    done = records.cancel(engine, [digest], NOW)
    assert done == records.Cancelled([digest], updates, [])
    assert {one(engine, messages, messages.c.id, i).status for i in [digest, *updates]} == {CANCELLED}
    assert trail(engine, updates[0])[-1] == (
        "cancelled",
        f"cancelled by a person (with digest message {digest})",
    )


def test_an_update_cancelled_out_of_a_digest_leaves_the_others_to_be_combined_again(engine):
    digest, (named, other) = digest_with(engine, 2)
    done = records.cancel(engine, [named], NOW)
    assert done == records.Cancelled([named], [], [other])
    assert one(engine, messages, messages.c.id, digest).status == CANCELLED
    assert one(engine, messages, messages.c.id, named).status == CANCELLED
    left = one(engine, messages, messages.c.id, other)
    assert (left.status, left.digest_id) == (PENDING, None)  # unsent, free to be combined again
    assert left.not_before > NOW  # held so that no sender takes it alone meanwhile


def test_an_update_inside_a_digest_being_sent_is_refused(engine):
    digest, (named,) = digest_with(engine, 1, status=SENDING)
    with pytest.raises(OutreachError, match=f"inside digest message {digest}, which is being sent now"):
        records.cancel(engine, [named], NOW)
    assert one(engine, messages, messages.c.id, named).status == PENDING
    assert one(engine, messages, messages.c.id, digest).status == SENDING


# --- through the CLI ------------------------------------------------------------------------


def test_outreach_cancel(engine, run_cli):
    pending = queue_message(engine)
    result = run_cli("cancel", str(pending), "--now", NOW_ARG)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"1 message(s) cancelled: {pending}\n"
    assert one(engine, messages, messages.c.id, pending).status == CANCELLED


def test_outreach_cancel_of_a_sent_message_is_one_line_and_exit_1(engine, run_cli):
    sent = queue_message(engine, status=SENT)
    result = run_cli("cancel", str(sent))
    assert result.exit_code == 1
    assert result.stderr == f"error: only pending or suppressed messages can be cancelled: {sent} is sent\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("event", "add", "C-1", "reassessment", "--at", "2026-12-25T10:00"),
            "error: --at: 2026-12-25 10:00:00-05:00",
        ),
        (
            ("measure", "add", "C-1", "LEFS", "40", "--at", "2026-12-25"),
            "error: --at: 2026-12-25 is in the future",
        ),
        (("client", "consent", "C-1", "--on", "2026-12-25"), "error: --on: 2026-12-25 is in the future"),
        (("event", "add", "C-1", "lunch"), "error: kind: 'lunch' is not a known event kind"),
    ],
    ids=["event --at", "measure --at", "consent --on", "kind"],
)
def test_a_bad_value_is_named_as_the_commands_option(practice, run_cli, args, message):
    result = run_cli(*args, "--now", NOW_ARG)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(message)
    assert audit_rows(practice) == []


def test_consent_cannot_end_before_it_was_given(demo_engine):
    with pytest.raises(records.RowError, match=r"consent_expires: 2026-11-01 is before the day consent"):
        records.give_consent(demo_engine, "C-1001", date(2026, 11, 20), NOW, expires=date(2026, 11, 1))
