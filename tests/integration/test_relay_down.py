"""Relay down, then back (issue 12): with `outbound.transport = "smtp"` every notification reaches
the relay exactly once per (Message-ID, recipient), counted at the relay; a send whose outcome is
unknown is resent from the same outbox row with the same Message-ID."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.mail.delivery_worker import DeliveryWorker
from tests.conftest import (
    Database,
    Env,
    Gateway,
    demo_env,
    free_port,
    mail,
    poll_until,
    serving,
)
from tests.conftest import (
    TestClock as ManualClock,
)

REQ = "frank@acme.example"
IT = "it@acme.example"
IT_MEMBERS = {"alice@acme.example", "bob@acme.example", "carol@acme.example"}
Pair = tuple[str, str]  # (Message-ID, envelope recipient)


@dataclass
class Sink:
    """An aiosmtpd relay on 127.0.0.1:`port`; until `up()` nothing listens there, so every
    connection is refused. It counts each mail whose data it read (`received`) and each it
    answered 250 to (`confirmed`), by (Message-ID, recipient). `fault` makes it misbehave."""

    port: int
    fault: str | None = None
    received: Counter[Pair] = field(default_factory=Counter)
    confirmed: Counter[Pair] = field(default_factory=Counter)
    controller: Controller | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.fault == "421 at MAIL":
            return "421 4.3.2 Service shutting down"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        mid = str(message_from_bytes(data, policy=policy.default)["Message-ID"]).strip("<>")
        pairs = [(mid, str(r)) for r in envelope.rcpt_tos]
        with self.lock:
            self.received.update(pairs)
        assert server.transport is not None
        if self.fault == "421 after DATA":
            return "421 4.3.0 Closing transmission channel"
        if self.fault == "drop before 250":
            server.transport.close()
            return "250 2.0.0 never sent"
        with self.lock:
            self.confirmed.update(pairs)
        if self.fault == "drop after 250":
            await server.push("250 2.0.0 queued")
            server.transport.close()
        return "250 2.0.0 queued"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str | None:
        if self.fault == "421 to QUIT":
            return "421 4.3.0 Closing, busy"
        if self.fault == "554 to QUIT":
            return "554 5.3.0 Closing, something odd"
        return "221 Bye"

    def up(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def down(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def counts(self) -> tuple[Counter[Pair], Counter[Pair]]:
        with self.lock:
            return Counter(self.received), Counter(self.confirmed)


@dataclass
class Installation:
    env: Env
    gateway: Gateway
    sink: Sink

    @property
    def worker(self) -> DeliveryWorker:
        worker = self.gateway.worker
        assert isinstance(worker, DeliveryWorker)
        return worker

    def raise_ticket(self, subject: str) -> None:
        """Frank mails IT over SMTP: one ticket, four notices (his ack, three IT members)."""
        assert self.gateway.send(mail(REQ, [IT], subject, "Paper stuck."), REQ, [IT])[0] == 250

    def rows(self) -> list[dict[str, Any]]:
        return self.worker.outbox.rows()

    def pairs(self) -> Counter[Pair]:
        """Each outbox row once, by (Message-ID, recipient): what the relay should count."""
        return Counter((r["message_id"], r["recipient"]) for r in self.rows())


@contextmanager
def installation(
    database: Database, folder: Path, extra: dict[str, str] | None = None
) -> Iterator[Installation]:
    """The demo org behind its SMTP edge, its outbound transport `smtp` to a relay that is
    down (its port refuses connections) until the test calls `sink.up()`."""
    sink = Sink(free_port())
    settings = {
        "TICKETGATE__OUTBOUND__TRANSPORT": "smtp",
        "TICKETGATE__OUTBOUND__RELAY_HOST": "127.0.0.1",
        "TICKETGATE__OUTBOUND__RELAY_PORT": str(sink.port),
        **(extra or {}),
    }
    try:
        with demo_env(database, folder, settings) as env, serving(env) as gw:
            yield Installation(env, gw, sink)
    finally:
        sink.down()


SHORT_BACKOFF = {
    "TICKETGATE__OUTBOUND__BACKOFF_SECONDS": "1",
    "TICKETGATE__OUTBOUND__BACKOFF_MAX_SECONDS": "4",
    "TICKETGATE__OUTBOUND__MAX_ATTEMPTS": "30",
}


@pytest.mark.parametrize(
    ("backoff", "extra", "back_within"),
    [("default", {}, 240), ("short", SHORT_BACKOFF, 5)],
)
def test_relay_refusing_for_a_minute_then_back_delivers_each_mail_once(
    database: Database,
    tmp_path: Path,
    backoff: str,
    extra: dict[str, str],
    back_within: int,
) -> None:
    """The relay refuses connections for a minute of the test clock while tickets keep coming;
    the worker runs every second. No row is dead-lettered or sent meanwhile; once the relay
    listens, each mail arrives exactly once per (Message-ID, recipient) within the backoff
    (30 s doubling by default; 1 s capped at 4 s), and nothing more comes later."""
    with installation(database, tmp_path / "install", extra) as inst:
        clock = inst.env.clock
        for second in range(60):
            if second % 20 == 0:
                inst.raise_ticket(f"Printer {second}")
            inst.worker.run_once()
            clock.advance(seconds=1)
        rows = inst.rows()
        assert len(rows) == 12
        assert {r["state"] for r in rows} == {"pending"}
        assert all(r["attempts"] >= 1 and "127.0.0.1" in r["last_error"] for r in rows)
        if backoff == "default":
            # 30 s, then 60 s: the mails of second 0 were tried at 0 and 30 s, those of 40 s once.
            assert sorted(r["attempts"] for r in rows) == [1] * 4 + [2] * 8
        assert inst.sink.counts() == (Counter(), Counter())

        inst.sink.up()
        waited = 0
        while any(r["state"] != "sent" for r in inst.rows()):
            assert waited < back_within, inst.rows()
            inst.worker.run_once()
            clock.advance(seconds=1)
            waited += 1
        clock.advance(hours=2)
        assert inst.worker.run_once() == 0
        assert len(inst.rows()) == 12
        expected = inst.pairs()
        assert set(expected.values()) == {1} and len(expected) == 12
        assert {rcpt for _, rcpt in expected} == IT_MEMBERS | {REQ}
        assert inst.sink.counts() == (expected, expected)


# (fault, copies of each mail the relay reads, attempts per row): a fault before the 250 to
# the data leaves the outcome unknown or failed, and the mail is sent again; after it, the
# mail is the relay's and is not.
FAULTS = [
    ("421 at MAIL", 1, 2),
    ("421 after DATA", 2, 2),
    ("drop before 250", 2, 2),
    ("drop after 250", 1, 1),
    ("421 to QUIT", 1, 1),
    ("554 to QUIT", 1, 1),
]


@pytest.mark.parametrize(("fault", "copies", "attempts"), FAULTS, ids=[f[0] for f in FAULTS])
def test_unknown_outcome_is_resent_with_the_same_message_id(
    database: Database, tmp_path: Path, fault: str, copies: int, attempts: int
) -> None:
    """The relay takes the connection but answers 421, or drops it after the data (before or
    after its 250), or answers QUIT oddly after its 250. A mail the relay confirmed is `sent`
    and never resent; any other is retried from the same outbox row (no second row), with the
    same Message-ID, so the relay confirms each (Message-ID, recipient) exactly once and any
    copy it read twice carries the same Message-ID."""
    with installation(database, tmp_path / "install") as inst:
        inst.sink.up()
        inst.sink.fault = fault
        inst.raise_ticket("Scanner")
        assert inst.worker.run_once() == 4
        first = inst.rows()
        assert {r["state"] for r in first} == ({"sent"} if attempts == 1 else {"pending"})
        inst.sink.fault = None
        inst.env.clock.advance(seconds=30)  # the first backoff
        inst.worker.run_once()
        inst.env.clock.advance(hours=2)
        assert inst.worker.run_once() == 0
        rows = inst.rows()
        assert [r["id"] for r in rows] == [r["id"] for r in first]
        assert {(r["state"], r["attempts"]) for r in rows} == {("sent", attempts)}
        expected = inst.pairs()
        assert len(expected) == 4 and set(expected.values()) == {1}
        received, confirmed = inst.sink.counts()
        assert confirmed == expected
        assert received == Counter({pair: copies for pair in expected})


# ---- a real minute (make test-faults) ---------------------------------------------------------


@contextmanager
def wall_time(clock: ManualClock) -> Iterator[None]:
    """Move the test clock with the wall clock while the block runs (the worker's own loop)."""
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(0.05):
            clock.at = datetime.now(UTC)

    clock.at = datetime.now(UTC)
    ticker = threading.Thread(target=follow, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()


@pytest.mark.faults
def test_relay_down_for_a_real_minute_under_the_running_worker(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's own loop (`start`) runs through a real minute of refused connections while
    tickets come in every 15 s: nothing is dead-lettered or logged as a traceback; once the relay
    listens every mail arrives within a few seconds, exactly once per (Message-ID, recipient)."""
    extra = {**SHORT_BACKOFF, "TICKETGATE__OUTBOUND__POLL_SECONDS": "0.2"}
    caplog.set_level(logging.INFO, logger="ticketgate")
    with installation(database, tmp_path / "install", extra) as inst, wall_time(inst.env.clock):
        inst.worker.start()
        try:
            started = datetime.now(UTC)
            raised = 0

            def a_minute_passed() -> bool:
                nonlocal raised
                elapsed = (datetime.now(UTC) - started).total_seconds()
                if raised <= elapsed // 15 and raised < 4:
                    inst.raise_ticket(f"Printer {raised}")
                    raised += 1
                # pending, or `sending` while the worker tries: never dead, never sent
                assert {r["state"] for r in inst.rows()} <= {"pending", "sending"}
                return elapsed >= 60

            poll_until(a_minute_passed, timeout=90, interval=1.0, what="a minute of outage")
            assert len(inst.rows()) == 16
            assert all(r["attempts"] >= 5 for r in inst.rows()[:4])
            inst.sink.up()
            poll_until(
                lambda: all(r["state"] == "sent" for r in inst.rows()),
                timeout=15,
                what="every mail sent once the relay is back",
            )
        finally:
            inst.worker.stop()
        expected = inst.pairs()
        assert len(expected) == 16 and set(expected.values()) == {1}
        assert inst.sink.counts() == (expected, expected)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
