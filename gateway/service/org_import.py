"""`ticketgate org import`: one TOML file (and optional employees CSV) → one organization, idempotently."""

from __future__ import annotations

import csv
import io
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.service.errors import OrgFileError
from store import models as m

_ADDR = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^\d{2}:\d{2}-\d{2}:\d{2}$")


@dataclass(frozen=True)
class ImportReport:
    organization: str
    created: int
    updated: int

    @property
    def changed(self) -> int:
        return self.created + self.updated


def _need(d: dict[str, Any], key: str, where: str, typ: type = str) -> Any:
    if key not in d:
        raise OrgFileError(f"{where}: missing key {key!r}")
    v = d[key]
    if not isinstance(v, typ) or (typ is str and not str(v).strip()):
        raise OrgFileError(f"{where}.{key}: expected {typ.__name__}, got {v!r}")
    return v


def _addr(v: str, where: str) -> str:
    a = v.strip().lower()
    if not _ADDR.match(a):
        raise OrgFileError(f"{where}: {v!r} is not a mail address")
    return a


def load_org_file(path: Path) -> dict[str, Any]:
    """Read and validate the file; the returned dict has employees from the CSV merged in."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OrgFileError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise OrgFileError(f"{path}: {err}") from None
    org = data.get("organization")
    if not isinstance(org, dict):
        raise OrgFileError(f"{path}: missing [organization] table")
    _need(org, "name", "organization")
    domains = org.get("domains", [])
    if not isinstance(domains, list) or not all(isinstance(x, str) for x in domains) or not domains:
        raise OrgFileError("organization.domains: expected a non-empty list of domains")
    cats = data.get("categories", [])
    for i, c in enumerate(cats):
        _need(c, "name", f"categories[{i}]")
        subs = c.get("sub_categories", [])
        if not isinstance(subs, list) or not all(isinstance(s, str) for s in subs):
            raise OrgFileError(f"categories[{i}].sub_categories: expected a list of names")
    cat_names = {c["name"].lower() for c in cats}
    branches = data.get("branches")
    if not isinstance(branches, list) or not branches:
        raise OrgFileError("branches: at least one [[branches]] entry is needed")
    seen_dep: set[tuple[str, str]] = set()
    for bi, b in enumerate(branches):
        where = f"branches[{bi}]"
        _need(b, "name", where)
        tz = _need(b, "timezone", where)
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise OrgFileError(f"{where}.timezone: unknown time zone {tz!r}") from None
        for day, span in (b.get("working_hours") or {}).items():
            if day not in _DAYS or not isinstance(span, str) or not _HOURS.match(span):
                raise OrgFileError(f"{where}.working_hours.{day}: expected HH:MM-HH:MM on mon..sun")
        for di, d in enumerate(b.get("departments", [])):
            dw = f"{where}.departments[{di}]"
            _need(d, "name", dw)
            d["address"] = _addr(_need(d, "address", dw), f"{dw}.address")
            dc = d.get("default_category")
            if dc is not None and dc.lower() not in cat_names:
                raise OrgFileError(f"{dw}.default_category: unknown category {dc!r}")
            roles = d.get("roles", [])
            if not roles:
                raise OrgFileError(f"{dw}: at least one role is needed")
            for ri, r in enumerate(roles):
                _need(r, "name", f"{dw}.roles[{ri}]")
                _need(r, "level", f"{dw}.roles[{ri}]", int)
            seen_dep.add((b["name"], d["name"]))
    employees = list(data.get("employees", []))
    csv_name = org.get("employees_csv") or data.get("employees_csv")
    if csv_name:
        csv_path = (path.parent / csv_name).resolve()
        try:
            text = csv_path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise OrgFileError(f"organization.employees_csv: no such file {csv_path}") from None
        reader = csv.DictReader(io.StringIO(text))
        missing = {"email", "name", "branch", "department", "role"} - set(reader.fieldnames or [])
        if missing:
            raise OrgFileError(f"{csv_path.name}: missing columns {sorted(missing)}")
        for row in reader:
            rec: dict[str, Any] = {k: (v or "").strip() for k, v in row.items() if k}
            rec["_line"] = f"{csv_path.name} line {reader.line_num}"
            if "active" in rec:
                # A blank cell is the default (active), as for an inline employee without the key.
                rec["active"] = rec["active"].lower() not in ("false", "0", "no")
            employees.append(rec)
    seen_emp: set[str] = set()
    for i, e in enumerate(employees):
        ew = e.get("_line") or f"employees[{i}]"
        e["email"] = _addr(_need(e, "email", ew), f"{ew}.email")
        if e["email"] in seen_emp:
            raise OrgFileError(f"{ew}: duplicate employee {e['email']}")
        seen_emp.add(e["email"])
        for k in ("name", "branch", "department", "role"):
            _need(e, k, ew)
        if (e["branch"], e["department"]) not in seen_dep:
            raise OrgFileError(f"{ew}: no department {e['department']!r} in branch {e['branch']!r}")
        if e.get("gateway_address"):
            e["gateway_address"] = _addr(e["gateway_address"], f"{ew}.gateway_address")
    data["employees"] = employees
    return data


class _Upsert:
    def __init__(self, s: Session) -> None:
        self.s = s
        self.created = 0
        self.updated = 0

    def set(self, row: Any, **values: Any) -> None:
        for k, v in values.items():
            if getattr(row, k) != v:
                setattr(row, k, v)
                self.updated += 1 if row in self.s and row.id is not None else 0

    def new(self, row: Any) -> Any:
        self.s.add(row)
        self.s.flush()
        self.created += 1
        return row


def import_org(s: Session, path: Path, *, mail_domain: str) -> ImportReport:
    """Create or update the organization described by ``path``; no change when nothing differs."""
    data = load_org_file(path)
    u = _Upsert(s)
    o = data["organization"]
    org = s.scalars(select(m.Organization).where(m.Organization.name == o["name"])).first()
    domains = [d.lower() for d in o["domains"]]
    if org is None:
        org = u.new(m.Organization(name=o["name"], domains=domains))
    else:
        u.set(org, domains=domains)
    gw_domain = (mail_domain or domains[0]).lower()
    # Categories
    cat_ids: dict[str, int] = {}
    for c in data.get("categories", []):
        top = s.scalars(
            select(m.Category).where(
                m.Category.org_id == org.id,
                m.Category.parent_id.is_(None),
                m.Category.name == c["name"],
            )
        ).first() or u.new(m.Category(org_id=org.id, parent_id=None, name=c["name"]))
        cat_ids[c["name"].lower()] = top.id
        for sub in c.get("sub_categories", []):
            s.scalars(
                select(m.Category).where(m.Category.parent_id == top.id, m.Category.name == sub)
            ).first() or u.new(m.Category(org_id=org.id, parent_id=top.id, name=sub))
    # Branches, departments, roles
    roles: dict[tuple[str, str, str], m.Role] = {}
    deps: dict[tuple[str, str], m.Department] = {}
    for b in data["branches"]:
        br = s.scalars(
            select(m.Branch).where(m.Branch.org_id == org.id, m.Branch.name == b["name"])
        ).first()
        hours = dict(b.get("working_hours") or {})
        holidays = [str(h) for h in b.get("holidays", [])]
        if br is None:
            br = u.new(
                m.Branch(
                    org_id=org.id,
                    name=b["name"],
                    timezone=b["timezone"],
                    working_hours=hours,
                    holidays=holidays,
                )
            )
        else:
            u.set(br, timezone=b["timezone"], working_hours=hours, holidays=holidays)
        for d in b.get("departments", []):
            other = s.scalars(
                select(m.Department).where(m.Department.address == d["address"])
            ).first()
            dep = s.scalars(
                select(m.Department).where(
                    m.Department.branch_id == br.id, m.Department.name == d["name"]
                )
            ).first()
            if other is not None and (dep is None or other.id != dep.id):
                raise OrgFileError(
                    f"department {d['name']}: address {d['address']} is already used"
                )
            dc = d.get("default_category")
            fields = {
                "address": d["address"],
                "slack_channel": d.get("slack_channel"),
                "default_category_id": cat_ids.get(dc.lower()) if dc else None,
            }
            if dep is None:
                dep = u.new(m.Department(org_id=org.id, branch_id=br.id, name=d["name"], **fields))
            else:
                u.set(dep, **fields)
            deps[(b["name"], d["name"])] = dep
            for r in d["roles"]:
                role = s.scalars(
                    select(m.Role).where(m.Role.department_id == dep.id, m.Role.name == r["name"])
                ).first()
                if role is None:
                    role = u.new(m.Role(department_id=dep.id, name=r["name"], level=r["level"]))
                else:
                    u.set(role, level=r["level"])
                roles[(b["name"], d["name"], r["name"])] = role
    # Employees
    for i, e in enumerate(data["employees"]):
        where = e.get("_line") or f"employees[{i}]"
        role = roles.get((e["branch"], e["department"], e["role"]))
        if role is None:
            raise OrgFileError(f"{where}: no role {e['role']!r} in {e['department']!r}")
        dep = deps[(e["branch"], e["department"])]
        gw = e.get("gateway_address") or f"{e['email'].split('@')[0]}@{gw_domain}"
        emp = s.scalars(select(m.Employee).where(m.Employee.email == e["email"])).first()
        if emp is not None and emp.org_id != org.id:
            raise OrgFileError(f"{where}: {e['email']} belongs to another organization")
        clash = s.scalars(
            select(m.Employee).where((m.Employee.gateway_address == gw) | (m.Employee.email == gw))
        ).first()
        if clash is not None and (emp is None or clash.id != emp.id):
            raise OrgFileError(
                f"{where}: gateway address {gw} is already used; give gateway_address"
            )
        if s.scalars(
            select(m.Department).where(m.Department.address.in_([gw, e["email"]]))
        ).first():
            raise OrgFileError(f"{where}: {gw} is a department address")
        fields = {
            "role_id": role.id,
            "department_id": dep.id,
            "gateway_address": gw,
            "name": e["name"],
            "active": bool(e.get("active", True)),
        }
        if e.get("slack_user_id"):
            fields["slack_user_id"] = e["slack_user_id"]
        if emp is None:
            u.new(m.Employee(org_id=org.id, email=e["email"], **fields))
        else:
            u.set(emp, **fields)
    s.flush()
    if u.created or u.updated:
        bump_directory_version(s)
    return ImportReport(organization=org.name, created=u.created, updated=u.updated)


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
