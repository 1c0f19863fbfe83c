"""message bodies in their own table; digest sections rendered when a digest is made

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

The log (``messages``) is scanned and updated all the time; the HTML and text
are read once, to send or to show. On SQLite a row is stored whole, so every
status change rewrote kilobytes of HTML and every scan of a column stored
after it read through them. The stored digest sections go: a section is now
rendered only when an update is actually combined into a digest.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_bodies",
        sa.Column("message_id", sa.Integer(), sa.ForeignKey("messages.id"), primary_key=True),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
    )
    op.execute("INSERT INTO message_bodies (message_id, html, text) SELECT id, html, text FROM messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("section_text")
        batch.drop_column("section_html")
        batch.drop_column("text")
        batch.drop_column("html")


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("html", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("text", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("section_html", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("section_text", sa.Text(), nullable=False, server_default=""))
    op.execute(
        "UPDATE messages SET html = (SELECT html FROM message_bodies WHERE message_id = messages.id), "
        "text = (SELECT text FROM message_bodies WHERE message_id = messages.id)"
    )
    op.drop_table("message_bodies")
