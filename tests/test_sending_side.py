"""The sending side stands apart from the rendering stack, and its backends run one sequence of steps.

A process that only sends (the dispatcher, the backends) loads no template
engine or CSS inliner: they take longer to import than a send pass may take.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from outreach.backends import ConsoleBackend, FileBackend
from outreach.backends.base import Backend
from outreach.compose import Email
from outreach.errors import PermanentError
from tests.conftest import ROOT

RENDERING = ("jinja2", "premailer", "lxml", "cssutils")

PROBE = "import json, sys, outreach.dispatcher, outreach.backends; print(json.dumps(sorted(sys.modules)))"


def test_importing_the_dispatcher_loads_none_of_the_rendering_stack():
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    loaded = {name.partition(".")[0] for name in json.loads(done.stdout)}
    assert "outreach" in loaded  # the probe did import the package
    assert sorted(loaded & set(RENDERING)) == []


class Steps(Backend):
    """Notes each step as the base class runs it."""

    def __init__(self, refuse: bool = False):
        self.steps: list[str] = []
        self.refuse = refuse

    def _envelope(self, msg: Email, sender: str, recipients: tuple[str, ...]) -> None:
        self.steps.append(f"envelope {sender} -> {', '.join(recipients)}")
        if self.refuse:
            raise PermanentError("RCPT TO: server replied 550 no such user", reply="550 no such user")

    def _data(self, msg: Email) -> str:
        self.steps.append(f"data {msg.message_id}")
        return "250 accepted"


EMAIL = Email(message_id="<1@practice.example>", data=b"Subject: x\r\n\r\nhello\r\n")


def test_send_runs_the_envelope_then_the_hook_then_the_data():
    backend = Steps()
    answer = backend.send(
        EMAIL, "a@practice.example", "b@clinic.example", lambda: backend.steps.append("hook")
    )
    assert answer == "250 accepted"
    assert backend.steps == [
        "envelope a@practice.example -> b@clinic.example",
        "hook",
        "data <1@practice.example>",
    ]


def test_a_refused_envelope_skips_the_hook_and_the_data():
    backend = Steps(refuse=True)
    with pytest.raises(PermanentError):
        backend.send(EMAIL, "a@practice.example", "b@clinic.example", lambda: backend.steps.append("hook"))
    assert backend.steps == ["envelope a@practice.example -> b@clinic.example"]


class HookFails(RuntimeError):
    pass


def _failing_hook() -> None:
    raise HookFails("the outcome before could not be recorded")


def test_a_hook_that_raises_means_the_file_backend_writes_nothing(tmp_path):
    backend = FileBackend(tmp_path / "out")
    with backend, pytest.raises(HookFails):
        backend.send(EMAIL, "a@practice.example", "b@clinic.example", _failing_hook)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_hook_that_raises_means_the_console_backend_prints_nothing():
    stream = io.StringIO()
    with pytest.raises(HookFails):
        ConsoleBackend(stream).send(EMAIL, "a@practice.example", "b@clinic.example", _failing_hook)
    assert stream.getvalue() == ""
