"""Prints each email to standard output: for a look at what would be sent."""

from __future__ import annotations

import sys
from typing import TextIO

from outreach.backends.base import Backend
from outreach.compose import Email


class ConsoleBackend(Backend):
    name = "console"

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def _data(self, msg: Email) -> str:
        text = msg.data.decode("utf-8", "replace").replace("\r\n", "\n")
        self.stream.write(f"{text}\n{'-' * 72}\n")
        self.stream.flush()
        return "printed to console"
