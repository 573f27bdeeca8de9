"""PostgreSQL unreachable mid-flight → SMTP answers 451 4.3.0; after recovery the retry is stored once.

The gateway talks to PostgreSQL through a small TCP relay on 127.0.0.1 that the test can cut and
restore, so the shared server itself keeps running for the other tests."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from gateway.service.errors import StorageUnavailable
from tests.conftest import (
    Database,
    Gateway,
    free_port,
    mail,
    make_env,
    postgres_schema,
    serving,
    with_search_path,
    write_demo_org,
)

PG_URL = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.postgres


class Relay:
    """Forwards 127.0.0.1:<port> to PostgreSQL; `down()` drops every connection and stops
    listening, `up()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None

    def up(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        if self.listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # kernel accepting connections until that accept() returned.
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns.clear()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def relayed(tmp_path: Path) -> Iterator[tuple[Gateway, Relay]]:
    if not PG_URL:
        pytest.skip("TICKETGATE_TEST_POSTGRES_URL is not set (.ci/run always sets it)")
    u = make_url(PG_URL)
    relay = Relay((u.host or "127.0.0.1", u.port or 5432))
    relay.up()
    url = u.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    with postgres_schema() as schema:
        env = make_env(Database("postgres", with_search_path(url, schema)), tmp_path / "pg")
        env.import_org(write_demo_org(tmp_path / "pg"))
        try:
            with serving(env) as gw:
                yield gw, relay
        finally:
            relay.down()
            env.app.close()


def test_postgres_down_gives_451_then_stored_once(relayed: tuple[Gateway, Relay]) -> None:
    """With PostgreSQL cut off the peer is told 451 4.3.0 (retry later), never 5xx; once it is
    back the retried message is stored, and a second retry is a duplicate: one ticket."""
    gw, relay = relayed
    msg = mail(
        "frank@acme.example",
        ["it@acme.example"],
        "While PG is down",
        "text",
        msgid="<pgdown@client.example>",
    )
    assert (
        gw.send(
            mail("frank@acme.example", ["it@acme.example"], "before", "x"),
            "frank@acme.example",
            ["it@acme.example"],
        )[0]
        == 250
    )
    relay.down()
    code, reply = gw.send(msg, "frank@acme.example", ["it@acme.example"])
    assert code == 451 and "4.3.0" in reply
    relay.up()
    assert gw.send(msg, "frank@acme.example", ["it@acme.example"])[0] == 250
    assert gw.send(msg, "frank@acme.example", ["it@acme.example"])[0] == 250
    subjects = [t["subject"] for t in gw.tickets()]
    assert subjects == ["before", "While PG is down"]


def test_runner_keeps_mail_queued_while_postgres_is_down(relayed: tuple[Gateway, Relay]) -> None:
    """A mail queued before PostgreSQL goes away stays queued while the runner cannot reach
    it (the runner says "storage unavailable", the mail is no attempt), and becomes its
    ticket once PostgreSQL is back, once."""
    gw, relay = relayed
    msg = mail("frank@acme.example", ["it@acme.example"], "Queued, then PG down", "text")
    assert gw.send(msg, "frank@acme.example", ["it@acme.example"], process=False)[0] == 250
    relay.down()
    with pytest.raises(StorageUnavailable):
        gw.process()
    relay.up()
    assert gw.process() == 1
    assert gw.process() == 0
    assert [t["subject"] for t in gw.tickets()] == ["Queued, then PG down"]
    assert gw.explain(str(msg["Message-ID"]))["outcome"] == "ticket"  # type: ignore[index]
