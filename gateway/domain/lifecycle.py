"""The ticket lifecycle of SPEC §1.5 as data, and the one function that decides an action."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class Status(enum.StrEnum):
    RAISED = "RAISED"
    PENDING = "PENDING"
    WORKING_ON_IT = "WORKING_ON_IT"
    REPLIED = "REPLIED"
    RETURNED = "RETURNED"
    RESPONDED = "RESPONDED"
    RELEASED = "RELEASED"
    ON_HOLD = "ON_HOLD"
    TO_HIGHER_AUTHORITY = "TO_HIGHER_AUTHORITY"
    APPROVED = "APPROVED"
    ESCALATED = "ESCALATED"
    DELIVERED = "DELIVERED"
    REOPENED = "REOPENED"
    CLOSED = "CLOSED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"


TERMINAL: frozenset[Status] = frozenset({Status.CLOSED, Status.CANCELLED, Status.REJECTED})
OPEN: frozenset[Status] = frozenset(Status) - TERMINAL


class AssignmentType(enum.StrEnum):
    DEPARTMENT = "DEPARTMENT"
    INDIVIDUAL = "INDIVIDUAL"


class Priority(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Channel(enum.StrEnum):
    EMAIL = "email"
    SLACK = "slack"
    CLI = "cli"
    SYSTEM = "system"


class Role(enum.StrEnum):
    """What an actor is on one ticket; one person can hold several roles at once."""

    REQUESTER = "requester"
    ASSIGNEE = "assignee"  # the assignee side: target employee, or any active target dept member
    OWNER = "owner"
    HIGHER_AUTHORITY = "higher_authority"
    RC = "rc"
    RHC = "rhc"
    SYSTEM = "system"


class Action(enum.StrEnum):
    TAKE = "take"
    REPLY = "reply"
    RETURN = "return"
    RESPOND = "respond"
    MESSAGE = "message"
    RELEASE = "release"
    HOLD = "hold"
    PENDING = "pending"
    TO_HIGHER_AUTHORITY = "to_higher_authority"
    APPROVE = "approve"
    REJECT = "reject"
    ESCALATE = "escalate"
    DELIVER = "deliver"
    CLOSE = "close"
    CANCEL = "cancel"
    REOPEN = "reopen"
    ASSIGN = "assign"
    CC = "cc"
    BCC = "bcc"
    CATEGORY = "category"
    PRIORITY = "priority"


@dataclass(frozen=True)
class Rule:
    """One row of the action table: who may do it from which statuses, and where it leads.

    ``to`` is None when the action leaves the status unchanged. ``from_by_role`` narrows the
    allowed statuses for particular roles (close: the requester from any open status, the
    system only from DELIVERED).
    """

    action: Action
    roles: frozenset[Role]
    from_statuses: frozenset[Status]
    to: Status | None
    remark_required: bool = False
    from_by_role: tuple[tuple[Role, frozenset[Status]], ...] = ()
    department_only: bool = False

    def allowed_from(self, role: Role) -> frozenset[Status]:
        for r, statuses in self.from_by_role:
            if r is role:
                return statuses
        return self.from_statuses


def _s(*names: Status) -> frozenset[Status]:
    return frozenset(names)


def _r(*roles: Role) -> frozenset[Role]:
    return frozenset(roles)


_ASSIGNEE = _r(Role.ASSIGNEE)
_FIELD_EDITORS = _r(Role.ASSIGNEE, Role.HIGHER_AUTHORITY)

# SPEC §1.5, row by row. This table is the only place that says who may do what.
TABLE: dict[Action, Rule] = {
    r.action: r
    for r in (
        Rule(
            Action.TAKE,
            _ASSIGNEE,
            _s(
                Status.RAISED,
                Status.RELEASED,
                Status.ESCALATED,
                Status.REOPENED,
                Status.RESPONDED,
                Status.APPROVED,
                Status.ON_HOLD,
                Status.PENDING,
            ),
            Status.WORKING_ON_IT,
        ),
        Rule(Action.REPLY, _ASSIGNEE, OPEN, Status.REPLIED),
        Rule(Action.RETURN, _ASSIGNEE, OPEN, Status.RETURNED, remark_required=True),
        Rule(
            Action.RESPOND,
            _r(Role.REQUESTER),
            _s(Status.REPLIED, Status.RETURNED),
            Status.RESPONDED,
        ),
        Rule(
            Action.MESSAGE,
            _r(Role.REQUESTER, Role.RC),
            OPEN,
            None,
            # "other open statuses" for the requester: in REPLIED/RETURNED a message responds
            from_by_role=((Role.REQUESTER, OPEN - _s(Status.REPLIED, Status.RETURNED)),),
        ),
        Rule(
            Action.RELEASE,
            _r(Role.OWNER),
            _s(Status.WORKING_ON_IT, Status.REPLIED, Status.RESPONDED, Status.ON_HOLD),
            Status.RELEASED,
            department_only=True,
        ),
        Rule(Action.HOLD, _ASSIGNEE, OPEN, Status.ON_HOLD),
        Rule(Action.PENDING, _ASSIGNEE, OPEN, Status.PENDING),
        Rule(
            Action.TO_HIGHER_AUTHORITY,
            _r(Role.ASSIGNEE, Role.SYSTEM),
            OPEN,
            Status.TO_HIGHER_AUTHORITY,
        ),
        Rule(
            Action.APPROVE,
            _r(Role.HIGHER_AUTHORITY),
            _s(Status.TO_HIGHER_AUTHORITY, Status.PENDING),
            Status.APPROVED,
        ),
        Rule(
            Action.REJECT,
            _r(Role.ASSIGNEE, Role.HIGHER_AUTHORITY),
            OPEN,
            Status.REJECTED,
            remark_required=True,
        ),
        Rule(
            Action.ESCALATE,
            _r(Role.SYSTEM, Role.HIGHER_AUTHORITY),
            OPEN - _s(Status.DELIVERED),
            Status.ESCALATED,
        ),
        Rule(Action.DELIVER, _ASSIGNEE, OPEN, Status.DELIVERED),
        Rule(
            Action.CLOSE,
            _r(Role.REQUESTER, Role.SYSTEM),
            OPEN,
            Status.CLOSED,
            from_by_role=((Role.SYSTEM, _s(Status.DELIVERED)),),
        ),
        Rule(Action.CANCEL, _r(Role.REQUESTER), OPEN, Status.CANCELLED),
        # CLOSED is only allowed within the reopen window; see decide().
        Rule(
            Action.REOPEN,
            _r(Role.REQUESTER),
            _s(Status.DELIVERED, Status.CLOSED),
            Status.REOPENED,
        ),
        Rule(Action.ASSIGN, _FIELD_EDITORS, OPEN, None),
        Rule(Action.CC, _r(Role.ASSIGNEE, Role.HIGHER_AUTHORITY, Role.REQUESTER), OPEN, None),
        Rule(Action.BCC, _FIELD_EDITORS, OPEN, None),
        Rule(Action.CATEGORY, _FIELD_EDITORS, OPEN, None),
        Rule(Action.PRIORITY, _FIELD_EDITORS, OPEN, None),
    )
}

# Actions that need an argument beyond a remark.
ARGUMENT_ACTIONS: frozenset[Action] = frozenset(
    {Action.ASSIGN, Action.CC, Action.BCC, Action.CATEGORY, Action.PRIORITY}
)


@dataclass(frozen=True)
class Allowed:
    """The action may be applied; ``to`` is the new status or None for unchanged."""

    action: Action
    to: Status | None
    as_role: Role


@dataclass(frozen=True)
class Refused:
    """The action must not be applied; ``reason`` is said to the actor on their channel."""

    action: Action
    reason: str


Decision = Allowed | Refused


def decide(
    action: Action,
    *,
    status: Status,
    roles: frozenset[Role],
    assignment: AssignmentType,
    remark: str = "",
    closed_at: datetime | None = None,
    now: datetime | None = None,
    reopen_window: timedelta = timedelta(days=7),
) -> Decision:
    """Decide whether an actor holding ``roles`` may apply ``action`` to a ticket in ``status``."""
    rule = TABLE[action]
    holding = rule.roles & roles
    if not holding:
        who = ", ".join(sorted(r.value for r in rule.roles))
        return Refused(action, f"{action.value}: only the {who} may do this")
    if rule.department_only and assignment is not AssignmentType.DEPARTMENT:
        return Refused(action, f"{action.value}: only DEPARTMENT tickets can be released")
    # Prefer the role that allows the current status (a requester who is also RC, etc.).
    for role in sorted(holding, key=lambda r: r.value):
        if status in rule.allowed_from(role):
            break
    else:
        return Refused(action, f"{action.value}: not allowed while the ticket is {status.value}")
    if (
        action is Action.REOPEN
        and status is Status.CLOSED
        and (closed_at is None or now is None or now - closed_at > reopen_window)
    ):
        days = reopen_window.days
        return Refused(action, f"reopen: the ticket was closed more than {days} days ago")
    if rule.remark_required and not remark.strip():
        return Refused(action, f"{action.value}: a remark is required")
    return Allowed(action, rule.to, role)


def status_action(status_name: str) -> Action | None:
    """Map `#status X` / `ticket act … status X` to the action that leads to X."""
    mapping = {rule.to: rule.action for rule in TABLE.values() if rule.to is not None}
    mapping[Status.RESPONDED] = Action.RESPOND
    try:
        return mapping.get(Status(status_name.strip().upper()))
    except ValueError:
        return None
