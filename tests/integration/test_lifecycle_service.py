"""The lifecycle of SPEC §1.5 through TicketService, with real employees of the demo org, on
each backend: allowed actors reach the target, refused ones change nothing and are told why."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from gateway.domain.lifecycle import Action, Allowed, AssignmentType, Status, decide
from gateway.service.commands import Act, RaiseTicket
from gateway.service.directory import Directory
from gateway.service.errors import ActionRefused, NotFound, UserFacingError
from gateway.service.tickets import parse_ref
from gateway.service.views import Views
from store import models as m
from tests.conftest import (
    PG_URL,
    Database,
    Env,
    make_env,
    postgres_schema,
    with_search_path,
    write_demo_org,
)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def shared_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """The demo org on one database for the whole module (each test raises its own tickets):
    migrating and importing per test would cost more than the tests themselves."""
    folder = tmp_path_factory.mktemp("lifecycle")
    with ExitStack() as stack:
        if request.param == "sqlite":
            db = Database("sqlite", f"sqlite:///{folder}/tg.db")
        else:
            if not PG_URL:
                pytest.skip("TICKETGATE_TEST_POSTGRES_URL is not set")
            schema = stack.enter_context(postgres_schema())
            db = Database("postgres", with_search_path(PG_URL, schema))
        e = make_env(db, folder / "install")
        stack.callback(e.app.close)
        e.import_org(write_demo_org(folder / "install"))
        yield e


# Who is who on a ticket frank (HR, New York) raises to IT (Berlin), cc dieter, bcc karl.
REQUESTER = "frank@acme.example"
ALICE = "alice@acme.example"  # IT technician: assignee side; the owner once she takes
BOB = "bob@acme.example"  # IT technician: assignee side, never the owner here
CAROL = "carol@acme.example"  # IT Manager, the top level of IT: higher authority
RC = "dieter@acme.example"  # Facilities, copied (cc)
RHC = "karl@acme.example"  # Engineering, hidden copy (bcc)
OUTSIDER = "nora@acme.example"  # Sales: no part in the ticket
VICTOR = "victor@acme.example"  # IT technician, deactivated in the demo org
IT = "it@acme.example"

EVERYONE = (REQUESTER, ALICE, BOB, CAROL, RC, RHC)
Step = tuple[str, str, str]  # (actor, action, remark or message body)

# How to bring a fresh DEPARTMENT ticket to each status; alice owns it wherever she took it.
PATHS: dict[Status, list[Step]] = {
    Status.RAISED: [],
    Status.WORKING_ON_IT: [(ALICE, "take", "")],
    Status.REPLIED: [(ALICE, "take", ""), (ALICE, "reply", "Which printer?")],
    Status.RETURNED: [(ALICE, "take", ""), (ALICE, "return", "Which floor?")],
    Status.RESPONDED: [
        (ALICE, "take", ""),
        (ALICE, "reply", "Which printer?"),
        (REQUESTER, "respond", "The one by the door."),
    ],
    Status.RELEASED: [(ALICE, "take", ""), (ALICE, "release", "")],
    Status.ON_HOLD: [(ALICE, "take", ""), (ALICE, "hold", "until Monday")],
    Status.PENDING: [(ALICE, "take", ""), (ALICE, "pending", "vendor")],
    Status.TO_HIGHER_AUTHORITY: [(ALICE, "take", ""), (ALICE, "to_higher_authority", "")],
    Status.APPROVED: [
        (ALICE, "take", ""),
        (ALICE, "to_higher_authority", ""),
        (CAROL, "approve", ""),
    ],
    Status.ESCALATED: [(ALICE, "take", ""), (CAROL, "escalate", "")],
    Status.DELIVERED: [(ALICE, "take", ""), (ALICE, "deliver", "")],
    Status.REOPENED: [(ALICE, "take", ""), (ALICE, "deliver", ""), (REQUESTER, "reopen", "")],
    Status.CLOSED: [(REQUESTER, "close", "")],
    Status.CANCELLED: [(REQUESTER, "cancel", "")],
    Status.REJECTED: [(ALICE, "reject", "not ours")],
}

ARGS: dict[str, tuple[str, ...]] = {
    "assign": (BOB,),
    "cc": ("eva@acme.example",),
    "bcc": ("grace@acme.example",),
    "category": ("Hardware/Mouse",),
    "priority": ("high",),
}


def act(svc: Any, ref: str, actor: str, action: str, text: str = "because") -> None:
    """One `service.act` as the CLI would build it."""
    if action in ("reply", "respond", "message"):
        svc.act(Act(ref=ref, actor=actor, action=action, body=text or "a message"))
    else:
        svc.act(Act(ref=ref, actor=actor, action=action, args=ARGS.get(action, ()), remark=text))


def raise_ticket(svc: Any, *, to: str = IT) -> str:
    return svc.raise_ticket(
        RaiseTicket(
            requester=REQUESTER,
            to=to,
            subject="Printer jams",
            body="It jams.",
            cc=(RC,),
            bcc=(RHC,),
        )
    )


def ticket_at(svc: Any, status: Status, *, to: str = IT) -> str:
    ref = raise_ticket(svc, to=to)
    for actor, action, text in PATHS[status]:
        act(svc, ref, actor, action, text)
    return ref


def view(env: Any, ref: str) -> dict[str, Any]:
    with env.app.sessions() as s:
        t = s.get(m.Ticket, parse_ref(ref))
        assert t is not None
        return Views(s).ticket(t)


def outbox_rows(env: Any) -> int:
    with env.app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(m.Outbox)) or 0)


def assert_refused(
    env: Any,
    ref: str,
    actor: str,
    action: str,
    *,
    text: str = "because",
    error: type[UserFacingError] = ActionRefused,
    reason: str = "",
) -> str:
    """The action is refused with a reason and the ticket (and the outbox) are unchanged."""
    before, mails = view(env, ref), outbox_rows(env)
    with pytest.raises(error) as exc:
        act(env.service, ref, actor, action, text)
    assert exc.value.reason, "a refusal must say why"
    assert reason in exc.value.reason
    assert view(env, ref) == before
    assert outbox_rows(env) == mails
    return exc.value.reason


@dataclass(frozen=True)
class Example:
    """One row of §1.5 worked on a DEPARTMENT ticket: from where, who may, who may not."""

    action: str
    start: Status
    to: Status
    allowed: Sequence[str]
    refused: Sequence[str]
    wrong_status: Status


ROWS = [
    Example(
        "take",
        Status.RAISED,
        Status.WORKING_ON_IT,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.WORKING_ON_IT,
    ),
    Example(
        "reply",
        Status.WORKING_ON_IT,
        Status.REPLIED,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.CLOSED,
    ),
    Example(
        "return",
        Status.WORKING_ON_IT,
        Status.RETURNED,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.REJECTED,
    ),
    Example(
        "respond",
        Status.REPLIED,
        Status.RESPONDED,
        (REQUESTER,),
        (ALICE, BOB, CAROL, RC, RHC),
        Status.WORKING_ON_IT,
    ),
    Example(
        "respond",
        Status.RETURNED,
        Status.RESPONDED,
        (REQUESTER,),
        (ALICE, BOB, CAROL, RC, RHC),
        Status.RESPONDED,
    ),
    Example(
        "message",
        Status.WORKING_ON_IT,
        Status.WORKING_ON_IT,
        (REQUESTER, RC),
        (ALICE, BOB, CAROL),
        Status.REPLIED,
    ),
    Example(
        "release",
        Status.WORKING_ON_IT,
        Status.RELEASED,
        (ALICE,),
        (BOB, CAROL, REQUESTER, RC, RHC),
        Status.TO_HIGHER_AUTHORITY,
    ),
    Example(
        "hold",
        Status.WORKING_ON_IT,
        Status.ON_HOLD,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.CANCELLED,
    ),
    Example(
        "pending",
        Status.WORKING_ON_IT,
        Status.PENDING,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.CLOSED,
    ),
    Example(
        "to_higher_authority",
        Status.WORKING_ON_IT,
        Status.TO_HIGHER_AUTHORITY,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.REJECTED,
    ),
    Example(
        "approve",
        Status.TO_HIGHER_AUTHORITY,
        Status.APPROVED,
        (CAROL,),
        (ALICE, BOB, REQUESTER, RC, RHC),
        Status.WORKING_ON_IT,
    ),
    Example(
        "approve",
        Status.PENDING,
        Status.APPROVED,
        (CAROL,),
        (ALICE, BOB, REQUESTER, RC, RHC),
        Status.ESCALATED,
    ),
    Example(
        "reject",
        Status.WORKING_ON_IT,
        Status.REJECTED,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.CANCELLED,
    ),
    Example(
        "escalate",
        Status.WORKING_ON_IT,
        Status.ESCALATED,
        (CAROL,),
        (ALICE, BOB, REQUESTER, RC, RHC),
        Status.DELIVERED,
    ),
    Example(
        "deliver",
        Status.WORKING_ON_IT,
        Status.DELIVERED,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.CANCELLED,
    ),
    Example(
        "close",
        Status.WORKING_ON_IT,
        Status.CLOSED,
        (REQUESTER,),
        (ALICE, BOB, CAROL, RC, RHC),
        Status.CANCELLED,
    ),
    Example(
        "cancel",
        Status.ON_HOLD,
        Status.CANCELLED,
        (REQUESTER,),
        (ALICE, BOB, CAROL, RC, RHC),
        Status.CLOSED,
    ),
    Example(
        "reopen",
        Status.DELIVERED,
        Status.REOPENED,
        (REQUESTER,),
        (ALICE, BOB, CAROL, RC, RHC),
        Status.WORKING_ON_IT,
    ),
    Example(
        "assign",
        Status.WORKING_ON_IT,
        Status.WORKING_ON_IT,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.CLOSED,
    ),
    Example(
        "cc",
        Status.WORKING_ON_IT,
        Status.WORKING_ON_IT,
        (ALICE, BOB, CAROL, REQUESTER),
        (RC, RHC),
        Status.CLOSED,
    ),
    Example(
        "bcc",
        Status.WORKING_ON_IT,
        Status.WORKING_ON_IT,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.REJECTED,
    ),
    Example(
        "category",
        Status.WORKING_ON_IT,
        Status.WORKING_ON_IT,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.CANCELLED,
    ),
    Example(
        "priority",
        Status.WORKING_ON_IT,
        Status.WORKING_ON_IT,
        (ALICE, BOB, CAROL),
        (REQUESTER, RC, RHC),
        Status.CLOSED,
    ),
]


def test_every_action_has_an_example() -> None:
    """Each action of the table is worked at least once below (raise is every example's start)."""
    assert {r.action for r in ROWS} == {a.value for a in Action}


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.action}-from-{r.start.value}" for r in ROWS])
def test_row(shared_env: Any, row: Example) -> None:
    """Allowed actors reach the target, every other participant and a wrong status are refused."""
    env = shared_env
    svc = env.service
    for actor in row.allowed:
        ref = ticket_at(svc, row.start)
        before = view(env, ref)
        act(svc, ref, actor, row.action)
        after = view(env, ref)
        assert after["status"] == row.to.value, actor
        if row.to.value != before["status"]:
            assert after["history"][-1] == {
                "status": row.to.value,
                "actor": actor,
                "at": env.clock.now().isoformat(),
                "channel": "cli",
                "remark": after["history"][-1]["remark"],
            }
        _check_effect(row.action, actor, before, after)
    ref = ticket_at(svc, row.start)
    for actor in row.refused:
        assert_refused(env, ref, actor, row.action)
    assert_refused(
        env,
        ticket_at(svc, row.wrong_status),
        row.allowed[0],
        row.action,
        reason=row.wrong_status.value,
    )


def _check_effect(action: str, actor: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    """The side effect each row promises beyond the status."""
    if action == "take":
        assert after["to"]["owner"] == actor
    elif action == "release":
        assert before["to"]["owner"] == ALICE and after["to"]["owner"] is None
    elif action == "escalate":
        assert after["escalation_level"] == before["escalation_level"] + 1
    elif action in ("close", "cancel", "reject"):
        assert after["closed_at"] is not None
    elif action == "assign":
        assert after["to"]["owner"] == BOB
    elif action == "cc":
        assert after["copies"]["rc"] == [RC, "eva@acme.example"]
    elif action == "bcc":
        assert after["copies"]["rhc"] == [RHC, "grace@acme.example"]
        assert "grace" not in after["history"][-1]["remark"]  # history never names a hidden copy
    elif action == "category":
        assert (after["category"], after["sub_category"]) == ("Hardware", "Mouse")
    elif action == "priority":
        assert after["priority"] == "high"
    elif action in ("reply", "respond", "message"):
        assert len(after["messages"]) == len(before["messages"]) + 1
        assert after["messages"][-1]["sender"] == actor and not after["messages"][-1]["hidden"]
    if action in ("assign", "cc", "bcc", "category", "priority"):
        assert len(after["history"]) == len(before["history"]) + 1  # recorded, status unchanged
    if action == "message":
        assert after["history"] == before["history"]


@pytest.mark.parametrize("action", ["return", "reject"])
def test_remark_required(shared_env: Any, action: str) -> None:
    """return and reject without a remark are refused and change nothing."""
    env = shared_env
    ref = ticket_at(env.service, Status.WORKING_ON_IT)
    assert_refused(env, ref, ALICE, action, text="  ", reason="remark")


def test_rhc_message_is_hidden_and_changes_no_status(shared_env: Any) -> None:
    """What a hidden copy writes becomes a hidden message; the status stays where it was."""
    env = shared_env
    ref = ticket_at(env.service, Status.WORKING_ON_IT)
    act(env.service, ref, RHC, "message", "FYI the vendor called")
    v = view(env, ref)
    assert v["status"] == "WORKING_ON_IT"
    assert v["messages"][-1] == {**v["messages"][-1], "sender": RHC, "hidden": True}
    assert len(v["history"]) == 2


def test_rc_may_message_while_replied(shared_env: Any) -> None:
    """An RC may post in REPLIED, where the requester's plain message is refused (it is a respond)."""
    env = shared_env
    ref = ticket_at(env.service, Status.REPLIED)
    act(env.service, ref, RC, "message", "Same problem on my floor")
    assert view(env, ref)["status"] == "REPLIED"
    assert_refused(env, ref, REQUESTER, "message", reason="REPLIED")


def test_outsider_and_deactivated_are_refused(shared_env: Any) -> None:
    """A non-participant cannot see the ticket to act on it; a deactivated member cannot act."""
    env = shared_env
    ref = ticket_at(env.service, Status.WORKING_ON_IT)
    for action in ("take", "deliver", "message", "close", "cc"):
        assert_refused(env, ref, OUTSIDER, action, error=NotFound)
    assert_refused(env, ticket_at(env.service, Status.RAISED), VICTOR, "take", reason="deactivated")


def test_higher_authority_is_not_the_owner(shared_env: Any) -> None:
    """The top-level member who took the ticket is its owner, not its higher authority."""
    env = shared_env
    ref = ticket_at(env.service, Status.RAISED)
    act(env.service, ref, CAROL, "take")
    act(env.service, ref, ALICE, "to_higher_authority")
    assert_refused(env, ref, CAROL, "approve", reason="higher_authority")
    assert_refused(env, ref, CAROL, "escalate", reason="higher_authority")


def test_department_copy_makes_every_member_rc(shared_env: Any) -> None:
    """A department copied on a ticket makes each active member an RC (may post, no status)."""
    env = shared_env
    ref = env.service.raise_ticket(
        RaiseTicket(requester=REQUESTER, to=IT, subject="Heating", cc=("facilities@acme.example",))
    )
    act(env.service, ref, "eva@acme.example", "message", "We saw it too")
    assert view(env, ref)["messages"][-1]["sender"] == "eva@acme.example"
    assert_refused(env, ref, "eva@acme.example", "deliver", reason="deliver")


def test_reopen_closed_only_within_the_window(shared_env: Any) -> None:
    """A CLOSED ticket reopens up to 7 days after closing; after that the requester is refused."""
    env = shared_env
    svc = env.service
    early, late = ticket_at(svc, Status.CLOSED), ticket_at(svc, Status.CLOSED)
    env.clock.advance(days=6, hours=23)
    act(svc, early, REQUESTER, "reopen")
    assert view(env, early)["status"] == "REOPENED" and view(env, early)["closed_at"] is None
    env.clock.advance(days=1, hours=2)
    assert_refused(env, late, REQUESTER, "reopen", reason="7 days")


def test_terminal_statuses_refuse_every_action(shared_env: Any) -> None:
    """CLOSED, CANCELLED and REJECTED refuse every action of every participant except reopen."""
    env = shared_env
    svc = env.service
    for status in (Status.CLOSED, Status.CANCELLED, Status.REJECTED):
        ref = ticket_at(svc, status)
        before = view(env, ref)
        for action in Action:
            if action is Action.REOPEN and status is Status.CLOSED:
                continue
            for actor in EVERYONE:
                with pytest.raises(ActionRefused) as exc:
                    act(svc, ref, actor, action.value)
                assert exc.value.reason
        assert view(env, ref) == before


# ---- INDIVIDUAL tickets: the assignee side is one person; higher authority stands apart ----


def test_individual_ticket_roles(shared_env: Any) -> None:
    """On a ticket to alice, only she works it; carol (her top level) approves, rejects, escalates;
    bob, her colleague, is not a participant; release is refused (DEPARTMENT tickets only)."""
    env = shared_env
    svc = env.service
    ref = raise_ticket(svc, to=ALICE)
    assert view(env, ref)["assignment_type"] == AssignmentType.INDIVIDUAL.value
    assert_refused(env, ref, BOB, "take", error=NotFound)
    assert_refused(env, ref, CAROL, "take", reason="assignee")
    act(svc, ref, ALICE, "take")
    assert_refused(env, ref, ALICE, "release", reason="DEPARTMENT")
    act(svc, ref, ALICE, "to_higher_authority")
    assert_refused(env, ref, ALICE, "approve", reason="higher_authority")
    act(svc, ref, CAROL, "approve")
    act(svc, ref, CAROL, "escalate")
    act(svc, ref, CAROL, "assign")  # to bob: the ticket is now his
    v = view(env, ref)
    assert (v["status"], v["to"]["employee"], v["escalation_level"]) == ("ESCALATED", BOB, 1)
    assert_refused(env, ref, ALICE, "deliver", error=NotFound)
    act(svc, ref, CAROL, "reject", "out of scope")
    assert view(env, ref)["status"] == "REJECTED"


# ---- property: whatever happens, history is exactly the permitted changes ------------------

ACTORS = (REQUESTER, ALICE, BOB, CAROL, RC, RHC, OUTSIDER)
PROP_ARGS: dict[str, list[tuple[str, ...]]] = {
    "assign": [(ALICE,), (BOB,), (CAROL,), (RC,)],
    "cc": [("eva@acme.example",), (RC,), ("hr@acme.example",)],
    "bcc": [("grace@acme.example",), (RHC,)],
    "category": [("Hardware/Mouse",), ("Software",), ("Nope",)],
    "priority": [("low",), ("urgent",), ("normal",)],
}
steps = st.lists(
    st.tuples(
        st.sampled_from(ACTORS),
        st.sampled_from([a.value for a in Action]),
        st.integers(0, 3),  # which argument, for actions that take one
        st.sampled_from([0, 0, 0, 1, 8]),  # days that pass before the step
    ),
    min_size=1,
    max_size=8,
)

_FIELDS = (
    "status",
    "to",
    "copies",
    "category",
    "sub_category",
    "priority",
    "escalation_level",
    "closed_at",
)


def _snapshot(
    env: Any, ref: str, email: str | None = None
) -> tuple[dict[str, Any], frozenset[Any], Any, list[Any]]:
    """The ticket view, ``email``'s roles on it, its closed_at and its history rows, in one read."""
    with env.app.sessions() as s:
        t = s.get(m.Ticket, parse_ref(ref))
        assert t is not None
        d = Directory(s)
        emp = d.employee(email) if email else None
        roles = d.roles_of(t, emp) if emp is not None else frozenset()
        rows = [
            (h.action, h.actor_label, h.status)
            for h in s.scalars(
                select(m.StatusHistory)
                .where(m.StatusHistory.ticket_id == t.id)
                .order_by(m.StatusHistory.id)
            )
        ]
        return Views(s).ticket(t), roles, t.closed_at, rows


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(individual=st.booleans(), steps=steps)
def test_history_is_exactly_the_permitted_changes(
    env: Any, individual: bool, steps: list[Any]
) -> None:
    """Random actors doing random actions: each recorded change is one the table permits that
    actor at that moment, and each applied change has exactly one history entry."""
    svc = env.service
    ref = raise_ticket(svc, to=ALICE if individual else IT)
    for actor, action, arg, days in steps:
        env.clock.advance(days=days)
        before, roles, closed_at, rows_before = _snapshot(env, ref, actor)
        assert [a for a, _, _ in rows_before][:1] == ["raise"]
        args = PROP_ARGS.get(action, [()])
        remark = "because"
        try:
            if action in ("reply", "respond", "message"):
                svc.act(Act(ref=ref, actor=actor, action=action, body="some text"))
            else:
                svc.act(
                    Act(
                        ref=ref,
                        actor=actor,
                        action=action,
                        args=args[arg % len(args)],
                        remark=remark,
                    )
                )
        except UserFacingError as e:
            assert e.reason
            after, _, _, rows_after = _snapshot(env, ref)
            assert (after, rows_after) == (before, rows_before), (actor, action)
            continue
        assert roles, "only participants act"
        after, _, _, rows_after = _snapshot(env, ref)
        assert rows_after[: len(rows_before)] == rows_before  # nothing is overwritten
        new = rows_after[len(rows_before) :]
        changed = any(before[k] != after[k] for k in _FIELDS)
        assert len(new) == (1 if changed else 0), (actor, action, before["status"], new)
        for row_action, row_actor, row_status in new:
            assert (row_action, row_actor) == (action, actor)
            d = decide(
                Action(row_action),
                status=Status(before["status"]),
                roles=roles,
                assignment=AssignmentType(before["assignment_type"]),
                remark=remark,
                closed_at=closed_at,
                now=env.clock.now(),
                reopen_window=timedelta(days=7),
            )
            assert isinstance(d, Allowed), (actor, action, before["status"], roles, d)
            assert row_status == (d.to or Status(before["status"])).value == after["status"]
