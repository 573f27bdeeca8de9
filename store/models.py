"""SQLAlchemy 2 declarative models for the whole domain of SPEC §1 (and the mail/outbox records)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from gateway.domain.lifecycle import AssignmentType, Priority, Status


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both SQLite (which stores naive text) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        from datetime import UTC

        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        from datetime import UTC

        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class Organization(Base):
    __tablename__ = "organizations"
    __table_args__ = (Index("ix_organizations_slack_team_id", "slack_team_id", unique=True),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    domains: Mapped[list[Any]] = mapped_column(default=list)
    # SPEC §3: the Slack workspace (team id) and app whose requests act for this organization
    slack_team_id: Mapped[str | None] = mapped_column(String(32), default=None)
    slack_app_id: Mapped[str | None] = mapped_column(String(32), default=None)


class Branch(Base):
    __tablename__ = "branches"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    working_hours: Mapped[dict[str, Any]] = mapped_column(default=dict)
    holidays: Mapped[list[Any]] = mapped_column(default=list)
    # Public holidays of a country (and subdivision) from the `holidays` package (issue 13).
    holiday_country: Mapped[str | None] = mapped_column(String(8), default=None)
    holiday_subdivision: Mapped[str | None] = mapped_column(String(16), default=None)


class Category(Base):
    __tablename__ = "categories"
    __table_args__ = (UniqueConstraint("org_id", "parent_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))


class Department(Base):
    __tablename__ = "departments"
    __table_args__ = (UniqueConstraint("branch_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    branch_id: Mapped[int] = mapped_column(ForeignKey("branches.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # lower-cased; the gateway owns it, so it is unique across the installation
    address: Mapped[str] = mapped_column(String(320), unique=True)
    slack_channel: Mapped[str | None] = mapped_column(String(64), index=True)
    default_category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"))
    # SLA policies in file order, each with its escalation chain (service/sla.py reads them).
    sla: Mapped[list[Any]] = mapped_column(default=list)


class Role(Base):
    __tablename__ = "roles"
    __table_args__ = (UniqueConstraint("department_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    level: Mapped[int] = mapped_column(Integer)


class Employee(Base):
    __tablename__ = "employees"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"), index=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    gateway_address: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    slack_user_id: Mapped[str | None] = mapped_column(String(64), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    role: Mapped[Role] = relationship(lazy="joined")


class Ticket(Base):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(primary_key=True)  # the n of TKT-n
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    subject: Mapped[str] = mapped_column(String(998))
    description: Mapped[str] = mapped_column(Text, default="")
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"))
    sub_category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"))
    priority: Mapped[str] = mapped_column(String(16), default=Priority.NORMAL.value)
    assignment_type: Mapped[str] = mapped_column(
        String(16), default=AssignmentType.DEPARTMENT.value
    )
    # From
    from_employee_id: Mapped[int] = mapped_column(ForeignKey("employees.id"), index=True)
    from_department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    from_branch_id: Mapped[int] = mapped_column(ForeignKey("branches.id"))
    channel: Mapped[str] = mapped_column(String(16))
    device: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # To
    to_department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    to_employee_id: Mapped[int | None] = mapped_column(ForeignKey("employees.id"), index=True)
    to_branch_id: Mapped[int] = mapped_column(ForeignKey("branches.id"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("employees.id"), index=True)
    status: Mapped[str] = mapped_column(String(32), default=Status.RAISED.value, index=True)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    linked_ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    # threading rule 2 looks a Message-ID up here: indexed so a reply costs O(1), not a scan
    root_message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    # Deadlines for the scheduler (indexed: a tick selects WHERE due <= now, O(due)).
    first_response_due: Mapped[datetime | None] = mapped_column(index=True)
    resolution_due: Mapped[datetime | None] = mapped_column(index=True)
    reminder_due: Mapped[datetime | None] = mapped_column(index=True)
    auto_close_due: Mapped[datetime | None] = mapped_column(index=True)
    feedback_due: Mapped[datetime | None] = mapped_column(index=True)
    # SLA state (issue 13): the policy that applies (a copy, so a re-import does not move
    # running clocks), when its resolution clock started, when the clocks were met or broken.
    sla_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    sla_start: Mapped[datetime | None] = mapped_column(default=None)
    first_responded_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    first_response_breached: Mapped[bool] = mapped_column(Boolean, default=False)
    resolution_breached: Mapped[bool] = mapped_column(Boolean, default=False)
    # The escalation chain: the next step's index, the breach it counts from, when it is due.
    escalation_step: Mapped[int] = mapped_column(Integer, default=0)
    escalation_from: Mapped[datetime | None] = mapped_column(default=None)
    escalation_due: Mapped[datetime | None] = mapped_column(index=True, default=None)
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    feedback_requests: Mapped[int] = mapped_column(Integer, default=0)
    feedback_clarified: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy's declarative hook


class TicketCopy(Base):
    __tablename__ = "ticket_copies"
    __table_args__ = (
        UniqueConstraint("ticket_id", "kind", "employee_id", "department_id"),
        Index("ix_copies_employee", "employee_id"),
        Index("ix_copies_department", "department_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # RC | RHC
    employee_id: Mapped[int | None] = mapped_column(ForeignKey("employees.id"))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    added_at: Mapped[datetime]


class StatusHistory(Base):
    __tablename__ = "status_history"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("employees.id"))
    actor_label: Mapped[str] = mapped_column(String(320))
    at: Mapped[datetime]
    channel: Mapped[str] = mapped_column(String(16))
    remark: Mapped[str] = mapped_column(Text, default="")


class Blob(Base):
    """Content-addressed bytes: attachments and raw inbound MIME."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Message(Base):
    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    sender_id: Mapped[int | None] = mapped_column(ForeignKey("employees.id"))
    sender_label: Mapped[str] = mapped_column(String(320))
    body: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    channel: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    raw_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    slack_ts: Mapped[str | None] = mapped_column(String(32))


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    inline: Mapped[bool] = mapped_column(Boolean, default=False)


class Feedback(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), unique=True)
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime]
    channel: Mapped[str] = mapped_column(String(16), default="email")
    employee_id: Mapped[int | None] = mapped_column(Integer, default=None)  # who answered


class ScheduleStep(Base):
    """One piece of scheduled work done for a ticket (an escalation step, a reminder, a
    feedback request, an auto-close …). The unique key (ticket, kind, step, due_at) makes a
    second process's attempt at the same step a no-op (DESIGN: idempotency keys)."""

    __tablename__ = "schedule_steps"
    __table_args__ = (
        UniqueConstraint("ticket_id", "kind", "step", "due_at", name="uq_schedule_steps_key"),
        Index("ix_schedule_steps_kind_done", "kind", "done_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer)
    due_at: Mapped[datetime]
    done_at: Mapped[datetime]


class InboundMail(Base):
    """The processing record of every inbound mail (SPEC §2.3), and its dedupe key."""

    __tablename__ = "inbound_mail"
    # the per-sender rate limit counts one sender's mails of the last hour: without the pair
    # the count walked every mail of that hour (the intake profile's costliest statement)
    __table_args__ = (Index("ix_inbound_mail_sender_at", "sender", "at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    sender: Mapped[str] = mapped_column(String(320))
    channel: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(
        String(32), index=True
    )  # queued|ticket|message|quarantined|refused
    rule: Mapped[str] = mapped_column(Text)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    raw_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    at: Mapped[datetime] = mapped_column(index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The inbound queue (issue 11): the edge inserts a row `queued` with the envelope; the
    # intake runner claims it (not before `not_before`), processes it and sets the outcome.
    envelope_from: Mapped[str] = mapped_column(String(320), default="")
    envelope_rcpts: Mapped[list[Any]] = mapped_column(default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    not_before: Mapped[datetime | None] = mapped_column(default=None)
    processed_at: Mapped[datetime | None] = mapped_column(default=None)


class ImapMailbox(Base):
    """What the IMAP intake knows of one watched folder: its UIDVALIDITY and the highest UID
    whose message is committed to the inbound queue (issue 15)."""

    __tablename__ = "imap_mailboxes"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(400), unique=True)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger, default=None)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime]


class ImapMessage(Base):
    """One message of a watched folder that was committed to the inbound queue: its UID and
    the processing record it became, and whether it was moved out of the folder yet
    (`state`: `waiting` for the runner or the move, `processed`, `quarantine`, `gone`)."""

    __tablename__ = "imap_messages"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "uidvalidity", "uid", name="uq_imap_messages_uid"),
        Index("ix_imap_messages_waiting", "mailbox_id", "state"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("imap_mailboxes.id"))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_mail.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    at: Mapped[datetime]
    moved_at: Mapped[datetime | None] = mapped_column(default=None)


class InboundRef(Base):
    """A Message-ID that a queued mail names in In-Reply-To or References: a reply waits for
    a parent still in the queue, and a parent's arrival releases the replies waiting for it."""

    __tablename__ = "inbound_refs"
    id: Mapped[int] = mapped_column(primary_key=True)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_mail.id"), index=True)
    message_id: Mapped[str] = mapped_column(String(998), index=True)


class Outbox(Base):
    """One row per recipient per event; written by the worker when it fans out an OutboxEvent."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "state", "next_attempt_at"),
        # The loop breaker counts automatic mail per (ticket, recipient) on every enqueue.
        Index("ix_outbox_ticket_recipient", "ticket_id", "recipient"),
        # The notice cap counts one sender's notices to a recipient within the hour.
        Index("ix_outbox_notices", "recipient", "actor_id", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16), default="email")
    kind: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(320), index=True)
    recipient_id: Mapped[int | None] = mapped_column(ForeignKey("employees.id"))
    # The employee whose action caused the row (the payload's actor_id), None for the system.
    actor_id: Mapped[int | None] = mapped_column(Integer, default=None)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sent|dead|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class OutboxEvent(Base):
    """One row per notification event, written in the change's transaction.

    The delivery worker fans each out to per-recipient ``outbox`` rows (audience, caps, tokens,
    payload) off the intake path. ``payload`` holds everything captured at event time."""

    __tablename__ = "outbox_events"
    __table_args__ = (Index("ix_outbox_events_state", "state", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|done|failed
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    done_at: Mapped[datetime | None]


class AutoMailCounter(Base):
    """Automatic mails sent per address and day (RFC 3834 loop breaker)."""

    __tablename__ = "auto_mail_counters"
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class SuppressedAddress(Base):
    """Addresses that hard-bounced repeatedly: no more automatic mail to them."""

    __tablename__ = "suppressed_addresses"
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    hard_bounces: Mapped[int] = mapped_column(Integer, default=0)
    suppressed: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime]


class DirectoryVersion(Base):
    """One row: bumped by every change to organization rows (`org import`; later the Slack
    user mapping), so that a writer process may keep those rows between transactions and
    knows when it may not."""

    __tablename__ = "directory_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)


class SlackSeen(Base):
    """A Slack event id or interaction id already applied: a retry (X-Slack-Retry-Num, a
    Socket Mode redelivery) finds it and changes nothing. Written in the change's transaction."""

    __tablename__ = "slack_seen"
    # The scheduler's tick forgets ids older than a week (`slack_queries.forget_applied_ids`).
    __table_args__ = (Index("ix_slack_seen_at", "at"),)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    at: Mapped[datetime]


class SlackPost(Base):
    """A ticket's post in its department's channel: later messages go into its thread
    (``thread_ts`` = ``ts``), status changes update it (chat.update)."""

    __tablename__ = "slack_posts"
    __table_args__ = (
        UniqueConstraint("ticket_id", "channel", name="uq_slack_posts_ticket_channel"),
        Index("ix_slack_posts_channel_ts", "channel", "ts", unique=True),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    channel: Mapped[str] = mapped_column(String(64))
    ts: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]
