"""Plan and send at once (``Service.cycle``): the sender starts on the first planned chunk.

Every promise of the sequential cycle holds: updates due together still go
as one digest, the weekly cap still holds what would exceed it, and mail
queued before the plan waits for the plan's own combining.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from outreach import daemon, planner
from outreach.daemon import Service, make_clock
from outreach.dispatcher import Planning
from tests.conftest import smtp_settings
from tests.test_digest import OSEI, assess, entries
from tests.test_digest import clinic as clinic  # a fixture, used by name

LEE = "j.lee@spine.example.org"
MORNING = "2026-11-03T10:00:00-05:00"  # a Tuesday, in both physicians' send windows
NIGHT = "2026-11-02T23:00:00-05:00"  # the Monday before: updates wait for the window


@pytest.fixture
def slow_chunks(monkeypatch):
    """Each planned chunk takes a while longer, so a sender beside the plan has time to act."""
    original = planner._queue

    def slow(*args, **kwargs):
        fates = original(*args, **kwargs)
        time.sleep(0.4)
        return fates

    monkeypatch.setattr(planner, "_queue", slow)
    monkeypatch.setattr(planner, "QUEUE_CHUNK", 3)


@pytest.fixture
def seen_at_plan_end(monkeypatch, smtp_server):
    """How many emails the server had when the plan returned (the plan and the sender overlapped if > 0)."""
    seen: list[int] = []
    original = daemon.plan

    def plan(*args, **kwargs):
        report = original(*args, **kwargs)
        seen.append(len(smtp_server.received))
        return report

    monkeypatch.setattr(daemon, "plan", plan)
    return seen


def practice(run_cli, settings, smtp_server, tmp_path, physicians: int = 4, each: int = 3):
    """``physicians`` physicians with ``each`` consenting referred clients apiece, through the CLI."""
    cfg = smtp_settings(settings, smtp_server)

    def cli(*args: str):
        result = run_cli(*args, env_settings=cfg)
        assert result.exit_code == 0, result.output
        return result

    cli("init")
    doctors = [f"dr{n}@clinic{n}.example.org" for n in range(physicians)]
    (tmp_path / "p.csv").write_text(
        "email,name,credentials,timezone,weekly_cap\n"
        + "".join(f"{d},Doc {n},MD,America/New_York,10\n" for n, d in enumerate(doctors))
    )
    rows = "".join(
        f"R-{n}-{i},First{i},Last{n},{d},2026-11-02,Knee pain,2026-10-01,referred\n"
        for n, d in enumerate(doctors)
        for i in range(each)
    )
    (tmp_path / "c.csv").write_text(
        "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n" + rows
    )
    cli("import", "physicians", str(tmp_path / "p.csv"), "--now", MORNING)
    cli("import", "clients", str(tmp_path / "c.csv"), "--now", MORNING)
    return cli, cfg


def test_the_sender_starts_before_the_plan_ends_and_sends_each_email_once(
    run_cli, settings, smtp_server, tmp_path, slow_chunks, seen_at_plan_end
):
    cli, _ = practice(run_cli, settings, smtp_server, tmp_path)
    for n in range(4):
        for i in range(3):
            assess(cli, f"R-{n}-{i}", MORNING)
    result = cli("run", "--once", "--now", MORNING)

    assert seen_at_plan_end and seen_at_plan_end[0] > 0, "nothing went out while the plan was running"
    log = entries(cli)
    assert {e["status"] for e in log} == {"sent"}, result.stdout
    counts = smtp_server.handler.count_by_message_id()
    assert set(counts.values()) == {1} and len(counts) == 4  # one digest of three updates per physician
    assert all(e["digest_id"] for e in log if e["rule"] == "initial_assessment_report")


def test_mail_queued_before_the_plan_waits_for_the_plans_own_combining(
    clinic, monkeypatch, slow_chunks, seen_at_plan_end
):
    """Dr Osei's four updates, held overnight, go as one digest in the morning, not one by one.

    The plan this morning has new mail for another physician only; without
    the fence, the sender beside it would take the held updates singly
    before the plan's last step combines them.
    """
    cli, server = clinic
    for ref in ("K-1", "K-2", "K-3", "K-4"):
        assess(cli, ref, NIGHT)
    cli("plan", "--now", NIGHT)  # queued, held for the window
    assert server.received == []
    # A second physician with something new this morning: the plan's only chunk.
    cli(
        "import",
        "physicians",
        _csv("p.csv", f"email,name,credentials,timezone\n{LEE},Jo Lee,MD,America/New_York\n"),
    )
    cli(
        "import",
        "clients",
        _csv(
            "c.csv",
            "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n"
            f"L-1,Lou,Nguyen,{LEE},2026-11-02,Neck pain,2026-10-01,referred\n",
        ),
    )
    assess(cli, "L-1", MORNING)
    cli("run", "--once", "--now", MORNING)

    osei = [r for r in server.received if OSEI in r.rcpt_tos]
    assert len(osei) == 1 and osei[0].message["Subject"].startswith("Clinical updates: 4 clients")
    assert [r for r in server.received if LEE in r.rcpt_tos]


def _csv(name: str, text: str) -> str:
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / name
    path.write_text(text)
    return str(path)


def test_planning_tells_the_sender_what_it_may_take():
    from datetime import UTC, datetime

    planning = Planning(datetime(2026, 11, 3, 15, tzinfo=UTC))
    fence = planning.fence()
    assert fence is not None and fence.physicians == frozenset()
    planning.released([3, 1])
    fence = planning.fence()
    assert fence.physicians == {1, 3}
    assert planning.wait(10) is True  # mail released and not yet taken: no waiting
    assert planning.drained(fence) is False  # a short claim took all they had, and nobody else is waiting
    assert planning.fence().physicians == frozenset()
    woke = []
    threading.Timer(0.05, lambda: planning.released([7])).start()
    woke.append(planning.wait(10))
    assert woke == [True] and planning.fence().physicians == {7}
    planning.finish()
    assert planning.fence() is None and planning.wait(10) is False


def test_a_fence_names_a_few_hundred_physicians_and_moves_on_as_they_are_drained():
    """A plan of thousands of physicians: the sender takes their mail as it comes, never waiting for the end."""
    from datetime import UTC, datetime

    from outreach.store import IN_LIMIT

    planning = Planning(datetime(2026, 11, 3, 15, tzinfo=UTC))
    planning.released(range(1, 2 * IN_LIMIT + 11))
    first = planning.fence()
    assert first.physicians == set(range(1, IN_LIMIT + 1))  # those released first
    assert planning.drained(first) is True  # others are still waiting
    second = planning.fence()
    assert second.physicians == set(range(IN_LIMIT + 1, 2 * IN_LIMIT + 1))
    planning.drained(second)
    assert planning.drained(planning.fence()) is False


def test_a_plan_error_is_raised_after_the_sender_has_stopped(engine, settings, smtp_server, monkeypatch):
    cfg = smtp_settings(settings, smtp_server)
    service = Service.load(cfg, engine=engine)

    def broken(*args, **kwargs):
        raise RuntimeError("the plan broke")

    monkeypatch.setattr(daemon, "plan", broken)
    with pytest.raises(RuntimeError, match="the plan broke"):
        service.cycle(make_clock())
    assert [t.name for t in threading.enumerate() if t.name.startswith("outreach-send")] == []


def test_json_log_is_unchanged_by_overlap(run_cli, settings, smtp_server, tmp_path):
    """The cycle's report says what the sequential one said: queued, then sent, each once."""
    cli, _ = practice(run_cli, settings, smtp_server, tmp_path, physicians=2, each=1)
    for n in range(2):
        assess(cli, f"R-{n}-0", MORNING)
    out = cli("run", "--once", "--now", MORNING).stdout
    assert "planned 2 new email(s)" in out and "sent 2," in out
    assert {e["status"] for e in json.loads(cli("log", "--format", "json").stdout)} == {"sent"}


def test_the_first_chunks_are_small_so_the_sender_starts_soon():
    """25 drafts, then 50, 100, and 200 after that; a physician's drafts are never split."""
    from outreach.planner import Draft, Recipient, _by_physician

    def drafts_for(physician: int, count: int) -> list[Draft]:
        to = Recipient(physician, f"dr{physician}@x.example.org", f"Dr {physician}", None, None)
        return [Draft(rule=None, dedupe_key=f"k:{physician}:{n}", to=to) for n in range(count)]  # type: ignore[arg-type]

    drafts = [draft for physician in range(1, 1001) for draft in drafts_for(physician, 1)]
    assert [len(chunk) for chunk in _by_physician(drafts, 200)] == [25, 50, 100, 200, 200, 200, 200, 25]
    doubled = [draft for physician in range(1, 41) for draft in drafts_for(physician, 2)]
    chunks = list(_by_physician(doubled, 200))
    assert [len(chunk) for chunk in chunks] == [24, 50, 6]
    assert all(len({d.to.physician_id for d in chunk}) * 2 == len(chunk) for chunk in chunks)
