"""One rule for "may health information about this client be shared today?".

The planner (at queue time), the gate (right before the wire) and
``outreach loops`` (what blocks a referral) all ask it; each used to carry
its own copy, and the copies disagreed about expiry and revocation.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import ColumnElement

from outreach.models import clients


def consent_problem(
    consent_date: date | None, expires: date | None, revoked: date | None, today: date
) -> str | None:
    """Why health information about this client may not be shared today, or None."""
    if revoked is not None and revoked <= today:
        return f"consent revoked on {revoked}"
    if consent_date is None:
        return "no consent to share health information on record"
    if consent_date > today:
        return f"consent is recorded from {consent_date}, not yet in effect"
    if expires is not None and expires < today:
        return f"consent expired on {expires}"
    return None


def row_consent_problem(row: Any, today: date) -> str | None:
    """``consent_problem`` for a row with ``consent_date``, ``consent_expires``, ``consent_revoked_on``."""
    return consent_problem(row.consent_date, row.consent_expires, row.consent_revoked_on, today)


def consent_in_effect(today: date) -> ColumnElement[bool]:
    """SQL for ``consent_problem(...) is None``: on record, in effect, not expired, not revoked."""
    return (
        clients.c.consent_date.is_not(None)
        & (clients.c.consent_date <= today)
        & (clients.c.consent_expires.is_(None) | (clients.c.consent_expires >= today))
        & (clients.c.consent_revoked_on.is_(None) | (clients.c.consent_revoked_on > today))
    )
