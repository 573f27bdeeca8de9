"""kill -9 in the middle of a mail stream (RFC 5321 §6.1): `ticketgate run` as a process loses no
acknowledged mail and, with the client retrying what it never heard 250 for, stores none twice."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from store import models as m
from tests.conftest import ROOT, Database, crlf, free_port, poll_until

TOTAL = 200
KILL_AFTER = 70
DEADLINE = 50.0  # seconds for the whole stream, restart included
SENDERS = [
    "frank@acme.example", "grace@acme.example", "alice@acme.example", "bob@acme.example",
    "carol@acme.example", "dieter@acme.example", "eva@acme.example", "karl@acme.example",
]  # fmt: skip
DEPARTMENTS = [
    "it@acme.example",
    "facilities@acme.example",
    "hr@acme.example",
    "finance@acme.example",
]


@dataclass
class Installation:
    """A demo installation in a temp dir and its `ticketgate run` process."""

    dir: Path
    env: dict[str, str]
    smtp_port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.dir / "run.log"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run"],
                cwd=self.dir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, (
                "`ticketgate run` exited: " + self.log.read_text()[-800:]
            )
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.smtp_port), timeout=0.5).close()
                return
            assert time.monotonic() < deadline, "`ticketgate run` did not listen in 30 s"
            time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


@contextlib.contextmanager
def installation(
    database: Database, tmp_path: Path, extra: dict[str, str] | None = None
) -> Iterator[Installation]:
    folder = tmp_path / "install"
    folder.mkdir()
    smtp_port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TICKETGATE_CONFIG": str(folder / "ticketgate.toml"),
        "TICKETGATE__DATABASE__URL": database.url,
        "TICKETGATE__SMTP__HOST": "127.0.0.1",
        "TICKETGATE__SMTP__PORT": str(smtp_port),
        "TICKETGATE__HTTP__PORT": str(free_port()),
        "TICKETGATE__SLACK__PORT": str(free_port()),
        "TICKETGATE__SLACK__ENABLED": "false",
        "TICKETGATE__IMAP__ENABLED": "false",
        "TICKETGATE__MAIL__SECRET": "kill9-secret-0123456789abcdef",
        "TICKETGATE__OUTBOUND__TRANSPORT": "maildir",
        "TICKETGATE__OUTBOUND__MAILDIR": str(folder / "outbox"),
        # Each sender's 25 mails of a stream arrive within seconds: over the default burst
        # limit (20 a minute), which would rightly quarantine the last ones.
        "TICKETGATE__SMTP__SENDER_BURST_PER_MINUTE": "100000",
        **(extra or {}),
    }
    inst = Installation(folder, env, smtp_port)
    r = inst.cli("init", "--demo")
    assert r.returncode == 0, r.stderr
    try:
        yield inst
    finally:
        inst.stop()


def message(i: int) -> tuple[str, str, bytes]:
    """(sender, department, bytes) of the i-th mail of the stream; its Message-ID is unique."""
    sender, dept = SENDERS[i % len(SENDERS)], DEPARTMENTS[i % len(DEPARTMENTS)]
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, dept, f"stream mail {i}"
    msg["Date"] = formatdate()
    msg["Message-ID"] = f"<kill9-{i}@client.example>"
    msg.set_content(f"Mail number {i} of the stream.")
    return sender, dept, crlf(msg.as_bytes())


class Client(threading.Thread):
    """Sends the stream; a mail counts as delivered only on 250, anything else is retried."""

    def __init__(
        self, port: int, mails: range = range(TOTAL), deadline_s: float = DEADLINE
    ) -> None:
        super().__init__(name="mail-client", daemon=True)
        self.port = port
        self.mails = mails
        self.acked: set[int] = set()
        self.refused: dict[int, str] = {}
        self.retries = 0
        self.deadline = time.monotonic() + deadline_s
        self.lock = threading.Lock()

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def run(self) -> None:
        pending = list(self.mails)
        smtp: smtplib.SMTP | None = None
        while pending and time.monotonic() < self.deadline:
            i = pending[0]
            sender, dept, data = message(i)
            try:
                if smtp is None:
                    smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
                    smtp.ehlo()
                smtp.mail(sender)
                smtp.rcpt(dept)
                code, text = smtp.data(data)
            except (OSError, smtplib.SMTPException):
                # Refused, reset or dropped mid-transaction: we never heard 250, so send again.
                with contextlib.suppress(Exception):
                    if smtp is not None:
                        smtp.close()
                smtp = None
                self.retries += 1
                time.sleep(0.05)  # poll interval while the server is down
                continue
            if code == 250:
                with self.lock:
                    self.acked.add(i)
                pending.pop(0)
            elif 400 <= code < 500:
                self.retries += 1
                smtp.rset()
            else:
                self.refused[i] = f"{code} {text.decode(errors='replace')}"
                pending.pop(0)
        if smtp is not None:
            with contextlib.suppress(Exception):
                smtp.quit()


def test_kill9_mid_stream_loses_and_duplicates_nothing(database: Database, tmp_path: Path) -> None:
    """200 mails, kill -9 of the process group after ~70 acknowledgements, restart, client
    retries what was not acknowledged: every Message-ID is stored exactly once (200 tickets)."""
    with installation(database, tmp_path) as inst:
        inst.start()
        client = Client(inst.smtp_port)
        client.start()
        deadline = time.monotonic() + DEADLINE
        while client.acked_count() < KILL_AFTER:
            assert client.is_alive() and time.monotonic() < deadline, (
                "stream stalled before the kill"
            )
            time.sleep(0.005)
        inst.kill9()
        acked_at_kill = client.acked_count()
        inst.start()
        client.join(max(1.0, deadline - time.monotonic()))
        assert not client.is_alive(), f"client did not finish: {client.acked_count()} acknowledged"
        assert client.refused == {}
        assert client.acked == set(range(TOTAL))
        assert client.retries > 0, "the kill did not interrupt the stream"

        roots = assert_stored_once(database, TOTAL)
        print(
            f"\nkill -9 after {acked_at_kill} acknowledgements; {client.retries} retries; "
            f"{sum(roots.values())} tickets"
        )


def test_kill9_while_the_runner_works_through_the_queue(database: Database, tmp_path: Path) -> None:
    """200 mails queued by a `run` without a runner (`intake.runners = 0`), then a `run` with
    two (each over half of the queue, in processes of their own), killed -9 while they work
    through them, then started again: every mail becomes one ticket, with one
    acknowledgement and one notice (nothing applied twice, nothing lost)."""
    with installation(database, tmp_path, {"TICKETGATE__INTAKE__RUNNERS": "0"}) as inst:
        inst.start()
        client = Client(inst.smtp_port)
        client.start()
        client.join(DEADLINE)
        assert client.acked == set(range(TOTAL)) and client.refused == {}
        inst.stop()
        assert queued(database) == TOTAL
        inst.env["TICKETGATE__INTAKE__RUNNERS"] = "2"
        inst.env["TICKETGATE__INTAKE__BATCH_SIZE"] = "8"
        inst.start()
        poll_until(
            lambda: queued(database) <= TOTAL - 40,
            timeout=DEADLINE,
            interval=0.005,
            what="the runner working through the queue",
        )
        inst.kill9()
        left = queued(database)
        assert 0 < left < TOTAL, left
        inst.start()
        assert_stored_once(database, TOTAL)
        log = inst.log.read_text()
        for i in (0, 1):
            assert f"takes the queued mails whose id is {i} modulo 2" in log
        print(f"\nkill -9 with {left} of {TOTAL} mails still queued")


def test_sigterm_stops_run(database: Database, tmp_path: Path) -> None:
    """SIGTERM to the process group: `run` exits 0 within seconds, and a mail acknowledged just
    before is kept (processed, or queued for the next start). `run` opened SMTP intake only
    once its runner process was running."""
    with installation(database, tmp_path) as inst:
        inst.start()
        poll_until(
            lambda: "SMTP intake on" in inst.log.read_text(), timeout=10, what="run's log line"
        )
        started = inst.log.read_text()
        assert started.index("intake-runner-0: running") < started.index("SMTP intake on")
        sender, dept, data = message(0)
        with smtplib.SMTP("127.0.0.1", inst.smtp_port, timeout=10) as smtp:
            assert smtp.sendmail(sender, [dept], data) == {}
        assert inst.proc is not None
        os.killpg(inst.proc.pid, signal.SIGTERM)
        assert inst.proc.wait(15) == 0
        # The runner children got the same SIGTERM and exited cleanly: that is a stop, not a
        # crash to restart from while `run` shuts down.
        log = inst.log.read_text()
        assert "starting a new one" not in log, log[-2000:]
        inst.start()
        assert_stored_once(database, 1)


def test_sigterm_while_run_starts_stops_it_cleanly(database: Database, tmp_path: Path) -> None:
    """SIGTERM the moment the SMTP port opens, while `run` is still starting its delivery
    worker and status endpoint: it finishes starting, then stops cleanly (exit 0, the
    runner child not restarted), instead of dying by the signal."""
    with installation(database, tmp_path) as inst:
        inst.start()  # returns as soon as the SMTP port accepts a connection
        assert inst.proc is not None
        os.killpg(inst.proc.pid, signal.SIGTERM)
        assert inst.proc.wait(15) == 0, inst.log.read_text()[-2000:]
        log = inst.log.read_text()
        assert "stopping" in log and "starting a new one" not in log, log[-2000:]


def test_run_without_delivery_workers_leaves_the_outbox_to_others(
    database: Database, tmp_path: Path
) -> None:
    """`outbound.workers = 0`: `run` takes mail in and delivers nothing (another process on the
    same database does); what it queued is delivered by `outbox deliver` afterwards."""
    extra = {"TICKETGATE__OUTBOUND__WORKERS": "0", "TICKETGATE__OUTBOUND__POLL_SECONDS": "0.05"}
    with installation(database, tmp_path, extra) as inst:
        inst.start()
        sender, dept, data = message(0)
        with smtplib.SMTP("127.0.0.1", inst.smtp_port, timeout=10) as smtp:
            assert smtp.sendmail(sender, [dept], data) == {}
        poll_until(lambda: not queued(database), timeout=60, what="the mail processed")
        inst.stop()  # nothing can be delivered by it from here on
        assert inst.proc is not None and inst.proc.returncode == 0
        maildir = inst.dir / "outbox" / "new"
        assert not maildir.exists() or list(maildir.iterdir()) == []
        assert "none in this process (outbound.workers = 0)" in inst.log.read_text()
        r = inst.cli("outbox", "deliver")
        assert r.returncode == 0, r.stderr
        delivered = [p.read_bytes() for p in maildir.iterdir()]
        assert delivered and all(b"stream mail 0" in d for d in delivered)
    assert_stored_once(database, 1)


def queued(database: Database) -> int:
    """How many mails wait in the inbound queue."""
    engine = create_engine(database.url)
    try:
        with engine.connect() as c:
            return int(
                c.scalar(
                    select(func.count())
                    .select_from(m.InboundMail)
                    .where(m.InboundMail.outcome == "queued")
                )
                or 0
            )
    finally:
        engine.dispose()


def assert_stored_once(database: Database, total: int) -> Counter[str]:
    """Once the running gateway's runner has emptied the queue: every Message-ID of the stream
    is one ticket and one processing record."""
    poll_until(lambda: not queued(database), timeout=120, what="the queue emptied")
    engine = create_engine(database.url)
    try:
        with engine.connect() as c:
            roots = Counter(
                c.scalars(
                    select(m.Ticket.root_message_id).where(m.Ticket.root_message_id.like("kill9-%"))
                )
            )
            records = Counter(
                c.scalars(
                    select(m.InboundMail.message_id).where(m.InboundMail.message_id.like("kill9-%"))
                )
            )
            events = Counter(
                (t, k) for t, k in c.execute(select(m.OutboxEvent.ticket_id, m.OutboxEvent.kind))
            )
    finally:
        engine.dispose()
    expected = {f"kill9-{i}@client.example" for i in range(total)}
    assert set(roots) == expected and set(records) == expected
    assert [mid for mid, n in roots.items() if n != 1] == []
    assert [mid for mid, n in records.items() if n != 1] == []
    # Each ticket's acknowledgement and notice were queued exactly once, with the ticket.
    assert {k for k in events} == {(t, k) for t, _ in events for k in ("ack", "new_ticket")}
    assert [key for key, n in events.items() if n != 1] == []
    assert len({t for t, _ in events}) == total
    return roots


@pytest.mark.faults
def test_kill9_three_times_under_concurrent_load(database: Database, tmp_path: Path) -> None:
    """The long run (`make test-faults`): 1,000 mails over 8 concurrent retrying clients (so
    the edge commits in batches and the runner is busy), the whole process
    group killed with SIGKILL three times at different points, restarted each time: every
    Message-ID is stored exactly once, and its notification events once."""
    total, clients, kills = 1000, 8, (150, 450, 750)
    # 125 mails from each of 8 senders within minutes: above the default flood guard (120 an
    # hour), which would rightly quarantine the last ones.
    extra = {"TICKETGATE__SMTP__SENDER_RATE_PER_HOUR": "100000"}
    with installation(database, tmp_path, extra) as inst:
        inst.start()
        senders = [
            Client(inst.smtp_port, range(i, total, clients), deadline_s=600) for i in range(clients)
        ]
        for c in senders:
            c.start()

        def acked() -> int:
            return sum(c.acked_count() for c in senders)

        deadline = time.monotonic() + 600
        for threshold in kills:
            while acked() < threshold:
                assert any(c.is_alive() for c in senders) and time.monotonic() < deadline, (
                    f"stream stalled at {acked()} before the kill at {threshold}"
                )
                time.sleep(0.005)
            inst.kill9()
            inst.start()
        for c in senders:
            c.join(max(1.0, deadline - time.monotonic()))
        assert not any(c.is_alive() for c in senders), f"clients did not finish: {acked()} acked"
        assert all(c.refused == {} for c in senders)
        assert set().union(*(c.acked for c in senders)) == set(range(total))
        assert sum(c.retries for c in senders) > 0
        roots = assert_stored_once(database, total)
        print(
            f"\n3 kills; {sum(c.retries for c in senders)} retries; {sum(roots.values())} tickets"
        )
