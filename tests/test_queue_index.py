"""The queue: a claim reads the waiting mail in claim order and stops at its batch.

The claim used to read every waiting message through a status index and sort
them all, so draining a backlog cost its length squared over the batch size.
``ix_messages_claim`` holds the waiting mail only, in claim order; these
check that both databases take it, and that migration 0015 keeps every row.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import event, insert, select

from outreach import store
from outreach.dispatcher import claim
from outreach.models import PRIORITIES, SENT, messages
from tests.conftest import NOW
from tests.factories import message_row, queue_message


def log_rows(count: int, **overrides) -> list[dict]:
    """Log entries without bodies: enough history for PostgreSQL to plan as it would in a practice."""
    rows = []
    for _ in range(count):
        row = message_row(**overrides)
        del row["html"], row["text"]
        rows.append(row)
    return rows


def claim_statement(engine, settings) -> tuple[str, object]:
    """The claim's first statement (the SELECT of what to lease) and its parameters."""
    seen: list[tuple[str, object]] = []

    def listener(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        claim(engine, settings, 50, NOW, "worker-a")
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    return next((sql, args) for sql, args in seen if sql.lstrip().upper().startswith("SELECT"))


def plan_of(engine, sql: str, args: object) -> str:
    with store.read(engine) as conn:
        if store.is_postgres(conn):
            rows = conn.exec_driver_sql(f"EXPLAIN {sql}", args)
        else:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", args)
        return "\n".join(str(row[-1]) for row in rows)


def generic_plan_of(engine, sql: str, args: dict) -> str:
    """PostgreSQL's plan for the statement prepared, made for any values (as once psycopg prepares it)."""
    names = re.findall(r"%\((\w+)\)s", sql)
    numbered = re.sub(r"%\((\w+)\)s", lambda found: f"${names.index(found.group(1)) + 1}", sql)
    with store.read(engine) as conn:
        conn.exec_driver_sql(f"PREPARE claim_query AS {numbered}")
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        values = ", ".join(f"'{args[name]}'" for name in names)
        rows = conn.exec_driver_sql(f"EXPLAIN EXECUTE claim_query({values})")
        return "\n".join(str(row[-1]) for row in rows)


def test_the_claim_walks_the_queue_index_and_sorts_nothing(engine, settings):
    with store.write(engine) as conn:
        conn.execute(insert(messages), log_rows(3000, status=SENT, sent_at=NOW, next_attempt_at=None))
        conn.execute(insert(messages), log_rows(300, priority=PRIORITIES["urgent"]))
    queue_message(engine)
    with store.write(engine) as conn:
        if store.is_postgres(conn):
            conn.exec_driver_sql("ANALYZE messages")
    sql, args = claim_statement(engine, settings)
    plans = [plan_of(engine, sql, args)]
    if store.is_postgres(engine):
        plans.append(generic_plan_of(engine, sql, args))
    for plan in plans:
        assert "ix_messages_claim" in plan, plan
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan


def test_claims_keep_their_order_through_the_queue_index(engine, settings):
    normal = [queue_message(engine) for _ in range(3)]
    urgent = [queue_message(engine, priority=PRIORITIES["urgent"]) for _ in range(2)]
    later = queue_message(engine, priority=PRIORITIES["urgent"], next_attempt_at=NOW + timedelta(hours=1))
    first = claim(engine, settings, 3, NOW, "worker-a")
    rest = claim(engine, settings, 10, NOW, "worker-b")
    assert [row.id for row in first] == [*urgent, normal[0]]
    assert [row.id for row in rest] == normal[1:]
    assert later not in {row.id for row in first + rest}


@pytest.mark.parametrize("lookup", ["digest_id", "resent_from"])
def test_links_set_on_few_rows_are_indexed_on_those_rows_only(engine, lookup):
    """A digest's updates and a message's resends are still found through their index."""
    source = queue_message(engine)
    linked = queue_message(engine, **{lookup: source})
    column = messages.c[lookup]
    query = select(messages.c.id).where(column == source)
    with store.read(engine) as conn:
        assert list(conn.execute(query).scalars()) == [linked]
        if store.is_postgres(conn):
            definition = "SELECT indexdef FROM pg_indexes WHERE indexname = %s"
        else:
            definition = "SELECT sql FROM sqlite_master WHERE name = ?"
            sql = str(query.compile(conn))
            assert f"ix_messages_{lookup}" in plan_of(engine, sql, (source,))
        made = conn.exec_driver_sql(definition, (f"ix_messages_{lookup}",)).scalar_one()
    assert f"{lookup} IS NOT NULL" in made, made


def test_migration_0015_keeps_every_message_and_goes_back(settings, tmp_path):
    url = f"sqlite:///{tmp_path / 'upgrade.db'}"
    engine = store.connect(url)
    try:
        store.migrate(engine, "0014")
        source = queue_message(engine)
        member = queue_message(engine, digest_id=source)
        queue_message(engine, status=SENT, sent_at=NOW, next_attempt_at=None)
        assert store.migrate(engine) == "0015"
        assert indexes(engine) >= {"ix_messages_claim", "ix_messages_digest_id"}
        assert "ix_messages_queue" not in indexes(engine)
        with store.read(engine) as conn:
            assert (
                conn.execute(select(messages.c.id).where(messages.c.digest_id == source)).scalar() == member
            )
        assert [row.id for row in claim(engine, settings.with_(database_url=url), 10, NOW, "w")] == [source]
        with engine.connect() as conn, conn.begin():
            command.downgrade(store._alembic_config(conn), "0014")
        assert "ix_messages_queue" in indexes(engine) and "ix_messages_claim" not in indexes(engine)
    finally:
        engine.dispose()


def indexes(engine) -> set[str]:
    with store.read(engine) as conn:
        return set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'").scalars())
