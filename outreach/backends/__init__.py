"""Mail backends: where a built email goes (SMTP server, a folder, the console).

One small interface (``base.Backend``) — the dispatcher neither knows nor
cares which one it talks to.
"""

from outreach.backends.base import Backend
from outreach.backends.console import ConsoleBackend
from outreach.backends.file import FileBackend
from outreach.backends.smtp import SMTPBackend
from outreach.settings import Settings


def get_backend(settings: Settings) -> Backend:
    """The backend named by ``OUTREACH_EMAIL_BACKEND``."""
    if settings.email_backend == "smtp":
        return SMTPBackend(settings)
    if settings.email_backend == "console":
        return ConsoleBackend()
    return FileBackend(settings.outbox_dir)


__all__ = ["Backend", "ConsoleBackend", "FileBackend", "SMTPBackend", "get_backend"]
