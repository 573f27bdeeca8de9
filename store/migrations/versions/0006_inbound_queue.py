"""inbound queue: the processing record holds the envelope, attempts, the last error, when it may
be claimed next and when it was processed; inbound_refs lists the Message-IDs a queued mail names

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_mail", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("envelope_from", sa.String(320), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("envelope_rcpts", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "inbound_refs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("inbound_id", sa.Integer(), sa.ForeignKey("inbound_mail.id"), nullable=False),
        sa.Column("message_id", sa.String(998), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_inbound_refs_message_id", "inbound_refs", ["message_id"])
    op.create_index("ix_inbound_refs_inbound_id", "inbound_refs", ["inbound_id"])


def downgrade() -> None:
    op.drop_index("ix_inbound_refs_inbound_id", table_name="inbound_refs")
    op.drop_index("ix_inbound_refs_message_id", table_name="inbound_refs")
    op.drop_table("inbound_refs")
    with op.batch_alter_table("inbound_mail", schema=None) as batch_op:
        for name in (
            "processed_at",
            "not_before",
            "last_error",
            "attempts",
            "envelope_rcpts",
            "envelope_from",
        ):
            batch_op.drop_column(name)
