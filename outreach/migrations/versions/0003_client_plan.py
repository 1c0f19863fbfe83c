"""clients: plan of care and next reassessment date

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("plan", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("next_reassessment", sa.Date(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("next_reassessment")
        batch.drop_column("plan")
