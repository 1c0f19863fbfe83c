"""A template that breaks: refused where a person sees it, and its messages sent once it is fixed.

A file that is not UTF-8 is refused by ``check``, at start and at reload
(one line: the file and the byte offset), so the service keeps rendering
with the templates it had. A message whose template failed when it was
queued keeps its records; ``outreach retry`` renders it again from them,
or, while the template is still broken, says why and changes nothing.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from outreach import store
from outreach.context import physician_context
from outreach.daemon import Service
from outreach.dispatcher import retry_failed
from outreach.errors import NotFound, RenderError
from outreach.models import FAILED, PENDING, messages
from outreach.outbox import with_body
from outreach.planner import previous_period
from outreach.renderer import load_renderer
from outreach.rerender import REQUEUED, period_of
from outreach.rules import load_rules
from tests.conftest import NOW, ROOT, smtp_settings
from tests.factories import queue_message, trail

TEMPLATES = ROOT / "outreach" / "templates" / "email"
ALERT = Path("adverse_event_alert") / "body.txt"
EARLY_QUARTER = datetime(2027, 1, 5, 15, 0, tzinfo=UTC)  # the 2026 Q4 summaries are due


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A copy of the shipped templates, to break and mend."""
    copy = tmp_path / "templates"
    shutil.copytree(TEMPLATES, copy)
    return copy


@pytest.fixture
def alerting(settings, templates: Path, tmp_path: Path):
    """The shipped alert rule alone (planning renders one email, not the demo's fifteen)."""
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    shipped = (ROOT / "outreach" / "campaigns" / "clinical.toml").read_text(encoding="utf-8")
    rule = shipped[shipped.index("[rules.adverse_event_alert]") :].split("\n\n")[0]
    (campaigns / "alert.toml").write_text(rule + "\n", encoding="utf-8")
    return settings.with_(campaigns_dir=campaigns, templates_dir=templates)


def break_body(templates: Path, part: Path) -> None:
    """A variable that does not exist: the template compiles, and fails when rendered."""
    path = templates / part
    text = path.read_text(encoding="utf-8")
    assert "{% block content %}" in text
    path.write_text(text.replace("{% block content %}", "{% block content %}{{ no_such_thing }}", 1))


def mend(templates: Path, part: Path) -> None:
    shutil.copy(TEMPLATES / part, templates / part)


def append_stray_byte(templates: Path, part: Path) -> tuple[Path, int]:
    """A byte that is not UTF-8 at the end of the file; the file and the byte's offset."""
    path = templates / part
    size = path.stat().st_size
    with path.open("ab") as handle:
        handle.write(b"\xff")
    return path, size


def failed_rows(engine, rule: str) -> list:
    with store.read(engine) as conn:
        query = with_body().where(messages.c.rule == rule, messages.c.status == FAILED)
        return conn.execute(query.order_by(messages.c.id)).all()


def row(engine, message_id: int):
    with store.read(engine) as conn:
        return conn.execute(with_body().where(messages.c.id == message_id)).one()


# --- a file that is not UTF-8 ----------------------------------------------------------------


def test_check_names_the_file_and_offset_of_a_byte_that_is_not_utf8(run_cli, templates):
    path, offset = append_stray_byte(templates, ALERT)
    result = run_cli("check", extra_env={"OUTREACH_TEMPLATES_DIR": str(templates)})
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"{path}: not valid UTF-8 text (byte 0xff at offset {offset})" in result.stderr.splitlines()
    assert result.stderr.splitlines()[-1] == "1 problem(s) found"


def test_the_service_refuses_to_start_with_a_template_that_is_not_utf8(engine, run_cli, settings, templates):
    path, offset = append_stray_byte(templates, ALERT)
    with pytest.raises(RenderError, match="not valid UTF-8") as refused:
        Service.load(settings.with_(templates_dir=templates), engine=engine)
    assert str(refused.value) == f"{path}: not valid UTF-8 text (byte 0xff at offset {offset})"
    result = run_cli("run", "--once", extra_env={"OUTREACH_TEMPLATES_DIR": str(templates)})
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {path}: not valid UTF-8 text (byte 0xff at offset {offset})"


def test_a_reload_refuses_it_and_the_urgent_alert_still_renders(demo_engine, alerting, templates, caplog):
    """The reported fault: the reload took the file as valid and the alert could not be rendered."""
    service = Service.load(alerting, engine=demo_engine)
    path, offset = append_stray_byte(templates, ALERT)
    with caplog.at_level(logging.ERROR, logger="outreach.daemon"):
        assert service.reload() is False
    assert f"{path}: not valid UTF-8 text (byte 0xff at offset {offset})" in caplog.text
    service.plan(NOW)
    with store.read(demo_engine) as conn:
        alerts = conn.execute(with_body().where(messages.c.rule == "adverse_event_alert")).all()
    assert alerts, "the demo practice has an adverse event to report"
    for alert in alerts:
        assert alert.status == PENDING and alert.html and alert.subject.startswith("URGENT")


# --- retry renders again -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_failed_alert_is_rendered_again_by_retry_and_delivered(
    demo_engine, alerting, templates, run_cli, smtp_server
):
    cfg = smtp_settings(alerting, smtp_server)
    now = NOW.isoformat()
    break_body(templates, ALERT)
    planned = run_cli("run", "--once", "--now", now, env_settings=cfg)  # the alert fails to render
    assert planned.exit_code == 0, planned.output
    [failed] = failed_rows(demo_engine, "adverse_event_alert")
    assert failed.html == "" and "no_such_thing" in failed.last_error
    before = trail(demo_engine, failed.id)

    status = run_cli("status", "--now", now, env_settings=cfg)
    assert status.exit_code == 1
    assert (
        "1 message(s) could not be rendered: template adverse_event_alert/body.txt: 'no_such_thing' is "
        "undefined; fix the template and run outreach retry --all-failed"
    ) in status.stdout

    still = run_cli("retry", str(failed.id), "--now", now, env_settings=cfg)
    assert still.exit_code == 1
    assert still.stderr.splitlines() == [
        f"error: message {failed.id} (adverse_event_alert) still cannot be rendered: "
        "template adverse_event_alert/body.txt: 'no_such_thing' is undefined",
        "error: nothing was queued again",
    ]
    assert row(demo_engine, failed.id).status == FAILED and trail(demo_engine, failed.id) == before

    mend(templates, ALERT)
    retried = run_cli("retry", str(failed.id), "--now", now, env_settings=cfg)
    assert retried.exit_code == 0, retried.output
    assert retried.stdout.strip() == "1 message(s) queued again"
    again = row(demo_engine, failed.id)
    assert again.status == PENDING and again.attempts == 0 and again.last_error is None
    assert again.subject.startswith("URGENT") and "H.W." in again.subject and again.html and again.text
    assert trail(demo_engine, failed.id)[-1] == ("queued", REQUEUED)
    assert "could not be rendered" not in run_cli("status", "--now", now, env_settings=cfg).stdout

    sent = run_cli("run", "--once", "--now", now, env_settings=cfg)
    assert sent.exit_code == 0, sent.output
    assert row(demo_engine, failed.id).status == "sent"
    [alert] = [m for m in smtp_server.received if m.message["Message-ID"] == failed.message_id]
    assert alert.message["Subject"] == again.subject


def test_retry_all_failed_changes_nothing_while_one_still_fails(demo_engine, alerting, templates):
    broken = alerting
    break_body(templates, ALERT)
    Service.load(broken, engine=demo_engine).plan(NOW)
    [alert] = failed_rows(demo_engine, "adverse_event_alert")
    bounced = queue_message(demo_engine, status=FAILED, attempts=8, last_error="550 no such user")

    with pytest.raises(RenderError, match="still cannot be rendered"):
        retry_failed(demo_engine, NOW, None, settings=broken)
    assert row(demo_engine, alert.id).status == FAILED and row(demo_engine, bounced).status == FAILED

    mend(templates, ALERT)
    assert retry_failed(demo_engine, NOW, None, settings=broken) == 2
    assert row(demo_engine, bounced).status == PENDING and row(demo_engine, bounced).attempts == 0
    assert trail(demo_engine, bounced)[-1] == ("retried", "queued again by a person")
    assert row(demo_engine, alert.id).status == PENDING and row(demo_engine, alert.id).html


def test_a_physician_summary_is_rendered_again_for_its_own_quarter(
    demo_engine, settings, templates, tmp_path
):
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    shutil.copy(settings.campaigns_dir / "relationship.toml", campaigns)
    broken = settings.with_(campaigns_dir=campaigns, templates_dir=templates)
    part = Path("quarterly_summary") / "body.txt"
    break_body(templates, part)
    Service.load(broken, engine=demo_engine).plan(EARLY_QUARTER)
    summaries = failed_rows(demo_engine, "quarterly_summary")
    assert summaries and all(s.dedupe_key.endswith(":2026Q4") for s in summaries)

    mend(templates, part)
    later = EARLY_QUARTER + timedelta(days=40)  # a person fixes it in the next quarter
    assert retry_failed(demo_engine, later, [s.id for s in summaries], settings=broken) == len(summaries)
    [rule] = load_rules(campaigns, templates)
    quarter = previous_period("quarter", date(2027, 1, 5))
    renderer = load_renderer(templates)
    for summary in summaries:
        with store.read(demo_engine) as conn:
            context = physician_context(conn, settings, rule, summary.physician_id, later, quarter)
        again = row(demo_engine, summary.id)
        assert again.status in (PENDING, "suppressed")
        assert again.html == renderer.render("quarterly_summary", context).html
        assert "2026 Q4" in again.subject


@pytest.mark.parametrize("kind", ["month", "quarter"])
def test_a_summary_period_is_read_back_from_its_dedupe_key(kind):
    day = date(2025, 1, 1)
    while day < date(2027, 1, 1):
        period = previous_period(kind, day)
        assert period_of(f"summary:physician:7:{period.key}", kind) == period
        day += timedelta(days=17)


def test_a_message_id_that_is_not_failed_is_refused(demo_engine, settings):
    pending = queue_message(demo_engine)
    with pytest.raises(NotFound, match=f"only failed messages can be retried: {pending} is pending"):
        retry_failed(demo_engine, NOW, [pending], settings=settings)
    with store.read(demo_engine) as conn:
        assert conn.execute(select(messages.c.status).where(messages.c.id == pending)).scalar() == PENDING
