"""The exception hierarchy.

Everything a user can cause (bad settings, bad files, bad rules) is an
``OutreachError``: the CLI prints its message as one line and exits 1.
Delivery faults are split the way django-anymail splits them, so the
dispatcher can decide from the class alone what happens to a message.
"""


class OutreachError(Exception):
    """A problem the user can fix; its message is shown as one line."""


class SettingsError(OutreachError):
    """A configuration key has a bad value; the message names the key."""


class ImportFileError(OutreachError):
    """A CSV file could not be imported; carries every bad row."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))

    def __reduce__(self) -> tuple:
        """Whole through a pickle (a plan's helper process raises it to the planner through a pipe)."""
        return type(self), (self.path, self.problems)


class RuleError(OutreachError):
    """Campaign rules are invalid; carries every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))

    def __reduce__(self) -> tuple:
        """Whole through a pickle, not its message taken for a list of problems (one per letter)."""
        return type(self), (self.problems,)


class RenderError(OutreachError):
    """A template could not be rendered (missing variable, syntax error)."""


class NotFound(OutreachError):
    """A client, physician, rule or message named on the command line does not exist."""


class DatabaseError(OutreachError):
    """The database cannot be reached or is not initialised."""


# --- delivery -------------------------------------------------------------


class DeliveryError(Exception):
    """Base of everything a mail backend raises while sending."""

    def __init__(self, message: str, *, reply: str = ""):
        super().__init__(message)
        self.reply = reply


class TransientError(DeliveryError):
    """Try this message again later: 4xx reply, timeout, dropped connection."""


class PermanentError(DeliveryError):
    """This message will never be accepted as it is: 5xx reply."""


class RecipientUnknown(PermanentError):
    """The server says the recipient's mailbox does not exist (5.1.x at RCPT).

    The address is marked undeliverable: nothing more is sent to it until a
    person clears the mark or the physician's address changes.
    """


class BatchAbort(DeliveryError):
    """Nothing can be sent now (authentication, TLS, server down): stop the batch.

    Messages stay queued; the reason is recorded on each of them.
    """


class TooManyConnections(BatchAbort):
    """The server refused one more connection (421 at the greeting): most providers limit them.

    With other connections open the dispatcher goes on with those and hands
    this one's messages back to them; alone, it is a ``BatchAbort``. Never a
    reason to fail mail.
    """
