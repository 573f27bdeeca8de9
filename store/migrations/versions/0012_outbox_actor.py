"""outbox.actor_id: who caused a row, as a column (it was only in the payload), indexed with
the recipient and the time, so the notice cap counts a sender's notices to a recipient from
the index instead of extracting JSON from every row the recipient got (issue 17)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 05:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as b:
        b.add_column(sa.Column("actor_id", sa.Integer(), nullable=True))
        b.create_index("ix_outbox_notices", ["recipient", "actor_id", "created_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE outbox SET actor_id = (payload->>'actor_id')::integer")
    else:
        op.execute(
            "UPDATE outbox SET actor_id = CAST(json_extract(payload, '$.actor_id') AS INTEGER)"
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as b:
        b.drop_index("ix_outbox_notices")
        b.drop_column("actor_id")
