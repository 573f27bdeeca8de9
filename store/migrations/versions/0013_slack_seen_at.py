"""slack_seen.at indexed: the scheduler's tick forgets applied Slack ids older than a week

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 09:50:00.000000
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_slack_seen_at", "slack_seen", ["at"])


def downgrade() -> None:
    op.drop_index("ix_slack_seen_at", table_name="slack_seen")
