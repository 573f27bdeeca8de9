"""Two scheduler processes against one PostgreSQL (SPEC §7): every escalation step, reminder and
feedback request is sent exactly once, counted in the maildir."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from gateway.bootstrap import make_worker
from gateway.service.commands import Act, RaiseTicket
from store import models as m
from tests.conftest import FIXTURES, PG_URL, Env, make_env, postgres_schema, with_search_path
from tests.conftest import Database as Db

pytestmark = pytest.mark.postgres
BERLIN = ZoneInfo("Europe/Berlin")


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)  # type: ignore[misc]


@pytest.fixture
def pg_org(tmp_path: Path) -> Iterator[Env]:
    if not PG_URL:
        pytest.skip("TICKETGATE_TEST_POSTGRES_URL is not set (.ci/run always sets it)")
    with postgres_schema() as schema:
        # small batches: the two processes take turns inside one tick, not one after the other
        e = make_env(
            Db("postgres", with_search_path(PG_URL, schema)),
            tmp_path / "install",
            {
                "TICKETGATE__SCHEDULER__BATCH_SIZE": "2",
                "TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "10000",
            },
        )
        try:
            e.import_org(FIXTURES / "orgs" / "sla.toml")
            yield e
        finally:
            e.app.close()


def _ticker(env: dict[str, str], instants: list[str], barrier: Any, out: Any) -> None:
    """A second process's scheduler: its own App on the same database; before each instant
    it waits for the other process, so that both tick at once."""
    from gateway.bootstrap import build, make_scheduler
    from gateway.config import load_settings

    app = build(load_settings(Path(env["TICKETGATE_CONFIG"]), env))
    sched = make_scheduler(app)
    for at in instants:
        barrier.wait(timeout=60)
        sched.tick(datetime.fromisoformat(at))
    out.put(dict(sched.totals))
    app.close()


def _kind(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    body = msg.get_body(("plain",))
    text = body.get_content() if body is not None else ""  # type: ignore[union-attr]
    if "has been escalated" in text:
        return "escalation"
    if "is waiting for your answer" in text:
        return "reminder"
    if "number from" in text and "1 (poor)" in text:
        return "feedback"
    return "other"


def test_two_tick_processes_send_every_step_once(pg_org: Env) -> None:
    """12 untouched tickets (3 escalation steps each), 4 RETURNED (2 reminders) and 4
    cancelled (a feedback request and its reminder); at each instant two scheduler
    processes tick at once, in batches of 2 so that they take turns. The maildir holds each
    mail once: 12 × (2 + 1 + 1) escalation mails (the assignee side, the manager, the named
    chief), 8 reminders, 8 feedback mails."""
    e = pg_org
    svc = e.service
    e.clock.at = berlin(2026, 3, 2, 9, 0)
    [  # untouched: they escalate
        svc.raise_ticket(RaiseTicket("req@initech.example", "it@initech.example", f"down {i}"))
        for i in range(12)
    ]
    returned = [
        svc.raise_ticket(RaiseTicket("req@initech.example", "it@initech.example", f"which {i}"))
        for i in range(4)
    ]
    cancelled = [
        svc.raise_ticket(RaiseTicket("req@initech.example", "it@initech.example", f"oops {i}"))
        for i in range(4)
    ]
    e.clock.at = berlin(2026, 3, 2, 9, 30)
    for ref in returned:
        svc.act(Act(ref, "tom@initech.example", "return", remark="which one?"))
    for ref in cancelled:
        svc.act(Act(ref, "req@initech.example", "cancel"))
    instants = [
        berlin(2026, 3, 2, 11, 0),  # feedback requests
        berlin(2026, 3, 2, 11, 0),  # the same instant again: nothing
        berlin(2026, 3, 2, 13, 0),  # breach + step 1
        berlin(2026, 3, 2, 14, 0),  # step 2
        berlin(2026, 3, 2, 14, 0),  # the same instant again: nothing
        berlin(2026, 3, 2, 15, 0),  # step 3
        berlin(2026, 3, 5, 11, 0),  # feedback reminders
        berlin(2026, 3, 10, 12, 30),  # first reminders (Munich's holiday 9 March skipped)
        berlin(2026, 3, 30, 9, 0),  # second reminders, resolution breaches (no step left)
    ]
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_ticker, args=(e.env, [a.isoformat() for a in instants], barrier, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    totals = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    # both did some of the work: they really ran side by side
    assert all(t.get("escalation", 0) > 0 for t in totals), totals
    assert sum(t.get("escalation", 0) for t in totals) == 12 * 3
    with e.app.sessions() as s:
        kinds = dict(
            s.execute(select(m.OutboxEvent.kind, func.count()).group_by(m.OutboxEvent.kind)).all()
        )
    assert kinds["escalation"] == 12 * 3
    assert kinds["reminder"] == 4 * 2
    assert kinds["feedback_request"] == 4 * 2
    worker = make_worker(e.app)
    e.clock.at = berlin(2026, 3, 30, 9, 1)
    for _ in range(100):
        if not worker.run_once():
            break
    new = e.dir / "outbox" / "new"
    counts = Counter(_kind(p.read_bytes()) for p in new.iterdir())
    assert counts["escalation"] == 12 * 4
    assert counts["reminder"] == 4 * 2
    assert counts["feedback"] == 4 * 2
