"""the last gate before the wire: what each message needs, and undeliverable addresses

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

``messages.needs_consent`` records whether the rule that queued a message
required the client's consent, so the gate can check consent again right
before sending without the campaign files. Messages queued before this
revision are backfilled conservatively: every message about a client needs
consent, except the referral acknowledgement (the one shipped rule that
says nothing about the client's health).

``physicians.undeliverable_on`` / ``undeliverable_reason``: the physician's
address was refused as nonexistent (SMTP 5.1.x); nothing more goes to it
until a person clears the mark or the address changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("needs_consent", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.execute(
        "UPDATE messages SET needs_consent = "
        "(client_id IS NOT NULL AND template <> 'referral_acknowledgement')"
    )
    with op.batch_alter_table("physicians") as batch:
        batch.add_column(sa.Column("undeliverable_on", sa.Date(), nullable=True))
        batch.add_column(sa.Column("undeliverable_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("physicians") as batch:
        batch.drop_column("undeliverable_reason")
        batch.drop_column("undeliverable_on")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("needs_consent")
