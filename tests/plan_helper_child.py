"""``python -m tests.plan_helper_child MODE NOW``: one ``planner.plan`` in a fresh, single-threaded process.

A plan forks its helper only in such a process (``planprocess.can_fork``), so
the helper's tests drive it from here, with chunks of two drafts and a helper
for any plan (``HELPER_FROM = 1``), and read one JSON line back: the report,
the processes that queued a chunk, and whether a child is left. ``MODE``:

- ``alone``: no helper (the reference);
- ``helper``: with a helper, as usual;
- ``helper_raises``: the helper's first chunk raises ``RenderError``;
- ``helper_killed``: the helper dies of SIGKILL in its first chunk;
- ``planner_raises``: the planner's own second chunk raises ``RenderError``;
- ``gather``: no chunk helper, but every other rule looked for in a helper
  (``GATHER_HELPER_FROM = 1``); ``gather_raises``: the helper's first rule
  raises ``RuleError``; ``gather_killed``: the helper dies of SIGKILL there.

The pid of each process that looked for a rule's due mail goes to
``FIND_PIDS_FILE``, if set.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime

from outreach import planner, store
from outreach.errors import RenderError, RuleError
from outreach.renderer import load_renderer
from outreach.rules import load_rules
from outreach.settings import Settings
from tests.plan_child import _children_left


def main(mode: str, now: str) -> None:
    parent = os.getpid()
    planner.QUEUE_CHUNK, planner.FIRST_CHUNK = 2, 2
    planner.HELPER_FROM = 10**9 if mode == "alone" or mode.startswith("gather") else 1
    planner.GATHER_HELPER_FROM = 1 if mode.startswith("gather") else 10**9
    real_find_due = planner.find_due

    def find_due(*args, **kwargs):
        if mode == "gather_raises" and os.getpid() != parent:
            raise RuleError(["campaigns/acknowledgement.toml: the rule's template went missing"])
        if mode == "gather_killed" and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        if "FIND_PIDS_FILE" in os.environ:
            with open(os.environ["FIND_PIDS_FILE"], "a") as file:
                file.write(f"{os.getpid()}\n")
        return real_find_due(*args, **kwargs)

    planner.find_due = find_due
    real_queue = planner._queue
    pids = os.environ["PLAN_PIDS_FILE"]  # one line per chunk queued: the pid that queued it
    chunks_queued = 0

    def queue(*args, **kwargs):
        nonlocal chunks_queued
        mine = os.getpid() == parent
        if mode == "helper_raises" and not mine:
            raise RenderError("template acknowledgement.html: 'client' is undefined")
        if mode == "helper_killed" and not mine:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "planner_raises" and mine and chunks_queued:
            raise RenderError("template progress.html: 'plan' is undefined")
        chunks_queued += 1
        fates = real_queue(*args, **kwargs)
        with open(pids, "a") as file:
            file.write(f"{os.getpid()}\n")
        return fates

    planner._queue = queue
    settings = Settings.from_env()
    engine = store.connect(settings.database_url)
    rules = load_rules(settings.campaigns_dir, settings.templates_dir)
    renderer = load_renderer(settings.templates_dir)
    result: dict[str, object] = {"parent": parent}
    try:
        report = planner.plan(engine, settings, rules, renderer, datetime.fromisoformat(now))
        result.update(
            queued=[draft.dedupe_key for draft in report.queued],
            suppressed=[[draft.dedupe_key, draft.suppress_reason] for draft in report.suppressed],
            failed=[[draft.dedupe_key, detail] for draft, detail in report.failed],
            digests=len(report.digests.digests) if report.digests else 0,
        )
    except Exception as exc:
        result.update(error=type(exc).__name__, message=str(exc))
    result["children_left"] = _children_left()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
