"""Two organizations in one installation (SPEC §1.1): nothing crosses between them, neither
through the service nor through the command line."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.service.commands import Act, RaiseTicket
from gateway.service.errors import NotFound, UserFacingError
from store import models as m
from tests.conftest import FIXTURES, run_cli

GLOBEX = FIXTURES / "orgs" / "globex.toml"
ACME_REQ, ACME_IT = "frank@acme.example", "it@acme.example"
GLOBEX_REQ, GLOBEX_IT = "homer@globex.example", "it@globex.example"


@pytest.fixture
def two_orgs(env: Any) -> Any:
    """The demo org (Acme) and Globex side by side, one open ticket in each."""
    env.import_org(GLOBEX)
    svc = env.service
    env.acme_ref = svc.raise_ticket(
        RaiseTicket(requester=ACME_REQ, to=ACME_IT, subject="Acme printer")
    )
    env.globex_ref = svc.raise_ticket(
        RaiseTicket(requester=GLOBEX_REQ, to=GLOBEX_IT, subject="Globex laptop")
    )
    return env


def _counts(env: Any) -> tuple[int, int, int, int]:
    with env.app.sessions() as s:
        return tuple(  # type: ignore[return-value]
            int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in (m.Ticket, m.StatusHistory, m.TicketCopy, m.Message)
        )


def test_globex_imports_beside_acme(two_orgs: Any) -> None:
    """The second file adds an organization with its own branches, departments and people."""
    with two_orgs.app.sessions() as s:
        orgs = {o.name: o for o in s.scalars(select(m.Organization))}
        assert set(orgs) == {"Acme Corporation", "Globex"}
        g = orgs["Globex"].id
        assert s.scalar(select(func.count()).select_from(m.Branch).where(m.Branch.org_id == g)) == 2
        assert (
            s.scalar(select(func.count()).select_from(m.Department).where(m.Department.org_id == g))
            == 2
        )
        t = s.get(m.Ticket, int(two_orgs.globex_ref[4:]))
        assert t is not None and t.org_id == g


CROSS_RAISES = [
    (ACME_REQ, GLOBEX_IT, (), ()),  # a department of the other org
    (ACME_REQ, "alice@globex.example", (), ()),  # a person of the other org
    (ACME_REQ, "alice.globex@tickets.acme.example", (), ()),  # …by their gateway address
    (ACME_REQ, ACME_IT, ("homer@globex.example",), ()),  # copied from the other org
    (ACME_REQ, ACME_IT, (), ("hank@globex.example",)),  # hidden copy from the other org
    (ACME_REQ, ACME_IT, ("hr@globex.example",), ()),  # a department copy of the other org
    (GLOBEX_REQ, ACME_IT, (), ()),
    (GLOBEX_REQ, GLOBEX_IT, ("frank@acme.example",), ()),
]


def test_cannot_raise_or_copy_across(two_orgs: Any) -> None:
    """Raising to, or copying, someone of the other organization is refused and stores nothing."""
    before = _counts(two_orgs)
    for requester, to, cc, bcc in CROSS_RAISES:
        with pytest.raises(NotFound) as exc:
            two_orgs.service.raise_ticket(
                RaiseTicket(requester=requester, to=to, subject="Across", cc=cc, bcc=bcc)
            )
        assert "here" in exc.value.reason, (requester, to, cc, bcc)
    assert _counts(two_orgs) == before


def test_cannot_act_across(two_orgs: Any) -> None:
    """Globex employees acting on an Acme ticket are told it does not exist; nothing changes."""
    before = _counts(two_orgs)
    for actor, action in [
        ("alice@globex.example", "take"),
        ("hank@globex.example", "escalate"),
        ("homer@globex.example", "close"),
        ("alice@globex.example", "message"),
        ("hank@globex.example", "cc"),
    ]:
        with pytest.raises(NotFound, match="no ticket"):
            two_orgs.service.act(
                Act(ref=two_orgs.acme_ref, actor=actor, action=action, args=(actor,), body="hi")
            )
    assert _counts(two_orgs) == before


def test_cannot_add_the_other_org_to_a_ticket(two_orgs: Any) -> None:
    """Adding a copy, hidden copy or assignee from the other organization is refused."""
    svc = two_orgs.service
    svc.act(Act(ref=two_orgs.acme_ref, actor="alice@acme.example", action="take"))
    before = _counts(two_orgs)
    for action in ("cc", "bcc", "assign"):
        for who in (
            "homer@globex.example",
            "it@globex.example",
            "alice.globex@tickets.acme.example",
        ):
            with pytest.raises(UserFacingError, match="here"):
                svc.act(
                    Act(
                        ref=two_orgs.acme_ref,
                        actor="alice@acme.example",
                        action=action,
                        args=(who,),
                    )
                )
    assert _counts(two_orgs) == before


# ---- through the command line ----------------------------------------------------------------


def _cli_many(env: Any, *commands: tuple[str, ...]) -> list[Any]:
    """Run independent `ticketgate` commands as concurrent processes (they only read or refuse)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda c: run_cli(env.env, *c, cwd=env.dir), commands))


def test_cli_keeps_organizations_apart(two_orgs: Any) -> None:
    """Through `ticketgate`: cross-org raise, act, cc and show exit 1 with a reason; `ticket list
    --as` shows each person only their organization's tickets (and `show --as` their own)."""
    acme, globex = two_orgs.acme_ref, two_orgs.globex_ref
    before = _counts(two_orgs)
    raise_x, act_x, cc_x, show_x, list_acme, list_globex, show_own = _cli_many(
        two_orgs,
        ("ticket", "raise", "--from", ACME_REQ, "--to", GLOBEX_IT, "--subject", "Across"),
        ("ticket", "act", acme, "--as", "alice@globex.example", "take"),
        (
            "ticket",
            "raise",
            "--from",
            GLOBEX_REQ,
            "--to",
            GLOBEX_IT,
            "--subject",
            "x",
            "--cc",
            "frank@acme.example",
        ),
        ("ticket", "show", acme, "--as", "homer@globex.example", "--json"),
        ("ticket", "list", "--as", ACME_REQ, "--json"),
        ("ticket", "list", "--as", "alice@globex.example", "--json"),
        ("ticket", "show", globex, "--as", "hank@globex.example", "--json"),
    )
    for r in (raise_x, act_x, cc_x, show_x):
        assert r.returncode == 1, (r.args, r.stdout, r.stderr)
        assert r.stderr.startswith("ticketgate: ") and r.stdout == ""
    assert GLOBEX_IT in raise_x.stderr and "here" in raise_x.stderr
    assert f"no ticket {acme}" in act_x.stderr
    assert "frank@acme.example" in cc_x.stderr
    assert f"no ticket {acme} for homer@globex.example" in show_x.stderr
    assert _counts(two_orgs) == before
    for r in (list_acme, list_globex, show_own):
        assert r.returncode == 0, (r.args, r.stderr)
    assert [t["ref"] for t in json.loads(list_acme.stdout)] == [acme]
    assert [t["ref"] for t in json.loads(list_globex.stdout)] == [globex]
    assert json.loads(show_own.stdout)["to"]["organization"] == "Globex"
