"""``outreach run`` as a service: signals, reloads, failing jobs, logs and ``outreach status``.

SIGTERM during a batch lets the message in flight finish and exits 0 within
the SMTP timeout; SIGHUP (or an edited rule or template file) reloads rules
and templates only if they are valid; a job that raises is logged and runs
again next tick. Logs are one line per event on stderr with the level.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from outreach import status, store
from outreach.backends.base import Backend
from outreach.daemon import Control, Jobs, Service, run_forever
from outreach.errors import BatchAbort
from outreach.importer import import_file, record_event
from outreach.models import FAILED, PENDING, SENDING, SENT, clients, messages, utcnow
from outreach.outbox import with_body
from tests.conftest import NOW, ROOT, smtp_settings
from tests.factories import queue_message, trail
from tests.service_helpers import Daemon, queue_many, service_env, sqlite_settings, status_counts, wait_until
from tests.smtp_server import free_port

LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: \S.*$")


@pytest.mark.slow
def test_sigterm_mid_batch_finishes_the_message_in_flight_and_exits_0(tmp_path, smtp_server):
    cfg = smtp_settings(sqlite_settings(tmp_path), smtp_server, smtp_timeout=5.0)
    engine = store.connect(cfg.database_url)
    store.migrate(engine)
    queue_many(engine, 30, next_attempt_at=utcnow() - timedelta(minutes=1))
    smtp_server.handler.delay = 0.3  # every message is in flight for a while
    daemon = Daemon(service_env(cfg, tick_seconds=1), tmp_path)
    try:
        wait_until(lambda: len(smtp_server.received) >= 2, 30, "sending to start")
        time.sleep(0.1)  # now inside the next message's DATA
        asked = time.monotonic()
        code = daemon.stop(timeout=cfg.smtp_timeout + 5)
        took = time.monotonic() - asked
    finally:
        daemon.ensure_dead()
    log = daemon.log()
    assert code == 0, log
    assert took < cfg.smtp_timeout, f"took {took:.1f}s to stop"
    counts = status_counts(engine)
    assert SENDING not in counts
    assert counts[SENT] == len(smtp_server.received) >= 3, counts  # the one in flight went, and is recorded
    assert counts[SENT] + counts[PENDING] == 30
    with store.read(engine) as conn:
        waiting = conn.execute(select(messages).where(messages.c.status == PENDING)).all()
    assert all(row.attempts == 0 for row in waiting)
    assert ("released", "service stopping") in trail(engine, waiting[0].id)
    lines = log.splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), log
    assert any(re.match(r"INFO outreach\.dispatcher: message \d+ sent to ", line) for line in lines)
    assert lines[-1] == "INFO outreach.daemon: outreach stopped"
    engine.dispose()


PHYSICIANS = "email,name,credentials\nr.osei@ortho.example.org,Ruth Osei,MD\n"
CLIENTS = (
    "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n"
    "C-77,Jamie,Doyle,r.osei@ortho.example.org,{day},Right ACL reconstruction,{day},referred\n"
)


@pytest.mark.slow
def test_sighup_and_edited_files_reload_only_valid_rules_and_templates(tmp_path):
    campaigns, templates = tmp_path / "campaigns", tmp_path / "templates"
    shutil.copytree(ROOT / "outreach" / "campaigns", campaigns)
    shutil.copytree(ROOT / "outreach" / "templates" / "email", templates)
    cfg = sqlite_settings(tmp_path, campaigns_dir=campaigns, templates_dir=templates)
    engine = store.connect(cfg.database_url)
    store.migrate(engine)
    now = utcnow()
    day = (now - timedelta(days=3)).date().isoformat()
    for kind, text in (("physicians", PHYSICIANS), ("clients", CLIENTS.format(day=day))):
        (tmp_path / f"{kind}.csv").write_text(text, encoding="utf-8")
        import_file(engine, cfg, kind, tmp_path / f"{kind}.csv", now)
    daemon = Daemon(service_env(cfg, tick_seconds=1), tmp_path)

    def logged(pattern: str, times: int = 1) -> bool:
        return len(re.findall(pattern, daemon.log())) >= times

    reloaded = r"INFO outreach\.daemon: reloaded \d+ rule\(s\) and the templates"

    try:
        wait_until(lambda: logged("outreach running"), 30, "the service to start")
        daemon.signal(1)  # SIGHUP
        wait_until(lambda: logged(reloaded), 10, "a reload on SIGHUP")

        bad_rule = campaigns / "zz-bad.toml"
        bad_rule.write_text('[rules.oops]\nwhen = { event = "exploded" }\ntemplate = "nope"\n')
        wait_until(lambda: logged("reload refused"), 10, "the bad rule to be refused")
        assert "zz-bad.toml: oops/when.event" in daemon.log()
        bad_rule.unlink()
        wait_until(lambda: logged(reloaded, 2), 10, "a reload once the rule is gone")

        body = templates / "initial_assessment_report" / "body.txt"
        good = body.read_text(encoding="utf-8")
        body.write_text(good + "\n{% if %}BROKEN-TEMPLATE\n", encoding="utf-8")
        wait_until(lambda: logged("reload refused", 2), 10, "the broken template to be refused")
        assert "initial_assessment_report/body.txt:" in daemon.log()

        # A milestone now is reported with the template the service kept, not the broken one.
        with store.write(engine) as conn:
            client_id = conn.execute(select(clients.c.id)).scalar_one()
            record_event(conn, client_id, "initial_assessment", utcnow() - timedelta(minutes=1), "", utcnow())
        wait_until(lambda: _message(engine, "initial_assessment_report"), 20, "the report to be queued")
        report = _message(engine, "initial_assessment_report")
        assert report.status != FAILED, report.last_error
        assert "BROKEN-TEMPLATE" not in report.text and "Initial" in report.subject + report.text

        body.write_text(good, encoding="utf-8")
        wait_until(lambda: logged(reloaded, 3), 10, "a reload once the template is fixed")
        assert daemon.alive
    finally:
        code = daemon.stop()
    log = daemon.log()
    assert code == 0, log
    assert all(LOG_LINE.match(line) for line in log.splitlines()), log
    refused = [line for line in log.splitlines() if "reload refused" in line]
    assert all(
        line.startswith("ERROR outreach.daemon: reload refused, keeping the current") for line in refused
    )
    engine.dispose()


def _message(engine, rule: str):
    with store.read(engine) as conn:
        return conn.execute(with_body().where(messages.c.rule == rule)).first()


def test_a_job_that_raises_is_logged_and_runs_again_next_tick(engine, settings, caplog, monkeypatch):
    service = Service.load(settings.with_(tick_seconds=1), engine=engine)
    calls: list = []
    original = service.plan

    def flaky_plan(now, planning=None):
        calls.append(now)
        if len(calls) <= 2:
            raise RuntimeError("the planner tripped\nover two lines")
        return original(now, planning)

    service.plan = flaky_plan
    checks = iter([OSError("campaigns folder unreadable")])

    def config_changed():  # the loop's own machinery failing once
        error = next(checks, None)
        if error:
            raise error
        return False

    service.config_changed = config_changed
    control = Control()
    caplog.set_level(logging.INFO, logger="outreach")
    loop = threading.Thread(target=run_forever, args=(service, utcnow, control), daemon=True)
    loop.start()
    try:
        wait_until(lambda: len(calls) >= 3, 15, "the plan job to run again")
    finally:
        control.request_stop()
        loop.join(10)
    assert not loop.is_alive()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors.count("plan failed, will retry next tick: the planner tripped") == 2
    assert "service loop: campaigns folder unreadable" in errors
    assert all("\n" not in message for message in errors)
    assert caplog.records[-1].getMessage() == "outreach stopped"
    with store.read(engine) as conn:
        health = status.health(conn, utcnow(), 1)
    assert health.last_error == "plan: the planner tripped"


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [("WARNING", [], ["INFO "]), ("DEBUG", ["INFO outreach.dispatcher: message "], [])],
)
def test_log_level_is_obeyed(run_cli, settings, engine, level, shown, hidden):
    queue_message(engine)
    result = run_cli("run", "--once", "--now", NOW.isoformat(), extra_env={"OUTREACH_LOG_LEVEL": level})
    assert result.exit_code == 0, result.output
    for text in shown:
        assert text in result.stderr
    for text in hidden:
        assert text not in result.stderr
    assert all(LOG_LINE.match(line) for line in result.stderr.splitlines()), result.stderr


def test_status_reports_heartbeat_queue_oldest_pending_and_last_error(run_cli, engine):
    never = run_cli("status", "--now", NOW.isoformat())
    assert never.exit_code == 1 and "never run" in never.stdout

    first = queue_message(engine, created_at=NOW - timedelta(hours=2))
    queue_message(engine)
    status.started(engine, "host:1:abc", NOW)
    status.record_send_ok(engine, "host:1:abc", NOW)
    fresh = run_cli("status", "--now", (NOW + timedelta(minutes=1)).isoformat())
    assert fresh.exit_code == 0, fresh.output
    assert re.search(r"^last heartbeat: +2026-11-25 10:00:00 EST$", fresh.stdout, re.M), fresh.stdout
    assert re.search(r"^queue: +pending 2, sending 0, sent 0", fresh.stdout, re.M)
    assert re.search(rf"^oldest pending: +message {first}, queued 2026-11-25 08:00", fresh.stdout, re.M)
    assert re.search(r"^last error: +none$", fresh.stdout, re.M)

    stale = run_cli("status", "--now", (NOW + timedelta(hours=1)).isoformat())
    assert stale.exit_code == 1
    assert "no heartbeat for 60 min: the service is not running" in stale.stdout

    status.record_error(engine, "host:1:abc", NOW + timedelta(minutes=2), "send: cannot reach SMTP server")
    failing = run_cli("status", "--now", (NOW + timedelta(minutes=3)).isoformat())
    assert failing.exit_code == 1
    assert "delivery failing since" in failing.stdout and "cannot reach SMTP server" in failing.stdout
    assert re.search(r"^last error: +send: cannot reach SMTP server \(2026-11-25 10:02", failing.stdout, re.M)

    status.record_send_ok(engine, "host:1:abc", NOW + timedelta(minutes=4))
    recovered = run_cli("status", "--now", (NOW + timedelta(minutes=5)).isoformat())
    assert recovered.exit_code == 0, recovered.stdout


@pytest.mark.slow
def test_status_of_a_running_service_that_cannot_deliver(tmp_path):
    cfg = sqlite_settings(tmp_path, email_backend="smtp", smtp_host="127.0.0.1", smtp_port=free_port())
    cfg = cfg.with_(smtp_security="none", smtp_timeout=2.0)
    engine = store.connect(cfg.database_url)
    store.migrate(engine)
    queue_many(engine, 3, next_attempt_at=utcnow() - timedelta(minutes=1))
    env = service_env(cfg, tick_seconds=1)
    daemon = Daemon(env, tmp_path)
    try:
        wait_until(lambda: "sending stopped" in daemon.log(), 30, "the failed send")
        monitor = Daemon(env, tmp_path, "status", name="status")
        assert monitor.wait() == 1, monitor.output()
        assert "delivery failing since" in monitor.output() and "cannot reach SMTP server" in monitor.output()
        assert re.search(r"^queue: +pending 3,", monitor.output(), re.M)
    finally:
        assert daemon.stop() == 0
    after = Daemon(env, tmp_path, "status", name="status-after")
    assert after.wait() == 1 and "the service is not running" in after.output()
    engine.dispose()


class Flaky(Backend):
    """A backend whose server is down until told otherwise."""

    def __init__(self):
        self.down = True

    def open(self) -> None:
        if self.down:
            raise BatchAbort("cannot reach SMTP server test:25: Connection refused")

    def _data(self, msg):
        return "250 OK"


def test_status_stays_failing_until_mail_actually_goes_again(engine, settings):
    backend = Flaky()
    service = Service.load(settings, engine=engine, backend=backend)
    now = [NOW]
    loop = Jobs(service, lambda: now[0], threading.Event())

    def problems() -> list[str]:
        with store.read(engine) as conn:
            return status.health(conn, now[0], settings.tick_seconds).problems

    status.started(engine, service.worker, NOW)
    queue_message(engine)
    loop.send()
    assert any("delivery failing" in p and "cannot reach" in p for p in problems())
    now[0] += timedelta(seconds=10)
    loop.send()  # the message waits for its retry time: nothing was tried
    assert any("delivery failing" in p for p in problems()), "an idle pass hid the failure"
    backend.down = False
    now[0] += timedelta(minutes=2)
    loop.send()
    assert problems() == []

    now[0] += timedelta(seconds=1)
    loop.record_error("plan: the planner tripped")  # what guarded() reports
    assert any("plan: the planner tripped" in p for p in problems())
    now[0] += timedelta(seconds=10)
    loop.plan()
    assert problems() == []
