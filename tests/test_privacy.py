"""Secrets and privacy: the SMTP password never shows; subjects never carry a diagnosis.

Every command a practice runs — init, check, import, plan, send, run, log,
status — is run with DEBUG logging against a real STARTTLS server that
requires a login, on the happy path and on failure paths (a wrong password,
an unreachable database with a password in its URL). Nothing printed or
logged, and nothing in the database, contains the password. The SQLite
file, which holds health information, is readable by its owner only.
"""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from outreach import store
from outreach.models import messages, metadata, utcnow
from outreach.settings import Secret
from tests.conftest import NOW, settings_env, tls_settings
from tests.service_helpers import Daemon, service_env, wait_until
from tests.smtp_server import PASSWORD

WRONG_PASSWORD = "Wr0ng-Pa55-QQZZX"
DB_PASSWORD = "Db-Pa55-KKJJW"
DIAGNOSIS = "Zyxtrophic tendinosis"
SECRETS = (PASSWORD, WRONG_PASSWORD, DB_PASSWORD)


def _day(offset: int) -> str:
    return (NOW + timedelta(days=offset)).date().isoformat()


def write_practice(folder: Path) -> list[tuple[str, Path]]:
    files = {
        "physicians": "email,name,credentials,timezone\nr.osei@ortho.example.org,Ruth Osei,MD,America/New_York\n",
        "clients": (
            "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n"
            f"C-77,Jamie,Quenneville,r.osei@ortho.example.org,{_day(-3)},{DIAGNOSIS} (left),{_day(-3)},referred\n"
        ),
        "events": (
            f"client_ref,kind,occurred_at,note\nC-77,referral_received,{_day(-3)}T09:00,\n"
            f"C-77,initial_assessment,{_day(-1)}T10:00,{DIAGNOSIS} confirmed\n"
        ),
        "measures": f"client_ref,instrument,score,measured_at\nC-77,LEFS,38,{_day(-1)}\n",
    }
    paths = []
    for kind, text in files.items():
        path = folder / f"{kind}.csv"
        path.write_text(text, encoding="utf-8")
        paths.append((kind, path))
    return paths


def database_text(engine) -> str:
    with store.read(engine) as conn:
        return "\n".join(repr(conn.execute(select(t)).all()) for t in metadata.sorted_tables)


def test_no_command_prints_or_logs_the_password_and_no_subject_names_the_diagnosis(
    run_cli, settings, tls_smtp_server, ca_file, tmp_path
):
    good = tls_settings(settings, tls_smtp_server, ca_file)
    wrong = good.with_(smtp_password=Secret(WRONG_PASSWORD))
    debug = {"OUTREACH_LOG_LEVEL": "DEBUG"}
    seen: list[str] = []

    def cli(*args: str, cfg=good, code: int = 0):
        result = run_cli(*args, env_settings=cfg, extra_env=debug)
        seen.append(f"$ outreach {' '.join(args)}\n{result.stdout}{result.stderr}")
        assert result.exit_code == code, seen[-1]
        return result

    now = NOW.isoformat()
    cli("init")
    cli("check")
    for kind, path in write_practice(tmp_path):
        cli("import", kind, str(path), "--now", now)
    assert "queued 2," in cli("plan", "--now", now).stdout

    refused = cli("send", "--now", now, cfg=wrong, code=1)
    assert "login" in refused.stderr and "refused" in refused.stderr
    cli("run", "--once", "--now", now, cfg=wrong)
    daemon = Daemon(service_env(wrong, tick_seconds=1, log_level="DEBUG"), tmp_path)
    try:
        wait_until(lambda: "sending stopped" in daemon.log(), 30, "the refused login")
    finally:
        assert daemon.stop() == 0
    seen.append(daemon.log() + daemon.output())
    assert "login as 'clinic-sender'" in daemon.log()

    later = (utcnow() + timedelta(minutes=5)).isoformat()
    sent = cli("send", "--now", later).stdout
    assert sent.startswith("sent ") and not sent.startswith("sent 0,"), sent
    cli("log")
    cli("log", "--format", "json")
    cli("log", "--format", "csv")
    engine = store.connect(good.database_url)
    with store.read(engine) as conn:
        rows = conn.execute(select(messages.c.id, messages.c.subject)).all()
    for row in rows:
        cli("log", "show", str(row.id))
    cli("status", "--now", later, code=1)  # no service running: a monitor must hear about it

    everything = "\n".join(seen)
    for secret in SECRETS:
        assert secret not in everything
        assert secret not in database_text(engine)
    subjects = [row.subject for row in rows] + [str(r.message["Subject"]) for r in tls_smtp_server.received]
    assert len(subjects) >= 3  # two updates, and at least one email carrying them
    for subject in subjects:
        assert "Zyxtrophic" not in subject and "tendinosis" not in subject.lower(), subject
        assert "Quenneville" not in subject and "Jamie" not in subject, subject
    assert any(DIAGNOSIS in r.message.get_body(("plain",)).get_content() for r in tls_smtp_server.received)
    engine.dispose()


def test_failing_commands_do_not_print_a_database_or_smtp_password(run_cli, settings, tmp_path):
    unreachable = f"postgresql+psycopg://outreach:{DB_PASSWORD}@127.0.0.1:1/outreach"
    cfg = settings.with_(database_url=unreachable, smtp_password=Secret(PASSWORD), smtp_username="u")
    env = {**settings_env(cfg), "OUTREACH_LOG_LEVEL": "DEBUG"}
    outputs = []
    for args in (["init"], ["plan"], ["send"], ["run", "--once"], ["log"], ["status"]):
        result = run_cli(*args, env_settings=cfg, extra_env=env)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.stdout + result.stderr
        outputs.append(result.stdout + result.stderr)
    remote = settings.with_(
        email_backend="smtp",
        smtp_host="mail.example.org",
        smtp_security="none",
        smtp_password=Secret(PASSWORD),
    )
    outputs.append(run_cli("check", env_settings=remote).stderr)
    outputs.append(run_cli("send", env_settings=remote).stderr)
    everything = "\n".join(outputs)
    assert "127.0.0.1:1" in everything  # the errors do say where
    for secret in SECRETS:
        assert secret not in everything


def test_the_sqlite_database_is_created_readable_by_its_owner_only(run_cli, settings, tmp_path):
    path = tmp_path / "private" / "practice.db"
    cfg = settings.with_(database_url=f"sqlite:///{path}")
    old = os.umask(0o022)  # a permissive umask, as on most servers
    try:
        assert run_cli("init", env_settings=cfg).exit_code == 0
        for kind, csv_path in write_practice(tmp_path):
            assert (
                run_cli("import", kind, str(csv_path), "--now", NOW.isoformat(), env_settings=cfg).exit_code
                == 0
            )
    finally:
        os.umask(old)
    files = [p for p in path.parent.iterdir() if p.name.startswith("practice.db")]
    assert path in files
    for file in files:  # the database and its -wal / -shm companions
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, (file.name, oct(file.stat().st_mode))
