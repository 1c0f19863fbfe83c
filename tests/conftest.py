"""Shared fixtures: real SQLite files, real SMTP servers, the CLI runner."""

from __future__ import annotations

import os
import shutil
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from outreach import store
from outreach.cli import cli
from outreach.demo import load_demo
from outreach.settings import Settings
from tests.smtp_server import PASSWORD, USERNAME, SMTPServer

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)  # a Wednesday, 10:00 in New York

# Set by .ci/run after it starts a throwaway server: database-facing tests
# then run on SQLite and again on PostgreSQL. Read now, before the autouse
# fixture below clears OUTREACH_* variables.
POSTGRES_URL = os.environ.get("OUTREACH_TEST_POSTGRES_URL", "")
DATABASES = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]
IMAP_SERVER = os.environ.get("OUTREACH_TEST_IMAP", "")  # .ci/run's Dovecot (tests/imap_server.py)
# Replays the crash test's kill times (it prints the seed it used).
CRASH_SEED = os.environ.get("OUTREACH_TEST_CRASH_SEED", "")


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outreach.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Defaults pointing at this checkout's rules and templates and a fresh database."""
    return Settings(
        database_url=database_url,
        outbox_dir=tmp_path / "outbox",
        campaigns_dir=ROOT / "outreach" / "campaigns",
        templates_dir=ROOT / "outreach" / "templates" / "email",
        timezone="America/New_York",
        from_addr="updates@rehab.example.org",
        practice_name="Summit Post-Rehab",
        practice_address="12 Main Street, Springfield",
        sender_name="Alex Morgan",
        sender_credentials="MS, ACSM-CEP",
        retry_base_seconds=60,
    )


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file at the newest schema, made once: each test starts from a copy of it."""
    path = tmp_path_factory.mktemp("template") / "migrated.db"
    engine = store.connect(f"sqlite:///{path}")
    store.migrate(engine)
    engine.dispose()  # the last connection closed: the WAL is folded into the file
    return path


@pytest.fixture(scope="session")
def demo_sqlite(
    migrated_sqlite: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Settings], Path]:
    """SQLite files with the demo practice loaded at NOW, one per time zone, each made once.

    The demo's dates depend only on NOW and the practice's zone, so a copy of
    the file is the database ``load_demo`` would have made (its audit rows
    name this folder's CSV files rather than the test's own).
    """
    made: dict[str, Path] = {}

    def template(settings: Settings) -> Path:
        if settings.timezone not in made:
            folder = tmp_path_factory.mktemp("demo-template")
            path = folder / "demo.db"
            shutil.copyfile(migrated_sqlite, path)
            url = f"sqlite:///{path}"
            engine = store.connect(url)
            load_demo(engine, settings.with_(database_url=url), folder / "demo-csv", NOW)
            engine.dispose()  # the WAL folded into the file before it is copied
            made[settings.timezone] = path
        return made[settings.timezone]

    return template


@pytest.fixture
def engine(
    request: pytest.FixtureRequest,
    settings: Settings,
    migrated_sqlite: Path,
    demo_sqlite: Callable[[Settings], Path],
):
    """The test's database at the newest schema (SQLite: a copy of one migrated file, for speed).

    A test that asks for ``demo_engine`` gets (on SQLite) a copy of the demo
    database straight away, instead of an empty one the demo is imported into.
    """
    url = make_url(settings.database_url)
    copied = url.get_backend_name() == "sqlite" and bool(url.database) and not Path(url.database).exists()
    if copied:
        demo = "demo_engine" in request.fixturenames
        shutil.copyfile(demo_sqlite(settings) if demo else migrated_sqlite, url.database)
        os.chmod(url.database, 0o600)
        request.node.stash[DEMO_COPIED] = demo
    engine = store.connect(settings.database_url)
    if not copied:  # a copy is at the newest schema already; PostgreSQL gets the whole schema
        store.migrate(engine)
    yield engine
    engine.dispose()


DEMO_COPIED = pytest.StashKey[bool]()  # the test's SQLite file is a copy of the demo database


@pytest.fixture
def demo_engine(request: pytest.FixtureRequest, engine, settings: Settings, tmp_path: Path):
    """The database with the demo practice loaded, dated relative to NOW (SQLite: copied, see ``engine``)."""
    if not request.node.stash.get(DEMO_COPIED, False):
        load_demo(engine, settings, tmp_path / "demo-csv", NOW)
    return engine


@pytest.fixture
def smtp_server():
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_smtp_server(tls_ca: trustme.CA):
    """STARTTLS required, AUTH required, certificate signed by a test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = SMTPServer(tls_context=context).start()
    yield server
    server.stop()


@pytest.fixture
def ssl_smtp_server(tls_ca: trustme.CA):
    """Implicit TLS (``OUTREACH_SMTP_SECURITY=ssl``), AUTH required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = SMTPServer(tls_context=context, implicit_tls=True).start()
    yield server
    server.stop()


@pytest.fixture
def ca_file(tls_ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


def smtp_settings(settings: Settings, server: SMTPServer, **changes) -> Settings:
    values = {
        "email_backend": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": server.port,
        "smtp_security": "none",
        "smtp_timeout": 5.0,
    }
    values.update(changes)
    return settings.with_(**values)


def tls_settings(settings: Settings, server: SMTPServer, ca_file: Path, **changes) -> Settings:
    from outreach.settings import Secret

    values = {
        "smtp_host": "localhost",
        "smtp_security": "starttls",
        "smtp_username": USERNAME,
        "smtp_password": Secret(PASSWORD),
        "smtp_ca_file": ca_file,
    }
    values.update(changes)
    return smtp_settings(settings, server, **values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The OUTREACH_* environment that produces these settings (for CLI tests)."""
    env = {
        "OUTREACH_DATABASE_URL": settings.database_url,
        "OUTREACH_EMAIL_BACKEND": settings.email_backend,
        "OUTREACH_OUTBOX_DIR": str(settings.outbox_dir),
        "OUTREACH_CAMPAIGNS_DIR": str(settings.campaigns_dir),
        "OUTREACH_TEMPLATES_DIR": str(settings.templates_dir),
        "OUTREACH_TIMEZONE": settings.timezone,
        "OUTREACH_FROM": settings.from_addr,
        "OUTREACH_PRACTICE_NAME": settings.practice_name,
        "OUTREACH_PRACTICE_ADDRESS": settings.practice_address,
        "OUTREACH_SEND_WINDOW": settings.send_window,
        "OUTREACH_WEEKLY_CAP": str(settings.weekly_cap),
        "OUTREACH_SENDER_NAME": settings.sender_name,
        "OUTREACH_SENDER_CREDENTIALS": settings.sender_credentials,
        "OUTREACH_SMTP_HOST": settings.smtp_host,
        "OUTREACH_SMTP_PORT": str(settings.smtp_port),
        "OUTREACH_SMTP_SECURITY": settings.smtp_security,
        "OUTREACH_SMTP_TIMEOUT": str(settings.smtp_timeout),
        "OUTREACH_SMTP_USERNAME": settings.smtp_username,
        "OUTREACH_SMTP_PASSWORD": settings.smtp_password.reveal(),
    }
    if settings.smtp_ca_file:
        env["OUTREACH_SMTP_CA_FILE"] = str(settings.smtp_ca_file)
    return env


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch):
    """No OUTREACH_* variable from the machine leaks into a test."""
    for key in list(os.environ):
        if key.startswith("OUTREACH_"):
            monkeypatch.delenv(key)


@pytest.fixture
def run_cli(settings: Settings):
    """Invoke the CLI in-process with the environment for ``settings`` (or given ones)."""

    def invoke(*args: str, env_settings: Settings | None = None, extra_env: dict | None = None):
        env = settings_env(env_settings or settings)
        env.update(extra_env or {})
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


def checked_cli(run_cli, cfg: Settings):
    """``run_cli`` bound to ``cfg``; a call fails the test unless the command exits 0 (or ``ok=False``)."""

    def cli(*args: str, ok: bool = True):
        result = run_cli(*args, env_settings=cfg)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return cli


def pytest_configure(config: pytest.Config) -> None:
    """``slow``: real processes killed and restarted, thousands of messages; run in CI all the same."""
    config.addinivalue_line(
        "markers", "slow: a reliability test with real processes (seconds to a minute); never skipped in CI"
    )


@pytest.fixture
def quick_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cheap argon2 for the many logins of the console's tests (``test_web_accounts`` uses the real one)."""
    from argon2 import PasswordHasher

    from outreach import accounts

    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def console(engine, settings: Settings, quick_passwords):
    """The console's app on a migrated database, with a clock the test can move on."""
    from outreach.web import create_app
    from tests.web_support import Clock, Console

    clock = Clock(NOW)
    return Console(create_app(settings, engine, clock), engine, clock)


@pytest.fixture
def demo_console(demo_engine, settings: Settings, quick_passwords):
    """The console over the demo practice (clients, physicians, events, measures; nothing sent yet)."""
    from outreach.web import create_app
    from tests.web_support import Clock, Console

    clock = Clock(NOW)
    return Console(create_app(settings, demo_engine, clock), demo_engine, clock)


@pytest.fixture(scope="session")
def imap_server():
    """The real Dovecot IMAP server (``tests/imap_server.py``): ``.ci/run``'s (``OUTREACH_TEST_IMAP``),
    else one started for this session with ``.ci/dovecot.sh`` when Dovecot is installed. Without
    either the test is skipped, and fails under ``CI=true``."""
    from tests.imap_server import ImapServer, dovecot_installed

    def unavailable(reason: str):
        if os.environ.get("CI") == "true":
            pytest.fail(f"no IMAP server: {reason}", pytrace=False)
        pytest.skip(f"no IMAP server: {reason}")

    if IMAP_SERVER:
        yield ImapServer.parse(IMAP_SERVER)
        return
    if not dovecot_installed():
        unavailable(
            "OUTREACH_TEST_IMAP is not set and Dovecot is not installed (apt-get install dovecot-imapd)"
        )
    try:
        server = ImapServer.start()
    except RuntimeError as exc:
        unavailable(f"OUTREACH_TEST_IMAP is not set and .ci/dovecot.sh could not start one: {exc}")
    yield server
    server.stop()


@pytest.fixture
def imap_user(imap_server):
    """A fresh user with an empty mailbox on ``imap_server`` (``.name``, ``.password``, ``.maildir``)."""
    return imap_server.add_user()
