"""indexes for the planner's steady tick

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

Every tick asks, for each active client, whether a recurring report went
out recently. With (client_id, template, status, created_at) the answer
comes from the index alone instead of from each of the client's messages;
it also serves every lookup by client that the single-column index did.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_client_template", "messages", ["client_id", "template", "status", "created_at"]
    )
    op.drop_index("ix_messages_client_id", table_name="messages")
    op.create_index("ix_clients_status", "clients", ["status"])


def downgrade() -> None:
    op.drop_index("ix_clients_status", table_name="clients")
    op.create_index("ix_messages_client_id", "messages", ["client_id"])
    op.drop_index("ix_messages_client_template", table_name="messages")
