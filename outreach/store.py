"""The database: engine set-up, transactions and schema migrations.

SQLite is the embedded default (one file, WAL, writers serialised with
``BEGIN IMMEDIATE`` so a read-then-write never fails half way with
"database is locked"). PostgreSQL is for several daemons on several hosts.
The schema is created and upgraded only through alembic migrations.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from outreach.errors import DatabaseError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_SECONDS = 30


def connect(url: str) -> Engine:
    """An engine for the URL; SQLite gets WAL, foreign keys and immediate writes."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return create_engine(parsed, pool_pre_ping=True)


def _sqlite_engine(url) -> Engine:
    if url.database and url.database != ":memory:":
        _create_private_file(Path(url.database))
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection):
        if conn.get_execution_options().get("readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only (it holds health data)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def is_postgres(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """One write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
    try:
        with engine.begin() as conn:
            yield conn
    except OperationalError as exc:
        raise _unavailable(engine, exc) from None


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: does not block writers."""
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(readonly=True)
            with conn.begin():
                yield conn
    except OperationalError as exc:
        raise _unavailable(engine, exc) from None


def _unavailable(engine: Engine, exc: OperationalError) -> DatabaseError:
    where = engine.url.render_as_string(hide_password=True)
    reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc).splitlines()[0]
    if "no such table" in reason or ("does not exist" in reason and "relation" in reason):
        return DatabaseError(f"database {where} is not initialised: run `outreach init`")
    return DatabaseError(f"database {where}: {reason}")


def _alembic_config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: Engine) -> str:
    """Create or upgrade the schema to the newest migration; returns its revision."""
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "head")
            return MigrationContext.configure(conn).get_current_revision() or ""
    except OperationalError as exc:
        raise _unavailable(engine, exc) from None


def require_current(engine: Engine) -> None:
    """Refuse to work on a database whose schema is missing or out of date."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    with read(engine) as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        state = "not initialised" if current is None else "out of date"
        raise DatabaseError(f"database {where} is {state}: run `outreach init`")
