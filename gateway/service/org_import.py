"""`ticketgate org import`: one TOML file (and optional employees CSV) → one organization, idempotently."""

from __future__ import annotations

import csv
import io
import re
import tomllib
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.orm import Session

from gateway.domain.business_time import parse_duration, parse_spans
from gateway.domain.lifecycle import Priority
from gateway.service.errors import OrgFileError
from gateway.service.sla import check_holiday_country
from store import models as m
from store import org_queries as q

_ADDR = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# A TOML table header, `[name]` or `[[name]]` (bare dotted keys: what org files use).
_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\- ]+?)\s*\]\]?\s*(?:#.*)?$")


@dataclass(frozen=True)
class _Table:
    """One kind of org-file table: its keys with their types, and those that must be given.
    Any other key is an error: a misspelt `slak_channel` must not import as "no channel"."""

    keys: dict[str, type]
    required: tuple[str, ...]


_TOP = _Table(
    {
        "organization": dict,
        "categories": list,
        "branches": list,
        "employees": list,
        "employees_csv": str,
    },
    ("organization", "branches"),
)
_ORGANIZATION = _Table(
    {
        "name": str,
        "domains": list,
        "employees_csv": str,
        # SPEC §3: the Slack workspace whose requests act for this organization, and its app
        "slack_team_id": str,
        "slack_app_id": str,
    },
    ("name", "domains"),
)
_CATEGORY = _Table({"name": str, "sub_categories": list}, ("name",))
_BRANCH = _Table(
    {
        "name": str,
        "timezone": str,
        "working_hours": dict,
        "holidays": list,
        "holiday_country": str,
        "holiday_subdivision": str,
        "departments": list,
    },
    ("name", "timezone"),
)
_DEPARTMENT = _Table(
    {
        "name": str,
        "address": str,
        "slack_channel": str,
        "default_category": str,
        "roles": list,
        "sla": list,
    },
    ("name", "address", "roles"),
)
# SPEC §4: a department's SLA policies, the first that matches a ticket applies.
_SLA = _Table(
    {
        "name": str,
        "categories": list,
        "priorities": list,
        "first_response": str,
        "resolution": str,
        "escalation": list,
    },
    ("first_response", "resolution"),
)
_ESCALATION = _Table({"after": str, "notify": str}, ("notify",))
_NOTIFY = re.compile(r"^(owner|higher_authority|employee:\S+@\S+|department:\S+@\S+)$")
_ROLE = _Table({"name": str, "level": int}, ("name", "level"))
_EMPLOYEE = _Table(
    {
        "email": str,
        "name": str,
        "branch": str,
        "department": str,
        "role": str,
        "gateway_address": str,
        "slack_user_id": str,
        "active": bool,
    },
    ("email", "name", "branch", "department", "role"),
)
_KINDS = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


@dataclass(frozen=True)
class ImportReport:
    organization: str
    created: int
    updated: int

    @property
    def changed(self) -> int:
        return self.created + self.updated


def _kind(value: Any) -> str:
    if type(value) is bool:
        return f"a boolean ({str(value).lower()})"
    for t, name in _KINDS.items():
        if type(value) is t:
            return f"{name} ({value!r})" if t in (str, int) else name
    return type(value).__name__


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _addr(v: str, where: str) -> str:
    a = v.strip().lower()
    if not _ADDR.match(a):
        raise OrgFileError(f"{where}: {v!r} is not a mail address")
    return a


class _OrgFileChecker:
    """Checks one parsed org file table by table, naming the TOML path (and, for keys it does
    not know, the line) of the first fault."""

    def __init__(self, path: Path, text: str) -> None:
        self.file = path.name
        self.lines = text.splitlines()
        self.headers: dict[str, list[int]] = {}  # header → indexes of its lines, in order
        self.header_at: dict[int, str] = {}
        for n, line in enumerate(self.lines):
            found = _HEADER.match(line)
            if found:
                name = found.group(1).replace(" ", "")
                self.headers.setdefault(name, []).append(n)
                self.header_at[n] = name
        self.met: dict[str, int] = {}  # header → tables of it checked so far (document order)

    def table(self, value: Any, where: str, header: str, kind: _Table) -> dict[str, Any]:
        """``value`` as a table of ``kind``: unknown keys, missing required ones and values of
        the wrong type are errors. ``header`` is its TOML table name (`branches.departments`)."""
        keys = kind.keys
        if not isinstance(value, dict):
            raise OrgFileError(f"{where}: expected a table, got {_kind(value)}")
        nth = self.met.get(header, 0)
        self.met[header] = nth + 1
        for key in value:
            if key not in keys:
                line = self._line_of(header, nth, key)
                at = f" ({self.file} line {line})" if line else ""
                raise OrgFileError(
                    f"{_path(where, key)}: unknown key {key!r}{at}; known: {', '.join(keys)}"
                )
        required = kind.required
        for key in required:
            if key not in value:
                raise OrgFileError(f"{where or self.file}: missing key {key!r}")
        for key, typ in keys.items():
            if key not in value:
                continue
            v = value[key]
            if type(v) is not typ:  # `type is`, not isinstance: true is no level
                raise OrgFileError(f"{_path(where, key)}: expected {_KINDS[typ]}, got {_kind(v)}")
            if key in required and isinstance(v, str) and not v.strip():
                raise OrgFileError(f"{_path(where, key)}: must not be empty")
        return value

    def tables(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise OrgFileError(f"{where}: expected a list of tables, got {_kind(value)}")
        return value

    def _line_of(self, header: str, nth: int, key: str) -> int | None:
        """The 1-based line of ``key`` in the ``nth`` `[header]`/`[[header]]` table; None when
        the file does not spell it that way (inline tables, dotted keys)."""
        if header:
            starts = self.headers.get(header, [])
            if nth >= len(starts):
                return None
            start = starts[nth]
            after = [n for n in self.headers[header] if n > start]
            end = after[0] if after else len(self.lines)
        else:
            start, end = -1, len(self.lines)
        key_line = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*[=.]")
        for n in range(start + 1, end):
            name = self.header_at.get(n)
            if name == f"{header}.{key}".lstrip("."):
                return n + 1
            if name is not None:
                continue  # a sub-table's own keys are not this table's
            if key_line.match(self.lines[n]) and self._owner(n) == (header, start):
                return n + 1
        return None

    def _owner(self, n: int) -> tuple[str, int]:
        """The header (name, line index) whose table line ``n`` belongs to."""
        for k in range(n - 1, -1, -1):
            if k in self.header_at:
                return self.header_at[k], k
        return "", -1


def load_org_file(path: Path) -> dict[str, Any]:
    """Read and check the whole file (and its employees CSV) before anything is written; the
    returned dict has employees from the CSV merged in. Faults raise OrgFileError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OrgFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise OrgFileError(f"{path}: cannot read: {err}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise OrgFileError(f"{path}: {err}") from None
    check = _OrgFileChecker(path, text)
    check.table(data, "", "", _TOP)
    org = check.table(data["organization"], "organization", "organization", _ORGANIZATION)
    domains = org["domains"]
    if not all(isinstance(x, str) for x in domains) or not domains:
        raise OrgFileError("organization.domains: expected a non-empty list of domains")
    cats = check.tables(data.get("categories", []), "categories")
    cat_names: set[str] = set()
    for i, c in enumerate(cats):
        check.table(c, f"categories[{i}]", "categories", _CATEGORY)
        subs = c.get("sub_categories", [])
        if not all(isinstance(s, str) for s in subs):
            raise OrgFileError(f"categories[{i}].sub_categories: expected a list of names")
        if c["name"].lower() in cat_names:
            raise OrgFileError(f"categories[{i}]: duplicate category {c['name']!r}")
        cat_names.add(c["name"].lower())
    branches = check.tables(data["branches"], "branches")
    if not branches:
        raise OrgFileError("branches: at least one [[branches]] entry is needed")
    roles_of: dict[tuple[str, str], set[str]] = {}
    addresses: set[str] = set()
    for bi, b in enumerate(branches):
        where = f"branches[{bi}]"
        check.table(b, where, "branches", _BRANCH)
        tz = b["timezone"]
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise OrgFileError(f"{where}.timezone: unknown time zone {tz!r}") from None
        for day, span in (b.get("working_hours") or {}).items():
            if day not in _DAYS or not isinstance(span, str) or not _spans_ok(span):
                raise OrgFileError(
                    f"{where}.working_hours.{day}: expected HH:MM-HH:MM (or several, comma"
                    " separated) on mon..sun"
                )
        if "holiday_subdivision" in b and "holiday_country" not in b:
            raise OrgFileError(f"{where}.holiday_subdivision: needs holiday_country")
        if "holiday_country" in b:
            fault = check_holiday_country(b["holiday_country"], b.get("holiday_subdivision"))
            if fault:
                raise OrgFileError(f"{where}.holiday_country: {fault}")
        for h in b.get("holidays", []):
            if not isinstance(h, str | date) or isinstance(h, datetime):
                raise OrgFileError(f"{where}.holidays: expected dates, got {_kind(h)}")
        if any(x["name"] == b["name"] for x in branches[:bi]):
            raise OrgFileError(f"{where}: duplicate branch {b['name']!r}")
        for di, d in enumerate(check.tables(b.get("departments", []), f"{where}.departments")):
            dw = f"{where}.departments[{di}]"
            check.table(d, dw, "branches.departments", _DEPARTMENT)
            d["address"] = _addr(d["address"], f"{dw}.address")
            if d["address"] in addresses:
                raise OrgFileError(f"{dw}.address: {d['address']} is given twice")
            addresses.add(d["address"])
            if (b["name"], d["name"]) in roles_of:
                raise OrgFileError(f"{dw}: duplicate department {d['name']!r} in {b['name']!r}")
            dc = d.get("default_category")
            if dc is not None and dc.lower() not in cat_names:
                raise OrgFileError(f"{dw}.default_category: unknown category {dc!r}")
            d["sla"] = [
                _sla_policy(check, p, f"{dw}.sla[{pi}]", cat_names)
                for pi, p in enumerate(check.tables(d.get("sla", []), f"{dw}.sla"))
            ]
            roles = check.tables(d["roles"], f"{dw}.roles")
            if not roles:
                raise OrgFileError(f"{dw}: at least one role is needed")
            names: set[str] = set()
            for ri, r in enumerate(roles):
                check.table(r, f"{dw}.roles[{ri}]", "branches.departments.roles", _ROLE)
                if r["name"] in names:
                    raise OrgFileError(f"{dw}.roles[{ri}]: duplicate role {r['name']!r}")
                names.add(r["name"])
            roles_of[(b["name"], d["name"])] = names
    employees: list[dict[str, Any]] = []
    for i, e in enumerate(check.tables(data.get("employees", []), "employees")):
        employees.append(check.table(e, f"employees[{i}]", "employees", _EMPLOYEE))
    csv_name = org.get("employees_csv") or data.get("employees_csv")
    if csv_name:
        employees += _read_employees_csv((path.parent / csv_name).resolve())
    seen_emp: set[str] = set()
    for i, e in enumerate(employees):
        ew = e.get("_line") or f"employees[{i}]"
        e["email"] = _addr(e["email"], f"{ew}.email")
        if e["email"] in seen_emp:
            raise OrgFileError(f"{ew}: duplicate employee {e['email']}")
        seen_emp.add(e["email"])
        role_names = roles_of.get((e["branch"], e["department"]))
        if role_names is None:
            raise OrgFileError(f"{ew}: no department {e['department']!r} in branch {e['branch']!r}")
        if e["role"] not in role_names:
            raise OrgFileError(f"{ew}: no role {e['role']!r} in {e['department']!r}")
        if e.get("gateway_address"):
            e["gateway_address"] = _addr(e["gateway_address"], f"{ew}.gateway_address")
    data["employees"] = employees
    _check_notify_targets(data, seen_emp, addresses)
    return data


def _spans_ok(text: str) -> bool:
    try:
        parse_spans(text)
    except ValueError:
        return False
    return True


def _duration_minutes(value: str, where: str) -> int:
    try:
        return int(parse_duration(value).total_seconds() // 60)
    except ValueError as err:
        raise OrgFileError(f"{where}: {err}") from None


def _sla_policy(check: _OrgFileChecker, p: Any, where: str, cat_names: set[str]) -> dict[str, Any]:
    """One `[[branches.departments.sla]]` table, checked, in the shape stored on the
    department (minutes of business time; names lower-cased)."""
    check.table(p, where, "branches.departments.sla", _SLA)
    cats = p.get("categories", [])
    if not all(isinstance(c, str) for c in cats):
        raise OrgFileError(f"{where}.categories: expected a list of category names")
    for c in cats:
        if c.split("/", 1)[0].strip().lower() not in cat_names:
            raise OrgFileError(f"{where}.categories: unknown category {c!r}")
    prios = p.get("priorities", [])
    known = {x.value for x in Priority}
    if not all(isinstance(x, str) and x.lower() in known for x in prios):
        raise OrgFileError(f"{where}.priorities: expected some of {', '.join(sorted(known))}")
    steps = []
    for si, st in enumerate(check.tables(p.get("escalation", []), f"{where}.escalation")):
        sw = f"{where}.escalation[{si}]"
        check.table(st, sw, "branches.departments.sla.escalation", _ESCALATION)
        notify = st["notify"].strip()
        if not _NOTIFY.match(notify):
            raise OrgFileError(
                f"{sw}.notify: expected owner, higher_authority, employee:<email> or"
                f" department:<address>, got {notify!r}"
            )
        steps.append(
            {
                "after_minutes": _duration_minutes(st.get("after", "0m"), f"{sw}.after"),
                "notify": notify.lower(),
            }
        )
    return {
        "name": p.get("name", ""),
        "categories": [c.strip().lower() for c in cats],
        "priorities": [x.lower() for x in prios],
        "first_response_minutes": _duration_minutes(p["first_response"], f"{where}.first_response"),
        "resolution_minutes": _duration_minutes(p["resolution"], f"{where}.resolution"),
        "escalation": steps,
    }


def _check_notify_targets(data: dict[str, Any], employees: set[str], addresses: set[str]) -> None:
    """An escalation step's named employee or department must be in the file."""
    for bi, b in enumerate(data["branches"]):
        for di, d in enumerate(b.get("departments", [])):
            for pi, p in enumerate(d["sla"]):
                for si, st in enumerate(p["escalation"]):
                    kind, _, who = st["notify"].partition(":")
                    known = employees if kind == "employee" else addresses
                    if who and who not in known:
                        raise OrgFileError(
                            f"branches[{bi}].departments[{di}].sla[{pi}].escalation[{si}].notify:"
                            f" no {kind} {who} in the file"
                        )


def _read_employees_csv(csv_path: Path) -> list[dict[str, Any]]:
    """The rows of an HR-export CSV as employee tables, each with its `_line` for messages."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise OrgFileError(f"organization.employees_csv: no such file {csv_path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise OrgFileError(f"{csv_path}: cannot read: {err}") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [])
    faults = []
    missing = [c for c in _EMPLOYEE.required if c not in columns]
    if missing:
        faults.append(f"missing columns {sorted(missing)}")
    unknown = [c for c in columns if c not in _EMPLOYEE.keys]
    if unknown:
        faults.append(f"unknown column(s) {', '.join(repr(c) for c in unknown)}")
    if faults:
        raise OrgFileError(
            f"{csv_path.name}: {'; '.join(faults)} (line 1); known: {', '.join(_EMPLOYEE.keys)}"
        )
    rows = []
    for row in reader:
        where = f"{csv_path.name} line {reader.line_num}"
        if None in row:
            raise OrgFileError(f"{where}: more fields than the {len(columns)} columns")
        rec: dict[str, Any] = {k: (v or "").strip() for k, v in row.items()}
        for key in _EMPLOYEE.required:
            if not rec[key]:
                raise OrgFileError(f"{where}: missing {key}")
        if "active" in rec:
            # A blank cell is the default (active), as for an inline employee without the key.
            rec["active"] = rec["active"].lower() not in ("false", "0", "no")
        rec["_line"] = where
        rows.append(rec)
    return rows


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
    """Check ``path`` whole, then create or update its organization in ``s``'s transaction."""
    return apply_org(s, load_org_file(path), mail_domain=mail_domain)


def apply_org(s: Session, data: dict[str, Any], *, mail_domain: str) -> ImportReport:
    """Create or update the organization of a checked file (:func:`load_org_file`); no change
    when nothing differs. A clash with another organization's rows raises OrgFileError: the
    caller's transaction must then be rolled back (``with s.begin()`` does)."""
    u = _Upsert(s)
    o = data["organization"]
    org = q.organization_named(s, o["name"])
    domains = [d.lower() for d in o["domains"]]
    slack = {"slack_team_id": o.get("slack_team_id"), "slack_app_id": o.get("slack_app_id")}
    if slack["slack_team_id"]:
        holder = q.organization_with_team(s, slack["slack_team_id"])
        if holder is not None and holder.name != o["name"]:
            raise OrgFileError(
                f"organization.slack_team_id: {slack['slack_team_id']} belongs to {holder.name}"
            )
    if org is None:
        org = u.new(m.Organization(name=o["name"], domains=domains, **slack))
    else:
        u.set(org, domains=domains, **slack)
    gw_domain = (mail_domain or domains[0]).lower()
    # Categories
    cat_ids: dict[str, int] = {}
    for c in data.get("categories", []):
        top = q.top_category_named(s, org.id, c["name"]) or u.new(
            m.Category(org_id=org.id, parent_id=None, name=c["name"])
        )
        cat_ids[c["name"].lower()] = top.id
        for sub in c.get("sub_categories", []):
            q.sub_category_named(s, top.id, sub) or u.new(
                m.Category(org_id=org.id, parent_id=top.id, name=sub)
            )
    # Branches, departments, roles
    roles: dict[tuple[str, str, str], m.Role] = {}
    deps: dict[tuple[str, str], m.Department] = {}
    for b in data["branches"]:
        br = q.branch_named(s, org.id, b["name"])
        hours = dict(b.get("working_hours") or {})
        holidays = [str(h) for h in b.get("holidays", [])]
        calendar = {
            "timezone": b["timezone"],
            "working_hours": hours,
            "holidays": holidays,
            "holiday_country": b.get("holiday_country"),
            "holiday_subdivision": b.get("holiday_subdivision"),
        }
        if br is None:
            br = u.new(m.Branch(org_id=org.id, name=b["name"], **calendar))
        else:
            u.set(br, **calendar)
        for d in b.get("departments", []):
            other = q.department_at(s, [d["address"]])
            dep = q.department_named(s, br.id, d["name"])
            if other is not None and (dep is None or other.id != dep.id):
                raise OrgFileError(
                    f"department {d['name']}: address {d['address']} is already used"
                )
            dc = d.get("default_category")
            fields = {
                "address": d["address"],
                "slack_channel": d.get("slack_channel"),
                "default_category_id": cat_ids.get(dc.lower()) if dc else None,
                "sla": d["sla"],
            }
            if dep is None:
                dep = u.new(m.Department(org_id=org.id, branch_id=br.id, name=d["name"], **fields))
            else:
                u.set(dep, **fields)
            deps[(b["name"], d["name"])] = dep
            for r in d["roles"]:
                role = q.role_named(s, dep.id, r["name"])
                if role is None:
                    role = u.new(m.Role(department_id=dep.id, name=r["name"], level=r["level"]))
                else:
                    u.set(role, level=r["level"])
                roles[(b["name"], d["name"], r["name"])] = role
    # Employees (their branch, department and role were checked against the file)
    for i, e in enumerate(data["employees"]):
        where = e.get("_line") or f"employees[{i}]"
        role = roles[(e["branch"], e["department"], e["role"])]
        dep = deps[(e["branch"], e["department"])]
        gw = e.get("gateway_address") or f"{e['email'].split('@')[0]}@{gw_domain}"
        emp = q.employee_with_email(s, e["email"])
        if emp is not None and emp.org_id != org.id:
            raise OrgFileError(f"{where}: {e['email']} belongs to another organization")
        clash = q.employee_reached_at(s, gw)
        if clash is not None and (emp is None or clash.id != emp.id):
            raise OrgFileError(
                f"{where}: gateway address {gw} is already used; give gateway_address"
            )
        if q.department_at(s, [gw, e["email"]]) is not None:
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
        q.bump_directory_version(s)
    return ImportReport(organization=org.name, created=u.created, updated=u.updated)
