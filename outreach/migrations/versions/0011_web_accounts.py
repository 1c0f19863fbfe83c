"""the console's accounts: users, their sessions, API tokens, a stored key, and the audit's address

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28

``users``: who may log in to ``outreach web`` (role admin, staff or viewer;
an argon2 password hash). ``web_sessions``: one row per login, ended by
logout or by idleness (only a hash of the cookie's key is stored).
``api_tokens``: bearer tokens for ``/api/v1`` (stored hashed). ``secrets``:
keys the service makes once and keeps (the console's cookie-signing key),
never a default in code. ``audit.address``: the network address a change or
view came from (NULL for the command line). An index on the log's rule and
time, for the console's filter by rule.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.add_column("audit", sa.Column("address", sa.String(length=64), nullable=True))
    op.create_index("ix_audit_actor_action_at", "audit", ["actor", "action", "at"])
    op.create_index("ix_messages_rule_created", "messages", ["rule", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_rule_created", table_name="messages")
    op.drop_index("ix_audit_actor_action_at", table_name="audit")
    op.drop_column("audit", "address")
    op.drop_table("secrets")
    op.drop_table("api_tokens")
    op.drop_table("web_sessions")
    op.drop_table("users")
