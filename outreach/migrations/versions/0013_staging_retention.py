"""staging redirect and retention

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28

``messages.redirected_to``: the staging addresses an attempt went to instead of
the physician (``OUTREACH_REDIRECT_ALL_TO``); the new status ``redirected`` is
text and needs no change. ``body_removed_at`` and ``body_sha256`` on
``messages`` and ``inbound``: when ``outreach purge`` removed a body under
``OUTREACH_RETENTION_DAYS``, and the SHA-256 of what it removed.
"""

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
    with op.batch_alter_table("inbound") as batch:
        batch.add_column(sa.Column("body_removed_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("body_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbound") as batch:
        batch.drop_column("body_sha256")
        batch.drop_column("body_removed_at")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("body_sha256")
        batch.drop_column("body_removed_at")
        batch.drop_column("redirected_to")
