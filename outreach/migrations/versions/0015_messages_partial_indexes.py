"""messages: the queue as a partial index; digest and resend links indexed where set

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29

A message changes status twice on its way out (claimed, then sent), and on
PostgreSQL each change writes an entry into every index of ``messages``. Three of
them served a few rows but held them all:

- ``ix_messages_queue`` (status, next_attempt_at) served no query the status
  indexes beside it do not; the claim read every pending row through
  ``ix_messages_ready`` and sorted them. ``ix_messages_claim`` holds the waiting
  mail only, in the order it is claimed.
- ``ix_messages_digest_id`` and ``ix_messages_resent_from`` held every message,
  though only a digest's updates and a resend have the link set.
"""

from alembic import op
from sqlalchemy import text

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

PARTIAL = {
    "ix_messages_digest_id": ("digest_id", "digest_id IS NOT NULL"),
    "ix_messages_resent_from": ("resent_from", "resent_from IS NOT NULL"),
}
CLAIMABLE = "status = 'pending' AND digest_id IS NULL"


def _where(rows: str) -> dict:
    return {"sqlite_where": text(rows), "postgresql_where": text(rows)}


def upgrade() -> None:
    op.drop_index("ix_messages_queue", table_name="messages")
    for name, (column, rows) in PARTIAL.items():
        op.drop_index(name, table_name="messages")
        op.create_index(name, "messages", [column], **_where(rows))
    op.create_index("ix_messages_claim", "messages", [text("priority DESC"), "id"], **_where(CLAIMABLE))


def downgrade() -> None:
    op.drop_index("ix_messages_claim", table_name="messages")
    for name, (column, _) in PARTIAL.items():
        op.drop_index(name, table_name="messages")
        op.create_index(name, "messages", [column])
    op.create_index("ix_messages_queue", "messages", ["status", "next_attempt_at"])
