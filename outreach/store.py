"""The database: engine set-up, transactions and schema migrations.

SQLite is the embedded default (one file, WAL, writers serialised with
``BEGIN IMMEDIATE`` so a read-then-write never fails half way with
"database is locked"). PostgreSQL is for several daemons on several hosts.
The schema is created and upgraded only through alembic migrations.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ClauseElement, Connection, Dialect, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    StatementError,
)
from sqlalchemy.sql.compiler import SQLCompiler

from outreach.errors import DatabaseError, SettingsError

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# ``revision = "0005"`` and ``down_revision = "0004"`` in a migration file (either quotes).
REVISION_LINE = re.compile(r"""^(revision|down_revision) = ["']([^"']+)["']$""", re.MULTILINE)
# How long a SQLite writer waits for another before "database is locked" when the
# caller does not say (``Settings.db_busy_seconds``, ``OUTREACH_DB_BUSY_SECONDS``, says).
SQLITE_BUSY_SECONDS = 30.0


URL_KEY = "OUTREACH_DATABASE_URL"


def connect(url: str, busy: float = SQLITE_BUSY_SECONDS) -> Engine:
    """An engine for the URL; SQLite gets WAL, foreign keys and immediate writes.

    A driver that is not installed, or a SQLite file that cannot be created,
    is one line naming ``OUTREACH_DATABASE_URL`` (``SettingsError``).
    """
    parsed = make_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, busy)
        return create_engine(parsed, pool_pre_ping=True)
    except (ModuleNotFoundError, NoSuchModuleError) as exc:
        raise SettingsError(_missing_driver(parsed, exc)) from None


def _missing_driver(url: URL, exc: Exception) -> str:
    name = getattr(exc, "name", None) or url.get_driver_name()
    if url.get_backend_name() == "postgresql":
        fix = "use postgresql+psycopg:// (installed with outreach[postgres])"
    else:
        fix = "use sqlite:///FILE or postgresql+psycopg://"
    return f"{URL_KEY}: the {name} driver is not installed; {fix}"


# Copy the write-ahead log into the database every 80 MB (20,000 pages of 4 kB), not
# every 4 MB (SQLite's default). Each copy waits for the disk, and writes every page
# changed since the last one; a plan's chunks change the same index pages again and
# again. On the benchmark's 20,000 alerts, plan and render took 0.94-1.02 ms a message
# with the default, 0.66-0.71 ms with this (and 0.2 s more when the last connection closes).
WAL_CHECKPOINT_PAGES = 20_000


def _sqlite_engine(url: URL, busy: float) -> Engine:
    if url.database and url.database != ":memory:":
        _create_private_file(Path(url.database))
    engine = create_engine(url, connect_args={"timeout": busy})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: object) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("readonly"):
            conn.exec_driver_sql("BEGIN")
            return
        level = "FULL" if options.get("durable", True) else "NORMAL"
        _sqlite_sync(conn.connection.info, conn.exec_driver_sql, level)
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _sqlite_sync(info: dict[Any, Any], execute: Callable[[str], object], level: str) -> None:
    """Set how hard the next commit waits for the disk (only when it changes); ``info``: the connection's."""
    if info.get("synchronous") != level:
        execute(f"PRAGMA synchronous={level}")
        info["synchronous"] = level


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only (it holds health data)."""
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            f"{URL_KEY}: cannot create the folder {path.parent}: {_blocked(path, exc)}"
        ) from None
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise SettingsError(f"{URL_KEY}: cannot create the database file {path}: {exc.strerror}") from None
    os.close(fd)


def _blocked(path: Path, exc: OSError) -> str:
    """A file where a folder should be, or else the system's reason."""
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a folder"
    return exc.strerror or type(exc).__name__


def loose_mode(url: str) -> str | None:
    """A warning if the SQLite file (or its WAL) can be read or written by group or others; else None.

    The file holds health information: it is created owner-only, but a copy
    or a restore from backup may not be.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(parsed.database)
    loose = {}
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except OSError:
            continue  # not there (yet): SQLite creates it as the database file is
        if mode & 0o077:
            loose[file] = mode
    if not loose:
        return None
    first, mode = next(iter(loose.items()))
    return (
        f"database file {first} has mode {mode:04o}: group or others can read or write health data; "
        f"run chmod 600 {' '.join(map(str, loose))}"
    )


IN_LIMIT = 500  # ids per ``IN (...)`` list: SQLite and PostgreSQL both take these comfortably


def chunks(items: Sequence[T], size: int = IN_LIMIT) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``: bounded IN lists, bounded transactions."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def is_postgres(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


@contextmanager
def write(engine: Engine, durable: bool = True, on: Connection | None = None) -> Iterator[Connection]:
    """One write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success.

    ``durable=False`` commits without waiting for the disk (SQLite WAL
    ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``): the
    transaction survives the process being killed, a power cut may undo it,
    never half of it. For records that are cheap to lose and costly to wait
    for, such as one delivery outcome per message sent. ``on``: a connection
    the caller keeps open for many such transactions.
    """
    with _translated(engine), ExitStack() as stack:
        conn = on if on is not None else stack.enter_context(engine.connect())
        if not durable:
            conn = conn.execution_options(durable=False)
        with conn.begin():
            if not durable and is_postgres(conn):
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn


class Prepared:
    """A statement compiled once for a dialect, its values made ready the way SQLAlchemy makes them.

    For the few statements run once for every message sent (``driver_write``):
    SQLAlchemy's own execution costs more than the database's work on them.
    Values go through each column's type (``UTCDateTime`` included), so the
    rows written are the rows SQLAlchemy would write.
    """

    def __init__(self, statement: ClauseElement, dialect: Dialect, column_keys: Sequence[str] | None = None):
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        assert isinstance(compiled, SQLCompiler)  # (what every DML statement compiles to)
        self.sql = compiled.string
        names = compiled.bind_names.items()
        # The statement's own literals (status = 'sending'); the rest come with each call.
        self._fixed = {name: bind.effective_value for bind, name in names if not bind.required}
        self._order = compiled.positiontup if dialect.positional else None
        self._convert = {
            name: convert
            for bind, name in names
            if (convert := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    def args(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        params = {**self._fixed, **values}
        for name, convert in self._convert.items():
            params[name] = convert(params[name])
        return [params[name] for name in self._order] if self._order is not None else params


def driver_write(engine: Engine, on: Connection, statements: Sequence[tuple[str, Any]]) -> bool:
    """Statements that each change one row, in one transaction committed without waiting for the disk.

    What ``write(engine, durable=False, on=on)`` does, for ``Prepared``
    statements run once for every message sent. True when each changed one
    row. On SQLite the first that changes none rolls back the transaction:
    False, nothing kept. On PostgreSQL the transaction is one round trip to
    the server (psycopg's pipeline), committed before its row count comes
    back: give it one statement that writes nothing unless it all applies.
    A database error comes out as ``write`` gives it.
    """
    raw: Any = on.connection.dbapi_connection  # (reconnected by ``on.connection`` if it was invalidated)
    sqlite = not is_postgres(engine)
    cursor = raw.cursor()
    try:
        if sqlite:
            return _sqlite_lean(on.connection.info, cursor, statements)
        (sql, args), *more = statements
        if more:
            raise ValueError("one statement on PostgreSQL: its commit does not wait for its row count")
        with _pipeline(raw):
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
            cursor.execute(sql, args)
            raw.commit()
        return bool(cursor.rowcount == 1)
    except engine.dialect.loaded_dbapi.Error as exc:
        if engine.dialect.is_disconnect(exc, raw, cursor):
            on.invalidate()  # as SQLAlchemy does: the pool must not try to reset a dead connection
        else:
            _roll_back(raw, sqlite)
        wrapped = DBAPIError.instance(None, None, exc, engine.dialect.loaded_dbapi.Error)
        raise _translate(engine, wrapped) from None
    except BaseException:
        _roll_back(raw, sqlite)
        raise
    finally:
        with suppress(Exception):
            cursor.close()


def _pipeline(raw: Any) -> AbstractContextManager[Any]:
    """psycopg's pipeline where its libpq has one (14 and later); else a round trip a statement."""
    from psycopg import Pipeline  # (only on PostgreSQL, whose driver is psycopg)

    return raw.pipeline() if Pipeline.is_supported() else nullcontext()


def _sqlite_lean(info: dict, cursor: Any, statements: Sequence[tuple[str, Any]]) -> bool:
    """``driver_write`` on SQLite: each statement must change one row, checked before the next runs."""
    _sqlite_sync(info, cursor.execute, "NORMAL")
    cursor.execute("BEGIN IMMEDIATE")
    for sql, args in statements:
        cursor.execute(sql, args)
        if cursor.rowcount != 1:
            cursor.execute("ROLLBACK")
            return False
    cursor.execute("COMMIT")
    return True


def _roll_back(raw: Any, sqlite: bool) -> None:
    with suppress(Exception):
        if not sqlite:
            raw.rollback()
        elif raw.in_transaction:
            raw.execute("ROLLBACK")


def connection(engine: Engine) -> Connection:
    """An open connection for many transactions (``write(..., on=)``); errors as ``write`` gives them."""
    with _translated(engine):
        return engine.connect()


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: does not block writers."""
    with _translated(engine), engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        with conn.begin():
            yield conn


@contextmanager
def _translated(engine: Engine) -> Iterator[None]:
    """Database errors as one line a user can act on (see ``_translate``)."""
    try:
        yield
    except StatementError as exc:
        error = _translate(engine, exc)
        if error is exc:
            raise
        raise error from None


def _translate(engine: Engine, exc: StatementError) -> Exception:
    """The database is unreachable or refused a value: one line a user can act on.

    Anything else (a unique key taken, say) is the caller's to handle, as it was.
    """
    if isinstance(exc, OperationalError | InterfaceError):
        return _unavailable(engine, exc)
    if isinstance(exc, DataError) or not isinstance(exc, DBAPIError):
        # A value the database cannot store (too long, NUL byte, date out of
        # range): nothing was written, the transaction was rolled back.
        return DatabaseError(f"database refused a value: {_reason(exc)}")
    return exc


def _reason(exc: StatementError) -> str:
    cause = exc.orig if exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _unavailable(engine: Engine, exc: StatementError) -> DatabaseError:
    where = engine.url.render_as_string(hide_password=True)
    reason = _reason(exc)
    if "no such table" in reason or ("does not exist" in reason and "relation" in reason):
        return DatabaseError(f"database {where} is not initialised: run `outreach init`")
    return DatabaseError(f"database {where}: {reason}")


def _alembic_config(conn: Connection) -> Config:
    from alembic.config import Config  # here, not at the top: alembic takes a quarter second to import

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: Engine, revision: str = "head") -> str:
    """Create or upgrade the schema to the newest migration; returns its revision.

    On SQLite, foreign keys are off while a migration runs: alembic rebuilds
    a table to change it, and dropping the old copy would trip them. They are
    checked once the migration is done.
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection if engine.dialect.name == "sqlite" else None
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    command.upgrade(_alembic_config(conn), revision)
                    if raw is not None and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                        raise DatabaseError(
                            "migration left rows pointing at missing rows; nothing was changed"
                        )
                    return MigrationContext.configure(conn).get_current_revision() or ""
            finally:
                if raw is not None:
                    raw.execute("PRAGMA foreign_keys=ON")
    except (OperationalError, InterfaceError) as exc:
        raise _unavailable(engine, exc) from None


def head_revision() -> str:
    """The newest migration's revision, read from the migration files themselves.

    Every command checks the database against it, and alembic takes longer to
    import than ``outreach log`` may take in all; a test holds this equal to
    alembic's own answer.
    """
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict(REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        revisions.add(found["revision"])
        parents.add(found.get("down_revision"))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations in {MIGRATIONS} have {len(heads)} heads, not one")
    return heads.pop()


def current_revision(conn: Connection) -> str | None:
    """The revision alembic recorded in the database; None if it recorded none."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    found = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(found) > 1:
        raise DatabaseError(f"database records {len(found)} schema revisions, not one: {', '.join(found)}")
    return found[0] if found else None


def require_current(engine: Engine) -> None:
    """Refuse to work on a database whose schema is missing or out of date."""
    head = head_revision()
    with read(engine) as conn:
        current = current_revision(conn)
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        state = "not initialised" if current is None else "out of date"
        raise DatabaseError(f"database {where} is {state}: run `outreach init`")
