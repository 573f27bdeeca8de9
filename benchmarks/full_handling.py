"""Full handling: inbound mail to a 3-member department, timed until the outbox is empty.

`smtp_ingest.py`'s message mix (plain and multipart, ~20 % with a 20 KB attachment, ~30 %
replies to earlier tickets), all of it to IT (3 active members), sent over C connections to
`ticketgate run` (SMTP edge, intake runner, delivery worker: one installation, as operated),
and timed from the first send until every mail is processed, every notification event fanned
out and every outbox row delivered (to the Maildir, or to a relay sink in a process of its
own). Each new ticket causes an acknowledgement and three notices, each reply a notice to
each member. Prints every round, the medians, and the load of the machine.

    .venv/bin/python benchmarks/full_handling.py [-n 300] [-c 8] [--backends sqlite,postgres]
        [--rounds 3] [--transport maildir|smtp] [--env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smtp_ingest as ingest  # the benchmark beside this one
from outbox_delivery import SinkProcess, load

ROOT = Path(__file__).resolve().parent.parent
IT = "it@acme.example"


def wait_handled(url: str, timeout: float = 600) -> tuple[float, float, dict[str, int]]:
    """Poll until nothing is queued, no event is pending and no outbox row waits; returns when
    the queue was first empty (intake done), when everything was, and the outbox's states."""
    from sqlalchemy import create_engine, func, select

    sys.path.insert(0, str(ROOT))
    from store import models as m

    eng = create_engine(url)
    deadline = time.perf_counter() + timeout
    intake_done = 0.0
    try:
        with eng.connect() as c:
            while True:
                c.rollback()
                queued = c.scalar(
                    select(func.count())
                    .select_from(m.InboundMail)
                    .where(m.InboundMail.outcome == "queued")
                )
                events = c.scalar(
                    select(func.count())
                    .select_from(m.OutboxEvent)
                    .where(m.OutboxEvent.state == "pending")
                )
                waiting = c.scalar(
                    select(func.count())
                    .select_from(m.Outbox)
                    .where(m.Outbox.state.in_(("pending", "sending")))
                )
                if not queued and not intake_done:
                    intake_done = time.perf_counter()
                if not queued and not events and not waiting:
                    done = time.perf_counter()
                    break
                if time.perf_counter() > deadline:
                    raise SystemExit(f"not handled after {timeout} s: {queued} {events} {waiting}")
                time.sleep(0.02)
            states = dict(
                c.execute(select(m.Outbox.state, func.count()).group_by(m.Outbox.state)).all()
            )
    finally:
        eng.dispose()
    return intake_done, done, {str(k): int(v) for k, v in states.items()}


def run(
    backend: str, n: int, conns: int, transport: str, extra: dict[str, str]
) -> dict[str, object]:
    ingest.DEPTS[:] = [IT]  # every new ticket to IT (3 members)
    msgs = ingest.build_messages(n)
    port = ingest.free_port()
    sink = None
    with tempfile.TemporaryDirectory() as d:
        schema = ""
        pg = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
        url = f"sqlite:///{d}/bench.db" if backend == "sqlite" else ""
        if backend != "sqlite":
            url, schema = ingest.pg_schema_url(pg)
        env = {
            **os.environ,
            "TICKETGATE_CONFIG": f"{d}/ticketgate.toml",
            "TICKETGATE__DATABASE__URL": url,
            "TICKETGATE__SMTP__PORT": str(port),
            "TICKETGATE__HTTP__PORT": str(ingest.free_port()),
            "TICKETGATE__MAIL__SECRET": "bench-secret-0123456789",
            "TICKETGATE__OUTBOUND__MAILDIR": f"{d}/outbox",
            "TICKETGATE__OUTBOUND__POLL_SECONDS": "0.05",
            "TICKETGATE__SMTP__SENDER_RATE_PER_HOUR": "1000000",
            "TICKETGATE__SMTP__SENDER_BURST_PER_MINUTE": "1000000",
            "TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "1000000",
            "TICKETGATE__MAIL__AUTO_MAIL_PER_TICKET_HOUR": "1000000",
            "TICKETGATE__MAIL__NOTICES_PER_SENDER_HOUR": "1000000",
            **extra,
        }
        if transport == "smtp":
            relay = ingest.free_port()
            sink = SinkProcess(relay)
            env |= {"TICKETGATE__OUTBOUND__TRANSPORT": "smtp"}
            env |= {"TICKETGATE__OUTBOUND__RELAY_PORT": str(relay)}
        cli = [sys.executable, "-m", "gateway"]
        subprocess.run([*cli, "init", "--demo"], env=env, cwd=d, check=True, capture_output=True)
        proc = subprocess.Popen(
            [*cli, "run"],
            env=env,
            cwd=d,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            ingest.wait_port(port, proc)
            start = time.perf_counter()
            sent = ingest.blast(port, msgs, conns)
            intake_done, done, states = wait_handled(url)
            seconds = done - start
            delivered = (
                sink.count
                if sink is not None
                else len(list((Path(d) / "outbox" / "new").iterdir()))
            )
            return {
                "inbound": n,
                "errors": sent["errors"],
                "accepted_per_s": sent["msg_per_s"],
                "intake_seconds": round(intake_done - start, 3),
                "handled_seconds": round(seconds, 3),
                "handled_per_s": round(n / seconds, 1),
                "mails_out": delivered,
                "mails_out_per_s": round(delivered / seconds, 1),
                "outbox": states,
            }
        finally:
            proc.terminate()
            proc.wait(30)
            if sink is not None:
                sink.stop()
            if schema:
                ingest.drop_schema(pg, schema)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("-c", type=int, default=8)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--transport", default="maildir", choices=("maildir", "smtp"))
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for `run`")
    a = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in a.env)
    rounds: dict[str, list[dict[str, object]]] = {}
    for r in range(a.rounds):
        print(f"round {r + 1}: {load()}", file=sys.stderr)
        for backend in a.backends.split(","):
            if backend == "postgres" and not os.environ.get("TICKETGATE_TEST_POSTGRES_URL"):
                continue
            res = run(backend, a.n, a.c, a.transport, extra)
            rounds.setdefault(backend, []).append(res)
            print(f"  {backend}: {res}", file=sys.stderr)
    summary = {
        b: {
            "handled_per_s": statistics.median(float(str(x["handled_per_s"])) for x in v),
            "mails_out": v[0]["mails_out"],
            "rounds": [x["handled_per_s"] for x in v],
        }
        for b, v in rounds.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "full_handling",
                "inbound": a.n,
                "connections": a.c,
                "transport": a.transport,
                "env": extra,
                "load_after": load(),
                "results": summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
