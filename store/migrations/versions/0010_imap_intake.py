"""imap intake: per watched folder its UIDVALIDITY and last queued UID, and per queued message its
UID, its processing record and whether it was moved out of the folder

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 01:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imap_mailboxes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(400), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "imap_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), sa.ForeignKey("imap_mailboxes.id"), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("inbound_id", sa.Integer(), sa.ForeignKey("inbound_mail.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mailbox_id", "uidvalidity", "uid", name="uq_imap_messages_uid"),
    )
    op.create_index("ix_imap_messages_waiting", "imap_messages", ["mailbox_id", "state"])
    op.create_index("ix_imap_messages_inbound_id", "imap_messages", ["inbound_id"])


def downgrade() -> None:
    op.drop_index("ix_imap_messages_inbound_id", table_name="imap_messages")
    op.drop_index("ix_imap_messages_waiting", table_name="imap_messages")
    op.drop_table("imap_messages")
    op.drop_table("imap_mailboxes")
