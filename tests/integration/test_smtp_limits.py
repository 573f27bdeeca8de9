"""Bounded resources at the SMTP edge (issue 12): at most `smtp.max_sessions` sessions (421
beyond, and closed), at most `smtp.max_recipients` recipients (452), and a banner that names no
software version."""

from __future__ import annotations

import asyncio
import re
import smtplib
import socket
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.bootstrap import make_edge, make_intake, make_runner, parse_limits, translate_context
from gateway.mail.smtp_server import SmtpEdgeServer
from gateway.runners.intake import IntakeRunner
from store import models as m
from tests.conftest import (
    ROOT,
    Database,
    Env,
    Gateway,
    crlf,
    demo_env,
    free_port,
    mail,
    poll_until,
)

REQ = "frank@acme.example"
IT = "it@acme.example"
REFUSED = b"421 4.7.0 Too many connections, try again later\r\n"
VERSION = re.compile(rb"\d+\.\d+|python|aiosmtpd", re.IGNORECASE)


@pytest.fixture
def sqlite_env(tmp_path: Path) -> Iterator[Env]:
    """The demo installation on SQLite: the limits are the edge's, not the storage's."""
    with demo_env(Database("sqlite", f"sqlite:///{tmp_path}/tg.db"), tmp_path / "install") as e:
        yield e


@contextmanager
def edge(env: Env, *, max_sessions: int) -> Iterator[SmtpEdgeServer]:
    server = SmtpEdgeServer(
        make_edge(env.app),
        host="127.0.0.1",
        port=free_port(),
        max_message_bytes=env.app.settings.smtp.max_message_bytes,
        hostname="mx.tickets.acme.example",
        max_sessions=max_sessions,
    )
    server.start()
    try:
        # aiosmtpd's start-up probe opened (and closed) one session.
        poll_until(lambda: server.open_sessions == 0, timeout=10, what="start-up probe closed")
        yield server
    finally:
        server.stop()


def tasks_of(server: SmtpEdgeServer) -> int:
    """asyncio tasks alive on the server's event loop (this probe's own excluded)."""

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    loop = server.controller.loop
    return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout=10)


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_the_session_over_max_sessions_gets_421_and_eof_and_a_freed_place_is_served_again(
    sqlite_env: Env,
) -> None:
    """With max_sessions = 3: three sessions are served, the fourth gets 421 and EOF; after one
    quits, a new session is served and its mail accepted."""
    with edge(sqlite_env, max_sessions=3) as server, ExitStack() as stack:
        sessions = []
        for _ in range(3):
            c = stack.enter_context(smtplib.SMTP("127.0.0.1", server.port, timeout=10))
            assert c.ehlo()[0] == 250
            sessions.append(c)
        assert server.open_sessions == 3

        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as fourth:
            assert read_to_eof(fourth) == REFUSED
        assert server.open_sessions == 3

        sessions[0].quit()
        poll_until(lambda: server.open_sessions == 2, timeout=10, what="a session freed")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as again:
            msg = mail(REQ, [IT], "Printer", "It jams.")
            data = crlf(msg.as_bytes())  # type: ignore[attr-defined]
            assert again.sendmail(REQ, [IT], data) == {}
        for c in sessions[1:]:
            c.quit()
        poll_until(lambda: server.open_sessions == 0, timeout=10, what="all sessions closed")


def test_a_burst_of_200_connections_over_max_sessions_20_is_refused_cleanly(
    sqlite_env: Env,
) -> None:
    """200 connections opened at once with max_sessions = 20: exactly 20 are greeted, every
    other one gets 421 and EOF; the gateway stays responsive, and once the 20 close no session
    and no task is left behind."""
    with edge(sqlite_env, max_sessions=20) as server:
        tasks_before = tasks_of(server)
        socks = [
            socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)
        ]
        try:
            greeted, refused = [], 0
            for s in socks:
                first = s.makefile("rb").readline()
                if first.startswith(b"220 "):
                    greeted.append(s)
                else:
                    assert first + read_to_eof(s) == REFUSED
                    refused += 1
            assert (len(greeted), refused) == (20, 180)
            assert server.open_sessions == 20
            for s in greeted:  # the greeted sessions still answer
                s.sendall(b"NOOP\r\n")
            for s in greeted:
                assert s.makefile("rb").readline().startswith(b"250")
        finally:
            for s in socks:
                s.close()
        poll_until(lambda: server.open_sessions == 0, timeout=10, what="sessions back to 0")
        poll_until(lambda: tasks_of(server) <= tasks_before, timeout=10, what="no task left")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
            msg = mail(REQ, [IT], "After the burst", "Still here?")
            assert c.sendmail(REQ, [IT], crlf(msg.as_bytes())) == {}  # type: ignore[attr-defined]


def test_the_101st_recipient_gets_452_and_the_mail_is_accepted_for_the_first_100(
    sqlite_env: Env,
) -> None:
    """smtp.max_recipients = 100: RCPT TO number 101 gets 452 4.5.3; DATA is still accepted
    and queued with the first 100 recipients."""
    assert sqlite_env.app.settings.smtp.max_recipients == 100
    with (
        edge(sqlite_env, max_sessions=5) as server,
        smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c,
    ):
        c.ehlo()
        assert c.mail(REQ)[0] == 250
        answers = [c.rcpt(IT if i % 2 else "hr@acme.example") for i in range(101)]
        assert [code for code, _ in answers[:100]] == [250] * 100
        assert answers[100] == (452, b"4.5.3 Too many recipients")
        msg = mail(REQ, [IT], "Many copies", "One ticket, please.", msgid="<many@client.example>")
        code, _ = c.data(crlf(msg.as_bytes()))  # type: ignore[attr-defined]
        assert code == 250
    with sqlite_env.app.sessions() as s:
        rec = s.scalars(
            select(m.InboundMail).where(m.InboundMail.message_id == "many@client.example")
        ).one()
        assert len(rec.envelope_rcpts) == 100
    runner = make_runner(sqlite_env.app)
    runner.run_until_idle()
    with sqlite_env.app.sessions() as s:
        rec = s.scalars(
            select(m.InboundMail).where(m.InboundMail.message_id == "many@client.example")
        ).one()
        assert rec.outcome == "ticket"


def test_the_runner_reads_queued_mail_in_batches_bounded_by_their_bytes(gateway: Gateway) -> None:
    """Three queued mails of about 300 KB: a batch bounded to 700 KB takes the first two, one
    bounded below the first mail's size takes that mail alone, an unbounded one all three;
    a runner bounded so takes one mail a batch, and processes every one."""
    sizes = []
    for i in range(3):
        msg = mail(REQ, [IT], f"Scan {i}", "See the attachment.")
        msg.add_attachment(  # type: ignore[attr-defined]
            bytes(range(256)) * 900, maintype="application", subtype="pdf", filename="scan.pdf"
        )
        assert gateway.send(msg, REQ, [IT], process=False)[0] == 250
        sizes.append(len(crlf(msg.as_bytes())))  # type: ignore[attr-defined]
    assert all(250_000 < n < 350_000 for n in sizes), sizes
    intake = make_intake(gateway.env.app)
    assert len(intake.waiting(32)) == 3
    assert len(intake.waiting(32, max_bytes=700_000)) == 2
    first = intake.waiting(32, max_bytes=1)
    assert [len(q.raw) for q in first] == [sizes[0]]
    assert make_runner(gateway.env.app).batch_bytes == 16 * 1024 * 1024
    runner = IntakeRunner(
        intake,
        ctx=translate_context(gateway.env.app),
        limits=parse_limits(gateway.env.app.settings),
        batch_bytes=1,
    )
    assert [runner.run_once() for _ in range(4)] == [1, 1, 1, 0]
    with gateway.env.app.sessions() as s:
        outcomes = s.scalars(select(m.InboundMail.outcome).order_by(m.InboundMail.id)).all()
    assert outcomes == ["ticket"] * 3


def test_runners_over_slices_of_the_queue_read_and_process_only_their_own(
    gateway: Gateway,
) -> None:
    """`intake.runners = 2`: runner 1 of 2 reads and processes only the mails whose record
    id is odd, and leaves the others queued; runner 0 of 2 then processes those."""
    for i in range(6):
        msg = mail(REQ, [IT], f"Sliced {i}", "One of six.", msgid=f"<slice-{i}@client.example>")
        assert gateway.send(msg, REQ, [IT], process=False)[0] == 250
    intake = make_intake(gateway.env.app)
    ids = [q.record_id for q in intake.waiting(32)]
    assert len(ids) == 6
    assert [q.record_id for q in intake.waiting(32, queue_slice=(1, 2))] == [
        i for i in ids if i % 2 == 1
    ]
    assert make_runner(gateway.env.app, (1, 2)).run_until_idle() == 3

    def outcomes() -> dict[int, str]:
        with gateway.env.app.sessions() as s:
            rows = s.execute(select(m.InboundMail.id, m.InboundMail.outcome)).all()
            return {rid: outcome for rid, outcome in rows}

    assert outcomes() == {i: "ticket" if i % 2 else "queued" for i in ids}
    assert make_runner(gateway.env.app, (0, 2)).run_until_idle() == 3
    assert outcomes() == {i: "ticket" for i in ids}


def test_the_banner_and_the_ehlo_answer_name_no_version(sqlite_env: Env) -> None:
    """The greeting is `220 <hostname> ticketgate ESMTP`; neither it nor EHLO names Python,
    aiosmtpd or a version number."""
    with (
        edge(sqlite_env, max_sessions=5) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as s,
    ):
        f = s.makefile("rb")
        banner = f.readline()
        assert banner == b"220 mx.tickets.acme.example ticketgate ESMTP\r\n"
        s.sendall(b"EHLO client.example\r\n")
        ehlo = []
        while True:
            line = f.readline()
            ehlo.append(line)
            if line[3:4] == b" ":
                break
        assert ehlo[0] == b"250-mx.tickets.acme.example\r\n"
        for line in [banner, *ehlo]:
            assert not VERSION.search(line.replace(b"tickets.acme.example", b"")), line
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221")


def test_max_sessions_is_documented_in_the_example_config() -> None:
    """config.example.toml sets smtp.max_sessions, with a comment saying what happens over it."""
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    assert tomllib.loads(text)["smtp"]["max_sessions"] == 200
    block = text.split("max_sessions = 200")[0].rsplit("\n\n", 1)[-1]
    assert "421" in block
