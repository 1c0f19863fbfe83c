"""index on messages (physician_id, priority, status, sent_at)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28

The weekly cap counts what each physician was sent in the last 7 days
(``digest.recent_sends``). Without statistics SQLite answered that through the
``digest_id`` index, every update carried by no digest: the whole log, about a
quarter of a second a chunk of physicians in a practice of a million messages.
This index finds a physician's recent sends directly.
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_cap", "messages", ["physician_id", "priority", "status", "sent_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_cap", table_name="messages")
