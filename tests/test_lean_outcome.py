"""The outcome written once per message sent, straight on the driver: the same rows SQLAlchemy writes."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, select

from outreach import store
from outreach.backends.base import Backend
from outreach.dispatcher import Dispatcher, _Outcome, claim
from outreach.models import FAILED, PENDING, SENT, message_events, messages
from tests.conftest import NOW
from tests.factories import queue_message

WORKER = "host:1:abc"
SHOWN = ("status", "attempts", "sent_at", "smtp_response", "last_error", "lease_until", "claimed_by",
         "updated_at", "next_attempt_at")  # fmt: skip


def written(engine, message_id: int) -> tuple[dict, list[tuple]]:
    """The message's outcome columns and its trail after ``queued`` and ``claimed``."""
    with store.read(engine) as conn:
        row = conn.execute(select(messages).where(messages.c.id == message_id)).one()._mapping
        steps = conn.execute(
            select(message_events.c.at, message_events.c.action, message_events.c.detail)
            .where(
                message_events.c.message_id == message_id,
                message_events.c.action.not_in(["queued", "claimed"]),
            )
            .order_by(message_events.c.id)
        ).all()
    return {column: row[column] for column in SHOWN}, [tuple(step) for step in steps]


def both_ways(engine, settings, values: dict, action: str, detail: str) -> tuple[tuple, tuple]:
    """One outcome written on the driver (a connection given), the same outcome the long way (none)."""
    ids = [queue_message(engine), queue_message(engine)]
    claim(engine, settings, 2, NOW, WORKER)
    dispatcher = Dispatcher(engine, settings, Backend(), lambda: NOW, worker=WORKER)
    at = NOW + timedelta(seconds=3, microseconds=123456)
    through_sqlalchemy: list[str] = []

    def executed(conn, cursor, statement, *args) -> None:
        through_sqlalchemy.append(statement)

    conn = store.connection(engine)
    event.listen(engine, "before_cursor_execute", executed)
    try:
        assert dispatcher._finish(_Outcome(ids[0], "dr@clinic.example.org", at, values, action, detail), conn)
    finally:
        event.remove(engine, "before_cursor_execute", executed)
        conn.close()
    assert through_sqlalchemy == []  # all of it on the driver's cursor
    assert dispatcher._finish(_Outcome(ids[1], "dr@clinic.example.org", at, values, action, detail))
    return written(engine, ids[0]), written(engine, ids[1])


def test_a_sent_outcome_is_the_same_row_and_step_either_way(engine, settings):
    at = NOW + timedelta(seconds=3, microseconds=123456)
    values = {
        "status": SENT,
        "attempts": 1,
        "sent_at": at,
        "smtp_response": "250 2.0.0 OK",
        "last_error": None,
    }
    lean, long_way = both_ways(engine, settings, values, "sent", "250 2.0.0 OK")
    assert lean == long_way
    row, steps = lean
    assert row["status"] == SENT and row["sent_at"] == at and row["claimed_by"] == WORKER
    assert row["lease_until"] is None and steps == [(at, "sent", "250 2.0.0 OK")]


def test_a_deferred_and_a_failed_outcome_are_the_same_either_way(engine, settings):
    retry = NOW + timedelta(minutes=5)
    deferred = {"status": PENDING, "attempts": 1, "last_error": "451 try later", "next_attempt_at": retry}
    lean, long_way = both_ways(engine, settings, deferred, "deferred", "451 try later")
    assert lean == long_way and lean[0]["claimed_by"] is None and lean[0]["next_attempt_at"] == retry
    failed = {"status": FAILED, "attempts": 2, "last_error": "550 no", "smtp_response": "550 no"}
    lean, long_way = both_ways(engine, settings, failed, "failed", "550 no")
    assert lean == long_way and lean[0]["status"] == FAILED


def test_an_outcome_no_longer_ours_writes_nothing_on_the_driver(engine, settings, caplog):
    """Another worker holds it now: the long way looks and says so; the row is the other's."""
    message_id = queue_message(engine)
    claim(engine, settings, 1, NOW, "someone-else")
    dispatcher = Dispatcher(engine, settings, Backend(), lambda: NOW, worker=WORKER)
    values = {"status": FAILED, "attempts": 1, "last_error": "550 no", "smtp_response": "550 no"}
    conn = store.connection(engine)
    try:
        assert (
            dispatcher._finish(_Outcome(message_id, "dr@x.org", NOW, values, "failed", "550 no"), conn)
            is False
        )
    finally:
        conn.close()
    row, steps = written(engine, message_id)
    assert row["claimed_by"] == "someone-else" and row["status"] == "sending" and steps == []
    assert "lease lost before its outcome was recorded" in caplog.text
