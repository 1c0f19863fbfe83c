"""The database: migrations match the model, init is idempotent, the file is private."""

from __future__ import annotations

import stat

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from outreach import store
from outreach.models import metadata


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
