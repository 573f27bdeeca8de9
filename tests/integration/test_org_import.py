"""`org import` (SPEC §1.1): idempotent, CSV the same as inline, invalid files named and
harmless, deactivation keeps history but ends raising and acting."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.demo import DEMO_EMPLOYEES_CSV, DEMO_ORG_TOML
from gateway.service.commands import Act, RaiseTicket
from gateway.service.errors import ActionRefused, OrgFileError
from gateway.service.org_import import import_org
from gateway.service.views import Views
from store import models as m
from tests.conftest import Database, make_env, run_cli


def _rows(env: Any) -> dict[str, Any]:
    """Row count of every table, and the ticket and history rows themselves."""
    with env.app.sessions() as s:
        counts = {
            t.name: int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in m.Base.metadata.sorted_tables
        }
        tickets = [tuple(r) for r in s.execute(select(m.Ticket.__table__).order_by(m.Ticket.id))]
        history = [
            tuple(r)
            for r in s.execute(select(m.StatusHistory.__table__).order_by(m.StatusHistory.id))
        ]
    return {"counts": counts, "tickets": tickets, "history": history}


def _org_json(env: Any, name: str = "Acme Corporation") -> dict[str, Any]:
    with env.app.sessions() as s:
        org = s.scalars(select(m.Organization).where(m.Organization.name == name)).one()
        return Views(s).org(org)


def _write(folder: Path, toml: str = DEMO_ORG_TOML, csv: str = DEMO_EMPLOYEES_CSV) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "employees.csv").write_text(csv, encoding="utf-8")
    (folder / "org.toml").write_text(toml, encoding="utf-8")
    return folder / "org.toml"


def _import(env: Any, path: Path) -> Any:
    with env.app.sessions() as s, s.begin():
        return import_org(s, path, mail_domain=env.app.settings.mail.domain)


def test_second_import_changes_nothing(env: Any, tmp_path: Path) -> None:
    """Re-importing the same files reports no change and leaves every table, every ticket and
    history row, and `org show --json` exactly as they were."""
    svc = env.service
    ref = svc.raise_ticket(
        RaiseTicket(
            requester="frank@acme.example",
            to="it@acme.example",
            subject="Printer",
            cc=("dieter@acme.example",),
        )
    )
    svc.act(Act(ref=ref, actor="alice@acme.example", action="take"))
    before, org_before = _rows(env), _org_json(env)
    env.clock.advance(days=1)
    rep = _import(env, _write(tmp_path / "again"))
    assert (rep.created, rep.updated) == (0, 0)
    assert _rows(env) == before
    assert _org_json(env) == org_before


def _inline(toml: str, csv: str) -> str:
    """The same org with the CSV's employees written as [[employees]] tables."""
    lines = csv.strip().splitlines()
    header = lines[0].split(",")
    out = [re.sub(r"(?m)^employees_csv = .*\n", "", toml)]
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=True))
        out.append("\n[[employees]]\n" + "".join(f'{k} = "{v}"\n' for k, v in row.items()))
    return "".join(out)


def test_csv_imports_the_same_as_inline(env: Any, tmp_path: Path) -> None:
    """The demo org with employees from its CSV shows exactly as the same org written inline."""
    inline = make_env(Database("sqlite", f"sqlite:///{tmp_path}/inline.db"), tmp_path / "inline")
    try:
        toml = _inline(DEMO_ORG_TOML, DEMO_EMPLOYEES_CSV)
        assert "employees_csv" not in toml and "henry@acme.example" in toml
        rep = _import(inline, _write(tmp_path / "inline-files", toml, csv=""))
        assert rep.created > 0
        view = _org_json(inline)
        assert view == _org_json(env)
        assert {e["email"] for e in view["employees"]} >= {
            "henry@acme.example",
            "paula@acme.example",
        }
    finally:
        inline.app.close()


def _sub(text: str, old: str, new: str, count: int = 1) -> str:
    assert old in text, old
    return text.replace(old, new, count)


NEW_DEPARTMENT = """
[[branches.departments]]
name = "Legal"
address = "legal@acme.example"

[[branches.departments.roles]]
name = "Counsel"
level = 1
"""

INVALID = {
    "missing key": (
        lambda t, c: (_sub(t, 'timezone = "Europe/Berlin"\n', ""), c),
        "branches[0]: missing key 'timezone'",
    ),
    "bad time zone": (
        lambda t, c: (_sub(t, "Europe/Berlin", "Europe/Atlantis"), c),
        "branches[0].timezone: unknown time zone 'Europe/Atlantis'",
    ),
    "unknown department (inline)": (
        lambda t, c: (
            _sub(
                t,
                'department = "Engineering"\nrole = "Developer"\nslack_user_id',
                'department = "Engineerin"\nrole = "Developer"\nslack_user_id',
            ),
            c,
        ),
        "employees[6]: no department 'Engineerin' in branch 'Berlin'",
    ),
    "unknown department (csv)": (
        lambda t, c: (t, _sub(c, "New York,Sales,Sales", "New York,Sale,Sales")),
        "employees.csv line 6: no department 'Sale' in branch 'New York'",
    ),
    "duplicate email": (
        lambda t, c: (t, c + "alice@acme.example,Alice Again,Berlin,IT,Technician\n"),
        "employees.csv line 7: duplicate employee alice@acme.example",
    ),
    "unknown default_category": (
        lambda t, c: (_sub(t, 'default_category = "Hardware"', 'default_category = "Hardwear"'), c),
        "branches[0].departments[0].default_category: unknown category 'Hardwear'",
    ),
    "bad csv column": (
        lambda t, c: (t, _sub(c, "email,name,", "e-mail,name,")),
        "employees.csv: missing columns ['email']",
    ),
    "unknown role, after a new department": (  # found only while writing: rolled back
        lambda t, c: (
            _sub(t, "# --- New York", NEW_DEPARTMENT + "\n# --- New York"),
            _sub(c, "Finance,Accountant", "Finance,Bookkeeper"),
        ),
        "employees.csv line 2: no role 'Bookkeeper' in 'Finance'",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_file_is_named_and_changes_nothing(env: Any, tmp_path: Path, case: str) -> None:
    """An invalid org file raises OrgFileError naming the key or line, and nothing is stored."""
    mutate, message = INVALID[case]
    toml, csv = mutate(DEMO_ORG_TOML, DEMO_EMPLOYEES_CSV)
    path = _write(tmp_path / "bad", toml, csv)
    before, org_before = _rows(env), _org_json(env)
    with pytest.raises(OrgFileError) as exc:
        _import(env, path)
    assert message in exc.value.reason
    assert _rows(env) == before
    assert _org_json(env) == org_before


def test_cli_org_import(env: Any, tmp_path: Path) -> None:
    """`ticketgate org import`: a good file exits 0 reporting no change, a bad one exits 1 with
    the reason on stderr, and `org show --json` is the same before and after both."""
    good = _write(tmp_path / "good")
    bad = _write(tmp_path / "bad", _sub(DEMO_ORG_TOML, "America/New_York", "Mars/Olympus"))
    shown = run_cli(env.env, "org", "show", "--json", cwd=env.dir)
    with ThreadPoolExecutor(max_workers=2) as pool:
        ok, fail = pool.map(
            lambda p: run_cli(env.env, "org", "import", str(p), cwd=env.dir), (good, bad)
        )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "organization Acme Corporation: 0 created, 0 updated"
    assert fail.returncode == 1 and fail.stdout == ""
    assert fail.stderr.strip() == (
        "ticketgate: branches[1].timezone: unknown time zone 'Mars/Olympus'"
    )
    assert json.loads(shown.stdout) == _org_json(env)


def test_deactivated_employee_keeps_history_but_cannot_raise_or_act(
    env: Any, tmp_path: Path
) -> None:
    """Re-imported with active = false (inline or a CSV `active` column), an employee's history
    stays, but they can no longer raise, act or post; a blank `active` cell means active."""
    svc = env.service
    ref = svc.raise_ticket(
        RaiseTicket(requester="frank@acme.example", to="it@acme.example", subject="Disk")
    )
    svc.act(Act(ref=ref, actor="alice@acme.example", action="take"))
    fin = svc.raise_ticket(
        RaiseTicket(requester="irene@acme.example", to="it@acme.example", subject="VPN")
    )
    toml = _sub(
        DEMO_ORG_TOML, 'slack_user_id = "U0ALICE"\n', 'slack_user_id = "U0ALICE"\nactive = false\n'
    )
    csv = "email,name,branch,department,role,active\n" + "".join(
        line + (",false\n" if line.startswith("irene@") else ",\n")
        for line in DEMO_EMPLOYEES_CSV.strip().splitlines()[1:]
    )
    rep = _import(env, _write(tmp_path / "deactivate", toml, csv))
    assert (rep.created, rep.updated) == (0, 2)
    active = {e["email"]: e["active"] for e in _org_json(env)["employees"]}
    assert not active["alice@acme.example"] and not active["irene@acme.example"]
    assert active["henry@acme.example"] and active["bob@acme.example"]
    with env.app.sessions() as s:
        v = Views(s).ticket(s.get(m.Ticket, int(ref[4:])))  # type: ignore[arg-type]
    assert [(h["status"], h["actor"]) for h in v["history"]] == [
        ("RAISED", "frank@acme.example"),
        ("WORKING_ON_IT", "alice@acme.example"),
    ]
    assert v["to"]["owner"] == "alice@acme.example"
    before = _rows(env)
    for action in ("deliver", "release", "reply"):
        with pytest.raises(ActionRefused, match="deactivated"):
            svc.act(Act(ref=ref, actor="alice@acme.example", action=action, body="done"))
    with pytest.raises(ActionRefused, match="deactivated"):
        svc.raise_ticket(
            RaiseTicket(requester="alice@acme.example", to="hr@acme.example", subject="x")
        )
    with pytest.raises(ActionRefused, match="deactivated"):
        svc.act(Act(ref=fin, actor="irene@acme.example", action="cancel"))
    assert _rows(env) == before
    svc.act(Act(ref=ref, actor="bob@acme.example", action="deliver"))  # the others carry on
