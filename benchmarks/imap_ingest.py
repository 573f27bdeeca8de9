"""IMAP intake: N messages APPENDed to a Dovecot folder, time until all are tickets and moved.

The messages are those of `smtp_ingest.py` (plain and multipart/alternative, ~20 % with a 20 KB
PDF, ~30 % replies to earlier tickets), APPENDed to the INBOX of a Dovecot started in a temp dir
(tests/dovecot.py) with a Return-Path and a Delivered-To as a delivery agent writes them. Two
modes per backend:
- backlog: the messages are in the folder before `ticketgate run` starts (a first run against a
  full mailbox); timed from the start of `run` until every message is a ticket or a message
  and the folder is empty (all moved to Processed);
- live: `run` is up and idling (IDLE) when the APPENDs start; timed from the first APPEND.
Prints every run as JSON and a table.

    .venv/bin/python benchmarks/imap_ingest.py [-n 2000] [--backends sqlite,postgres]
        [--modes backlog,live]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.smtp_ingest import (
    PARENTS,
    bench_env,
    build_messages,
    drop_schema,
    free_port,
    pg_schema_url,
)
from tests.dovecot import PASSWORD, Dovecot, running_dovecot

VERBOSE = False  # --verbose: the run's IMAP log lines on stderr


def counts(url: str) -> tuple[int, int, int]:
    """(processing records not queued, replies misthreaded, records) of the database."""
    from sqlalchemy import create_engine, func, select

    from store import models as m

    eng = create_engine(url)
    try:
        with eng.connect() as c:
            done = c.scalar(
                select(func.count())
                .select_from(m.InboundMail)
                .where(m.InboundMail.outcome != "queued")
            )
            roots = dict(c.execute(select(m.Ticket.id, m.Ticket.root_message_id)).all())
            on = dict(c.execute(select(m.Message.message_id, m.Message.ticket_id)).all())
            total = c.scalar(select(func.count()).select_from(m.InboundMail))
    finally:
        eng.dispose()
    wrong = [r for r, p in PARENTS.items() if roots.get(on.get(r, -1)) != p]
    return int(done or 0), len(wrong), int(total or 0)


def append_all(dv: Dovecot, msgs: list[tuple[str, list[str], bytes]]) -> float:
    """APPEND every message over one connection; returns the seconds it took."""
    start = time.perf_counter()
    with dv.client("it") as c:
        for sender, rcpts, data in msgs:
            envelope = f"Return-Path: <{sender}>\r\nDelivered-To: {rcpts[0]}\r\n".encode()
            c.append("INBOX", envelope + data)
    return time.perf_counter() - start


def wait_moved(dv: Dovecot, url: str, n: int, timeout: float = 900) -> float:
    """Poll until all `n` are decided and the INBOX is empty; returns when that was."""
    deadline = time.perf_counter() + timeout
    pause = threading.Event()
    with dv.client("it") as c:
        while True:
            left = int(c.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"])
            if left == 0 and counts(url)[0] >= n:
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise SystemExit(f"{left} messages still in INBOX after {timeout} s")
            pause.wait(0.05)


def run(backend: str, mode: str, msgs: list[tuple[str, list[str], bytes]]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as d, running_dovecot() as dv:
        schema = ""
        pg = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
        url = f"sqlite:///{d}/bench.db" if backend == "sqlite" else ""
        if backend == "postgres":
            url, schema = pg_schema_url(pg)
        box = {
            "name": "it-desk",
            "host": "127.0.0.1",
            "port": dv.port,
            "tls": "none",
            "user": "it",
            "password": PASSWORD,
        }
        env = {
            **bench_env(d, url, free_port()),
            "PYTHONPATH": str(ROOT),
            "TICKETGATE__IMAP__ENABLED": "true",
            "TICKETGATE__IMAP__MAILBOXES": json.dumps([box]),
        }
        cli = [sys.executable, "-m", "gateway"]
        subprocess.run([*cli, "init", "--demo"], env=env, cwd=d, check=True, capture_output=True)
        appended = append_all(dv, msgs) if mode == "backlog" else 0.0
        log = Path(d) / "run.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*cli, "run"], env=env, cwd=d, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            if mode == "backlog":
                start = time.perf_counter()
            else:
                pause = threading.Event()
                while b"it-desk: connected" not in log.read_bytes():
                    assert proc.poll() is None, log.read_text()[-800:]
                    pause.wait(0.05)
                start = time.perf_counter()
                appended = append_all(dv, msgs)
            done = wait_moved(dv, url, len(msgs))
            decided, wrong, total = counts(url)
            processed = dv.count("it", "Processed")
            if VERBOSE:
                for line in log.read_text(errors="replace").splitlines():
                    if "ticketgate.imap" in line or "ticketgate:" in line:
                        print(line, file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(60)
            if schema:
                drop_schema(pg, schema)
        seconds = done - start
        return {
            "backend": backend,
            "mode": mode,
            "messages": len(msgs),
            "append_seconds": round(appended, 2),
            "seconds": round(seconds, 2),
            "msg_per_s": round(len(msgs) / seconds, 1),
            "records": total,
            "decided": decided,
            "processed_folder": processed,
            "replies_misthreaded": wrong,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--modes", default="backlog,live")
    ap.add_argument("--verbose", action="store_true", help="print the IMAP log lines of each run")
    args = ap.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    backends = [b for b in args.backends.split(",") if b]
    if "postgres" in backends and not os.environ.get("TICKETGATE_TEST_POSTGRES_URL"):
        backends.remove("postgres")
    msgs = build_messages(args.n)
    results = []
    for backend in backends:
        for mode in args.modes.split(","):
            r = run(backend, mode, msgs)
            print(json.dumps(r), flush=True)
            results.append(r)
    print("\n| backend | mode | messages | seconds | msg/s | in Processed | misthreaded |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['backend']} | {r['mode']} | {r['messages']} | {r['seconds']} | "
            f"{r['msg_per_s']} | {r['processed_folder']} | {r['replies_misthreaded']} |"
        )


if __name__ == "__main__":
    main()
