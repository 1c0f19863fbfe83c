"""Per-message envelope senders (VERP): a bounce that quotes nothing still names its message.

With ``OUTREACH_BOUNCE_ADDRESS=bounces@practice.example`` message 42 goes out
with the envelope sender ``bounces+42.1a2b3c4d@practice.example``: a mail
server that gives it back sends the bounce there, and the token maps back to
message 42 (the check part ties it to that message's Message-ID, so a token
made up for another id does not match). Small and import-free on purpose: the
sending side uses it for every message.
"""

from __future__ import annotations

import hashlib


def token(message_id: int, header_message_id: str) -> str:
    """The token for a message: its id and a check on its Message-ID."""
    return f"{message_id}.{hashlib.sha256(header_message_id.encode()).hexdigest()[:8]}"


def address(bounce_address: str, message_token: str) -> str:
    """``bounces@practice.example`` and ``42.ab12cd34`` make ``bounces+42.ab12cd34@practice.example``."""
    local, _, domain = bounce_address.rpartition("@")
    return f"{local}+{message_token}@{domain}"


def message_number(message_token: str) -> int | None:
    """The message id a token names, or None for text that is not a token."""
    number, dot, check = message_token.partition(".")
    if not (number.isdigit() and dot and len(check) == 8) or len(number) > 10:
        return None
    return int(number)
