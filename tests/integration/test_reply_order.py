"""A reply always lands on its parent's ticket, whatever order the MTA delivers them in: sent on
another connection right after the parent, at the same moment, or just before it — 200 pairs
over 8 connections, with the runners working meanwhile (two of them on PostgreSQL)."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.bootstrap import build, make_runner
from gateway.config import load_settings
from gateway.service.org_import import import_org
from store import inbound_queue as queue
from store import models as m
from store.migrate import upgrade
from tests.conftest import (
    PG_URL,
    SECRET,
    Database,
    Env,
    crlf,
    poll_until,
    postgres_schema,
    serving,
    with_search_path,
    write_demo_org,
)
from tests.conftest import TestClock as UnusedClock

REQ = "frank@acme.example"
IT = "it@acme.example"
PAIRS = 200


@contextmanager
def _live_env(url: str, tmp_path: Path) -> Iterator[Env]:
    """The demo installation on the real clock, so that the reference window passes."""
    folder = tmp_path / "install"
    folder.mkdir()
    env = {
        "TICKETGATE__DATABASE__URL": url,
        "TICKETGATE__MAIL__DOMAIN": "tickets.acme.example",
        "TICKETGATE__MAIL__SECRET": SECRET,
        "TICKETGATE__OUTBOUND__MAILDIR": str(folder / "outbox"),
        "TICKETGATE__INTAKE__REFERENCE_WAIT_SECONDS": "5",
        "TICKETGATE__SMTP__SENDER_RATE_PER_HOUR": "100000",
        "TICKETGATE__SMTP__SENDER_BURST_PER_MINUTE": "100000",
    }
    settings = load_settings(folder / "ticketgate.toml", env)
    app = build(settings)
    upgrade(app.engine)
    with app.sessions() as s, s.begin():
        import_org(s, write_demo_org(folder), mail_domain="tickets.acme.example")
    try:
        yield Env(folder, env, app, UnusedClock())  # the app runs on the real clock
    finally:
        app.close()


def _msg(subject: str, msgid: str, parent: str | None) -> bytes:
    m = EmailMessage()
    m["From"] = REQ
    m["To"] = IT
    m["Subject"] = subject
    m["Date"] = formatdate()
    m["Message-ID"] = f"<{msgid}>"
    if parent:
        m["In-Reply-To"] = f"<{parent}>"
        m["References"] = f"<{parent}>"
    m.set_content(f"{subject}\n")
    return crlf(bytes(m))


def _send(port: int, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.sendmail(REQ, [IT], data)


def _pair(port: int, i: int, pool: ThreadPoolExecutor) -> None:
    parent_id, reply_id = f"parent-{i}@client.example", f"reply-{i}@client.example"
    parent = _msg(f"Case {i}", parent_id, None)
    reply = _msg(f"Re: Case {i}", reply_id, parent_id)
    order = i % 3
    if order == 0:  # the reply right after the parent, on another connection
        _send(port, parent)
        _send(port, reply)
    elif order == 1:  # both at once
        a, b = pool.submit(_send, port, parent), pool.submit(_send, port, reply)
        a.result()
        b.result()
    else:  # the reply first (the parent was still in DATA elsewhere)
        _send(port, reply)
        _send(port, parent)


@pytest.fixture
def live_env(database: Database, tmp_path: Path) -> Iterator[Env]:
    with _live_env(database.url, tmp_path) as e:
        yield e


def test_replies_land_on_their_parents_in_any_order(live_env: Env) -> None:
    """One runner, on SQLite and on PostgreSQL."""
    _replies_land(live_env, runners=1)


@pytest.mark.postgres
@pytest.mark.parametrize("sliced", [False, True], ids=["two-processes", "intake.runners=2"])
def test_replies_land_on_their_parents_with_two_runners(tmp_path: Path, sliced: bool) -> None:
    """Two runners on one PostgreSQL database: each over the whole queue (two gateway
    processes, SPEC §7: they share it; SQLite serves one), or each over its half of it
    (`intake.runners = 2`: a parent and its reply are often in different halves)."""
    if not PG_URL:
        pytest.skip("TICKETGATE_TEST_POSTGRES_URL is not set (.ci/run always sets it)")
    with postgres_schema() as schema, _live_env(with_search_path(PG_URL, schema), tmp_path) as e:
        _replies_land(e, runners=2, sliced=sliced)


def _replies_land(live_env: Env, *, runners: int, sliced: bool = False) -> None:
    workers = [
        make_runner(live_env.app, (i, runners) if sliced else (0, 1)) for i in range(runners)
    ]
    with serving(live_env) as gw:
        for w in workers:
            w.start()
        try:
            with ThreadPoolExecutor(8) as senders, ThreadPoolExecutor(8) as extra:
                list(senders.map(lambda i: _pair(gw.port, i, extra), range(PAIRS)))

            def queue_empty() -> bool:
                with live_env.app.sessions() as s:
                    return not queue.queue_counts(s).get("queued", 0)

            poll_until(queue_empty, timeout=180, interval=0.1, what="the queue emptied")
        finally:
            for w in workers:
                w.stop()
    with live_env.app.sessions() as s:
        tickets = {t.subject: t.id for t in s.scalars(select(m.Ticket))}
        on = {
            msg.message_id: msg.ticket_id
            for msg in s.scalars(select(m.Message).where(m.Message.message_id.like("reply-%")))
        }
        arrived = {r.message_id: r.id for r in s.scalars(select(m.InboundMail))}
    assert len(tickets) == PAIRS, sorted(set(tickets) - {f"Case {i}" for i in range(PAIRS)})[:5]
    wrong = [i for i in range(PAIRS) if on.get(f"reply-{i}@client.example") != tickets[f"Case {i}"]]
    assert wrong == []
    # The reply-first pairs really were queued reply first: the wait did the work.
    early = [i for i in range(2, PAIRS, 3)]
    assert all(
        arrived[f"reply-{i}@client.example"] < arrived[f"parent-{i}@client.example"] for i in early
    )
