"""The plan in a process of its own, beside the sender (``Service.cycle``).

Planning and rendering are Python through and through: on a thread of the
sender's process they take turns with the sender for one interpreter lock,
so a big plan slows every message on the wire. A forked child has the same
rules, templates and settings (memory copied, nothing read again), opens its
own database connections, and tells the parent through a pipe which
physicians it has finished with, as the thread did through ``Planning``.

Forking is safe only in a process with one thread: a lock another thread
held at that moment would stay held in the child for ever. So the service
forks only then (``can_fork``); elsewhere (tests with servers on threads,
an in-memory database no other process can see) the plan runs on a thread.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from outreach.errors import OutreachError
from outreach.outbox import log_line

if TYPE_CHECKING:
    from outreach.planner import PlanReport

Released = Callable[[Sequence[int]], None]


def can_fork(engine: Engine) -> bool:
    """Whether the plan may run in a child: POSIX, one thread, a database another process can open."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return False
    url = engine.url
    return not (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"))


def can_help(engine: Engine) -> bool:
    """Whether a helper process is worth forking for a plan: two cores or more, and ``can_fork``."""
    return (os.cpu_count() or 1) >= 2 and can_fork(engine)


def share(
    helper: ChunkHelper | None, count: int, work: Callable[[int], Any], take: Callable[[int, Any], None]
) -> None:
    """Pieces ``0 .. count - 1`` done: the even ones here, the odd ones by ``helper`` (all here without one).

    Each result goes to ``take`` as soon as it is known, the helper's
    included. A failure on either side stops the helper before it is raised.
    """
    try:
        for index in range(count):
            if helper is None or index % 2 == 0:
                take(index, work(index))
            if helper is not None:
                for found in helper.ready():
                    take(*found)
        if helper is not None:
            for found in helper.rest():
                take(*found)
    except BaseException:
        if helper is not None:
            helper.stop()
        raise


class _Forked:
    """A forked child that reports through a pipe, and is reaped once."""

    pid: int | None
    _reader: Connection

    def _fork(self, engine: Engine, work: Callable[[Callable[[str, Any], None]], object]) -> None:
        """Run ``work`` in a forked child (``_child``), its words coming back on ``_reader``."""
        reader, writer = multiprocessing.Pipe(duplex=False)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            reader.close()
            _child(engine, work, writer, parent)
        writer.close()
        self.pid = pid
        self._reader = reader

    def _ended(self) -> str:
        status = self._reap()
        if status is None:
            return "closed its pipe"
        if os.WIFSIGNALED(status):
            return f"was killed by signal {os.WTERMSIG(status)}"
        return f"exited with code {os.waitstatus_to_exitcode(status)}"

    def _reap(self) -> int | None:
        """Wait for the child (it exits right after its last word); its wait status, once."""
        if self.pid is None:
            return None
        pid, self.pid = self.pid, None
        return os.waitpid(pid, 0)[1]


class PlanProcess(_Forked):
    """A plan running in a forked child; ``follow`` relays what it releases and returns its report."""

    def __init__(self, engine: Engine, run: Callable[[Released], PlanReport]) -> None:
        self._fork(engine, lambda say: run(lambda ids: say("released", list(ids))))

    def follow(self, released: Released) -> PlanReport:
        """Until the plan is over: each chunk's physicians to ``released``; its report, or its error raised."""
        try:
            while True:
                try:
                    kind, value = self._reader.recv()
                except EOFError:
                    raise OutreachError(f"the plan stopped half way: its process {self._ended()}") from None
                if kind == "released":
                    released(value)
                elif kind == "done":
                    return value
                else:
                    raise value
        finally:
            self._reader.close()
            self._reap()


class ChunkHelper(_Forked):
    """A second process doing some of a plan's pieces (``work(index)``) while the planner does the rest.

    Rendering is most of a plan and uses one core; a batch import or a
    quarter's summaries render on two with a helper. Each chunk is one
    physician's mail whole and goes in its own transaction, so the two
    processes never queue the same message; the database takes their writes
    one at a time. In a big practice a helper also looks for every other
    rule's due mail (``planner._find_each``), which only reads. ``share``
    takes each result as it comes (``ready``), and the rest once the
    planner's own pieces are done (``rest``).
    """

    def __init__(self, engine: Engine, work: Callable[[int], Any], indices: Sequence[int]) -> None:
        def each(say: Callable[[str, Any], None]) -> None:
            for index in indices:
                say("chunk", (index, work(index)))

        self._fork(engine, each)

    def ready(self) -> Iterator[tuple[int, Any]]:
        """The chunks finished so far, without waiting."""
        while self.pid is not None and self._reader.poll():
            yield from self._take()

    def rest(self) -> Iterator[tuple[int, Any]]:
        """Every chunk still to come, waiting for each."""
        while self.pid is not None:
            yield from self._take()

    def stop(self) -> None:
        """The planner failed: end the helper at once (an open transaction is rolled back) and reap it."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reader.close()
            self._reap()

    def _take(self) -> Iterator[tuple[int, Any]]:
        try:
            kind, value = self._reader.recv()
        except EOFError:
            self._reader.close()
            raise OutreachError(f"the plan stopped half way: its helper process {self._ended()}") from None
        if kind == "chunk":
            yield value
            return
        self._reader.close()
        self._reap()
        if kind != "done":
            raise value


def _child(
    engine: Engine, work: Callable[[Callable[[str, Any], None]], object], writer: Connection, parent: int
) -> None:
    """Work, report, exit; the parent's connections are left alone (``dispose(close=False)``).

    ``work`` tells the parent of its progress through ``say``; what it
    returns is its last word.
    """
    code = 0
    try:
        engine.dispose(close=False)

        def say(kind: str, value: Any) -> None:
            if os.getppid() != parent:  # the service is gone: stop between two chunks
                raise SystemExit(1)
            writer.send((kind, value))

        writer.send(("done", work(say)))
    except BaseException as exc:
        code = 1
        with contextlib.suppress(BaseException):
            writer.send(("error", _portable(exc)))
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives the pipe, else an ``OutreachError`` with its first line."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        lines = str(exc).strip().splitlines()
        return OutreachError(log_line(lines[0]) if lines else type(exc).__name__)
