"""The data model: one SQLAlchemy Core table per thing the service tracks.

Core rather than the ORM: the pipeline works on sets of rows (plan a rule for
every client, claim a batch, filter the log) and Core says that directly.
The migration in ``migrations/versions`` creates exactly these tables; a test
compares the two.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from outreach.renderer import Rendered

# --- vocabularies -----------------------------------------------------------

EVENT_KINDS = (
    "referral_received",
    "initial_assessment",
    "reassessment",
    "goal_achieved",
    "session_attended",
    "session_missed",
    "program_completed",
    "discharged",
    "adverse_event",
)

CLIENT_STATUSES = ("referred", "active", "on_hold", "discharged")

# What ``outreach import`` reads: one CSV file of each.
IMPORT_KINDS = ("physicians", "clients", "events", "measures")

# Message lifecycle, a fixed vocabulary (nothing else is written): pending
# until a sender claims it (sending), then sent; a temporary failure puts it
# back to pending for a later attempt, a permanent one (or attempts used up)
# makes it failed. Suppressed: may not go now (``reason`` says why) and may
# go later, e.g. once consent is on record. Cancelled: will never go.
# Bounced: the server took it, then a permanent delivery failure came back
# (a DSN read from the practice's inbox, ``outreach.inbox``). Redirected: sent,
# but to the staging addresses (``OUTREACH_REDIRECT_ALL_TO``, the row's
# ``redirected_to``), never to the physician; final, and counted nowhere a
# physician's mail is counted (caps, loops, last contact).
PENDING, SENDING, SENT, FAILED, SUPPRESSED, CANCELLED, BOUNCED, REDIRECTED = (
    "pending",
    "sending",
    "sent",
    "failed",
    "suppressed",
    "cancelled",
    "bounced",
    "redirected",
)
MESSAGE_STATUSES = (PENDING, SENDING, SENT, FAILED, SUPPRESSED, CANCELLED, BOUNCED, REDIRECTED)
# States a message never leaves by itself; the retention setting may remove their bodies.
FINAL_STATUSES = (SENT, FAILED, BOUNCED, SUPPRESSED, CANCELLED, REDIRECTED)

# Why a message was suppressed or cancelled (``messages.reason``), a fixed
# vocabulary that code can select on; ``last_error`` keeps the sentence a
# person reads.
CONSENT = "consent"  # the client's consent to share is missing, expired or withdrawn
OPTED_OUT = "opted_out"  # the physician opted out of non-clinical mail
UNDELIVERABLE = "undeliverable"  # the physician's address was refused as nonexistent
DEIDENTIFICATION = "deidentification"  # a summary of too few clients to stay anonymous
MOVED = "moved"  # the client is now referred to another physician
ADDRESS_CHANGED = "address_changed"  # the physician's address changed after queuing
DISCHARGED = "discharged"  # a recurring report for a client since discharged
DIGEST_REBUILT = "digest_rebuilt"  # a digest taken apart: some of its updates may not go
BY_PERSON = "by_person"  # cancelled by a person (``outreach cancel``)
REASONS = (
    CONSENT,
    OPTED_OUT,
    UNDELIVERABLE,
    DEIDENTIFICATION,
    MOVED,
    ADDRESS_CHANGED,
    DISCHARGED,
    DIGEST_REBUILT,
    BY_PERSON,
)

# What the audit trail of a message can say happened to it.
TRAIL_ACTIONS = (
    "queued",
    "claimed",
    "sent",
    "deferred",
    "failed",
    "suppressed",
    "cancelled",
    "released",
    "retried",
    "resent",
    "bounced",  # a permanent failure reported after the server took it (the DSN's diagnostic)
    "delayed",  # a transient DSN (4.x.x): written to the trail only
    "replied",  # the physician answered (or an auto-reply came back)
    "redirected",  # staging: sent to the staging addresses instead of the physician
    "purged",  # the body was removed under the retention setting (its SHA-256 kept)
)

PRIORITY_NORMAL, PRIORITY_URGENT = 0, 10
PRIORITIES = {"normal": PRIORITY_NORMAL, "urgent": PRIORITY_URGENT}


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """A datetime read back naive (SQLite, or a driver's own) taken as the UTC it was stored in."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, hands back aware UTC: one meaning on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; attach a time zone")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = MetaData()


# Columns that mean the same in every table that has them.
def _id() -> Column[int]:
    return Column("id", Integer, primary_key=True)


def _created_at() -> Column[datetime]:
    return Column("created_at", UTCDateTime, nullable=False)


def _updated_at() -> Column[datetime]:
    return Column("updated_at", UTCDateTime, nullable=False)


def _email() -> Column[str]:
    """A person's address, the key they are known by (254: the longest an address can be)."""
    return Column("email", String(254), nullable=False, unique=True)


def _role() -> Column[str]:
    """One of ``USER_ROLES``: what a user or an API token may do."""
    return Column("role", String(10), nullable=False)


physicians = Table(
    "physicians",
    metadata,
    _id(),
    _email(),
    Column("name", String(200), nullable=False),
    Column("credentials", String(100), nullable=False, default=""),
    Column("specialty", String(200), nullable=False, default=""),
    Column("clinic", String(200), nullable=False, default=""),
    Column("phone", String(50), nullable=False, default=""),
    Column("fax", String(50), nullable=False, default=""),
    Column("timezone", String(64), nullable=True),
    Column("opted_out_on", Date, nullable=True),
    Column("send_window", String(100), nullable=True),  # e.g. "Mon-Fri 08:00-17:00"
    Column("weekly_cap", Integer, nullable=True),
    # Refused as nonexistent by a mail server (SMTP 5.1.x): nothing more goes there until cleared.
    Column("undeliverable_on", Date, nullable=True),
    Column("undeliverable_reason", Text, nullable=True),
    _created_at(),
    _updated_at(),
)

clients = Table(
    "clients",
    metadata,
    _id(),
    Column("ref", String(64), nullable=False, unique=True),
    Column("first_name", String(100), nullable=False),
    Column("last_name", String(100), nullable=False),
    Column("physician_id", Integer, ForeignKey("physicians.id"), nullable=False, index=True),
    Column("referral_date", Date, nullable=True),
    Column("diagnosis", Text, nullable=False, default=""),
    Column("precautions", Text, nullable=False, default=""),
    Column("goals", Text, nullable=False, default=""),
    Column("consent_date", Date, nullable=True),
    Column("consent_expires", Date, nullable=True),
    Column("consent_revoked_on", Date, nullable=True),
    Column("status", String(20), nullable=False, default="referred"),
    Column("plan", Text, nullable=False, default=""),
    Column("next_reassessment", Date, nullable=True),
    _created_at(),
    _updated_at(),
    Index("ix_clients_status", "status"),
)

events = Table(
    "events",
    metadata,
    _id(),
    Column("client_id", Integer, ForeignKey("clients.id"), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("note", Text, nullable=False, default=""),
    _created_at(),
    UniqueConstraint("client_id", "kind", "occurred_at", name="uq_events_client_kind_time"),
    Index("ix_events_kind_time", "kind", "occurred_at"),
)

measurements = Table(
    "measurements",
    metadata,
    _id(),
    Column("client_id", Integer, ForeignKey("clients.id"), nullable=False),
    Column("instrument", String(40), nullable=False),
    Column("score", Float, nullable=False),
    Column("measured_on", Date, nullable=False),
    _created_at(),
    UniqueConstraint("client_id", "instrument", "measured_on", name="uq_measurements_day"),
)


def _only(rows: str) -> dict[str, Any]:
    """A partial index: only the rows where ``rows`` holds (the same SQL in both databases)."""
    return {"sqlite_where": text(rows), "postgresql_where": text(rows)}


messages = Table(
    "messages",
    metadata,
    _id(),
    Column("rule", String(100), nullable=False),
    Column("template", String(100), nullable=False),
    Column("dedupe_key", String(255), nullable=False, unique=True),
    Column("client_id", Integer, ForeignKey("clients.id"), nullable=True),
    Column("physician_id", Integer, ForeignKey("physicians.id"), nullable=True),
    Column("recipient", String(254), nullable=False),
    Column("recipient_name", String(300), nullable=False, default=""),
    Column("subject", String(300), nullable=False),
    Column("priority", SmallInteger, nullable=False, default=PRIORITY_NORMAL),
    Column("kind", String(20), nullable=False, default="clinical"),  # or relationship, digest
    Column("digest_id", Integer, ForeignKey("messages.id"), nullable=True),
    # The rule required the client's consent: the gate checks it again before sending.
    Column("needs_consent", Boolean, nullable=False, default=True),
    Column("status", String(20), nullable=False),
    Column("not_before", UTCDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("claimed_by", String(100), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("reason", String(20), nullable=True),  # one of REASONS when suppressed or cancelled
    # The event a milestone update reports on (its dedupe key names it too).
    Column("event_id", Integer, ForeignKey("events.id"), nullable=True),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("smtp_response", Text, nullable=True),
    _created_at(),
    _updated_at(),
    Column("sent_at", UTCDateTime, nullable=True),
    # Staging: where this attempt goes instead of the recipient (comma-separated), set at claim.
    Column("redirected_to", Text, nullable=True),
    # Retention: when the body was removed, and the SHA-256 of what was removed.
    Column("body_removed_at", UTCDateTime, nullable=True),
    Column("body_sha256", String(64), nullable=True),
    # A person's resend (``records.resend``): the message this one is a copy of.
    Column("resent_from", Integer, ForeignKey("messages.id"), nullable=True),
    # Every index here is written again each time a message changes status (claimed, then sent):
    # an index that serves only some rows holds only those (``_only``).
    Index("ix_messages_digest_id", "digest_id", **_only("digest_id IS NOT NULL")),  # a digest's updates
    Index("ix_messages_resent_from", "resent_from", **_only("resent_from IS NOT NULL")),  # its resends
    # A client's messages; with template, status and date the planner's "sent
    # recently?" check is answered from the index alone.
    Index("ix_messages_client_template", "client_id", "template", "status", "created_at"),
    Index("ix_messages_physician_created", "physician_id", "created_at"),
    Index("ix_messages_created", "created_at"),
    # ``outreach log --status X`` (newest first) and the planner's recent messages by status.
    Index("ix_messages_status_created", "status", "created_at"),
    Index("ix_messages_rule_created", "rule", "created_at"),  # the console's filter by rule
    # The planner combines each chunk's physicians' ready mail (``digest.batch``): their
    # pending normal mail alone, however many urgent ones wait beside it.
    Index("ix_messages_ready", "status", "priority", "physician_id"),
    # The weekly cap: what each physician was sent in the last 7 days (``digest.recent_sends``).
    Index("ix_messages_cap", "physician_id", "priority", "status", "sent_at"),
)

# The queue (``dispatcher.claim``): the mail waiting to be claimed, in the order it is claimed.
# A message leaves it when claimed, so the claim reads the first rows only, however long
# the log, and a sent message's status changes write nothing here.
Index(
    "ix_messages_claim",
    messages.c.priority.desc(),
    messages.c.id,
    **_only(f"status = '{PENDING}' AND digest_id IS NULL"),
)

# What a message says, apart from the log entry itself: the log is scanned
# and updated all the time, the bodies are read once (to send or to show).
# Kept in their own table so a status change never rewrites kilobytes of HTML.
message_bodies = Table(
    "message_bodies",
    metadata,
    Column("message_id", Integer, ForeignKey("messages.id"), primary_key=True),
    Column("html", Text, nullable=False),
    Column("text", Text, nullable=False),
)

message_events = Table(
    "message_events",
    metadata,
    _id(),
    Column("message_id", Integer, ForeignKey("messages.id"), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False),
    Column("action", String(20), nullable=False),
    Column("detail", Text, nullable=False, default=""),
)

# One row per running service process: its heartbeat and what went wrong last.
workers = Table(
    "workers",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("last_send_ok_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", UTCDateTime, nullable=True),
    Column("stopped_at", UTCDateTime, nullable=True),
)

# Who changed what through ``records`` (a person at the CLI, an import, the demo):
# one row per change, written in the transaction that made it.
audit = Table(
    "audit",
    metadata,
    _id(),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(40), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("address", String(64), nullable=True),  # where a console or API request came from
    Index("ix_audit_at", "at"),
    Index("ix_audit_actor_action_at", "actor", "action", "at"),  # failed logins, for the lockout
)

# --- the console's accounts (``outreach.accounts``) ---------------------------------

USER_ROLES = ("viewer", "staff", "admin")  # each may do all that the ones before it may

users = Table(
    "users",
    metadata,
    _id(),
    _email(),
    _role(),
    Column("password_hash", String(200), nullable=False),
    _created_at(),
    Column("disabled_at", UTCDateTime, nullable=True),
)

# A login: the cookie carries a random key, the database only its SHA-256.
web_sessions = Table(
    "web_sessions",
    metadata,
    _id(),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("address", String(64), nullable=True),
    _created_at(),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    _id(),
    Column("name", String(100), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    _role(),
    _created_at(),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)

# Keys made once and kept (the console's cookie-signing key): never a default in code.
secrets_table = Table(
    "secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
    _created_at(),
)


def new_message_id(domain: str) -> str:
    """A Message-ID of our own: ``<time in hex.random hex@domain>``.

    Time first, so the unique index on it grows at its end: a random one
    changed a page of that index for every message queued, and a plan's
    commits wrote those pages out (0.11 to 0.20 ms a message, against 0.08
    with this). Sixty-four random bits after it, so no one can guess another.
    """
    return f"<{time.time_ns():016x}.{secrets.token_hex(8)}@{domain}>"


def outbox_row(
    *,
    rule: str,
    template: str,
    dedupe_key: str,
    client_id: int | None = None,
    event_id: int | None = None,
    kind: str,
    physician_id: int,
    recipient: str,
    recipient_name: str,
    rendered: Rendered,
    status: str,
    now: datetime,
    domain: str,
    needs_consent: bool = False,
    priority: int = PRIORITY_NORMAL,
    not_before: datetime | None = None,
    reason: str | None = None,
    last_error: str | None = None,
    resent_from: int | None = None,
) -> dict:
    """A new message's ``messages`` columns and its body (``rendered``), for ``outbox.insert_messages``.

    The one builder for every message queued (the planner's and the
    digest's), so each starts alike: no attempts, due now when pending, a
    Message-ID of its own in the sender's ``domain``.
    """
    return {
        "rule": rule,
        "template": template,
        "dedupe_key": dedupe_key,
        "client_id": client_id,
        "event_id": event_id,
        "physician_id": physician_id,
        "recipient": recipient,
        "recipient_name": recipient_name,
        "subject": rendered.subject,
        "html": rendered.html,
        "text": rendered.text,
        "kind": kind,
        "needs_consent": needs_consent,
        "priority": priority,
        "status": status,
        "attempts": 0,
        "not_before": not_before,
        "next_attempt_at": now if status == PENDING else None,
        "reason": reason,
        "last_error": last_error,
        "resent_from": resent_from,
        "message_id": new_message_id(domain),
        "created_at": now,
        "updated_at": now,
    }


# --- what comes back (``outreach.inbox``) ----------------------------------------------

# An email read from the practice's mailbox: a reply to one of our messages, an
# automatic answer, a bounce, or mail that matched none of ours. Each is read
# once: its folder, UIDVALIDITY and UID are unique (and its Message-ID is checked).
INBOUND_KINDS = ("reply", "auto_reply", "bounce", "unmatched")

inbound = Table(
    "inbound",
    metadata,
    _id(),
    Column("folder", String(200), nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("header_message_id", String(998), nullable=True, index=True),
    Column("kind", String(20), nullable=False),
    Column("message_id", Integer, ForeignKey("messages.id"), nullable=True, index=True),
    Column("client_id", Integer, ForeignKey("clients.id"), nullable=True, index=True),
    Column("physician_id", Integer, ForeignKey("physicians.id"), nullable=True, index=True),
    Column("sender", String(254), nullable=False),
    Column("subject", Text, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("text", Text, nullable=False),
    Column("bounce_status", String(20), nullable=True),
    Column("reason", Text, nullable=True),  # why it matched nothing, or what could not be read
    Column("raw", LargeBinary, nullable=True),  # the message as received
    Column("moved", Boolean, nullable=False, default=False),  # moved to the done folder
    Column("moving_until", UTCDateTime, nullable=True),  # a fetch is moving it (a lease, for a crash)
    Column("body_removed_at", UTCDateTime, nullable=True),  # retention: text and raw removed
    Column("body_sha256", String(64), nullable=True),  # of the raw email removed
    _created_at(),
    UniqueConstraint("folder", "uidvalidity", "uid", name="uq_inbound_place"),
    Index("ix_inbound_kind_received", "kind", "received_at"),
)
