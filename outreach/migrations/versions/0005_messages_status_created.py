"""index on messages (status, created_at)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

``outreach log --status failed`` wants the newest failed messages first, and
the planner looks up recent messages by status: without this index both walk
the log by date and skip the other statuses, a million rows in a large practice.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_status_created", "messages", ["status", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_messages_status_created", table_name="messages")
