"""slack: each organization names its workspace (team id) and app id; Slack requests applied
once (slack_seen: event ids, interaction ids); the channel post of each ticket (slack_posts)

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-02 01:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slack_team_id", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("slack_app_id", sa.String(32), nullable=True))
        batch_op.create_index("ix_organizations_slack_team_id", ["slack_team_id"], unique=True)
    op.create_table(
        "slack_seen",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "slack_posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), sa.ForeignKey("tickets.id"), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("ts", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ticket_id", "channel", name="uq_slack_posts_ticket_channel"),
    )
    op.create_index("ix_slack_posts_channel_ts", "slack_posts", ["channel", "ts"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_slack_posts_channel_ts", table_name="slack_posts")
    op.drop_table("slack_posts")
    op.drop_table("slack_seen")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_index("ix_organizations_slack_team_id")
        batch_op.drop_column("slack_app_id")
        batch_op.drop_column("slack_team_id")
