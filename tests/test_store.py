"""The database: migrations match the model, init is idempotent, the file is private."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from outreach import outbox, store
from outreach.models import metadata, new_message_id
from tests.factories import message_row


def test_migrations_create_exactly_the_model(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []


def test_init_is_idempotent_and_reports_the_revision(run_cli, settings):
    first = run_cli("init")
    second = run_cli("init")
    assert first.exit_code == second.exit_code == 0
    assert "revision" in second.stdout and first.stdout == second.stdout


def test_commands_refuse_an_uninitialised_database(run_cli):
    result = run_cli("log")
    assert result.exit_code == 1
    assert "outreach init" in result.stderr
    assert "Traceback" not in result.output


def test_sqlite_file_is_readable_by_its_owner_only(settings, tmp_path):
    engine = store.connect(f"sqlite:///{tmp_path / 'private.db'}")
    store.migrate(engine)
    engine.dispose()
    mode = stat.S_IMODE((tmp_path / "private.db").stat().st_mode)
    assert mode == 0o600


def test_sqlite_runs_in_wal_mode(tmp_path):
    engine = store.connect(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_sqlite_copies_its_log_into_the_database_every_80_mb_and_at_the_end(tmp_path):
    """Fewer, larger checkpoints (a plan rewrites the same index pages); the last connection still empties the log."""
    path = tmp_path / "log.db"
    engine = store.connect(f"sqlite:///{path}")
    store.migrate(engine)
    with engine.connect() as conn:
        assert (
            conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == store.WAL_CHECKPOINT_PAGES == 20_000
        )
    with store.write(engine) as conn:  # 6 MB of bodies
        outbox.insert_messages(conn, [message_row(html="<p>" + "x" * 10_000 + "</p>") for _ in range(600)])
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 6_000_000 > 1_000_000 > path.stat().st_size  # in the log, not copied yet
    engine.dispose()
    assert not wal.exists() or wal.stat().st_size == 0
    assert path.stat().st_size > 6_000_000


def test_only_transactions_asked_to_skip_the_disk_wait_do(engine):
    """Outcomes, claims and queued mail commit without fsync; everything else waits for the disk."""
    if store.is_postgres(engine):
        setting = "SHOW synchronous_commit"
        waits, skips = "on", "off"
    else:
        setting = "PRAGMA synchronous"
        waits, skips = 2, 1  # FULL, NORMAL
    with store.write(engine) as conn:
        assert conn.exec_driver_sql(setting).scalar() == waits
    with store.write(engine, durable=False) as conn:
        assert conn.exec_driver_sql(setting).scalar() == skips
    with store.write(engine) as conn:  # the same pooled connection, back to waiting
        assert conn.exec_driver_sql(setting).scalar() == waits


def test_a_write_on_the_driver_skips_the_disk_wait_too_and_leaves_the_connection_as_it_found_it(engine):
    """``driver_write`` (each outcome sent) commits as ``write(durable=False)`` does."""
    setting, skips, waits = (
        ("current_setting('synchronous_commit')", "off", "on")
        if store.is_postgres(engine)
        else ("(SELECT synchronous FROM pragma_synchronous)", "1", "2")
    )
    conn = store.connection(engine)
    try:
        with store.write(engine, on=conn) as same:
            same.exec_driver_sql("CREATE TABLE seen (setting VARCHAR(10))")
        assert store.driver_write(engine, conn, [(f"INSERT INTO seen SELECT {setting}", {})])
        with store.write(engine, on=conn) as same:  # SQLAlchemy's next transaction on it waits again
            assert str(same.exec_driver_sql(f"SELECT {setting}").scalar()) == waits
            assert same.exec_driver_sql("SELECT setting FROM seen").scalar() == skips
    finally:
        conn.close()


def test_a_write_on_the_driver_keeps_nothing_when_a_statement_changes_no_row(engine, monkeypatch):
    """On SQLite each statement must change one row; on PostgreSQL the one statement guards itself,
    pipelined, or a round trip a statement where libpq (before 14) has no pipeline."""
    conn = store.connection(engine)
    try:
        with store.write(engine, on=conn) as same:
            same.exec_driver_sql("CREATE TABLE lean (id INTEGER PRIMARY KEY, n INTEGER)")
            same.exec_driver_sql("INSERT INTO lean VALUES (1, 0)")
        bump, miss = "UPDATE lean SET n = n + 1 WHERE id = 1", "UPDATE lean SET n = 9 WHERE id = 2"
        if store.is_postgres(engine):
            from psycopg import Pipeline

            for pipelined in (True, False):
                monkeypatch.setattr(Pipeline, "is_supported", classmethod(lambda cls, p=pipelined: p))
                assert store.driver_write(engine, conn, [(bump, {})])
                assert not store.driver_write(engine, conn, [(miss, {})])
            with pytest.raises(ValueError, match="one statement on PostgreSQL"):
                store.driver_write(engine, conn, [(bump, {}), (bump, {})])
        else:
            assert store.driver_write(engine, conn, [(bump, ()), (bump, ())])
            assert not store.driver_write(engine, conn, [(bump, ()), (miss, ())])  # the first undone too
        with store.write(engine, on=conn) as same:
            assert same.exec_driver_sql("SELECT n FROM lean").scalar() == 2
    finally:
        conn.close()


def test_upgrading_a_database_with_data_keeps_the_data(tmp_path):
    """Every migration runs on a database that already holds messages and their trail."""
    engine = store.connect(f"sqlite:///{tmp_path / 'old.db'}")
    store.migrate(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO physicians (id, email, name, credentials, specialty, clinic, phone, fax, created_at, updated_at)"
            " VALUES (1, 'a@b.org', 'A B', 'MD', '', '', '', '', '2026-01-01', '2026-01-01')"
        )
        conn.exec_driver_sql(
            "INSERT INTO messages (id, rule, template, dedupe_key, physician_id, recipient, recipient_name, subject,"
            " html, text, priority, status, attempts, message_id, created_at, updated_at)"
            " VALUES (1, 'r', 't', 'k', 1, 'a@b.org', '', 's', '<p>x</p>', 'x', 0, 'sent', 1, '<m@b.org>',"
            " '2026-01-01', '2026-01-01')"
        )
        conn.exec_driver_sql(
            "INSERT INTO message_events (message_id, at, action, detail) VALUES (1, '2026-01-01', 'sent', '')"
        )
    revision = store.migrate(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT subject, status FROM messages").all() == [("s", "sent")]
        assert conn.exec_driver_sql("SELECT count(*) FROM message_events").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert revision >= "0004"
    engine.dispose()


def test_head_revision_read_from_the_files_is_alembics():
    """``store.head_revision`` spares every command importing alembic; it must agree with it."""
    assert store.head_revision() == ScriptDirectory(str(store.MIGRATIONS)).get_current_head()


def test_commands_refuse_a_database_that_is_out_of_date(run_cli, settings):
    engine = store.connect(settings.database_url)
    store.migrate(engine, "0004")
    engine.dispose()
    result = run_cli("log")
    assert result.exit_code == 1
    assert result.stderr.endswith("is out of date: run `outreach init`\n")
    assert run_cli("init").exit_code == 0
    assert run_cli("log").exit_code == 0


def test_the_migration_to_0013_reads_each_earlier_resend_from_its_trail(tmp_path):
    """``messages.resent_from`` is filled in from the words ``records.resend`` wrote before the column."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from outreach.models import message_events, messages
    from outreach.review import message_detail

    engine = store.connect(f"sqlite:///{tmp_path / 'old.db'}")
    store.migrate(engine, "0012")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        for number in (1, 2, 3):
            conn.execute(
                messages.insert().values(
                    id=number, rule="r", template="r", dedupe_key=f"k{number}", recipient="a@b.org",
                    subject="s", status="sent", message_id=f"<{number}@b.org>", created_at=at, updated_at=at,
                )
            )  # fmt: skip
        conn.execute(
            message_events.insert(),
            [
                {"message_id": 1, "at": at, "action": "resent", "detail": "resent as message 2 by ann"},
                {"message_id": 2, "at": at, "action": "queued", "detail": "resend of message 1"},
                {"message_id": 3, "at": at, "action": "queued", "detail": ""},
            ],
        )
    store.migrate(engine)
    with engine.connect() as conn:
        origins = dict(conn.execute(select(messages.c.id, messages.c.resent_from)).all())
        first, second = message_detail(conn, 1), message_detail(conn, 2)
    engine.dispose()
    assert origins == {1: None, 2: 1, 3: None}
    assert first["resent_as"] == [2] and second["resent_from"] == 1


def test_message_ids_are_ours_unguessable_and_grow_at_the_end_of_their_index():
    """Time first (the unique index is appended to, not changed all over); 64 random bits after."""
    ids = [new_message_id("rehab.example.org") for _ in range(2_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"<[0-9a-f]{16}\.[0-9a-f]{16}@rehab\.example\.org>", i) for i in ids)
    times = [i[1:17] for i in ids]
    assert times == sorted(times)
    assert len({i[18:34] for i in ids}) == len(ids)  # the random parts differ too
