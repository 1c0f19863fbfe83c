"""Writes each email as one ``.eml`` file in a folder: for trying things out safely.

A folder that cannot be created or written to fails every message the same
way, so it stops the batch (``BatchAbort``) with one line naming the folder
and the system's reason, and the messages stay queued, as when an SMTP
server refuses the login.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from outreach.backends.base import Backend
from outreach.compose import Email
from outreach.errors import BatchAbort


class FileBackend(Backend):
    name = "file"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def open(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = _creation_problem(self.folder, exc)
            raise BatchAbort(f"cannot create the outbox folder {self.folder}: {problem}") from None

    def _data(self, msg: Email) -> str:
        stem = re.sub(r"[^A-Za-z0-9.@-]", "", msg.message_id) or "message"
        path = self.folder / f"{stem}.eml"
        temporary = path.with_suffix(".tmp")
        try:
            _write_private(temporary, msg.data)
            os.replace(temporary, path)  # all or nothing: no half-written emails
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise BatchAbort(f"cannot write to the outbox folder {self.folder}: {_reason(exc)}") from None
        return f"written to {path}"


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file readable by its owner only (it holds health information)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _creation_problem(folder: Path, exc: OSError) -> str:
    """Why ``folder`` cannot be made: a file where a folder should be, else the system's reason."""
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            return f"{path} is a file, not a folder"
    return _reason(exc)
