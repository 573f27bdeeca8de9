"""Look-ups of the organization directory: employees, departments, roles, categories, its version."""

from __future__ import annotations

from sqlalchemy import Connection, func, or_, select
from sqlalchemy.orm import Session

from store import models as m


def directory_version(conn: Connection) -> int:
    """The directory's version (`org import` bumps it); 0 before the first import."""
    stmt = select(m.DirectoryVersion.version).where(m.DirectoryVersion.id == 1)
    return int(conn.execute(stmt).scalar() or 0)


def employee_by_address(s: Session, address: str) -> m.Employee | None:
    """The employee whose email or gateway address is ``address`` (already lower case)."""
    stmt = select(m.Employee).where(
        or_(m.Employee.email == address, m.Employee.gateway_address == address)
    )
    return s.scalars(stmt).first()


def department_by_address(s: Session, address: str) -> m.Department | None:
    """The department whose address is ``address`` (already lower case)."""
    return s.scalars(select(m.Department).where(m.Department.address == address)).first()


def active_members(s: Session, department_id: int) -> list[m.Employee]:
    """The department's active employees, in id order."""
    stmt = select(m.Employee).where(
        m.Employee.department_id == department_id, m.Employee.active.is_(True)
    )
    return list(s.scalars(stmt.order_by(m.Employee.id)))


def top_role_level(s: Session, department_id: int) -> int | None:
    """The highest role level in the department, None when it has no roles."""
    stmt = select(func.max(m.Role.level)).where(m.Role.department_id == department_id)
    return s.scalar(stmt)


def categories_of_org(s: Session, org_id: int) -> list[m.Category]:
    """Every category and sub-category of the organization."""
    return list(s.scalars(select(m.Category).where(m.Category.org_id == org_id)))
