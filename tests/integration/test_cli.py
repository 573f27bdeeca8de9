"""The `ticketgate` command line (SPEC §5) as an operator uses it, one process per command:
`init --demo`, raise, act, show and list with their JSON shapes, and the exit statuses."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.conftest import SECRET, Database, run_cli

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
