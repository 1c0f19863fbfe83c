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
import re


def token(message_id: int, header_message_id: str) -> str:
    """The token for a message: its id and a check on its Message-ID."""
    return f"{message_id}.{hashlib.sha256(header_message_id.encode()).hexdigest()[:8]}"


_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*")
_LOCAL = re.compile(r"[^\s@<>()\[\],;:\"\\]+")


def _split_bounce_address(bounce_address: str) -> tuple[str, str]:
    local, at, domain = bounce_address.strip().rpartition("@")
    if not (at and _LOCAL.fullmatch(local) and _LOCAL.fullmatch(domain) and "." in domain):
        raise ValueError(f"{bounce_address!r} is not a bounce address like bounces@practice.example")
    return local, domain


def address(bounce_address: str, message_token: str) -> str:
    """``bounces@practice.example`` and ``42.ab12cd34`` make ``bounces+42.ab12cd34@practice.example``.

    ``ValueError`` for a token that could not come back unchanged (empty, with
    ``@``, ``+``, spaces or the like) or an address whose local part would
    pass RFC 5321's 64 characters.
    """
    local, domain = _split_bounce_address(bounce_address)
    if not _TOKEN.fullmatch(message_token):
        raise ValueError(f"{message_token!r} cannot be a VERP token (letters, digits, '.', '_', '=', '-')")
    if len(local) + 1 + len(message_token) > 64:
        raise ValueError(f"{local}+{message_token} is longer than the 64 characters a local part may have")
    return f"{local}+{message_token}@{domain}"


def token_in(recipient: str, bounce_address: str) -> str | None:
    """The token of ``bounces+<token>@practice.example``; None for any other address.

    The domain and the bounce address's own local part compare case-insensitively
    (mail servers treat them so); the token comes back as the address has it.
    """
    local, domain = _split_bounce_address(bounce_address)
    candidate = recipient.strip().removeprefix("<").removesuffix(">")
    their_local, at, their_domain = candidate.rpartition("@")
    if not at or their_domain.lower() != domain.lower():
        return None
    prefix = f"{local}+"
    if not their_local.lower().startswith(prefix.lower()):
        return None
    found = their_local[len(prefix) :]
    return found if _TOKEN.fullmatch(found) else None


def message_number(message_token: str) -> int | None:
    """The message id a token names, or None for text that is not a token."""
    number, dot, check = message_token.partition(".")
    if not (number.isdigit() and dot and len(check) == 8) or len(number) > 10:
        return None
    return int(number)
