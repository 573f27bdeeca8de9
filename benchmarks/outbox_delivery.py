"""Outbox delivery throughput: render and send queued notices to a Maildir and to an SMTP relay.

Raises T tickets through the service (each queues an acknowledgement and a notice per member
of the target department), then times the delivery worker draining the outbox, once with the
maildir transport and once against a local aiosmtpd relay sink; optionally with two workers
claiming concurrently (SKIP LOCKED on PostgreSQL). Prints JSON and a short table.

    .venv/bin/python benchmarks/outbox_delivery.py [-t 300] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # appended: a tree named in PYTHONPATH (another commit) comes first

from aiosmtpd.controller import Controller

from gateway.service.clock import SystemClock
from gateway.service.commands import RaiseTicket
from tests.conftest import Database, free_port, make_env, write_demo_org

DEPTS = ["it@acme.example", "facilities@acme.example", "hr@acme.example", "finance@acme.example"]
SENDERS = ["frank@acme.example", "karl@acme.example", "nora@acme.example", "lena@acme.example"]


class Sink:
    """A relay that accepts everything and counts."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        with self.lock:
            self.count += 1
        return "250 OK"


def database(backend: str, folder: Path) -> tuple[Database, str]:
    if backend == "sqlite":
        return Database("sqlite", f"sqlite:///{folder}/bench.db"), ""
    from sqlalchemy import create_engine, text

    base = os.environ["TICKETGATE_TEST_POSTGRES_URL"]
    schema = "bench_" + uuid.uuid4().hex[:8]
    eng = create_engine(base, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    eng.dispose()
    return Database("postgres", f"{base}?options=-csearch_path%3D{schema}"), schema


def drop(schema: str) -> None:
    if not schema:
        return
    from sqlalchemy import create_engine, text

    eng = create_engine(os.environ["TICKETGATE_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    eng.dispose()


def run(backend: str, transport: str, tickets: int, workers: int) -> dict[str, float]:
    from gateway.bootstrap import make_worker

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        db, schema = database(backend, folder)
        sink = Sink()
        port = free_port()
        ctl = Controller(sink, hostname="127.0.0.1", port=port)
        ctl.start()
        extra = {
            "TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "1000000",
            "TICKETGATE__MAIL__NOTICES_PER_SENDER_HOUR": "1000000",
        }
        if transport == "smtp":
            extra |= {
                "TICKETGATE__OUTBOUND__TRANSPORT": "smtp",
                "TICKETGATE__OUTBOUND__RELAY_PORT": str(port),
            }
        env = make_env(db, folder / "install", extra)
        try:
            env.import_org(write_demo_org(folder / "install"))
            env.app.service.clock = SystemClock()
            for i in range(tickets):
                env.service.raise_ticket(
                    RaiseTicket(
                        requester=SENDERS[i % len(SENDERS)],
                        to=DEPTS[i % len(DEPTS)],
                        subject=f"Benchmark ticket {i}",
                        body="The printer on floor 3 shows error E5 again.\n" * 5,
                    )
                )
            pool = [make_worker(env.app) for _ in range(workers)]
            handled = [0] * workers

            def drain(k: int) -> None:
                handled[k] = pool[k].run_once()

            t0 = time.perf_counter()
            threads = [threading.Thread(target=drain, args=(k,)) for k in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            total = sum(handled)
            delivered = (
                sink.count
                if transport == "smtp"
                else len(list((folder / "install" / "outbox" / "new").iterdir()))
            )
            return {
                "mails": total,
                "delivered": delivered,
                "seconds": round(wall, 3),
                "mails_per_s": round(total / wall, 1),
            }
        finally:
            env.app.close()
            ctl.stop()
            drop(schema)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-t", "--tickets", type=int, default=300)
    ap.add_argument("--backends", default="sqlite,postgres")
    a = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    for backend in a.backends.split(","):
        if backend == "postgres" and not os.environ.get("TICKETGATE_TEST_POSTGRES_URL"):
            continue
        for transport, workers in (("maildir", 1), ("smtp", 1), ("smtp", 2)):
            results[f"{backend}/{transport}/{workers}w"] = run(
                backend, transport, a.tickets, workers
            )
    print(
        json.dumps(
            {"benchmark": "outbox_delivery", "tickets": a.tickets, "results": results}, indent=2
        )
    )
    print(f"\n{'run':<24} {'mails':>6} {'delivered':>9} {'mails/s':>8}")
    for k, r in results.items():
        print(f"{k:<24} {r['mails']:>6} {r['delivered']:>9} {r['mails_per_s']:>8}")


if __name__ == "__main__":
    main()
