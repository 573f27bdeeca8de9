"""Read views in the stable JSON shapes of SPEC §5 (tickets, org, quarantine, processing records)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store import models as m


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d is not None else None


class Views:
    """Builds plain dicts from the store; one session, no writes."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self._emp: dict[int, m.Employee] = {}
        self._dep: dict[int, m.Department] = {}

    def emp(self, i: int | None) -> str | None:
        if i is None:
            return None
        if i not in self._emp:
            e = self.s.get(m.Employee, i)
            assert e is not None
            self._emp[i] = e
        return self._emp[i].email

    def dep(self, i: int | None) -> m.Department | None:
        if i is None:
            return None
        if i not in self._dep:
            d = self.s.get(m.Department, i)
            assert d is not None
            self._dep[i] = d
        return self._dep[i]

    def _name(
        self, model: type[m.Branch | m.Organization | m.Category], i: int | None
    ) -> str | None:
        """The name of a Branch, Organization or Category row by id."""
        if i is None:
            return None
        row = self.s.get(model, i)
        return row.name if isinstance(row, (m.Branch, m.Organization, m.Category)) else None

    def ticket(self, t: m.Ticket) -> dict[str, Any]:
        copies: dict[str, list[str]] = {"rc": [], "rhc": []}
        for c in self.s.scalars(
            select(m.TicketCopy).where(m.TicketCopy.ticket_id == t.id).order_by(m.TicketCopy.id)
        ):
            who = (
                self.emp(c.employee_id)
                if c.employee_id
                else (d.address if (d := self.dep(c.department_id)) else None)
            )
            if who:
                copies[c.kind.lower()].append(who)
        history = [
            {
                "status": h.status,
                "actor": h.actor_label,
                "at": _iso(h.at),
                "channel": h.channel,
                "remark": h.remark,
            }
            for h in self.s.scalars(
                select(m.StatusHistory)
                .where(m.StatusHistory.ticket_id == t.id)
                .order_by(m.StatusHistory.id)
            )
        ]
        messages = []
        for msg in self.s.scalars(
            select(m.Message).where(m.Message.ticket_id == t.id).order_by(m.Message.id)
        ):
            atts = [
                {"name": a.filename, "type": a.content_type, "size": a.size, "sha256": a.sha256}
                for a in self.s.scalars(
                    select(m.Attachment).where(m.Attachment.message_id == msg.id)
                )
            ]
            messages.append(
                {
                    "id": msg.id,
                    "sender": msg.sender_label,
                    "body": msg.body,
                    "hidden": msg.hidden,
                    "channel": msg.channel,
                    "at": _iso(msg.at),
                    "message_id": msg.message_id,
                    "attachments": atts,
                }
            )
        fb = self.s.scalars(select(m.Feedback).where(m.Feedback.ticket_id == t.id)).first()
        from_dep = self.dep(t.from_department_id)
        to_dep = self.dep(t.to_department_id)
        return {
            "ref": f"TKT-{t.id}",
            "subject": t.subject,
            "description": t.description,
            "category": self._name(m.Category, t.category_id),
            "sub_category": self._name(m.Category, t.sub_category_id),
            "priority": t.priority,
            "assignment_type": t.assignment_type,
            "from": {
                "employee": self.emp(t.from_employee_id),
                "department": from_dep.address if from_dep else None,
                "branch": self._name(m.Branch, t.from_branch_id),
                "organization": self._name(m.Organization, t.org_id),
                "channel": t.channel,
                "device": t.device or None,
            },
            "to": {
                "department": to_dep.address if to_dep else None,
                "employee": self.emp(t.to_employee_id),
                "owner": self.emp(t.owner_id),
                "branch": self._name(m.Branch, t.to_branch_id),
                "organization": self._name(m.Organization, t.org_id),
            },
            "copies": copies,
            "status": t.status,
            "escalation_level": t.escalation_level,
            "history": history,
            "messages": messages,
            "feedback": None
            if fb is None
            else {"rating": fb.rating, "comment": fb.comment, "at": _iso(fb.at)},
            "created_at": _iso(t.created_at),
            "updated_at": _iso(t.updated_at),
            "closed_at": _iso(t.closed_at),
            "linked_ticket": f"TKT-{t.linked_ticket_id}" if t.linked_ticket_id else None,
        }

    def tickets(
        self, *, status: str | None = None, department: str | None = None
    ) -> list[m.Ticket]:
        q = select(m.Ticket).order_by(m.Ticket.created_at, m.Ticket.id)
        if status:
            q = q.where(m.Ticket.status == status.upper())
        if department:
            d = department.lower()
            dep_ids = select(m.Department.id).where(
                (m.Department.address == d) | (func.lower(m.Department.name) == d)
            )
            q = q.where(m.Ticket.to_department_id.in_(dep_ids))
        return list(self.s.scalars(q))

    def org(self, org: m.Organization) -> dict[str, Any]:
        cats = list(
            self.s.scalars(
                select(m.Category).where(m.Category.org_id == org.id).order_by(m.Category.id)
            )
        )
        branches = []
        for b in self.s.scalars(
            select(m.Branch).where(m.Branch.org_id == org.id).order_by(m.Branch.id)
        ):
            deps = []
            for d in self.s.scalars(
                select(m.Department).where(m.Department.branch_id == b.id).order_by(m.Department.id)
            ):
                roles = [
                    {"name": r.name, "level": r.level}
                    for r in self.s.scalars(
                        select(m.Role)
                        .where(m.Role.department_id == d.id)
                        .order_by(m.Role.level, m.Role.id)
                    )
                ]
                deps.append(
                    {
                        "name": d.name,
                        "address": d.address,
                        "slack_channel": d.slack_channel,
                        "default_category": self._name(m.Category, d.default_category_id),
                        "roles": roles,
                    }
                )
            branches.append({"name": b.name, "timezone": b.timezone, "departments": deps})
        employees = []
        for e in self.s.scalars(
            select(m.Employee).where(m.Employee.org_id == org.id).order_by(m.Employee.id)
        ):
            ed = self.dep(e.department_id)
            assert ed is not None
            employees.append(
                {
                    "email": e.email,
                    "gateway_address": e.gateway_address,
                    "name": e.name,
                    "branch": self._name(m.Branch, ed.branch_id),
                    "department": ed.name,
                    "role": e.role.name,
                    "level": e.role.level,
                    "slack_user_id": e.slack_user_id,
                    "active": e.active,
                }
            )
        return {
            "organization": {"name": org.name, "domains": list(org.domains)},
            "branches": branches,
            "employees": employees,
            "categories": [
                {"name": c.name, "sub_categories": [s.name for s in cats if s.parent_id == c.id]}
                for c in cats
                if c.parent_id is None
            ],
        }
