"""Writes each email as one ``.eml`` file in a folder: for trying things out safely."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from outreach.backends.base import Backend, no_wait
from outreach.compose import Email


class FileBackend(Backend):
    name = "file"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def send(self, msg: Email, sender: str, recipient: str, before_data: Callable[[], None] = no_wait) -> str:
        stem = re.sub(r"[^A-Za-z0-9.@-]", "", msg.message_id) or "message"
        path = self.folder / f"{stem}.eml"
        temporary = path.with_suffix(".tmp")
        before_data()
        fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(msg.data)
        os.replace(temporary, path)  # all or nothing: no half-written emails
        return f"written to {path}"
