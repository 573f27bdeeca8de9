"""The queries of `org import`: find an organization's rows by their natural keys, bump the
directory version."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store import models as m


def first_organization(s: Session) -> m.Organization | None:
    """The organization imported first (its domain is the default mail domain)."""
    return s.scalars(select(m.Organization).order_by(m.Organization.id)).first()


def organization_named(s: Session, name: str) -> m.Organization | None:
    return s.scalars(select(m.Organization).where(m.Organization.name == name)).first()


def organization_with_team(s: Session, team_id: str) -> m.Organization | None:
    """The organization that names Slack workspace ``team_id``."""
    return s.scalars(select(m.Organization).where(m.Organization.slack_team_id == team_id)).first()


def top_category_named(s: Session, org_id: int, name: str) -> m.Category | None:
    return s.scalars(
        select(m.Category).where(
            m.Category.org_id == org_id,
            m.Category.parent_id.is_(None),
            m.Category.name == name,
        )
    ).first()


def sub_category_named(s: Session, parent_id: int, name: str) -> m.Category | None:
    return s.scalars(
        select(m.Category).where(m.Category.parent_id == parent_id, m.Category.name == name)
    ).first()


def branch_named(s: Session, org_id: int, name: str) -> m.Branch | None:
    return s.scalars(
        select(m.Branch).where(m.Branch.org_id == org_id, m.Branch.name == name)
    ).first()


def department_named(s: Session, branch_id: int, name: str) -> m.Department | None:
    return s.scalars(
        select(m.Department).where(m.Department.branch_id == branch_id, m.Department.name == name)
    ).first()


def department_at(s: Session, addresses: Iterable[str]) -> m.Department | None:
    """The department (of any organization) whose intake address is one of ``addresses``."""
    return s.scalars(select(m.Department).where(m.Department.address.in_(list(addresses)))).first()


def role_named(s: Session, department_id: int, name: str) -> m.Role | None:
    return s.scalars(
        select(m.Role).where(m.Role.department_id == department_id, m.Role.name == name)
    ).first()


def employee_with_email(s: Session, email: str) -> m.Employee | None:
    """The employee (of any organization) whose own address is ``email``."""
    return s.scalars(select(m.Employee).where(m.Employee.email == email)).first()


def employee_reached_at(s: Session, address: str) -> m.Employee | None:
    """The employee (of any organization) whose gateway address or own address is ``address``."""
    return s.scalars(
        select(m.Employee).where(
            (m.Employee.gateway_address == address) | (m.Employee.email == address)
        )
    ).first()


def bump_directory_version(s: Session) -> None:
    """Organization rows changed: writers holding them (`DirectoryCache`) must drop them."""
    bumped = s.execute(
        update(m.DirectoryVersion)
        .where(m.DirectoryVersion.id == 1)
        .values(version=m.DirectoryVersion.version + 1)
    )
    if getattr(bumped, "rowcount", 1) == 0:  # a schema made without the migrations' row
        s.add(m.DirectoryVersion(id=1, version=1))
        s.flush()
