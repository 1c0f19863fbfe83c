"""Combining and capping costs a fixed number of queries, not one or two per physician.

A batch of new referrals makes thousands of physicians with one update each;
looking each one's cap up alone made combining the slow part of planning
(and on SQLite, with ``physician_id = ?``, it took an index that scans the
whole log). These count the statements, not the seconds.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, insert

from outreach import digest, store
from outreach.models import PRIORITIES, SENT, physicians
from tests.conftest import NOW
from tests.factories import message, queue_message, renderer, shipped_rules


def add_physicians(engine, count: int, weekly_cap: int | None = None) -> list[int]:
    with store.write(engine) as conn:
        return [
            conn.execute(
                insert(physicians)
                .values(
                    email=f"dr{n}@clinic{count}.example.org",
                    name=f"Doctor {n}",
                    weekly_cap=weekly_cap,
                    created_at=NOW,
                    updated_at=NOW,
                )
                .returning(physicians.c.id)
            ).scalar_one()
            for n in range(count)
        ]


def statements_while(engine, action) -> int:
    seen: list[str] = []
    listener = lambda *args: seen.append(args[2])  # noqa: E731 (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    return len(seen)


def one_update_each(engine, doctors: list[int]) -> list[int]:
    return [
        queue_message(engine, physician_id=doctor, priority=PRIORITIES["normal"], next_attempt_at=None)
        for doctor in doctors
    ]


def test_batching_many_physicians_costs_what_batching_a_few_does(engine, settings):
    rules, templates = shipped_rules(settings), renderer(settings.templates_dir)

    def batch() -> None:
        digest.batch(engine, settings, templates, rules, NOW)

    one_update_each(engine, add_physicians(engine, 3))
    few = statements_while(engine, batch)
    one_update_each(engine, add_physicians(engine, 60))
    many = statements_while(engine, batch)
    assert many == few


def test_each_physician_keeps_their_own_cap_when_looked_up_together(engine, settings):
    capped, free = add_physicians(engine, 2, weekly_cap=1)
    queue_message(
        engine, physician_id=capped, priority=PRIORITIES["normal"], status=SENT,
        sent_at=NOW - timedelta(days=1), next_attempt_at=None,
    )  # fmt: skip
    held, going = one_update_each(engine, [capped, free])
    report = digest.batch(engine, settings, renderer(settings.templates_dir), shipped_rules(settings), NOW)
    assert report.held == 1
    assert message(engine, held).not_before is not None
    assert message(engine, going).not_before is None


def test_sqlite_is_told_which_index_finds_the_recent_sends(tmp_path):
    """Without statistics SQLite took the status or the digest index: a read of the whole log.

    With a chunk's worth of physicians it does so even on an empty database,
    so without ``INDEXED BY`` this fails.
    """
    engine = store.connect(f"sqlite:///{tmp_path / 'cap.db'}")
    store.migrate(engine)
    physicians = ", ".join(str(n) for n in range(1, 201))
    with store.read(engine) as conn:
        for query in digest._cap_queries("sqlite"):
            sql = str(query.compile(dialect=engine.dialect)).replace(
                "(__[POSTCOMPILE_ids])", f"({physicians})"
            )
            plan = " ".join(row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", (0, NOW)))
            assert "USING INDEX ix_messages_cap (physician_id=? AND priority=? AND status=" in plan, plan
