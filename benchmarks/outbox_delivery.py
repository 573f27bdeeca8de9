"""Outbox delivery throughput: render and send queued notices to a Maildir and to an SMTP relay.

Raises T tickets through the service (each queues an acknowledgement and a notice per member
of the target department), then times the delivery worker fanning the events out and draining
the outbox, once with the maildir transport and once against a local aiosmtpd relay sink (in a
process of its own, as a relay is); optionally with two workers claiming concurrently (SKIP
LOCKED on PostgreSQL). R rounds; prints every round, the medians as JSON, and a table.

    .venv/bin/python benchmarks/outbox_delivery.py [-t 300] [--backends sqlite,postgres]
        [--rounds 3] [--runs maildir/1,smtp/1,smtp/2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # appended: a tree named in PYTHONPATH (another commit) comes first

from aiosmtpd.controller import Controller

from gateway.service.clock import SystemClock
from gateway.service.commands import RaiseTicket
from tests.conftest import Database, free_port, make_env, write_demo_org

DEPTS = ["it@acme.example", "facilities@acme.example", "hr@acme.example", "finance@acme.example"]
SENDERS = ["frank@acme.example", "karl@acme.example", "nora@acme.example", "lena@acme.example"]


class Sink:
    """A relay that accepts everything and counts (in a shared counter)."""

    def __init__(self, counter: Synchronized[int]) -> None:
        self.counter = counter

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        with self.counter.get_lock():
            self.counter.value += len(envelope.rcpt_tos)
        return "250 OK"


def _sink_main(port: int, counter: Synchronized[int], ready: Any, stop: Any) -> None:
    ctl = Controller(Sink(counter), hostname="127.0.0.1", port=port)
    ctl.start()
    ready.set()
    stop.wait()
    ctl.stop()


class SinkProcess:
    """The relay sink in a child process: its event loop does not share our GIL."""

    def __init__(self, port: int) -> None:
        mp = multiprocessing.get_context("spawn")
        self.counter: Synchronized[int] = mp.Value("i", 0)  # type: ignore[assignment]
        self._ready, self._stop = mp.Event(), mp.Event()
        self._proc = mp.Process(
            target=_sink_main, args=(port, self.counter, self._ready, self._stop), daemon=True
        )
        self._proc.start()
        self._ready.wait(30)

    @property
    def count(self) -> int:
        return int(self.counter.value)

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(10)


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


EXTRA_ENV: dict[str, str] = {}  # --env KEY=VALUE: settings for this run


def run(backend: str, transport: str, tickets: int, workers: int) -> dict[str, float]:
    from gateway.bootstrap import make_worker

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        db, schema = database(backend, folder)
        port = free_port()
        sink = SinkProcess(port)
        extra = {
            "TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "1000000",
            "TICKETGATE__MAIL__NOTICES_PER_SENDER_HOUR": "1000000",
        }
        extra |= EXTRA_ENV
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
            sink.stop()
            drop(schema)


def load() -> str:
    """The machine's load (`uptime`): figures are noted beside it (a shared machine)."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-t", "--tickets", type=int, default=300)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--runs", default="maildir/1,smtp/1,smtp/2")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the settings")
    a = ap.parse_args()
    EXTRA_ENV.update(kv.split("=", 1) for kv in a.env)
    rounds: dict[str, list[dict[str, float]]] = {}
    for r in range(a.rounds):
        print(f"round {r + 1}: {load()}", file=sys.stderr)
        for backend in a.backends.split(","):
            if backend == "postgres" and not os.environ.get("TICKETGATE_TEST_POSTGRES_URL"):
                continue
            for spec in a.runs.split(","):
                transport, workers = spec.split("/")
                res = run(backend, transport, a.tickets, int(workers))
                rounds.setdefault(f"{backend}/{transport}/{workers}w", []).append(res)
                print(f"  {backend}/{spec}: {res}", file=sys.stderr)
    results = {
        k: {
            "mails": v[0]["mails"],
            "delivered": min(x["delivered"] for x in v),
            "mails_per_s": statistics.median(x["mails_per_s"] for x in v),
            "rounds": [x["mails_per_s"] for x in v],
        }
        for k, v in rounds.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "outbox_delivery",
                "tickets": a.tickets,
                "load_after": load(),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\n{'run':<24} {'mails':>6} {'delivered':>9} {'median/s':>9}  rounds")
    for k, r in results.items():
        print(f"{k:<24} {r['mails']:>6} {r['delivered']:>9} {r['mails_per_s']:>9}  {r['rounds']}")


if __name__ == "__main__":
    main()
