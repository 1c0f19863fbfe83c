"""The backend interface: open once per batch, send many, close.

``send`` returns the server's acceptance text for the log, or raises one of
``TransientError``, ``PermanentError`` or ``BatchAbort`` (see ``errors``).
"""

from __future__ import annotations

from email.message import EmailMessage
from types import TracebackType


class Backend:
    name = "base"

    def open(self) -> None:
        """Prepare for a batch (connect, log in). May raise ``BatchAbort``."""

    def close(self) -> None:
        """Release what ``open`` took; never raises."""

    def send(self, msg: EmailMessage, sender: str, recipient: str) -> str:
        raise NotImplementedError

    def __enter__(self) -> Backend:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
