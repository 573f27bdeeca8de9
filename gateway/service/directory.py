"""Look-ups of the organization: addresses to employees and departments, roles on a ticket."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from gateway.domain.lifecycle import AssignmentType, Role
from gateway.domain.routing import Party, PartyKind
from store import directory_queries as q
from store import models as m
from store.ticket_queries import CopyRow, copies_of_ticket, copies_of_tickets

_Row = TypeVar("_Row", bound=m.Base)


def split_subaddress(addr: str) -> tuple[str, str]:
    """`it+hardware@x` → (`it@x`, `hardware`); no `+` → (addr, "")."""
    addr = addr.strip().lower()
    local, _, domain = addr.rpartition("@")
    if "+" in local:
        base, _, sub = local.partition("+")
        return f"{base}@{domain}", sub
    return addr, ""


@dataclass(frozen=True)
class Resolved:
    party: Party
    sub_address: str = ""


@dataclass(frozen=True)
class TicketAt:
    """A ticket as it was when a notification event happened: what its audience, their roles
    and the notice's header fields are computed from when the worker fans the event out."""

    id: int
    org_id: int
    from_employee_id: int
    assignment_type: str
    to_employee_id: int | None
    to_department_id: int
    owner_id: int | None
    status: str
    subject: str
    created_at: datetime
    root_message_id: str | None
    # The newest ticket_copies id then: copies added later do not widen the event's audience.
    copies_upto: int


class DirectoryCache:
    """Organization rows (employees, departments, roles, categories, organizations) kept by
    one intake runner from one batch to the next, for as long as the directory version in the
    database stays the same (`org import` bumps it in its own transaction).

    Why: the intake looked the same senders and departments up again in every batch — a
    quarter of its time in the 2026-11-26 profile (1.6 → 1.2 ms a mail without those
    look-ups); the delivery worker's fan-out, too, looked every recipient and department's
    members up again in every batch (on PostgreSQL a round trip each). The rows are read-only
    to both; they are detached from the session that loaded them (sessions do not expire on
    commit) and only read."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.top: dict[int, int | None] = {}
        self.held: dict[tuple[type, int], object] = {}
        self.by_address: dict[tuple[str, str], object] = {}
        self.categories: dict[int, list[m.Category]] = {}
        self.members: dict[int, list[m.Employee]] = {}

    def sync(self, conn: Connection) -> None:
        """At the start of a transaction (on its connection): drop everything if the
        directory changed."""
        version = q.directory_version(conn)
        if version != self.version:
            self.clear()
            self.version = version

    def employee(self, addr: str, look_up: Callable[[str], m.Employee | None]) -> m.Employee | None:
        """The employee at `addr` (lower-cased), or None; `look_up` reads it when not held."""
        key = ("employee", addr.strip().lower())
        if key not in self.by_address:
            self.by_address[key] = look_up(key[1])
        return self.by_address[key]  # type: ignore[return-value]

    def clear(self) -> None:
        self.version = None
        self.top.clear()
        self.held.clear()
        self.by_address.clear()
        self.categories.clear()
        self.members.clear()


class Directory:
    """Answers 'who is this address' within one session."""

    def __init__(self, session: Session, cache: DirectoryCache | None = None) -> None:
        self.s = session
        # Without a cache shared across transactions, a fresh one for this unit: the notifier
        # asks for roles once per recipient, and the same department's top level over and
        # over; the session's identity map holds objects weakly, so an organization or
        # department looked up for one mail would be gone by the next and selected again.
        self._cache = cache or DirectoryCache()
        self._top = self._cache.top
        self._held = self._cache.held
        self._by_address = self._cache.by_address
        self._categories = self._cache.categories
        # The copies of each ticket this unit touched (never shared: tickets change).
        self._copies: dict[int, list[CopyRow]] = {}

    def copies(self, ticket_id: int) -> list[CopyRow]:
        """The ticket's RC and RHC entries, oldest first. (Copies are only ever written as
        Core INSERTs, `Unit.add_copy`, so there is nothing for an ORM query to flush first.)"""
        if ticket_id not in self._copies:
            self._copies[ticket_id] = copies_of_ticket(self.s.connection(), ticket_id)
        return self._copies[ticket_id]

    def load_copies(self, ticket_ids: Collection[int]) -> None:
        """Look the copies of these tickets up at once (a fan-out batch), where not held yet."""
        missing = [t for t in ticket_ids if t not in self._copies]
        if missing:
            self._copies |= copies_of_tickets(self.s.connection(), missing)

    def copies_of(self, ticket: m.Ticket | TicketAt) -> list[CopyRow]:
        """The ticket's copies; for a snapshot, only those that existed then."""
        copies = self.copies(ticket.id)
        if isinstance(ticket, TicketAt):
            return [c for c in copies if c.id <= ticket.copies_upto]
        return copies

    def get(self, model: type[_Row], ident: int) -> _Row | None:
        """``Session.get`` for organization rows (departments, categories, organizations),
        held for the rest of the unit."""
        key = (model, ident)
        if key not in self._held:
            self._held[key] = self.s.get(model, ident)
        return self._held[key]  # type: ignore[return-value]

    def new_ticket(self, ticket_id: int) -> None:
        """A ticket created in this unit has no copies yet: no need to ask the database."""
        self._copies[ticket_id] = []

    def forget_all(self) -> None:
        self._cache.clear()
        self._copies.clear()

    def employee(self, addr: str) -> m.Employee | None:
        return self._cache.employee(addr, lambda a: q.employee_by_address(self.s, a))

    def employee_by_id(self, emp_id: int) -> m.Employee:
        e = self.get(m.Employee, emp_id)
        assert e is not None
        return e

    def department(self, addr: str) -> tuple[m.Department, str] | None:
        a = addr.strip().lower()
        key = ("department", a)
        if key not in self._by_address:
            self._by_address[key] = self._department(a)
        return self._by_address[key]  # type: ignore[return-value]

    def _department(self, a: str) -> tuple[m.Department, str] | None:
        d = q.department_by_address(self.s, a)
        if d is not None:
            return d, ""
        base, sub = split_subaddress(a)
        if sub:
            d = q.department_by_address(self.s, base)
            if d is not None:
                return d, sub
        return None

    def resolve(self, addr: str) -> Resolved | None:
        dep = self.department(addr)
        if dep is not None:
            d, sub = dep
            return Resolved(Party(PartyKind.DEPARTMENT, d.id, d.org_id), sub)
        e = self.employee(addr)
        if e is not None:
            return Resolved(Party(PartyKind.EMPLOYEE, e.id, e.org_id))
        return None

    def members(self, department_id: int) -> list[m.Employee]:
        """The department's active employees, in id order."""
        members = self._cache.members
        if department_id not in members:
            members[department_id] = q.active_members(self.s, department_id)
        return members[department_id]

    def top_level(self, department_id: int) -> int | None:
        if department_id not in self._top:
            self._top[department_id] = q.top_role_level(self.s, department_id)
        return self._top[department_id]

    def category(self, org_id: int, spec: str) -> tuple[m.Category | None, m.Category | None]:
        """`A/B`, `A` or a sub-category name alone → (category, sub-category)."""
        spec = spec.strip()
        if not spec:
            return None, None
        parts = [p.strip().lower() for p in spec.replace("\\", "/").split("/", 1)]
        if org_id not in self._categories:
            self._categories[org_id] = q.categories_of_org(self.s, org_id)
        cats = self._categories[org_id]
        tops = {c.name.lower(): c for c in cats if c.parent_id is None}
        if parts[0] in tops:
            top = tops[parts[0]]
            if len(parts) == 1:
                return top, None
            sub = next(
                (c for c in cats if c.parent_id == top.id and c.name.lower() == parts[1]), None
            )
            return (top, sub) if sub is not None else (None, None)
        if len(parts) == 1:
            sub = next(
                (c for c in cats if c.parent_id is not None and c.name.lower() == parts[0]), None
            )
            if sub is not None and sub.parent_id is not None:
                return self.get(m.Category, sub.parent_id), sub
        return None, None

    def roles_of(self, ticket: m.Ticket | TicketAt, emp: m.Employee) -> frozenset[Role]:
        """Every role ``emp`` holds on ``ticket`` (SPEC §1.4); none across organizations."""
        if emp.org_id != ticket.org_id or not emp.active:
            return frozenset()
        roles: set[Role] = set()
        if ticket.from_employee_id == emp.id:
            roles.add(Role.REQUESTER)
        if ticket.assignment_type == AssignmentType.INDIVIDUAL.value:
            if ticket.to_employee_id == emp.id:
                roles.add(Role.ASSIGNEE)
        elif emp.department_id == ticket.to_department_id:
            roles.add(Role.ASSIGNEE)
        if ticket.owner_id == emp.id:
            roles.add(Role.OWNER)
        if (
            emp.department_id == ticket.to_department_id
            and emp.id not in (ticket.owner_id, ticket.to_employee_id)
            and emp.role.level == self.top_level(ticket.to_department_id)
        ):
            roles.add(Role.HIGHER_AUTHORITY)
        for c in self.copies_of(ticket):
            if c.employee_id == emp.id or (
                c.department_id is not None and c.department_id == emp.department_id
            ):
                roles.add(Role.RC if c.kind == "RC" else Role.RHC)
        return frozenset(roles)
