"""The `ticketgate` command line (SPEC §5) as an operator uses it, one process per command:
`init --demo`, raise, act, show and list with their JSON shapes, the exit statuses, and what
it says (creating nothing) before `init` or with a config file that is not there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import inspect

from store.db import make_engine
from store.migrate import alembic_config, schema_state
from tests.conftest import SECRET, Database, run_cli, write_demo_org

TICKET_KEYS = {
    "ref",
    "subject",
    "description",
    "category",
    "sub_category",
    "priority",
    "assignment_type",
    "from",
    "to",
    "copies",
    "status",
    "escalation_level",
    "history",
    "messages",
    "feedback",
    "created_at",
    "updated_at",
    "closed_at",
}
# One key beyond SPEC §5: the ticket a late reply follows up (SPEC §2.3), null otherwise.
EXTRA_KEYS = {"linked_ticket"}
FROM_KEYS = {"employee", "department", "branch", "organization", "channel", "device"}
TO_KEYS = {"department", "employee", "owner", "branch", "organization"}
HISTORY_KEYS = {"status", "actor", "at", "channel", "remark"}
MESSAGE_KEYS = {"id", "sender", "body", "hidden", "channel", "at", "message_id", "attachments"}


class Cli:
    """`ticketgate` against one installation folder."""

    def __init__(self, folder: Path, db: Database) -> None:
        self.folder = folder
        self.env = {
            "TICKETGATE_CONFIG": str(folder / "ticketgate.toml"),
            "TICKETGATE__DATABASE__URL": db.url,
            "TICKETGATE__MAIL__SECRET": SECRET,
        }

    def __call__(self, *args: str) -> Any:
        return run_cli(self.env, *args, cwd=self.folder)

    def many(self, *commands: tuple[str, ...]) -> list[Any]:
        """Independent commands as concurrent processes (reads, refusals, usage errors)."""
        with ThreadPoolExecutor(max_workers=len(commands)) as pool:
            return list(pool.map(lambda c: self(*c), commands))

    def ok(self, *args: str) -> str:
        r = self(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return str(r.stdout)


def assert_ticket_shape(t: dict[str, Any]) -> None:
    assert set(t) == TICKET_KEYS | EXTRA_KEYS
    assert set(t["from"]) == FROM_KEYS and set(t["to"]) == TO_KEYS
    assert set(t["copies"]) == {"rc", "rhc"}
    assert all(set(h) == HISTORY_KEYS for h in t["history"]) and t["history"]
    assert all(set(msg) == MESSAGE_KEYS for msg in t["messages"]) and t["messages"]
    assert t["feedback"] is None or set(t["feedback"]) == {"rating", "comment", "at"}


def test_cli_round_trip(database: Database, tmp_path: Path) -> None:
    """init --demo, raise, act and refuse, then show/list/org show in the shapes of SPEC §5."""
    cli = Cli(tmp_path / "install", database)
    cli.folder.mkdir()
    out = cli.ok("init", "--demo")
    assert "organization Acme Corporation:" in out and "database ready" in out
    assert {p.name for p in cli.folder.iterdir()} >= {
        "ticketgate.toml",
        "org.toml",
        "employees.csv",
    }

    raised = json.loads(
        cli.ok(
            "ticket",
            "raise",
            "--from",
            "frank@acme.example",
            "--to",
            "it@acme.example",
            "--subject",
            "Printer jams",
            "--body",
            "Third floor.",
            "--cc",
            "dieter@acme.example",
            "--bcc",
            "karl@acme.example",
            "--category",
            "Hardware/Printer",
            "--priority",
            "high",
            "--json",
        )
    )
    a = raised["ref"]
    b = cli.ok(
        "ticket",
        "raise",
        "--from",
        "grace@acme.example",
        "--to",
        "finance@acme.example",
        "--subject",
        "Heating",
    ).strip()
    assert a.startswith("TKT-") and b.startswith("TKT-") and int(b[4:]) > int(a[4:])
    assert (
        cli.ok("ticket", "act", a, "--as", "alice@acme.example", "take").strip()
        == f"{a} WORKING_ON_IT"
    )
    assert cli.ok(
        "ticket", "act", a, "--as", "karl@acme.example", "message", "Vendor", "knows"
    ).strip() == (f"{a} WORKING_ON_IT")

    refused, show, all_, working, finance, as_rc, org = cli.many(
        ("ticket", "act", a, "--as", "frank@acme.example", "deliver"),
        ("ticket", "show", a, "--json"),
        ("ticket", "list", "--json"),
        ("ticket", "list", "--status", "working_on_it", "--json"),
        ("ticket", "list", "--department", "Finance", "--json"),
        ("ticket", "list", "--as", "dieter@acme.example", "--json"),
        ("org", "show", "--json"),
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == "ticketgate: deliver: only the assignee may do this\n"

    assert show.returncode == 0, show.stderr
    t = json.loads(show.stdout)
    assert_ticket_shape(t)
    assert t == {
        **t,
        "ref": a,
        "subject": "Printer jams",
        "description": "Third floor.",
        "category": "Hardware",
        "sub_category": "Printer",
        "priority": "high",
        "assignment_type": "DEPARTMENT",
        "status": "WORKING_ON_IT",
        "escalation_level": 0,
        "feedback": None,
        "closed_at": None,
    }
    assert t["from"] == {
        "employee": "frank@acme.example",
        "department": "hr@acme.example",
        "branch": "New York",
        "organization": "Acme Corporation",
        "channel": "cli",
        "device": None,
    }
    assert t["to"] == {
        "department": "it@acme.example",
        "employee": None,
        "owner": "alice@acme.example",
        "branch": "Berlin",
        "organization": "Acme Corporation",
    }
    assert t["copies"] == {"rc": ["dieter@acme.example"], "rhc": ["karl@acme.example"]}
    assert [(h["status"], h["actor"], h["channel"]) for h in t["history"]] == [
        ("RAISED", "frank@acme.example", "cli"),
        ("WORKING_ON_IT", "alice@acme.example", "cli"),
    ]
    assert [(msg["sender"], msg["body"], msg["hidden"]) for msg in t["messages"]] == [
        ("frank@acme.example", "Third floor.", False),
        ("karl@acme.example", "Vendor knows", True),
    ]
    assert t["created_at"] <= t["updated_at"]

    lists = [json.loads(r.stdout) for r in (all_, working, finance, as_rc)]
    for tickets in lists:
        for ticket in tickets:
            assert_ticket_shape(ticket)
    assert [x["ref"] for x in lists[0]] == [a, b]  # oldest first
    assert [x["ref"] for x in lists[1]] == [a]
    assert [x["ref"] for x in lists[2]] == [b]
    # An RC sees only their ticket, without the hidden copy or the hidden message (SPEC §1.4).
    assert [x["ref"] for x in lists[3]] == [a]
    assert lists[3][0]["copies"] == {"rc": ["dieter@acme.example"], "rhc": []}
    assert [msg["sender"] for msg in lists[3][0]["messages"]] == ["frank@acme.example"]

    o = json.loads(org.stdout)
    assert set(o) == {"organization", "branches", "employees", "categories"}
    assert o["organization"] == {"name": "Acme Corporation", "domains": ["acme.example"]}
    assert [b["name"] for b in o["branches"]] == ["Berlin", "New York"]
    for br in o["branches"]:
        assert set(br) == {"name", "timezone", "departments"}
        for d in br["departments"]:
            assert set(d) == {"name", "address", "slack_channel", "default_category", "roles"}
            assert all(set(r) == {"name", "level"} for r in d["roles"])
    it = o["branches"][0]["departments"][0]
    assert it == {
        "name": "IT",
        "address": "it@acme.example",
        "slack_channel": "C0ITSUPPORT",
        "default_category": "Hardware",
        "roles": [{"name": "Technician", "level": 1}, {"name": "IT Manager", "level": 2}],
    }
    assert all(
        set(e)
        == {
            "email",
            "gateway_address",
            "name",
            "branch",
            "department",
            "role",
            "level",
            "slack_user_id",
            "active",
        }
        for e in o["employees"]
    )
    assert o["employees"][0] == {
        "email": "alice@acme.example",
        "gateway_address": "alice@tickets.acme.example",
        "name": "Alice Adams",
        "branch": "Berlin",
        "department": "IT",
        "role": "Technician",
        "level": 1,
        "slack_user_id": "U0ALICE",
        "active": True,
    }
    assert len(o["employees"]) == 16
    assert {
        "name": "Hardware",
        "sub_categories": ["Mouse", "Keyboard", "Laptop", "Monitor", "Printer"],
    } in o["categories"]

    # init again is harmless: nothing created or updated, the ticket untouched.
    again = cli.ok("init", "--demo")
    assert "0 created, 0 updated" in again
    assert json.loads(cli.ok("ticket", "show", a, "--json")) == t


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    """Unknown actions, missing arguments and unknown options exit 2 with a message on stderr."""
    cli = Cli(tmp_path, Database("sqlite", f"sqlite:///{tmp_path}/tg.db"))  # usage fails first
    results = cli.many(
        ("ticket", "act", "TKT-1", "--as", "alice@acme.example", "dance"),
        ("ticket", "act", "TKT-1", "--as", "alice@acme.example"),  # no action
        ("ticket", "act", "TKT-1", "take"),  # no --as
        ("ticket", "act", "TKT-1", "--as", "alice@acme.example", "assign"),  # no one to assign
        ("ticket", "act", "TKT-1", "--as", "alice@acme.example", "reply"),  # no text
        (
            "ticket",
            "raise",
            "--from",
            "frank@acme.example",
            "--to",
            "it@acme.example",
        ),  # no subject
        ("ticket", "list", "--colour"),
    )
    for r in results:
        assert r.returncode == 2, (r.args, r.stdout, r.stderr)
        assert r.stderr and r.stdout == ""
    assert "unknown action 'dance'" in results[0].stderr
    assert "--subject" in results[5].stderr


def _bare(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`ticketgate` in ``folder`` with no TICKETGATE_CONFIG or TICKETGATE__… variables but
    ``env``: what an operator gets in a fresh folder."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**clean, **env},
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_commands_before_init_say_so_and_create_nothing(tmp_path: Path) -> None:
    """Before `init`, commands that need the database exit 2 with one sentence naming it and
    create no file or folder (no SQL shown); then `init` creates it and they work."""
    folder = tmp_path / "fresh"
    folder.mkdir()
    org = write_demo_org(tmp_path / "org")
    commands = [
        ("ticket", "list"),
        ("org", "show", "--json"),
        ("org", "import", str(org)),
        ("outbox", "list"),
        ("ticket", "act", "TKT-1", "--as", "alice@acme.example", "take"),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: _bare(folder, *c), commands))
        in_sub = _bare(folder, "ticket", "list", TICKETGATE__DATABASE__URL="sqlite:///var/tg.db")
    said = (
        f"ticketgate: the database is not initialised (sqlite:///{folder}/ticketgate.db does "
        "not exist): run `ticketgate init`\n"
    )
    for c, r in zip(commands, results, strict=True):
        assert (r.returncode, r.stdout, r.stderr) == (2, "", said), c
    assert in_sub.returncode == 2 and "var/tg.db does not exist" in in_sub.stderr
    assert "SELECT" not in in_sub.stderr
    assert _files(folder) == []  # no database file, no var/ folder

    init = _bare(folder, "init")
    assert init.returncode == 0, init.stderr
    assert (folder / "ticketgate.db").exists()
    listed = _bare(folder, "ticket", "list")
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "", "")


def test_database_without_schema_or_behind_the_migrations(
    database: Database, tmp_path: Path
) -> None:
    """A database that exists but has no schema (an empty SQLite file, an empty PostgreSQL
    schema) or an older revision: exit 2 saying to run `init`, and nothing is written to it."""
    cli = Cli(tmp_path, database)
    if database.backend == "sqlite":
        (tmp_path / "tg.db").touch()
    r = cli("ticket", "list")
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.startswith("ticketgate: the database is not initialised (")
    assert r.stderr.endswith(" has no schema): run `ticketgate init`\n")
    engine = make_engine(database.url)
    try:
        with engine.connect() as conn:
            assert inspect(conn).get_table_names() == []
        cli.ok("init")
        head = schema_state(engine).head
        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "-1")
        older = schema_state(engine).current
        assert older is not None and older != head
    finally:
        engine.dispose()
    r = cli("ticket", "list")
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.endswith(
        f" is at revision {older}, this ticketgate needs {head}: "
        "run `ticketgate init` to migrate it\n"
    )
    cli.ok("init")
    assert cli.ok("ticket", "list") == ""


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    """`--config FILE` naming no file is an error (exit 2, nothing created) for every command
    but `init --demo`, which writes it; without --config a missing ./ticketgate.toml means
    the defaults."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        listed, init = pool.map(
            lambda c: _bare(tmp_path, "--config", "nope.toml", *c), (("ticket", "list"), ("init",))
        )
    for r in (listed, init):
        assert (r.returncode, r.stdout) == (2, "")
        assert r.stderr == "ticketgate: config file nope.toml does not exist\n"
    assert _files(tmp_path) == []
    demo = _bare(tmp_path, "--config", "demo/ticketgate.toml", "init", "--demo")
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "demo" / "ticketgate.toml").is_file()
    shown = _bare(tmp_path, "--config", "demo/ticketgate.toml", "org", "show")
    assert shown.returncode == 0 and shown.stdout.startswith("Acme Corporation"), shown.stderr
