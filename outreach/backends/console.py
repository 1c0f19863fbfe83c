"""Prints each email to standard output: for a look at what would be sent."""

from __future__ import annotations

import sys
from collections.abc import Callable

from outreach.backends.base import Backend, no_wait
from outreach.compose import Email


class ConsoleBackend(Backend):
    name = "console"

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def send(self, msg: Email, sender: str, recipient: str, before_data: Callable[[], None] = no_wait) -> str:
        text = msg.data.decode("utf-8", "replace").replace("\r\n", "\n")
        before_data()
        self.stream.write(f"{text}\n{'-' * 72}\n")
        self.stream.flush()
        return "printed to console"
