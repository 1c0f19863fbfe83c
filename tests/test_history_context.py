"""A client's history is read in bulk into plain tuples; the context built from it is unchanged.

``load_histories`` keeps named tuples of the columns an email reads instead
of the database's rows (reading those was most of the context's cost), and
attendance is counted in one pass. Both are checked against what they
replaced: the rows as the database gives them, and the three-pass count.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from sqlalchemy import select

from outreach import store
from outreach.context import SESSION_KINDS, History, attendance_from, client_context, load_histories
from outreach.models import SENT, clients, events, measurements, physicians
from tests.conftest import NOW
from tests.factories import queue_message, shipped_rules


def former_attendance(events_: list, start: datetime, end: datetime) -> dict:
    """``attendance_from`` as it was: three passes."""
    rows = [e for e in events_ if e.kind in SESSION_KINDS and e.occurred_at <= end]
    in_period = [r for r in rows if r.occurred_at >= start]
    attended = sum(r.kind == "session_attended" for r in in_period)
    missed = len(in_period) - attended
    streak = 0
    for row in reversed(rows):
        if row.kind != "session_missed":
            break
        streak += 1
    scheduled = attended + missed
    return {
        "attended": attended,
        "missed": missed,
        "scheduled": scheduled,
        "rate": round(100 * attended / scheduled) if scheduled else None,
        "consecutive_missed": streak,
    }


KINDS = st.sampled_from(
    ["session_attended", "session_missed", "session_missed", "reassessment", "adverse_event"]
)


@settings_(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(KINDS, st.integers(min_value=0, max_value=5)), max_size=30),
    start=st.integers(min_value=0, max_value=60),
    length=st.integers(min_value=0, max_value=60),
)
def test_attendance_in_one_pass_is_what_three_passes_gave(steps, start, length):
    day = datetime(2026, 9, 1, 12, tzinfo=UTC)
    history = []
    for kind, gap in steps:
        day += timedelta(days=gap)
        history.append(SimpleNamespace(kind=kind, occurred_at=day))
    begin = datetime(2026, 9, 1, tzinfo=UTC) + timedelta(days=start)
    end = begin + timedelta(days=length)
    assert attendance_from(history, begin, end) == former_attendance(history, begin, end)


def rows_history(conn, client_id: int) -> History:
    """A history of the database's own rows, every column, as ``load_history`` read it before."""
    client = conn.execute(select(clients).where(clients.c.id == client_id)).one()
    doctor = conn.execute(select(physicians).where(physicians.c.id == client.physician_id)).one()
    found = conn.execute(
        select(events).where(events.c.client_id == client_id).order_by(events.c.occurred_at, events.c.id)
    ).all()
    scores = conn.execute(
        select(*measurements.c["client_id", "instrument", "score", "measured_on"])
        .where(measurements.c.client_id == client_id)
        .order_by(measurements.c.instrument, measurements.c.measured_on)
    ).all()
    return History(client, doctor, found, scores, load_histories(conn, [client_id])[client_id].sent)


def test_every_context_from_bulk_histories_is_the_one_from_the_rows(demo_engine, settings):
    rules = [rule for rule in shipped_rules(settings) if rule.scope == "client"]
    compared = 0
    with store.read(demo_engine) as conn:
        ids = conn.execute(select(clients.c.id).order_by(clients.c.id)).scalars().all()
        bulk = load_histories(conn, ids)
        for client_id in ids:
            reference = rows_history(conn, client_id)
            fields = [(e.id, e.kind, e.occurred_at, e.note) for e in reference.events]
            assert [(e.id, e.kind, e.occurred_at, e.note) for e in bulk[client_id].events] == fields
            for rule in rules:
                kind = rule.event or rule.reply_event
                chosen = [e.id for e in reference.events if e.kind == kind][-1:] if kind else [None]
                for event_id in chosen:
                    expected = client_context(settings, rule, reference, NOW, event_id)
                    assert client_context(settings, rule, bulk[client_id], NOW, event_id) == expected
                    compared += 1
    assert compared >= 40


def test_only_the_clients_told_of_have_their_sent_updates_read(demo_engine, settings):
    """``told`` names the clients a reminder is drafted for; the others' log is not walked."""
    with store.read(demo_engine) as conn:
        first, second = conn.execute(select(clients.c.id).order_by(clients.c.id).limit(2)).scalars().all()
    sent_at = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    for client_id in (first, second):
        with store.write(demo_engine) as conn:
            event_id = conn.execute(
                events.insert().values(
                    client_id=client_id,
                    kind="adverse_event",
                    occurred_at=sent_at,
                    note="",
                    created_at=sent_at,
                )
            ).inserted_primary_key[0]
        queue_message(
            demo_engine, client_id=client_id, rule="adverse_event_alert", event_id=event_id, status=SENT,
            sent_at=sent_at,
        )  # fmt: skip
    with store.read(demo_engine) as conn:
        every = load_histories(conn, [first, second])
        some = load_histories(conn, [first, second], told=[second])
    assert every[first].sent and every[second].sent
    assert some[first].sent == {} and some[second].sent == every[second].sent
    assert some[first].events == every[first].events
