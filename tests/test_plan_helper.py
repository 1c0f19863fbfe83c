"""A big plan queues every other chunk in a helper process, and a big practice looks for due mail in two:
the same mail, its errors raised, no child left."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete

from outreach import store
from outreach.models import message_bodies, message_events, messages
from outreach.outbox import DIGEST, with_body
from tests.service_helpers import json_from_module, service_env


def plan_in_a_process(
    settings, tmp_path: Path, mode: str, finders: Path | None = None
) -> tuple[dict, list[int]]:
    """One plan in a fresh process (``tests.plan_helper_child``); its result, and the pid of each chunk's queuer.

    With ``finders``, the pid of each process that looked for a rule's due mail is written there.
    """
    pids = tmp_path / f"{mode}.pids"
    env = service_env(settings)
    env["PLAN_PIDS_FILE"] = str(pids)
    if finders is not None:
        env["FIND_PIDS_FILE"] = str(finders)
    result = json_from_module("tests.plan_helper_child", mode, env)
    return result, pids_in(pids)


def pids_in(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def outbox(engine) -> list[tuple]:
    """Every message as the physician would get it, in a stable order.

    A digest's key is made of its members' ids, which depend on which
    process stored them first: only its kind is compared.
    """
    with store.read(engine) as conn:
        rows = conn.execute(with_body()).all()
    return sorted(
        (
            DIGEST if r.dedupe_key.startswith(f"{DIGEST}:") else r.dedupe_key,
            *(r.status, r.recipient, r.subject, r.text, r.html, r.reason, r.digest_id is None),
        )
        for r in rows
    )


def forget_the_plan(engine) -> None:
    with store.write(engine) as conn:
        for table in (message_events, message_bodies):
            conn.execute(delete(table))
        conn.execute(delete(messages))


def test_a_plan_with_a_helper_queues_the_same_mail_as_one_without(demo_engine, settings, tmp_path):
    alone, alone_pids = plan_in_a_process(settings, tmp_path, "alone")
    expected = outbox(demo_engine)
    forget_the_plan(demo_engine)
    helped, helped_pids = plan_in_a_process(settings, tmp_path, "helper")
    assert "error" not in helped, helped
    assert len(alone["queued"]) >= 6 and set(alone_pids) == {alone["parent"]}
    assert (
        len(set(helped_pids)) == 2 and helped["parent"] in helped_pids
    )  # the chunks shared by two processes
    for key in ("queued", "suppressed", "failed", "digests"):
        assert helped[key] == alone[key], key  # the report in the same order
    assert outbox(demo_engine) == expected
    assert helped["children_left"] is False


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("helper_raises", "template acknowledgement.html: 'client' is undefined"),  # raised as it was
        ("planner_raises", "template progress.html: 'plan' is undefined"),  # the helper stopped and reaped
    ],
)
def test_an_error_on_either_side_is_raised_and_leaves_no_child(
    demo_engine, settings, tmp_path, mode, message
):
    result, _ = plan_in_a_process(settings, tmp_path, mode)
    assert (result["error"], result["message"]) == ("RenderError", message)
    assert result["children_left"] is False


def test_a_helper_killed_half_way_is_one_line_and_no_zombie(demo_engine, settings, tmp_path):
    result, pids = plan_in_a_process(settings, tmp_path, "helper_killed")
    assert result["error"] == "OutreachError"
    assert result["message"] == "the plan stopped half way: its helper process was killed by signal 9"
    assert result["children_left"] is False
    assert set(pids) == {result["parent"]}  # the helper finished no chunk


def test_looking_for_due_mail_in_two_processes_finds_the_same_mail(demo_engine, settings, tmp_path):
    alone_finders, helped_finders = tmp_path / "alone.finders", tmp_path / "gather.finders"
    alone, _ = plan_in_a_process(settings, tmp_path, "alone", alone_finders)
    expected = outbox(demo_engine)
    forget_the_plan(demo_engine)
    helped, _ = plan_in_a_process(settings, tmp_path, "gather", helped_finders)
    assert "error" not in helped, helped
    assert len(alone["queued"]) >= 6 and set(pids_in(alone_finders)) == {alone["parent"]}
    rules_looked_at = pids_in(helped_finders)
    assert len(rules_looked_at) == len(pids_in(alone_finders))  # each rule once
    assert rules_looked_at.count(helped["parent"]) == (len(rules_looked_at) + 1) // 2  # the even ones
    assert len(set(rules_looked_at)) == 2
    for key in ("queued", "suppressed", "failed", "digests"):
        assert helped[key] == alone[key], key  # the same drafts, in the same order
    assert outbox(demo_engine) == expected
    assert helped["children_left"] is False


def test_the_looking_helper_failing_is_raised_and_leaves_no_child(demo_engine, settings, tmp_path):
    raised, _ = plan_in_a_process(settings, tmp_path, "gather_raises")
    assert (raised["error"], raised["message"]) == (
        "RuleError",
        "campaigns/acknowledgement.toml: the rule's template went missing",
    )
    killed, _ = plan_in_a_process(settings, tmp_path, "gather_killed")
    assert (killed["error"], killed["message"]) == (
        "OutreachError",
        "the plan stopped half way: its helper process was killed by signal 9",
    )
    for result in (raised, killed):
        assert result["children_left"] is False
    assert outbox(demo_engine) == []  # nothing queued: the plan stopped before its first chunk
