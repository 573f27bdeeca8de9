"""A 250 is a promise (RFC 5321 §6.1): durable commits on both backends, no duplicate when the
client loses the 250 (RFC 1047), and the sender's device recorded with the ticket (SPEC §1.3)."""

from __future__ import annotations

import smtplib
import socket
import time

from sqlalchemy import func, select, text

from store import models as m
from store.db import read_session
from tests.conftest import Env, Gateway, crlf, mail, smtp_up_to_data

REQ = "frank@acme.example"
IT = "it@acme.example"


def count(gw: Gateway, model: type) -> int:
    with gw.env.app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def wait_for(what: str, cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_commits_are_durable(env: Env) -> None:
    """SQLite: WAL, synchronous=FULL, foreign keys on every pooled connection; PostgreSQL:
    synchronous_commit=on for every session."""
    engine = env.app.engine
    # Three pooled DBAPI connections at once, each set up by the engine's connect hook (raw, so
    # that SQLite's BEGIN IMMEDIATE does not make them queue for the write lock).
    conns = [engine.raw_connection() for _ in range(3)]
    try:
        for c in conns:
            cur = c.cursor()
            if engine.dialect.name == "sqlite":
                assert cur.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
                assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                assert cur.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            else:
                assert engine.dialect.name == "postgresql"
                cur.execute("SHOW synchronous_commit")
                assert cur.fetchone()[0] == "on"
            cur.close()
    finally:
        for c in conns:
            c.close()
    # The sessions the service uses come from the same engine.
    with env.app.sessions() as s:
        if engine.dialect.name == "sqlite":
            assert s.execute(text("PRAGMA synchronous")).scalar() == 2
        else:
            assert s.execute(text("SHOW synchronous_commit")).scalar() == "on"


def _drop_after_dot(port: int, raw: bytes, *, before_closing=lambda: None) -> None:  # type: ignore[no-untyped-def]
    """Send a whole transaction, then close the socket without reading the answer to "."."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        smtp_up_to_data(sock, REQ, IT)
        body = crlf(raw).replace(b"\r\n.", b"\r\n..")
        sock.sendall(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        before_closing()
        # RFC 1047: the connection is lost between "." and the client reading the 250.
        sock.shutdown(socket.SHUT_RDWR)


def _retry(gw: Gateway, raw: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        client.mail(REQ)
        client.rcpt(IT)
        code, reply = client.data(crlf(raw))
    assert code == 250, reply
    return reply.decode()


def test_lost_250_then_retry_is_one_ticket(gateway: Gateway) -> None:
    """The server commits and answers 250, the client never reads it and retries the same
    message: the retry is acknowledged 250 as a duplicate, and there is one ticket (RFC 1047)."""
    msg = mail(REQ, [IT], "Laptop will not boot", "Black screen.", msgid="<rfc1047@client.example>")
    raw = msg.as_bytes()  # type: ignore[attr-defined]
    _drop_after_dot(
        gateway.port,
        raw,
        before_closing=lambda: wait_for("the commit", lambda: count(gateway, m.InboundMail) == 1),
    )
    assert _retry(gateway, raw) == "2.0.0 OK: duplicate of an accepted mail"
    gateway.process()
    tickets = gateway.tickets()
    assert [t["messages"][0]["message_id"] for t in tickets] == ["rfc1047@client.example"]
    assert count(gateway, m.InboundMail) == 1 and count(gateway, m.Message) == 1


def test_close_right_after_dot_then_retry_is_one_ticket(gateway: Gateway) -> None:
    """The client closes the instant "." is sent and retries at once. aiosmtpd abandons a session
    on EOF, so the first copy may or may not be processed; either way there is one ticket."""
    msg = mail(REQ, [IT], "Badge", "My badge stopped working.", msgid="<race@client.example>")
    raw = msg.as_bytes()  # type: ignore[attr-defined]
    _drop_after_dot(gateway.port, raw)
    assert _retry(gateway, raw).split(" ")[2] in ("queued", "duplicate")
    gateway.process()
    assert len(gateway.tickets()) == 1
    assert count(gateway, m.InboundMail) == 1 and count(gateway, m.Message) == 1


RECEIVED = [
    # Top-most first, as they appear in the header section; the bottom one is the submission hop.
    "from mx.acme.example (mx.acme.example [10.0.0.5]) by gw.tickets.acme.example; Mon, 2 Nov 2026 09:00:02 +0000",
    "from [192.0.2.55] (laptop-frank.acme.example [192.0.2.55]) by mx.acme.example (Postfix) with ESMTPSA; Mon, 2 Nov 2026 09:00:01 +0000",
]


def test_device_details_in_ticket(gateway: Gateway) -> None:
    """User-Agent (or X-Mailer) and the client IP of the bottom-most Received hop end up in the
    ticket's `from.device`."""
    ua = mail(REQ, [IT], "Mouse", "broken", headers={"User-Agent": "Mozilla Thunderbird 128.3.1"})
    ua["Received"] = RECEIVED[0]
    ua["Received"] = RECEIVED[1]
    assert gateway.send(ua, REQ, [IT])[0] == 250
    xm = mail(
        REQ,
        [IT],
        "Keyboard",
        "sticky",
        headers={"X-Mailer": "Microsoft Outlook 16.0", "Received": RECEIVED[1]},
    )
    xm["Received"] = "from [2001:db8::7] by mx.acme.example; Mon, 2 Nov 2026 09:00:01 +0000"
    assert gateway.send(xm, REQ, [IT])[0] == 250
    bare = mail(REQ, [IT], "Monitor", "flickers")
    assert gateway.send(bare, REQ, [IT])[0] == 250
    devices = {t["subject"]: t["from"]["device"] for t in gateway.tickets()}
    assert devices == {
        "Mouse": {"user_agent": "Mozilla Thunderbird 128.3.1", "client_ip": "192.0.2.55"},
        "Keyboard": {"user_agent": "Microsoft Outlook 16.0", "client_ip": "2001:db8::7"},
        "Monitor": None,
    }


def test_rcpt_check_does_not_queue_for_the_write_lock(sqlite_gateway: Gateway) -> None:
    """RCPT TO is a read: while another connection holds SQLite's write lock (a writer in the
    middle of a transaction), recipients are still checked at once, and the writer is not held
    up by readers either. Before reads used deferred transactions every RCPT check took the
    write lock and queued behind the intake writer."""
    gw = sqlite_gateway
    engine = gw.env.app.engine
    writer = engine.raw_connection()
    try:
        cur = writer.cursor()
        cur.execute("BEGIN IMMEDIATE")
        cur.execute("UPDATE employees SET active = active")
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=10) as client:
            client.ehlo()
            client.mail(REQ)
            assert client.rcpt(IT)[0] == 250
            assert client.rcpt("nobody@acme.example")[0] == 550
        # busy_timeout is 30 s: a check that waited for the lock would have timed out above.
        assert time.monotonic() - started < 5
        # The CLI's read paths use the same deferred transactions.
        with read_session(gw.env.app.sessions) as s:
            assert int(s.scalar(select(func.count()).select_from(m.Employee)) or 0) > 0
        cur.execute("COMMIT")
    finally:
        writer.close()


def test_rcpt_check_remembers_our_addresses_not_unknown_ones(env: Env) -> None:
    """A recipient found once is taken as known for a while without a database read (RCPT TO
    is on every mail's path); an unknown address is asked every time, so an address added by
    `org import` is never refused with the final 550 from a stale answer."""
    from sqlalchemy import event

    from gateway.bootstrap import make_inbound

    intake = make_inbound(env.app)
    statements: list[str] = []

    def _count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(env.app.engine, "before_cursor_execute", _count)
    try:
        assert intake.known_recipient("it@acme.example") == "department"
        assert intake.known_recipient("frank@acme.example") == "employee"
        first = len(statements)
        assert first > 0
        assert intake.known_recipient("IT@acme.example") == "department"
        assert intake.known_recipient("frank@acme.example") == "employee"
        assert len(statements) == first, statements[first:]
        assert intake.known_recipient("nobody@acme.example") is None
        after_unknown = len(statements)
        assert after_unknown > first
        assert intake.known_recipient("nobody@acme.example") is None
        assert len(statements) > after_unknown
        # The SMTP edge asks on its event loop first: only what was found is remembered.
        assert intake.remembered_recipient("hr@acme.example") is None
        assert intake.remembered_recipient("nobody@acme.example") is None
        assert intake.remembered_recipient("It@acme.example") == "department"
        assert intake.remembered_recipient("postmaster@tickets.acme.example") == "postmaster"
    finally:
        event.remove(env.app.engine, "before_cursor_execute", _count)
