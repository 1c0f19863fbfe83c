"""state in columns: why a message was stopped, and the event it reports on

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

``messages.reason``: why a message was suppressed or cancelled, one of
``models.REASONS`` (``last_error`` keeps the sentence a person reads).
Existing messages are backfilled from those sentences, as the code wrote
them up to this revision; a suppressed message whose sentence mentions
consent gets ``consent``, as the planner's text search found it before, so
it is still sent once consent is on record.

``messages.event_id``: the event a milestone update reports on, until now
only written in its dedupe key (``rule:event:ID``, with ``~replanned:N``
added when the gate freed the key); backfilled from that key.
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

EVENT_KEY = re.compile(r"[^:]+:event:(\d+)(?:~replanned:\d+)?")
CHUNK = 500

messages = sa.table(
    "messages",
    sa.column("id", sa.Integer),
    sa.column("template", sa.String),
    sa.column("dedupe_key", sa.String),
    sa.column("status", sa.String),
    sa.column("last_error", sa.Text),
    sa.column("reason", sa.String),
    sa.column("event_id", sa.Integer),
)
events = sa.table("events", sa.column("id", sa.Integer))
message_events = sa.table(
    "message_events",
    sa.column("message_id", sa.Integer),
    sa.column("action", sa.String),
    sa.column("detail", sa.Text),
)

# (status, what its sentence begins with, reason), first match wins: the
# sentences as the planner and the gate wrote them before this revision.
SENTENCES = (
    ("suppressed", "physician opted out of non-clinical mail%", "opted_out"),
    ("suppressed", "address % marked undeliverable on %", "undeliverable"),
    ("suppressed", "fewer than % clients: the summary could identify them%", "deidentification"),
    ("suppressed", "%consent%", "consent"),
    ("cancelled", "the client is now referred to %", "moved"),
    ("cancelled", "the physician's address is now %", "address_changed"),
)


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("reason", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("event_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_messages_event_id", "events", ["event_id"], ["id"])
    _backfill_reason()
    _backfill_event_id()


def _backfill_reason() -> None:
    """Each suppressed or cancelled message's reason, read from what was written about it."""
    unset = messages.c.reason.is_(None)
    op.execute(
        messages.update()
        .where(unset, messages.c.status == "cancelled", messages.c.template == "digest")
        .values(reason="digest_rebuilt")
    )
    for status, pattern, reason in SENTENCES:
        op.execute(
            messages.update()
            .where(unset, messages.c.status == status, messages.c.last_error.like(pattern))
            .values(reason=reason)
        )
    discharged = sa.exists().where(
        message_events.c.message_id == messages.c.id,
        message_events.c.action == "cancelled",
        message_events.c.detail == "client discharged",
    )
    op.execute(
        messages.update()
        .where(unset, messages.c.status == "cancelled", discharged)
        .values(reason="discharged")
    )


def _backfill_event_id() -> None:
    """The event id out of each milestone update's dedupe key, where that event exists."""
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(messages.c.id, messages.c.dedupe_key).where(messages.c.dedupe_key.like("%:event:%"))
    ).all()
    found = [(row.id, EVENT_KEY.fullmatch(row.dedupe_key)) for row in rows]
    pairs = [{"message": i, "event": int(match[1])} for i, match in found if match]
    exists = sa.exists().where(events.c.id == sa.bindparam("event"))
    statement = (
        messages.update()
        .where(messages.c.id == sa.bindparam("message"), exists)
        .values(event_id=sa.bindparam("event"))
    )
    for start in range(0, len(pairs), CHUNK):
        conn.execute(statement, pairs[start : start + CHUNK])


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint("fk_messages_event_id", type_="foreignkey")
        batch.drop_column("event_id")
        batch.drop_column("reason")
