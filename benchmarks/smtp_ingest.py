"""SMTP intake: acceptance against a bare fsync-per-message aiosmtpd sink, and end to end.

Sends N distinct realistic messages (plain, multipart/alternative, ~20 % with a 20 KB
attachment, ~30 % replies to earlier tickets) over C concurrent SMTP connections, first to a bare
aiosmtpd server that writes each message to a file and fsyncs before answering 250 (the cheapest
durable acceptance on the machine), then to `ticketgate run` on SQLite and on PostgreSQL (when
TICKETGATE_TEST_POSTGRES_URL is set), R rounds in turn (sink, then the gateway), each round's
ratio taken within the round. Two figures per gateway run:
- acceptance: messages/s until the last 250 (the edge queues durably), and its ratio to the sink;
- end to end: messages/s from the first send until the queue is empty (every mail a ticket or a
  message), with a check that every reply landed on its parent's ticket.
Prints every round and the medians as JSON and a table.

    .venv/bin/python benchmarks/smtp_ingest.py [-n 2000] [-c 8,1] [--backends sqlite,postgres]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMPLOYEES = [
    "frank@acme.example",
    "grace@acme.example",
    "henry@acme.example",
    "irene@acme.example",
    "james@acme.example",
    "nora@acme.example",
    "paula@acme.example",
    "karl@acme.example",
]
DEPTS = ["it@acme.example", "facilities@acme.example", "hr@acme.example", "finance@acme.example"]
ATTACHMENT = bytes(random.Random(7).getrandbits(8) for _ in range(20 * 1024))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --env KEY=VALUE pairs for the gateway runs (e.g. TICKETGATE__INTAKE__BATCH_SIZE=8)
EXTRA_ENV: dict[str, str] = {}
PARENTS: dict[str, str] = {}  # reply Message-ID → its parent's, filled by build_messages


def build_messages(n: int, seed: int = 1) -> list[tuple[str, list[str], bytes]]:
    """N distinct messages; replies reference the Message-ID of an earlier message (its ticket)."""
    rnd = random.Random(seed)
    PARENTS.clear()
    out: list[tuple[str, list[str], bytes]] = []
    sent_ids: list[tuple[str, str, str]] = []  # (message-id, sender, dept)
    for i in range(n):
        m = EmailMessage()
        is_reply = sent_ids and rnd.random() < 0.30
        if is_reply:
            parent, sender, dept = rnd.choice(sent_ids[-200:])
            m["Subject"] = f"Re: Printer problem number {i}"
            m["In-Reply-To"] = parent
            m["References"] = parent
        else:
            sender, dept = rnd.choice(EMPLOYEES), rnd.choice(DEPTS)
            m["Subject"] = f"Printer problem number {i}"
        mid = f"<bench-{i}-{uuid.uuid4().hex[:8]}@client.example>"
        m["From"] = sender
        m["To"] = dept
        m["Date"] = formatdate()
        m["Message-ID"] = mid
        m["User-Agent"] = "Mozilla Thunderbird 128.3"
        text = (
            f"Hello team,\n\nthe printer on floor {i % 7} shows error E{i % 13}. "
            "It started this morning and the queue is stuck.\n\nThanks,\nsomeone\n"
        )
        if is_reply:
            text = "Still broken, any news?\n\nOn Mon, Helpdesk wrote:\n> " + text.replace(
                "\n", "\n> "
            )
        m.set_content(text)
        if rnd.random() < 0.5:
            m.add_alternative(f"<p>{text.replace(chr(10), '<br>')}</p>", subtype="html")
        if rnd.random() < 0.20:
            m.add_attachment(
                ATTACHMENT, maintype="application", subtype="pdf", filename=f"scan{i}.pdf"
            )
        if not is_reply:
            sent_ids.append((mid, sender, dept))
        else:
            PARENTS[mid.strip("<>")] = parent.strip("<>")
        out.append((sender, [dept], m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")))
    return out


def blast(port: int, msgs: list[tuple[str, list[str], bytes]], conns: int) -> dict[str, float]:
    """Send over `conns` persistent connections; latency is DATA→250 per message, and the whole
    transaction (MAIL FROM → 250 after the data), where waits at RCPT TO also show."""
    lat: list[float] = []
    txn: list[float] = []
    errors = [0]
    first_error: list[str] = []
    lock = threading.Lock()
    # Messages are dealt in order so that a reply is sent after its parent in most cases.
    queues = [msgs[i::conns] for i in range(conns)]

    def worker(q: list[tuple[str, list[str], bytes]]) -> None:
        s = smtplib.SMTP("127.0.0.1", port, timeout=120)
        s.ehlo()
        mine: list[float] = []
        whole: list[float] = []
        for sender, rcpts, data in q:
            t_mail = time.perf_counter()
            s.mail(sender)
            for r in rcpts:
                s.rcpt(r)
            t0 = time.perf_counter()
            code, _ = s.data(data)
            done = time.perf_counter()
            mine.append(done - t0)
            whole.append(done - t_mail)
            if code != 250:
                with lock:
                    errors[0] += 1
                    if not first_error:
                        first_error.append(f"{code} {_!r}")
        s.quit()
        with lock:
            lat.extend(mine)
            txn.extend(whole)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    txn.sort()
    return {
        "messages": len(msgs),
        "errors": errors[0],
        "seconds": round(wall, 3),
        "msg_per_s": round(len(msgs) / wall, 1),
        "p50_ms": round(statistics.median(lat) * 1000, 2),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2),
        "txn_p50_ms": round(statistics.median(txn) * 1000, 2),
        "txn_p99_ms": round(txn[min(len(txn) - 1, int(len(txn) * 0.99))] * 1000, 2),
        **({"first_error": first_error[0]} if first_error else {}),
    }


CEILING_SERVER = r"""
import asyncio, os, sys, uuid
from aiosmtpd.controller import Controller
folder = sys.argv[2]
class H:
    async def handle_DATA(self, server, session, envelope):
        p = os.path.join(folder, uuid.uuid4().hex)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, envelope.original_content)
        os.fsync(fd)
        os.close(fd)
        return "250 OK"
c = Controller(H(), hostname="127.0.0.1", port=int(sys.argv[1]), decode_data=False)
c.start()
print("ready", flush=True)
sys.stdin.read()
"""


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by process `pid` and by each of its children,
    by their names (Linux /proc): where the gateway's CPU goes."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(p: int) -> tuple[str, int, float]:
        text = Path(f"/proc/{p}/stat").read_text()
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick

    out: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name, ppid, cpu = stat(int(entry.name))
        except (OSError, ValueError):
            continue
        if int(entry.name) == pid:
            out["gateway"] = cpu
        elif ppid == pid:
            out[name] = out.get(name, 0.0) + cpu
    return out


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server did not listen on {port}")


def run_ceiling(msgs: list[tuple[str, list[str], bytes]], conns: int) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [sys.executable, "-c", CEILING_SERVER, str(port), d],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            wait_port(port, proc)
            return blast(port, msgs, conns)
        finally:
            proc.kill()
            proc.wait()


def pg_schema_url(base: str) -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    schema = "bench_" + uuid.uuid4().hex[:8]
    eng = create_engine(base, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    eng.dispose()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


def bench_database(backend: str, folder: str, name: str) -> tuple[str, str]:
    """(database URL, PostgreSQL schema or "") for one run: a SQLite file ``name`` in
    ``folder``, or a fresh schema on $TICKETGATE_TEST_POSTGRES_URL."""
    if backend == "sqlite":
        return f"sqlite:///{folder}/{name}", ""
    pg = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
    if not pg:
        raise SystemExit("TICKETGATE_TEST_POSTGRES_URL is not set")
    return pg_schema_url(pg)


def drop_schema(base: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    eng = create_engine(base, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    eng.dispose()


def wait_processed(url: str, timeout: float = 600) -> dict[str, float]:
    """Poll the database until no mail is queued; returns when that was, and whether every
    reply is a message on its parent's ticket."""
    from sqlalchemy import create_engine, func, select

    sys.path.insert(0, str(ROOT))
    from store import models as m

    eng = create_engine(url)
    try:
        deadline = time.perf_counter() + timeout
        with eng.connect() as c:
            while True:
                c.rollback()
                queued = c.scalar(
                    select(func.count())
                    .select_from(m.InboundMail)
                    .where(m.InboundMail.outcome == "queued")
                )
                if not queued:
                    done = time.perf_counter()
                    break
                if time.perf_counter() > deadline:
                    raise SystemExit(f"{queued} mails still queued after {timeout} s")
                time.sleep(0.02)
            roots = dict(c.execute(select(m.Ticket.id, m.Ticket.root_message_id)).all())
            on = dict(c.execute(select(m.Message.message_id, m.Message.ticket_id)).all())
            rules = dict(c.execute(select(m.InboundMail.message_id, m.InboundMail.rule)).all())
            outcomes = dict(
                c.execute(
                    select(m.InboundMail.outcome, func.count()).group_by(m.InboundMail.outcome)
                ).all()
            )
    finally:
        eng.dispose()
    wrong = [r for r, p in PARENTS.items() if roots.get(on.get(r, -1)) != p]
    return {
        "done": done,
        "replies_misthreaded": len(wrong),
        "misthreaded_rules": sorted({rules.get(r, "?") for r in wrong})[:5],  # type: ignore[dict-item]
        "outcomes": outcomes,  # type: ignore[dict-item]
    }


def bench_env(d: str, url: str, smtp_port: int) -> dict[str, str]:
    """The environment of a benchmarked `ticketgate run` in folder `d` on database `url`."""
    return {
        **os.environ,
        "TICKETGATE_CONFIG": f"{d}/ticketgate.toml",
        "TICKETGATE__DATABASE__URL": url,
        "TICKETGATE__SMTP__PORT": str(smtp_port),
        "TICKETGATE__HTTP__PORT": str(free_port()),
        "TICKETGATE__MAIL__SECRET": "bench-secret-0123456789",
        "TICKETGATE__OUTBOUND__MAILDIR": f"{d}/outbox",
        # Delivery is its own benchmark: no worker competes for the CPU here.
        "TICKETGATE__OUTBOUND__WORKERS": "0",
        "TICKETGATE__SMTP__SENDER_RATE_PER_HOUR": "1000000",
        "TICKETGATE__SMTP__SENDER_BURST_PER_MINUTE": "1000000",
        "TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "1000000",
    }


def run_gateway(
    backend: str, msgs: list[tuple[str, list[str], bytes]], conns: int
) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        schema = ""
        pg = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
        if backend == "sqlite":
            url = f"sqlite:///{d}/bench.db"
        else:
            url, schema = pg_schema_url(pg)
        env = {**bench_env(d, url, port), **EXTRA_ENV}
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
            wait_port(port, proc)
            cpu_before = cpu_seconds(proc.pid)
            client_before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            res = blast(port, msgs, conns)
            client = resource.getrusage(resource.RUSAGE_SELF)
            res["client_cpu_ms_per_msg"] = round(
                (
                    client.ru_utime
                    + client.ru_stime
                    - client_before.ru_utime
                    - client_before.ru_stime
                )
                / len(msgs)
                * 1000,
                2,
            )
            if EXTRA_ENV.get("TICKETGATE__INTAKE__RUNNERS") == "0":
                return res  # the edge alone: nothing processes the queue
            after = wait_processed(url)
            cpu_after = cpu_seconds(proc.pid)
            res["cpu_ms_per_msg"] = {  # type: ignore[assignment]
                k: round((v - cpu_before.get(k, 0.0)) / len(msgs) * 1000, 2)
                for k, v in cpu_after.items()
            }
            res["e2e_seconds"] = round(after["done"] - start, 3)
            res["e2e_msg_per_s"] = round(len(msgs) / (after["done"] - start), 1)
            res["replies_misthreaded"] = after["replies_misthreaded"]
            res["outcomes"] = after["outcomes"]  # type: ignore[assignment]
            if after["replies_misthreaded"]:
                res["misthreaded_rules"] = after["misthreaded_rules"]  # type: ignore[assignment]
        finally:
            proc.terminate()
            proc.wait(30)
            if schema:
                drop_schema(pg, schema)
        return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", default="8,1", help="connection counts, each measured on its own")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="sink and gateway measured alternately this many times; medians are reported",
    )
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for `ticketgate run`")
    a = ap.parse_args()
    EXTRA_ENV.update(kv.split("=", 1) for kv in a.env)
    msgs = build_messages(a.n)
    backends = [
        b
        for b in a.backends.split(",")
        if b != "postgres" or os.environ.get("TICKETGATE_TEST_POSTGRES_URL")
    ]
    report: dict[str, object] = {"benchmark": "smtp_ingest", "n": a.n, "by_connections": {}}
    table: list[str] = []
    for conns in (int(c) for c in a.c.split(",")):
        # On a shared machine the sink itself varies by ±30 % from minute to minute: each
        # round measures it right before the gateway, and the ratio is taken within the round.
        rounds: list[dict[str, dict[str, float]]] = []
        for _ in range(a.rounds):
            r = {"sink": run_ceiling(msgs, conns)}
            for b in backends:
                r[b] = run_gateway(b, msgs, conns)
                r[b]["ratio_to_sink"] = round(r[b]["msg_per_s"] / r["sink"]["msg_per_s"], 3)
            rounds.append(r)
        results = {
            k: {
                f: round(statistics.median(r[k][f] for r in rounds), 3)
                for f in rounds[0][k]
                if isinstance(rounds[0][k][f], (int, float))
            }
            for k in rounds[0]
        }
        report["by_connections"][str(conns)] = {"rounds": rounds, "results": results}  # type: ignore[index]
        for label, rs in [*((str(i + 1), r) for i, r in enumerate(rounds)), ("median", results)]:
            for k, x in rs.items():
                table.append(
                    f"{conns:>5} {label:<6} {k:<9} {x['msg_per_s']:>8} {x['p50_ms']:>7} "
                    f"{x['p99_ms']:>7} {x.get('ratio_to_sink', 1.0):>6} "
                    f"{x.get('e2e_msg_per_s', '-'):>8} {x.get('replies_misthreaded', '-'):>6} "
                    f"{x['errors']:>6}"
                )
    print(json.dumps(report, indent=2))
    print(
        f"\n{'conns':>5} {'round':<6} {'server':<9} {'accept/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'ratio':>6} {'e2e/s':>8} {'wrong':>6} {'errors':>6}"
    )
    print("\n".join(table))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
