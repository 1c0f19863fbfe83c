"""send windows, weekly caps, consent revocation, digests

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("physicians") as batch:
        batch.add_column(sa.Column("send_window", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("weekly_cap", sa.Integer(), nullable=True))
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("consent_revoked_on", sa.Date(), nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=20), nullable=False, server_default="clinical"))
        batch.add_column(sa.Column("section_html", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("section_text", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("digest_id", sa.Integer(), nullable=True))
        batch.create_index("ix_messages_digest_id", ["digest_id"], unique=False)
        batch.create_foreign_key("fk_messages_digest_id", "messages", ["digest_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint("fk_messages_digest_id", type_="foreignkey")
        batch.drop_index("ix_messages_digest_id")
        batch.drop_column("digest_id")
        batch.drop_column("section_text")
        batch.drop_column("section_html")
        batch.drop_column("kind")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("consent_revoked_on")
    with op.batch_alter_table("physicians") as batch:
        batch.drop_column("weekly_cap")
        batch.drop_column("send_window")
