"""`org import` (SPEC §1.1): idempotent, CSV the same as inline, invalid files (unknown keys at
any level, missing keys, bad values) named with their TOML path and harmless, clashes rolled back
whole, deactivation keeps history but ends raising and acting."""

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
from tests.conftest import FIXTURES, Database, make_env, run_cli

GLOBEX = FIXTURES / "orgs" / "globex.toml"


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


def _directory_version(env: Any) -> int:
    with env.app.sessions() as s:
        return int(s.scalar(select(m.DirectoryVersion.version)) or 0)


def _line(text: str, snippet: str) -> int:
    """The 1-based number of the only line of ``text`` that contains ``snippet``."""
    found = [n for n, line in enumerate(text.splitlines(), 1) if snippet in line]
    assert len(found) == 1, (snippet, found)
    return found[0]


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
    before, org_before, version = _rows(env), _org_json(env), _directory_version(env)
    env.clock.advance(days=1)
    rep = _import(env, _write(tmp_path / "again"))
    assert (rep.created, rep.updated) == (0, 0)
    assert _rows(env) == before
    assert _org_json(env) == org_before
    assert _directory_version(env) == version  # writers keep their cached directory
    rep = _import(env, _write(tmp_path / "changed", _sub(DEMO_ORG_TOML, "C0ITSUPPORT", "C0IT")))
    assert (rep.created, rep.updated) == (0, 1)
    assert _directory_version(env) == version + 1


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


def _any_line(text: str) -> str:
    return re.sub(r"org\.toml line \d+", "org.toml line N", text)


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
    "unknown role, after a new department": (
        lambda t, c: (
            _sub(t, "# --- New York", NEW_DEPARTMENT + "\n# --- New York"),
            _sub(c, "Finance,Accountant", "Finance,Bookkeeper"),
        ),
        "employees.csv line 2: no role 'Bookkeeper' in 'Finance'",
    ),
    # Unknown keys, one at each level of the file: never imported as "not given".
    "unknown top-level key": (
        lambda t, c: (_sub(t, "[organization]", 'organisation_name = "Acme"\n\n[organization]'), c),
        (
            "organisation_name: unknown key 'organisation_name' (org.toml line 4); known: "
            "organization, categories, branches, employees, employees_csv"
        ),
    ),
    "unknown organization key": (
        lambda t, c: (_sub(t, 'domains = ["acme.example"]', 'domain = ["acme.example"]'), c),
        "organization.domain: unknown key 'domain' (org.toml line 6)",
    ),
    "unknown category key": (
        lambda t, c: (
            _sub(t, 'sub_categories = ["Installation', 'subcategories = ["Installation'),
            c,
        ),
        "categories[1].subcategories: unknown key 'subcategories' (org.toml line 21)",
    ),
    "unknown branch key (timzone)": (
        lambda t, c: (_sub(t, 'timezone = "America/New_York"', 'timzone = "America/New_York"'), c),
        "branches[1].timzone: unknown key 'timzone' (org.toml line 101); known: name, timezone,",
    ),
    "unknown branch sub-table": (
        lambda t, c: (
            _sub(
                t,
                "[branches.working_hours]",
                "[branches.sla]\nhours = 8\n\n[branches.working_hours]",
            ),
            c,
        ),
        "branches[0].sla: unknown key 'sla' (org.toml line 49)",
    ),
    "unknown department key (slak_channel)": (
        lambda t, c: (
            _sub(t, 'slack_channel = "C0FACILITIES"', 'slak_channel = "C0FACILITIES"'),
            c,
        ),
        "branches[0].departments[1].slak_channel: unknown key 'slak_channel' (org.toml line 73)",
    ),
    "unknown role key": (
        lambda t, c: (
            _sub(t, 'name = "Sales Director"\nlevel = 2', 'name = "Sales Director"\nlvl = 2'),
            c,
        ),
        "branches[1].departments[2].roles[1].lvl: unknown key 'lvl' (org.toml line 151)",
    ),
    "unknown employee key": (
        lambda t, c: (_sub(t, 'slack_user_id = "U0KARL"', 'slack_user = "U0KARL"'), c),
        "employees[6].slack_user: unknown key 'slack_user' (org.toml line 207)",
    ),
    "unknown csv column": (
        lambda t, c: (
            t,
            _sub(c, "email,name,branch,department,role", "email,name,branch,department,role,team"),
        ),
        "employees.csv: unknown column(s) 'team'",
    ),
    "csv row longer than its header": (
        lambda t, c: (
            t,
            _sub(
                c,
                "Nora Davis,New York,Sales,Account Executive",
                "Nora Davis,New York,Sales,Account Executive,x",
            ),
        ),
        "employees.csv line 5: more fields than the 5 columns",
    ),
    "missing department address": (
        lambda t, c: (_sub(t, 'address = "sales@acme.example"\n', ""), c),
        "branches[1].departments[2]: missing key 'address'",
    ),
    "level not an integer": (
        lambda t, c: (
            _sub(t, 'name = "IT Manager"\nlevel = 2', 'name = "IT Manager"\nlevel = "2"'),
            c,
        ),
        "branches[0].departments[0].roles[1].level: expected an integer, got a string ('2')",
    ),
    "department twice": (
        lambda t, c: (
            _sub(t, 'address = "sales@acme.example"', 'address = "finance@acme.example"'),
            c,
        ),
        "branches[1].departments[2].address: finance@acme.example is given twice",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_file_is_named_and_changes_nothing(env: Any, tmp_path: Path, case: str) -> None:
    """An invalid org file raises OrgFileError naming the key (with the line it is on) or the
    CSV line, and nothing is stored."""
    mutate, message = INVALID[case]
    toml, csv = mutate(DEMO_ORG_TOML, DEMO_EMPLOYEES_CSV)
    path = _write(tmp_path / "bad", toml, csv)
    before, org_before = _rows(env), _org_json(env)
    with pytest.raises(OrgFileError) as exc:
        _import(env, path)
    # The line is checked below against the file itself (the demo org grows).
    assert _any_line(message) in _any_line(exc.value.reason)
    named = re.search(r"unknown key '(\w+)' \(org\.toml line (\d+)\)", exc.value.reason)
    if named:
        assert named[1] in toml.splitlines()[int(named[2]) - 1]
    assert _rows(env) == before
    assert _org_json(env) == org_before


def test_cli_org_import(env: Any, tmp_path: Path) -> None:
    """`ticketgate org import`: a good file exits 0 reporting no change, a bad one exits 2 (bad
    input) with the reason on stderr, and `org show --json` is the same before and after both."""
    good = _write(tmp_path / "good")
    bad = _write(tmp_path / "bad", _sub(DEMO_ORG_TOML, "America/New_York", "Mars/Olympus"))
    shown = run_cli(env.env, "org", "show", "--json", cwd=env.dir)
    with ThreadPoolExecutor(max_workers=2) as pool:
        ok, fail = pool.map(
            lambda p: run_cli(env.env, "org", "import", str(p), cwd=env.dir), (good, bad)
        )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "organization Acme Corporation: 0 created, 0 updated"
    assert fail.returncode == 2 and fail.stdout == ""
    assert fail.stderr.strip() == (
        "ticketgate: branches[1].timezone: unknown time zone 'Mars/Olympus'"
    )
    assert json.loads(shown.stdout) == _org_json(env)


def test_cli_misspelt_keys_exit_2_and_change_nothing(env: Any, tmp_path: Path) -> None:
    """`org import` of files with a misspelt key (a department's `slak_channel`, a branch's
    `timzone`, an employee's `activ`) or a missing one exits 2 with one line naming the key by
    its TOML path and line, and `org show --json` and every table are as they were."""
    changes = {
        "slak": (
            "slack_channel",
            "slak_channel",
            (
                "branches[0].departments[0].slak_channel: unknown key 'slak_channel' "
                "(org.toml line {line}); known: name, address, slack_channel, default_category, roles, sla"
            ),
        ),
        "timzone": (
            'timezone = "America/New_York"',
            'timzone = "America/New_York"',
            (
                "branches[1].timzone: unknown key 'timzone' (org.toml line {line}); "
                "known: name, timezone, working_hours, holidays, holiday_country, holiday_subdivision, departments"
            ),
        ),
        "activ": (
            'role = "HR Director"',
            'role = "HR Director"\nactiv = false',
            (
                "employees[10].activ: unknown key 'activ' (org.toml line {line}); known: email, "
                "name, branch, department, role, gateway_address, slack_user_id, active"
            ),
        ),
        "missing": ('name = "Finance Controller"\n', "", None),
    }
    files = {}
    for case, (old, new, _) in changes.items():
        text = _sub(DEMO_ORG_TOML, old, new)
        # Each file also changes something valid: a half-applied import would show.
        text = _sub(text, 'domains = ["acme.example"]', 'domains = ["acme.example", "acme.test"]')
        files[case] = (text, _write(tmp_path / case, text))
    before, shown = _rows(env), run_cli(env.env, "org", "show", "--json", cwd=env.dir)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(
            zip(
                files,
                pool.map(
                    lambda f: run_cli(env.env, "org", "import", str(f[1]), cwd=env.dir),
                    files.values(),
                ),
                strict=True,
            )
        )
    for case, (_, new, message) in changes.items():
        r = results[case]
        assert (r.returncode, r.stdout) == (2, ""), (case, r.stderr)
        if message is None:
            assert (
                r.stderr == "ticketgate: branches[1].departments[1].roles[1]: missing key 'name'\n"
            )
            continue
        line = _line(files[case][0], new.splitlines()[-1].split(" = ")[0] + " =")
        assert r.stderr == f"ticketgate: {message.format(line=line)}\n"
    assert _rows(env) == before
    assert json.loads(shown.stdout) == _org_json(env)


def test_a_clash_found_while_writing_rolls_back_the_whole_import(env: Any, tmp_path: Path) -> None:
    """A file that is valid by itself but names another organization's employee is refused
    (exit 1) after its new department and roles were written: the transaction takes all back."""
    env.import_org(GLOBEX)
    text = _sub(DEMO_ORG_TOML, "# --- New York", NEW_DEPARTMENT + "\n# --- New York")
    text += (
        '\n[[employees]]\nemail = "hank@globex.example"\nname = "Hank"\n'
        'branch = "Berlin"\ndepartment = "Legal"\nrole = "Counsel"\n'
    )
    before, org_before = _rows(env), _org_json(env)
    r = run_cli(env.env, "org", "import", str(_write(tmp_path / "clash", text)), cwd=env.dir)
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert r.stderr == (
        "ticketgate: employees[11]: hank@globex.example belongs to another organization\n"
    )
    assert _rows(env) == before
    assert _org_json(env) == org_before


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
