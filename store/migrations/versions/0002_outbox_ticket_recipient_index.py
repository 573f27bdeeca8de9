"""outbox index on (ticket_id, recipient) for the per-(ticket, recipient) loop breaker

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 21:40:00.000000
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_ticket_recipient", ["ticket_id", "recipient"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_ticket_recipient")
