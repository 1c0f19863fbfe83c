"""Prints each email to standard output: for a look at what would be sent."""

from __future__ import annotations

import sys
from email.message import EmailMessage

from outreach.backends.base import Backend
from outreach.compose import to_bytes


class ConsoleBackend(Backend):
    name = "console"

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def send(self, msg: EmailMessage, sender: str, recipient: str) -> str:
        text = to_bytes(msg).decode("utf-8", "replace").replace("\r\n", "\n")
        self.stream.write(f"{text}\n{'-' * 72}\n")
        self.stream.flush()
        return "printed to console"
