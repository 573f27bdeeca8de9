"""A fan-out batch reads the loop breaker's and the notice cap's counts once for all its events
(issue 17) and keeps them up to date as it makes rows: fanning many events out in one batch
must give the same rows as fanning them out one event at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from gateway.bootstrap import make_worker
from gateway.demo import DEMO_EMPLOYEES_CSV, DEMO_ORG_TOML
from gateway.service.commands import Act, RaiseTicket
from store import models as m
from tests.conftest import Database, Env, demo_env

REQ = "frank@acme.example"
IT = "it@acme.example"
CAPS = {
    # Small caps, so that one batch crosses each of them.
    "TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "6",
    "TICKETGATE__MAIL__AUTO_MAIL_PER_TICKET_HOUR": "3",
    "TICKETGATE__MAIL__NOTICES_PER_SENDER_HOUR": "2",
}


def _scenario(env: Env) -> None:
    """Events that reach every cap: four tickets from one requester (notices over the
    per-sender cap), five status changes on the first (over the per-ticket cap), and more
    acknowledgements and status mail to the requester than the day allows."""
    svc = env.service
    refs = [
        str(svc.raise_ticket(RaiseTicket(REQ, IT, f"Printer {i}", "Paper stuck.")))
        for i in range(4)
    ]
    env.clock.advance(minutes=1)
    for action in ("take", "hold", "take", "deliver", "reopen"):
        actor = REQ if action == "reopen" else "alice@acme.example"
        svc.act(Act(refs[0], actor, action, remark="a remark"))
        env.clock.advance(seconds=10)
    svc.act(Act(refs[1], "bob@acme.example", "take"))


def _rows(env: Env) -> list[tuple[Any, ...]]:
    with env.app.sessions() as s:
        rows = s.scalars(select(m.Outbox).where(m.Outbox.channel == "email")).all()
        return sorted(
            (
                r.ticket_id,
                r.kind,
                r.recipient,
                r.state,
                r.payload["status"],
                tuple(h["status"] for h in r.payload["history"]),
            )
            for r in rows
        )


def _day_counters(env: Env) -> dict[str, int]:
    with env.app.sessions() as s:
        return {c.address: c.count for c in s.scalars(select(m.AutoMailCounter))}


def test_one_batch_makes_the_rows_that_one_event_at_a_time_makes(
    database: Database, tmp_path: Path
) -> None:
    with demo_env(database, tmp_path / "batch", CAPS) as batched:
        _scenario(batched)
        worker = make_worker(batched.app)
        assert worker.outbox.fan_out(limit=100) == 14  # every event in one batch
        got, got_days = _rows(batched), _day_counters(batched)
    ref_db = Database("sqlite", f"sqlite:///{tmp_path}/one.db")
    with demo_env(ref_db, tmp_path / "one", CAPS) as single:
        _scenario(single)
        worker = make_worker(single.app)
        while worker.outbox.fan_out(limit=1):
            pass
        want, want_days = _rows(single), _day_counters(single)
    assert got == want
    assert got_days == want_days
    # The caps were crossed, not just approached: suppressed notices, and the requester's
    # automatic mail stopped at the day's cap.
    assert any(r[3] == "suppressed" for r in got)
    assert want_days[REQ] > 6
    assert sum(1 for r in got if r[2] == REQ and r[1] != "new_ticket") == 6


def test_a_worker_keeps_the_directory_until_an_org_import_changes_it(
    database: Database, tmp_path: Path
) -> None:
    """The worker keeps members and employees from batch to batch; an `org import` that
    deactivates Bob is seen by its next batch: the next ticket's notices leave him out."""
    with demo_env(database, tmp_path / "install") as env:
        worker = make_worker(env.app)
        env.service.raise_ticket(RaiseTicket(REQ, IT, "Printer 1", "Paper stuck."))
        worker.outbox.fan_out()
        toml = DEMO_ORG_TOML.replace(
            'email = "bob@acme.example"\n', 'email = "bob@acme.example"\nactive = false\n'
        )
        assert toml != DEMO_ORG_TOML
        folder = tmp_path / "org"
        folder.mkdir()
        (folder / "org.toml").write_text(toml, encoding="utf-8")
        (folder / "employees.csv").write_text(DEMO_EMPLOYEES_CSV, encoding="utf-8")
        env.import_org(folder / "org.toml")
        env.service.raise_ticket(RaiseTicket(REQ, IT, "Printer 2", "Paper stuck."))
        worker.outbox.fan_out()
        with env.app.sessions() as s:
            got = {
                (r.ticket_id, r.recipient)
                for r in s.scalars(select(m.Outbox).where(m.Outbox.kind == "new_ticket"))
            }
    assert (1, "bob@acme.example") in got
    assert (2, "bob@acme.example") not in got
    assert (2, "alice@acme.example") in got
