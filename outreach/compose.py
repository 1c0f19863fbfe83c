"""A stored message as an RFC 5322 email: multipart/alternative, CRLF, quoted-printable.

The bytes are built from the stored row alone, so a resend after a crash is
the same email with the same Message-ID.
"""

from __future__ import annotations

import email.policy
import re
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from outreach.settings import Settings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(value: str) -> str:
    """Header text with every line break and control character folded to a space."""
    return re.sub(r"\s+", " ", _CONTROL.sub(" ", value)).strip()


def build_email(row, settings: Settings, sent_at: datetime) -> EmailMessage:
    """The email for a stored message row (``messages`` columns)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    sender = one_line(f"{settings.sender_name}, {settings.practice_name}")
    msg["From"] = Address(display_name=sender, addr_spec=settings.from_addr)
    msg["To"] = Address(display_name=one_line(row.recipient_name or ""), addr_spec=row.recipient)
    if settings.reply_to:
        msg["Reply-To"] = settings.reply_to
    msg["Subject"] = one_line(row.subject)
    msg["Date"] = format_datetime(sent_at)
    msg["Message-ID"] = row.message_id
    if getattr(row, "kind", "clinical") == "relationship":
        # Non-clinical mail can be stopped with one click in the physician's mail client.
        msg["List-Unsubscribe"] = f"<mailto:{settings.reply_to or settings.from_addr}?subject=unsubscribe>"
    if row.priority > 0:
        msg["Importance"] = "high"
        msg["X-Priority"] = "1"
    msg.set_content(row.text, subtype="plain", cte="quoted-printable")
    msg.add_alternative(row.html, subtype="html", cte="quoted-printable")
    return msg


def to_bytes(msg: EmailMessage) -> bytes:
    """CRLF line endings throughout, as SMTP requires (smtplib won't fix bytes)."""
    return msg.as_bytes(policy=email.policy.SMTP)
