"""``python -m tests.plan_child MODE``: one ``Service.cycle`` in a fresh, single-threaded process.

The plan runs in a forked child only in such a process (``planprocess.can_fork``),
so its tests drive it from here, with the ``OUTREACH_*`` environment the test
gives, and read one JSON line back. ``MODE`` says what the plan does:

- ``plan``: plans as usual;
- ``raise``: raises ``RenderError`` half way;
- ``killed``: its process dies of SIGKILL after the first chunk;
- ``orphaned``: the service dies after the first chunk; the plan's next
  release says whether it stopped there (in ``PLAN_PID_FILE``.stopped).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime

from outreach import daemon
from outreach.daemon import Service, make_clock
from outreach.errors import RenderError
from outreach.settings import Settings


def main(mode: str, now: str) -> None:
    parent = os.getpid()
    real_plan = daemon.plan

    def plan(*args, **kwargs):
        with open(os.environ["PLAN_PID_FILE"], "w") as pid_file:
            pid_file.write(str(os.getpid()))
        released = args[5] if len(args) > 5 else kwargs.get("released")
        if mode == "raise":
            released([1])
            raise RenderError("template acknowledgement.html: 'client' is undefined")
        if mode == "killed":
            released([1])
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "orphaned":
            released([1])  # the service dies on hearing it
            _until(lambda: os.getppid() != parent)
            outcome = os.environ["PLAN_PID_FILE"] + ".stopped"
            try:
                released([2])
            except SystemExit:
                _write(outcome, "stopped")
                raise
            _write(outcome, "went on")
        return real_plan(*args, **kwargs)

    daemon.plan = plan
    if mode == "orphaned":
        daemon.Planning.released = lambda self, ids: os._exit(0)  # the service, killed mid-plan
    service = Service.load(Settings.from_env())
    result: dict[str, object] = {"parent": parent, "forked": daemon.can_fork(service.engine)}
    try:
        planned, sent = service.cycle(make_clock(datetime.fromisoformat(now)))
        result.update(queued=len(planned.queued), sent=len(sent.sent))
    except Exception as exc:
        result.update(error=type(exc).__name__, message=str(exc))
    result["children_left"] = _children_left()
    print(json.dumps(result))


def _until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _children_left() -> bool:
    """Whether any child process is left, running or waiting to be reaped."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
