"""what comes back: replies, automatic answers and bounces read from the practice's mailbox

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28

``inbound``: one row per email read over IMAP, unique by folder, UIDVALIDITY
and UID, so each is handled once even across a crash or two services. A
message's new status ``bounced`` needs no schema change (a status is text).
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("folder", sa.String(length=200), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("header_message_id", sa.String(length=998), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("physician_id", sa.Integer(), nullable=True),
        sa.Column("sender", sa.String(length=254), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("bounce_status", sa.String(length=20), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("moved", sa.Boolean(), nullable=False),
        sa.Column("moving_until", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.ForeignKeyConstraint(["client_id"], ["clients.id"]),
        sa.ForeignKeyConstraint(["physician_id"], ["physicians.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("folder", "uidvalidity", "uid", name="uq_inbound_place"),
    )
    for column in ("header_message_id", "message_id", "client_id", "physician_id"):
        op.create_index(f"ix_inbound_{column}", "inbound", [column])
    op.create_index("ix_inbound_kind_received", "inbound", ["kind", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_inbound_kind_received", table_name="inbound")
    for column in ("header_message_id", "message_id", "client_id", "physician_id"):
        op.drop_index(f"ix_inbound_{column}", table_name="inbound")
    op.drop_table("inbound")
