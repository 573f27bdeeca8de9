"""scheduler (issue 13): branch holiday country, department SLA policies, the tickets' SLA,
escalation, reminder and feedback state, feedback channel, and schedule_steps (one row per
step done, unique per ticket, kind, step and deadline)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 01:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("branches", schema=None) as b:
        b.add_column(sa.Column("holiday_country", sa.String(8), nullable=True))
        b.add_column(sa.Column("holiday_subdivision", sa.String(16), nullable=True))
    with op.batch_alter_table("departments", schema=None) as b:
        b.add_column(sa.Column("sla", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("tickets", schema=None) as b:
        b.add_column(sa.Column("sla_policy", sa.JSON(), nullable=True))
        b.add_column(sa.Column("sla_start", _TS, nullable=True))
        b.add_column(sa.Column("first_responded_at", _TS, nullable=True))
        b.add_column(sa.Column("resolved_at", _TS, nullable=True))
        for name in ("first_response_breached", "resolution_breached", "feedback_clarified"):
            b.add_column(sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false()))
        for name in ("escalation_step", "reminders_sent", "feedback_requests"):
            b.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("escalation_from", _TS, nullable=True))
        b.add_column(sa.Column("escalation_due", _TS, nullable=True))
        b.create_index("ix_tickets_escalation_due", ["escalation_due"])
    with op.batch_alter_table("feedback", schema=None) as b:
        b.add_column(sa.Column("channel", sa.String(16), nullable=False, server_default="email"))
        b.add_column(sa.Column("employee_id", sa.Integer(), nullable=True))
    op.create_table(
        "schedule_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), sa.ForeignKey("tickets.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("due_at", _TS, nullable=False),
        sa.Column("done_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ticket_id", "kind", "step", "due_at", name="uq_schedule_steps_key"),
    )
    op.create_index("ix_schedule_steps_ticket_id", "schedule_steps", ["ticket_id"])
    op.create_index("ix_schedule_steps_kind_done", "schedule_steps", ["kind", "done_at"])


def downgrade() -> None:
    op.drop_index("ix_schedule_steps_kind_done", table_name="schedule_steps")
    op.drop_index("ix_schedule_steps_ticket_id", table_name="schedule_steps")
    op.drop_table("schedule_steps")
    with op.batch_alter_table("feedback", schema=None) as b:
        b.drop_column("employee_id")
        b.drop_column("channel")
    with op.batch_alter_table("tickets", schema=None) as b:
        b.drop_index("ix_tickets_escalation_due")
        for name in (
            "escalation_due",
            "escalation_from",
            "feedback_requests",
            "reminders_sent",
            "escalation_step",
            "feedback_clarified",
            "resolution_breached",
            "first_response_breached",
            "resolved_at",
            "first_responded_at",
            "sla_start",
            "sla_policy",
        ):
            b.drop_column(name)
    with op.batch_alter_table("departments", schema=None) as b:
        b.drop_column("sla")
    with op.batch_alter_table("branches", schema=None) as b:
        b.drop_column("holiday_subdivision")
        b.drop_column("holiday_country")
