"""Two gateway processes racing to take one ticket: the database lets exactly one win."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.service.commands import RaiseTicket
from gateway.service.tickets import parse_ref
from gateway.service.views import Views
from store import models as m
from tests.conftest import run_cli

ROUNDS = 4
RACERS = ("alice@acme.example", "bob@acme.example")  # both IT technicians: assignee side


def _race(env: Any, refs: list[str]) -> dict[str, dict[str, tuple[int, str, str]]]:
    """Both racers on each ticket of ``refs``, every one its own `ticketgate` process, all
    started at once."""
    pairs = [(ref, actor) for ref in refs for actor in RACERS]
    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        done = pool.map(
            lambda p: run_cli(env.env, "ticket", "act", p[0], "--as", p[1], "take", cwd=env.dir),
            pairs,
        )
        results: dict[str, dict[str, tuple[int, str, str]]] = {}
        for (ref, actor), r in zip(pairs, done, strict=True):
            results.setdefault(ref, {})[actor] = (r.returncode, r.stdout, r.stderr)
    return results


def _raise(env: Any, n: int) -> list[str]:
    return [
        env.service.raise_ticket(
            RaiseTicket(requester="frank@acme.example", to="it@acme.example", subject=f"Race {i}")
        )
        for i in range(n)
    ]


def _assert_one_winner(env: Any, ref: str, results: dict[str, tuple[int, str, str]]) -> None:
    codes = {actor: r[0] for actor, r in results.items()}
    assert sorted(codes.values()) == [0, 1], (ref, results)
    winner = next(a for a, c in codes.items() if c == 0)
    loser = next(a for a, c in codes.items() if c == 1)
    assert results[winner][1].strip() == f"{ref} WORKING_ON_IT"
    assert results[loser][2] == "ticketgate: take: not allowed while the ticket is WORKING_ON_IT\n"
    with env.app.sessions() as s:
        t = s.get(m.Ticket, parse_ref(ref))
        assert t is not None
        v = Views(s).ticket(t)
    assert v["to"]["owner"] == winner
    assert [(h["status"], h["actor"]) for h in v["history"]] == [
        ("RAISED", "frank@acme.example"),
        ("WORKING_ON_IT", winner),
    ]


def test_two_processes_race_to_take(env: Any) -> None:
    """Of two concurrent `take`s by different members exactly one exits 0 and owns the ticket;
    the other exits 1 with the reason on stderr; history holds one WORKING_ON_IT. Round after
    round, each on a fresh ticket."""
    for ref in _raise(env, ROUNDS):
        _assert_one_winner(env, ref, _race(env, [ref])[ref])


def test_races_on_several_tickets_at_once(env: Any) -> None:
    """Eight `take` processes on four tickets at the same moment: one winner per ticket. They
    all mail the same requester for the first time that day, so the automatic-mail counter row
    is created concurrently too (an upsert: no lost transaction, no traceback)."""
    refs = _raise(env, ROUNDS)
    results = _race(env, refs)
    for ref in refs:
        _assert_one_winner(env, ref, results[ref])
