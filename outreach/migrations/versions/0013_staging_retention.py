"""staging redirect, retention, and resends in a column

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28

``messages.redirected_to``: the staging addresses an attempt went to instead of
the physician (``OUTREACH_REDIRECT_ALL_TO``); the new status ``redirected`` is
text and needs no change. ``body_removed_at`` and ``body_sha256`` on
``messages`` and ``inbound``: when ``outreach purge`` removed a body under
``OUTREACH_RETENTION_DAYS``, and the SHA-256 of what it removed.
``messages.resent_from``: the message a person's resend copies, until now only
in the trail's words ("resend of message N"), from which it is filled in.
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("redirected_to", sa.Text(), nullable=True))
        batch.add_column(sa.Column("body_removed_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("body_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("resent_from", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_messages_resent_from", "messages", ["resent_from"], ["id"])
    op.create_index("ix_messages_resent_from", "messages", ["resent_from"])
    op.create_index("ix_messages_ready", "messages", ["status", "priority", "physician_id"])
    with op.batch_alter_table("inbound") as batch:
        batch.add_column(sa.Column("body_removed_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("body_sha256", sa.String(length=64), nullable=True))
    _fill_resent_from()


def _fill_resent_from() -> None:
    """Each earlier resend's origin, read from its first trail line ("resend of message N")."""
    conn = op.get_bind()
    found = conn.execute(
        sa.text(
            "SELECT message_id, detail FROM message_events "
            "WHERE action = 'queued' AND detail LIKE 'resend of message %'"
        )
    ).all()
    for message_id, detail in found:
        origin = re.match(r"resend of message (\d+)", detail)
        if origin:
            conn.execute(
                sa.text("UPDATE messages SET resent_from = :origin WHERE id = :id"),
                {"origin": int(origin.group(1)), "id": message_id},
            )


def downgrade() -> None:
    op.drop_index("ix_messages_resent_from", table_name="messages")
    op.drop_index("ix_messages_ready", table_name="messages")
    with op.batch_alter_table("inbound") as batch:
        batch.drop_column("body_sha256")
        batch.drop_column("body_removed_at")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("body_sha256")
        batch.drop_column("body_removed_at")
        batch.drop_column("redirected_to")
        batch.drop_constraint("fk_messages_resent_from", type_="foreignkey")
        batch.drop_column("resent_from")
