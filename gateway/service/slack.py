"""What the Slack adapter asks of the service: workspaces, who a Slack user is, department
channels, tickets as a viewer may see them, and commands applied once per Slack request id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from gateway.domain.lifecycle import TERMINAL, AssignmentType, Channel, Role, Status
from gateway.domain.visibility import sees_hidden
from gateway.service.commands import Act, CommandResult, RaiseTicket
from gateway.service.directory import Directory
from gateway.service.errors import ActionRefused, NotFound
from gateway.service.feedback import FeedbackRecorded, record_in
from gateway.service.tickets import TicketService, parse_ref
from store import directory_queries as dq
from store import models as m
from store import org_queries as oq
from store import slack_queries as q
from store.db import read_session, write_session


@dataclass(frozen=True)
class Workspace:
    """An organization's Slack workspace (SPEC §3: its team id, and its app when named)."""

    org_id: int
    org_name: str
    team_id: str
    app_id: str | None


@dataclass(frozen=True)
class SlackActor:
    """The employee a Slack user is."""

    employee_id: int
    org_id: int
    email: str
    name: str
    active: bool


@dataclass(frozen=True)
class DepartmentRef:
    name: str
    address: str
    channel: str | None


@dataclass(frozen=True)
class TicketLine:
    ref: str
    subject: str
    status: str
    priority: str
    requester: str
    target: str


@dataclass(frozen=True)
class MessageLine:
    sender: str
    body: str
    hidden: bool
    at: datetime


@dataclass(frozen=True)
class TicketCard:
    """A ticket as one viewer may see it: hidden copies and hidden messages only for those
    who may see them (SPEC §1.4), and nothing for someone not on the ticket."""

    ref: str
    subject: str
    description: str
    status: str
    priority: str
    category: str
    requester: str
    target: str
    owner: str
    rc: tuple[str, ...]
    rhc: tuple[str, ...]
    messages: tuple[MessageLine, ...]
    roles: tuple[str, ...]


@dataclass(frozen=True)
class FormOptions:
    """What the new-ticket modal offers: departments and categories with their subs."""

    departments: tuple[DepartmentRef, ...]
    categories: tuple[tuple[str, tuple[str, ...]], ...]


def _actor(e: m.Employee) -> SlackActor:
    return SlackActor(e.id, e.org_id, e.email, e.name, e.active)


class SlackService:
    """The service side of the Slack adapter (the adapter never imports store)."""

    def __init__(self, tickets: TicketService) -> None:
        self.tickets = tickets
        self.sessions = tickets.sessions

    # ---- identity -------------------------------------------------------------------------
    def workspace(self, team_id: str) -> Workspace | None:
        with read_session(self.sessions) as s:
            org = q.organization_for_team(s, team_id)
            if org is None or not org.slack_team_id:
                return None
            return Workspace(org.id, org.name, org.slack_team_id, org.slack_app_id)

    def named_employee(self, org_id: int, user_id: str) -> SlackActor | None:
        """The employee whose Slack id the org file (or an earlier look-up) recorded."""
        with read_session(self.sessions) as s:
            e = q.employee_with_slack_id(s, org_id, user_id)
            return _actor(e) if e is not None else None

    def link(self, org_id: int, email: str, user_id: str) -> SlackActor | None:
        """The employee of ``org_id`` with profile email ``email``, now known by ``user_id``
        (recorded on the employee: SPEC §1.1, resolved when first seen); None when no
        employee of the organization has that email."""
        with write_session(self.sessions) as s:
            e = q.employee_with_email(s, org_id, email.strip().lower())
            if e is None:
                return None
            if e.slack_user_id != user_id:
                q.set_slack_user_id(s, e.id, user_id)
                # Writers that keep organization rows between transactions must reload them.
                oq.bump_directory_version(s)
            return _actor(e)

    def slack_id_of(self, email: str) -> str | None:
        with read_session(self.sessions) as s:
            e = dq.employee_by_address(s, email.strip().lower())
            return e.slack_user_id if e is not None else None

    # ---- departments and the new-ticket form ------------------------------------------------
    def department_for_channel(self, org_id: int, channel: str) -> DepartmentRef | None:
        with read_session(self.sessions) as s:
            d = q.department_with_channel(s, org_id, channel)
            return DepartmentRef(d.name, d.address, d.slack_channel) if d else None

    def department_named(self, org_id: int, name: str) -> DepartmentRef | None:
        """A department by name (any case) or by address."""
        key = name.strip().lower()
        for d in self.form_options(org_id).departments:
            if key in (d.name.lower(), d.address):
                return d
        return None

    def form_options(self, org_id: int) -> FormOptions:
        with read_session(self.sessions) as s:
            deps = tuple(
                DepartmentRef(d.name, d.address, d.slack_channel)
                for d in q.departments_of_org(s, org_id)
            )
            cats = dq.categories_of_org(s, org_id)
            tops = sorted((c for c in cats if c.parent_id is None), key=lambda c: c.name)
            return FormOptions(
                deps,
                tuple((t.name, tuple(c.name for c in cats if c.parent_id == t.id)) for t in tops),
            )

    # ---- commands -------------------------------------------------------------------------
    def raise_ticket(self, cmd: RaiseTicket, *, once: str | None = None) -> str:
        return self.tickets.raise_ticket(cmd, once=once)

    def act(self, cmd: Act, *, once: str | None = None) -> CommandResult:
        return self.tickets.act(cmd, once=once)

    def post_in_thread(
        self, *, ref: str, actor: str, body: str, origin: str, once: str | None
    ) -> CommandResult:
        """A message written in the ticket's channel thread, with the writer's rights (an
        assignee's is a reply, the requester's a response …). Someone whose only part in the
        ticket is a hidden copy is refused: the channel would name them."""
        with self.tickets.unit() as u:
            u.once(once)
            emp = u.actor(actor)
            t = u.ticket(ref)
            roles = u.d.roles_of(t, emp)
            if not roles:
                raise ActionRefused(f"you are not a participant of {ref.upper()}")
            if not roles - {Role.RHC}:
                raise ActionRefused(
                    f"you are a hidden copy of {ref.upper()}: answer by mail or "
                    f"`/ticket message {ref.upper()} …`, not in the channel"
                )
            _, result = u.post(t, emp, body, Channel.SLACK, origin=origin)
            return result

    def record_feedback(
        self, *, ref: str, actor: str, rating: int, comment: str, once: str | None
    ) -> FeedbackRecorded:
        """The requester's answer from the feedback buttons and comment modal: the same rule
        as by mail (issue 13's `record_in`: requester only, closed tickets, one answer that a
        later one replaces, every change in the history), applied once per modal."""
        with self.tickets.unit() as u:
            u.once(once)
            emp = u.actor(actor)
            t = u.ticket(ref)
            if not u.d.roles_of(t, emp):
                raise NotFound(f"no ticket {ref.strip().upper()} for {emp.email}")
            return record_in(u, t, emp, rating=rating, comment=comment, channel=Channel.SLACK)

    # ---- reads ----------------------------------------------------------------------------
    def tickets_of(self, email: str, which: str) -> list[TicketLine]:
        with read_session(self.sessions) as s:
            e = dq.employee_by_address(s, email)
            if e is None:
                raise NotFound(f"{email} is not an employee")
            d = Directory(s)
            return [
                TicketLine(
                    f"TKT-{t.id}",
                    t.subject,
                    t.status,
                    t.priority,
                    d.employee_by_id(t.from_employee_id).name,
                    _target(d, t),
                )
                for t in q.open_tickets(s, employee=e, which=which)
            ]

    def card(self, ref: str, viewer: str) -> TicketCard:
        """``ref`` as ``viewer`` may see it; NotFound when they are not on it."""
        with read_session(self.sessions) as s:
            t = s.get(m.Ticket, parse_ref(ref))
            e = dq.employee_by_address(s, viewer)
            d = Directory(s)
            roles = d.roles_of(t, e) if t is not None and e is not None else frozenset()
            if t is None or not roles:
                raise NotFound(f"no ticket {ref.strip().upper()} for {viewer}")
            return _card(s, d, t, roles)

    def ticket_for_thread(self, channel: str, thread_ts: str) -> str | None:
        with read_session(self.sessions) as s:
            p = q.post_at(s, channel, thread_ts)
            return f"TKT-{p.ticket_id}" if p is not None else None

    def post_of(self, ticket_id: int, channel: str) -> str | None:
        """The ts of the ticket's post in ``channel``, once it was posted."""
        with read_session(self.sessions) as s:
            p = q.post_of(s, ticket_id, channel)
            return p.ts if p is not None else None

    def record_post(self, ticket_id: int, channel: str, ts: str) -> None:
        with write_session(self.sessions) as s:
            q.record_post(
                s.connection(), ticket_id=ticket_id, channel=channel, ts=ts, at=self.tickets.now()
            )

    def is_open(self, ref: str) -> bool:
        with read_session(self.sessions) as s:
            t = s.get(m.Ticket, parse_ref(ref))
            return t is not None and Status(t.status) not in TERMINAL


def _target(d: Directory, t: m.Ticket) -> str:
    if t.assignment_type == AssignmentType.INDIVIDUAL.value and t.to_employee_id:
        return d.employee_by_id(t.to_employee_id).name
    dep = d.get(m.Department, t.to_department_id)
    return dep.name if dep else ""


def _party_names(s: Session, d: Directory, t: m.Ticket, kind: str) -> tuple[str, ...]:
    out = []
    for c in d.copies(t.id):
        if c.kind != kind:
            continue
        if c.employee_id is not None:
            out.append(d.employee_by_id(c.employee_id).name)
        elif c.department_id is not None:
            dep = d.get(m.Department, c.department_id)
            out.append(dep.name if dep else "")
    return tuple(out)


def _card(s: Session, d: Directory, t: m.Ticket, roles: frozenset[Role]) -> TicketCard:
    hidden_ok = sees_hidden(roles)
    cat = d.get(m.Category, t.category_id) if t.category_id else None
    sub = d.get(m.Category, t.sub_category_id) if t.sub_category_id else None
    category = (cat.name if cat else "") + (f"/{sub.name}" if sub else "")
    return TicketCard(
        ref=f"TKT-{t.id}",
        subject=t.subject,
        description=t.description,
        status=t.status,
        priority=t.priority,
        category=category,
        requester=d.employee_by_id(t.from_employee_id).name,
        target=_target(d, t),
        owner=d.employee_by_id(t.owner_id).name if t.owner_id else "",
        rc=_party_names(s, d, t, "RC"),
        rhc=_party_names(s, d, t, "RHC") if hidden_ok else (),
        messages=tuple(
            MessageLine(msg.sender_label, msg.body, msg.hidden, msg.at)
            for msg in q.visible_messages(s, t.id, hidden=hidden_ok)
        ),
        roles=tuple(sorted(r.value for r in roles)),
    )
