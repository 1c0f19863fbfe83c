"""The backend interface: open once per batch, send many, close.

``send`` runs the same steps for every backend, as django-anymail's base
backend does: the envelope (``_envelope``), then the caller's hook, then
the email itself (``_data``). A backend fills in the steps and never sees
the hook, so none can forget to call it. A network backend may leave the
envelope's replies for ``_data`` to read: the hook then runs while the
server reads the envelope.

``send`` returns the server's acceptance text for the log, or raises one of
``TransientError``, ``PermanentError`` or ``BatchAbort`` (see ``errors``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from types import TracebackType

from outreach.compose import Email


def no_wait() -> None:
    """Nothing to wait for."""


class Backend:
    name = "base"

    def open(self) -> None:
        """Prepare for a batch (connect, log in). May raise ``BatchAbort``."""

    def close(self) -> None:
        """Release what ``open`` took; never raises."""

    def another(self) -> Backend:
        """A second backend to the same place, with a connection of its own (``OUTREACH_SMTP_CONNECTIONS``).

        Made before it is opened; what the two share (settings, a folder) is read-only.
        """
        twin = copy.copy(self)
        twin.close_copy()
        return twin

    def close_copy(self) -> None:
        """Forget anything a copy must not share with its original (an open connection)."""

    def send(
        self,
        msg: Email,
        sender: str,
        recipients: str | Sequence[str],
        before_data: Callable[[], None] = no_wait,
        meanwhile: Callable[[], None] = no_wait,
    ) -> str:
        """Hand ``msg.data`` (the whole email, CRLF) to ``recipients``; ``sender`` is the envelope sender.

        One recipient (the physician), or the staging addresses a message is
        redirected to. ``before_data`` is called before any of the email is
        handed over: the dispatcher records the previous outcome there. If it
        raises, nothing is handed over. ``meanwhile`` may be called while the
        server judges the email (``_while_waiting``), or not at all: the
        dispatcher builds the next email there. It must not raise.
        """
        to = (recipients,) if isinstance(recipients, str) else tuple(recipients)
        self._envelope(msg, sender, to)
        try:
            before_data()
        except BaseException:
            self._abandon()
            raise
        self._meanwhile = meanwhile
        try:
            return self._data(msg)
        finally:
            self._meanwhile = None

    _meanwhile: Callable[[], None] | None = None

    def _while_waiting(self) -> None:
        """A backend that waits for the server's verdict calls this once the email is out."""
        meanwhile, self._meanwhile = self._meanwhile, None
        if meanwhile is not None:
            meanwhile()

    def _envelope(self, msg: Email, sender: str, recipients: tuple[str, ...]) -> None:
        """Everything before the email is handed over: checks, and who it is from and to.

        A refusal here (``PermanentError``, ``TransientError``) means nothing
        was handed over; every recipient must be accepted.
        """

    def _data(self, msg: Email) -> str:
        """Hand the email over; the acceptance text for the log."""
        raise NotImplementedError

    def _abandon(self) -> None:
        """The hook raised after ``_envelope``: undo what it began, so the next email starts clean."""

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
