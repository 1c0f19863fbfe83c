"""The last gate before the wire: is this message still allowed to go, now?

What was true when a message was queued may not be true when it leaves:
consent withdrawn, the client moved to another physician, the physician
opted out, the address refused as nonexistent. The dispatcher asks the
gate about every claimed message (and, for a digest, about every update it
carries) from the state of the database now, never from plan time.

The gate only judges; the dispatcher applies its verdicts (``refuse``) in
the same transaction that holds the claim.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, literal, select, update

from outreach import store
from outreach.consent import consent_problem
from outreach.models import (
    ADDRESS_CHANGED,
    CANCELLED,
    CONSENT,
    DIGEST_REBUILT,
    MOVED,
    OPTED_OUT,
    PENDING,
    SENDING,
    SUPPRESSED,
    UNDELIVERABLE,
    clients,
    messages,
    physicians,
)
from outreach.outbox import trail_many

log = logging.getLogger(__name__)

# Where a digest's remaining updates wait while a new digest is made of them:
# long enough that no other sender takes them one by one meanwhile.
REGROUP_HOLD_SECONDS = 60


@dataclass(frozen=True)
class Refusal:
    """Why one message may not go now, and what becomes of it."""

    message_id: int
    status: str  # SUPPRESSED (may go later, e.g. once consent is back) or CANCELLED
    detail: str  # the sentence a person reads (``messages.last_error`` and the trail)
    reason: str  # one of ``models.REASONS`` (``messages.reason``)
    replan: bool = False  # its dedupe key is freed so the planner queues it for the right recipient


@dataclass(frozen=True)
class Verdicts:
    """The gate's answer for a set of claimed messages."""

    refused: dict[int, Refusal]  # claimed messages that may not go at all
    members: dict[int, dict[int, Refusal]]  # digest id -> its updates that may not go

    def __bool__(self) -> bool:
        return bool(self.refused or self.members)


_DOCTOR_NOW = physicians.alias("doctor_now")  # the client's physician today


def _state_query() -> Select[*tuple[Any, ...]]:
    """Each message with the state of the world it depends on, as it is now."""
    return select(
        *messages.c["id", "kind", "digest_id", "needs_consent", "recipient", "physician_id", "client_id"],
        *clients.c["consent_date", "consent_expires", "consent_revoked_on"],
        clients.c.physician_id.label("physician_now"),
        _DOCTOR_NOW.c.email.label("physician_now_email"),
        physicians.c.email.label("physician_email"),
        *physicians.c["opted_out_on", "undeliverable_on", "undeliverable_reason"],
    ).select_from(
        messages.outerjoin(clients, clients.c.id == messages.c.client_id)
        .outerjoin(physicians, physicians.c.id == messages.c.physician_id)
        .outerjoin(_DOCTOR_NOW, _DOCTOR_NOW.c.id == clients.c.physician_id)
    )


def judge(row: Any, today: date) -> Refusal | None:
    """The one check, in order of what matters most; None when the message may go."""
    if row.client_id is not None and row.physician_now != row.physician_id:
        return Refusal(
            row.id,
            CANCELLED,
            f"the client is now referred to {row.physician_now_email}: not sent to the former "
            "physician; what is still due goes to the new one",
            MOVED,
            replan=True,
        )
    if row.physician_email is not None and row.recipient.lower() != row.physician_email.lower():
        return Refusal(
            row.id,
            CANCELLED,
            f"the physician's address is now {row.physician_email}: not sent to {row.recipient}",
            ADDRESS_CHANGED,
            replan=True,
        )
    if row.needs_consent and row.client_id is not None:
        problem = consent_problem(row.consent_date, row.consent_expires, row.consent_revoked_on, today)
        if problem:
            return Refusal(row.id, SUPPRESSED, f"{problem}: not sent", CONSENT)
    if row.kind == "relationship" and row.opted_out_on is not None:
        return Refusal(
            row.id,
            SUPPRESSED,
            f"physician opted out of non-clinical mail on {row.opted_out_on}: not sent",
            OPTED_OUT,
        )
    if row.undeliverable_on is not None:
        why = f" ({row.undeliverable_reason})" if row.undeliverable_reason else ""
        return Refusal(
            row.id,
            SUPPRESSED,
            f"address {row.recipient} marked undeliverable on {row.undeliverable_on}{why}: not sent",
            UNDELIVERABLE,
        )
    return None


def screen(conn: Connection, ids: list[int], today: date) -> Verdicts:
    """Judge claimed messages, and the updates inside any digest among them."""
    refused: dict[int, Refusal] = {}
    members: dict[int, dict[int, Refusal]] = {}
    for chunk in store.chunks(ids):
        for row in conn.execute(_state_query().where(messages.c.id.in_(chunk))):
            refusal = judge(row, today)
            if refusal is not None:
                refused[row.id] = refusal
        member_rows = conn.execute(_state_query().where(messages.c.digest_id.in_(chunk)))
        for row in member_rows:
            refusal = judge(row, today)
            if refusal is not None:
                members.setdefault(row.digest_id, {})[row.id] = refusal
    return Verdicts(refused, members)


def refuse(conn: Connection, refusals: list[Refusal], now: datetime, worker: str | None = None) -> list[int]:
    """Apply refusals: the new status, the reason (code and sentence) on record and in the trail.

    With ``worker``, only messages this worker still holds are touched (a
    claimed message); without, only pending ones (the updates in a digest).
    A message to be planned again gives up its dedupe key, which it keeps
    with a suffix, so the planner queues it afresh for the right physician.
    """
    done = []
    for refusal in refusals:
        held = (
            (messages.c.status == SENDING) & (messages.c.claimed_by == worker)
            if worker is not None
            else messages.c.status == PENDING
        )
        values: dict[str, Any] = {
            "status": refusal.status,
            "last_error": refusal.detail,
            "reason": refusal.reason,
            "lease_until": None,
            "updated_at": now,
        }
        if refusal.replan:
            values["dedupe_key"] = messages.c.dedupe_key + literal(f"~replanned:{refusal.message_id}")
        changed = conn.execute(
            update(messages).where(messages.c.id == refusal.message_id, held).values(**values)
        ).rowcount
        if changed:
            done.append(refusal)
    trail_many(conn, now, [(r.message_id, r.status, r.detail) for r in done])
    return [r.message_id for r in done]


def take_apart(
    conn: Connection, digest_id: int, verdicts: Verdicts, now: datetime, worker: str | None = None
) -> list[int]:
    """Cancel a digest some of whose updates may not go; the others wait to be combined again.

    The digest is cancelled whole (with ``worker``: only if that worker holds
    its claim); the updates that may not go are refused and leave it; the rest
    leave it too and are held briefly (``REGROUP_HOLD_SECONDS``) so that no
    sender takes them one by one before they are combined again. Returns them.
    """
    failing = verdicts.members.get(digest_id, {})
    members = select(messages.c.id).where(messages.c.digest_id == digest_id, messages.c.status == PENDING)
    remaining = [i for i in conn.execute(members).scalars() if i not in failing]
    why = "; ".join(f"message {i}: {r.detail}" for i, r in sorted(failing.items()))
    if digest_id in verdicts.refused:
        why = verdicts.refused[digest_id].detail + (f"; {why}" if why else "")
    detail = f"rebuilt without the updates that may not go ({why})" if remaining else f"not sent: {why}"
    if not refuse(conn, [Refusal(digest_id, CANCELLED, detail, DIGEST_REBUILT)], now, worker):
        return []  # not ours to take apart (being sent by another worker, or gone already)
    note = f" (taken out of digest message {digest_id})"
    refuse(conn, [replace(r, detail=r.detail + note) for r in failing.values()], now)
    conn.execute(update(messages).where(messages.c.id.in_(list(failing))).values(digest_id=None))
    if remaining:
        hold = now + timedelta(seconds=REGROUP_HOLD_SECONDS)
        conn.execute(
            update(messages)
            .where(messages.c.id.in_(remaining))
            .values(digest_id=None, not_before=hold, updated_at=now)
        )
        detail = f"digest message {digest_id} was cancelled ({why}); to be combined again without it"
        trail_many(conn, now, [(i, "deferred", detail) for i in remaining])
    log.warning("digest message %s cancelled at the gate: %s", digest_id, detail)
    return remaining
