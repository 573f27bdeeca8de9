"""The action table of SPEC §1.5, restated here independently and checked row by row against
`decide`: who may, from where, to where, and who is refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain.lifecycle import (
    OPEN,
    TERMINAL,
    Action,
    Allowed,
    AssignmentType,
    Refused,
    Role,
    Status,
    decide,
    status_action,
)

S = Status
R = Role
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
WINDOW = timedelta(days=7)
ALL_ROLES = frozenset(Role)


@dataclass(frozen=True)
class Row:
    """One row of SPEC §1.5 as the spec words it (not as the code stores it)."""

    roles: frozenset[Role]
    from_statuses: frozenset[Status]
    to: Status | None
    remark_required: bool = False
    # Narrower from-sets for particular roles ("close: system only from DELIVERED").
    from_by_role: dict[Role, frozenset[Status]] = field(default_factory=dict)
    department_only: bool = False

    def allowed_from(self, role: Role) -> frozenset[Status]:
        return self.from_by_role.get(role, self.from_statuses)


def _s(*x: Status) -> frozenset[Status]:
    return frozenset(x)


def _r(*x: Role) -> frozenset[Role]:
    return frozenset(x)


ASSIGNEE = _r(R.ASSIGNEE)
EDITORS = _r(R.ASSIGNEE, R.HIGHER_AUTHORITY)
SPEC_TABLE: dict[Action, Row] = {
    Action.TAKE: Row(
        ASSIGNEE,
        _s(
            S.RAISED,
            S.RELEASED,
            S.ESCALATED,
            S.REOPENED,
            S.RESPONDED,
            S.APPROVED,
            S.ON_HOLD,
            S.PENDING,
        ),
        S.WORKING_ON_IT,
    ),
    Action.REPLY: Row(ASSIGNEE, OPEN, S.REPLIED),
    Action.RETURN: Row(ASSIGNEE, OPEN, S.RETURNED, remark_required=True),
    Action.RESPOND: Row(_r(R.REQUESTER), _s(S.REPLIED, S.RETURNED), S.RESPONDED),
    Action.MESSAGE: Row(
        _r(R.REQUESTER, R.RC),
        OPEN,
        None,
        # "other open statuses": in REPLIED/RETURNED the requester's message is a respond.
        from_by_role={R.REQUESTER: OPEN - _s(S.REPLIED, S.RETURNED)},
    ),
    Action.RELEASE: Row(
        _r(R.OWNER),
        _s(S.WORKING_ON_IT, S.REPLIED, S.RESPONDED, S.ON_HOLD),
        S.RELEASED,
        department_only=True,
    ),
    Action.HOLD: Row(ASSIGNEE, OPEN, S.ON_HOLD),
    Action.PENDING: Row(ASSIGNEE, OPEN, S.PENDING),
    Action.TO_HIGHER_AUTHORITY: Row(_r(R.ASSIGNEE, R.SYSTEM), OPEN, S.TO_HIGHER_AUTHORITY),
    Action.APPROVE: Row(_r(R.HIGHER_AUTHORITY), _s(S.TO_HIGHER_AUTHORITY, S.PENDING), S.APPROVED),
    Action.REJECT: Row(EDITORS, OPEN, S.REJECTED, remark_required=True),
    Action.ESCALATE: Row(_r(R.SYSTEM, R.HIGHER_AUTHORITY), OPEN - _s(S.DELIVERED), S.ESCALATED),
    Action.DELIVER: Row(ASSIGNEE, OPEN, S.DELIVERED),
    Action.CLOSE: Row(
        _r(R.REQUESTER, R.SYSTEM), OPEN, S.CLOSED, from_by_role={R.SYSTEM: _s(S.DELIVERED)}
    ),
    Action.CANCEL: Row(_r(R.REQUESTER), OPEN, S.CANCELLED),
    # CLOSED only within the reopen window: closed_at is given as one day ago below.
    Action.REOPEN: Row(_r(R.REQUESTER), _s(S.DELIVERED, S.CLOSED), S.REOPENED),
    Action.ASSIGN: Row(EDITORS, OPEN, None),
    Action.CC: Row(_r(R.ASSIGNEE, R.HIGHER_AUTHORITY, R.REQUESTER), OPEN, None),
    Action.BCC: Row(EDITORS, OPEN, None),
    Action.CATEGORY: Row(EDITORS, OPEN, None),
    Action.PRIORITY: Row(EDITORS, OPEN, None),
}

ALLOWED_CASES = [
    pytest.param(a, role, st, id=f"{a.value}-{role.value}-{st.value}")
    for a, row in SPEC_TABLE.items()
    for role in sorted(row.roles, key=lambda r: r.value)
    for st in sorted(row.allowed_from(role))
]
REFUSED_ROLE_CASES = [
    pytest.param(a, role, id=f"{a.value}-{role.value}")
    for a, row in SPEC_TABLE.items()
    for role in sorted(ALL_ROLES - row.roles, key=lambda r: r.value)
]
REFUSED_STATUS_CASES = [
    pytest.param(a, role, st, id=f"{a.value}-{role.value}-{st.value}")
    for a, row in SPEC_TABLE.items()
    for role in sorted(row.roles, key=lambda r: r.value)
    for st in sorted(frozenset(Status) - row.allowed_from(role))
]


def _decide(
    action: Action,
    status: Status,
    roles: frozenset[Role],
    *,
    remark: str = "because",
    assignment: AssignmentType = AssignmentType.DEPARTMENT,
    closed_at: datetime | None = NOW - timedelta(days=1),
    now: datetime = NOW,
) -> Allowed | Refused:
    return decide(
        action,
        status=status,
        roles=roles,
        assignment=assignment,
        remark=remark,
        closed_at=closed_at,
        now=now,
        reopen_window=WINDOW,
    )


def test_table_covers_every_action() -> None:
    """The restated table has a row for every action the code knows, so none goes untested."""
    assert set(SPEC_TABLE) == set(Action)


@pytest.mark.parametrize(("action", "role", "status"), ALLOWED_CASES)
def test_allowed_actor_reaches_target(action: Action, role: Role, status: Status) -> None:
    """Each listed actor, from each status of its from-set, is allowed and reaches the target."""
    d = _decide(action, status, frozenset({role}))
    assert isinstance(d, Allowed), d
    assert d.to == SPEC_TABLE[action].to
    assert d.as_role is role


@pytest.mark.parametrize(("action", "role"), REFUSED_ROLE_CASES)
def test_unlisted_actor_is_refused_everywhere(action: Action, role: Role) -> None:
    """An actor the row does not list is refused in every status, with a reason naming the action."""
    for status in Status:
        d = _decide(action, status, frozenset({role}))
        assert isinstance(d, Refused), (status, d)
        assert d.reason.startswith(action.value), d.reason


def test_unlisted_roles_together_are_still_refused() -> None:
    """Holding several roles none of which the row lists is no better than holding one."""
    for action, row in SPEC_TABLE.items():
        others = ALL_ROLES - row.roles
        for status in OPEN:
            assert isinstance(_decide(action, status, others), Refused), (action, status)


@pytest.mark.parametrize(("action", "role", "status"), REFUSED_STATUS_CASES)
def test_status_outside_from_set_is_refused(action: Action, role: Role, status: Status) -> None:
    """A listed actor is refused from a status outside the row's from-set, and told the status."""
    d = _decide(action, status, frozenset({role}))
    assert isinstance(d, Refused), d
    assert status.value in d.reason


@pytest.mark.parametrize("action", [Action.RETURN, Action.REJECT])
@pytest.mark.parametrize("remark", ["", "   ", "\n"])
def test_remark_required_for_return_and_reject(action: Action, remark: str) -> None:
    """return and reject without a (non-blank) remark are refused; with one they are allowed."""
    d = _decide(action, S.WORKING_ON_IT, ASSIGNEE, remark=remark)
    assert isinstance(d, Refused)
    assert "remark" in d.reason
    assert isinstance(_decide(action, S.WORKING_ON_IT, ASSIGNEE, remark="need the serial"), Allowed)


def test_no_other_action_requires_a_remark() -> None:
    """Every other row is allowed with an empty remark (hold/pending take one but need none)."""
    for action, row in SPEC_TABLE.items():
        if row.remark_required:
            continue
        role = min(row.roles, key=lambda r: r.value)
        status = min(row.allowed_from(role))
        assert isinstance(_decide(action, status, frozenset({role}), remark=""), Allowed), action


def test_release_only_for_department_tickets() -> None:
    """The owner may release a DEPARTMENT ticket but never an INDIVIDUAL one."""
    owner = _r(R.OWNER, R.ASSIGNEE)
    for status in SPEC_TABLE[Action.RELEASE].from_statuses:
        assert _decide(Action.RELEASE, status, owner) == Allowed(
            Action.RELEASE, S.RELEASED, R.OWNER
        )
        d = _decide(Action.RELEASE, status, owner, assignment=AssignmentType.INDIVIDUAL)
        assert isinstance(d, Refused)
        assert "DEPARTMENT" in d.reason


def test_release_only_by_the_owner() -> None:
    """Assignee-side members who do not own the ticket, and higher authority, cannot release it."""
    for roles in (ASSIGNEE, _r(R.ASSIGNEE, R.HIGHER_AUTHORITY), _r(R.REQUESTER), _r(R.SYSTEM)):
        d = _decide(Action.RELEASE, S.WORKING_ON_IT, roles)
        assert isinstance(d, Refused)
        assert "owner" in d.reason


def test_close_by_system_only_from_delivered() -> None:
    """The system closes only DELIVERED tickets (after the confirm window)."""
    for status in OPEN:
        d = _decide(Action.CLOSE, status, _r(R.SYSTEM))
        assert isinstance(d, Allowed) == (status is S.DELIVERED), status


def test_close_by_requester_from_any_open_status() -> None:
    """The requester may close from every open status, and from no terminal one."""
    for status in Status:
        d = _decide(Action.CLOSE, status, _r(R.REQUESTER))
        assert isinstance(d, Allowed) == (status in OPEN), status


def test_reopen_from_closed_within_the_window() -> None:
    """Reopen from CLOSED is allowed up to exactly the window, refused after it or without a close time."""
    req = _r(R.REQUESTER)
    for closed_ago, ok in (
        (timedelta(0), True),
        (timedelta(days=6, hours=23), True),
        (WINDOW, True),
        (WINDOW + timedelta(seconds=1), False),
        (timedelta(days=30), False),
    ):
        d = _decide(Action.REOPEN, S.CLOSED, req, closed_at=NOW - closed_ago)
        assert isinstance(d, Allowed) == ok, closed_ago
        if not ok:
            assert isinstance(d, Refused) and "7 days" in d.reason
    assert isinstance(_decide(Action.REOPEN, S.CLOSED, req, closed_at=None), Refused)


def test_reopen_from_delivered_ignores_the_window() -> None:
    """A DELIVERED ticket is not closed: the requester may reopen it whatever the clock says."""
    d = _decide(Action.REOPEN, S.DELIVERED, _r(R.REQUESTER), closed_at=None)
    assert d == Allowed(Action.REOPEN, S.REOPENED, R.REQUESTER)


def test_terminal_statuses_refuse_everything_but_reopen() -> None:
    """CLOSED, CANCELLED and REJECTED refuse every action to every actor; only CLOSED reopens."""
    for status in TERMINAL:
        for action in Action:
            d = _decide(action, status, ALL_ROLES)
            expected = action is Action.REOPEN and status is S.CLOSED
            assert isinstance(d, Allowed) == expected, (status, action)


def test_terminal_and_open_partition_the_statuses() -> None:
    """Open and terminal statuses are the lists of SPEC §1.5, and together every status."""
    assert TERMINAL == _s(S.CLOSED, S.CANCELLED, S.REJECTED)
    assert OPEN | TERMINAL == frozenset(Status) and not OPEN & TERMINAL


def test_requester_message_in_replied_is_refused_as_respond() -> None:
    """In REPLIED/RETURNED the requester's plain message is refused (it is a respond); RC may still post."""
    for status in (S.REPLIED, S.RETURNED):
        assert isinstance(_decide(Action.MESSAGE, status, _r(R.REQUESTER)), Refused)
        assert isinstance(_decide(Action.MESSAGE, status, _r(R.RC)), Allowed)
        assert _decide(Action.RESPOND, status, _r(R.REQUESTER)).to is S.RESPONDED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "action"),
    [
        ("DELIVERED", Action.DELIVER),
        ("working_on_it", Action.TAKE),
        (" closed ", Action.CLOSE),
        ("RESPONDED", Action.RESPOND),
        ("TO_HIGHER_AUTHORITY", Action.TO_HIGHER_AUTHORITY),
        ("RAISED", None),
        ("NOPE", None),
    ],
)
def test_status_command_maps_to_its_action(name: str, action: Action | None) -> None:
    """`#status X` becomes the action that leads to X; RAISED and unknown names map to nothing."""
    assert status_action(name) is action
