"""Large mails: DATA→250 time and peak memory of `ticketgate run` and its intake runner.

For each size (1, 10, 25 MiB: one mail with one base64 attachment of random bytes, the whole
mail that big) and each concurrency (1 and 4 mails sent at once, each on its own connection),
a fresh `ticketgate run` (init --demo in a temp dir, SQLite unless --backend postgres) takes the
mails; the case ends when the queue is empty and every attachment is stored whole. Reported per
case: DATA→250 seconds (the slowest of the parallel mails), the peak RSS (VmHWM of
/proc/<pid>/status; each case has fresh processes, so the high-water mark is the case's) of the
`run` process, which runs the SMTP edge, and of its intake runner child (found through
/proc/<pid>/task/*/children), each also above its idle RSS, and the ratio of that growth to
the bytes of mail in flight (size × concurrency). One small mail is processed first and the
peaks reset after it (5 > /proc/<pid>/clear_refs), so what the first mail loads is not counted.
For comparison, the same mails go to a bare aiosmtpd server that keeps nothing ("sink"): the
memory aiosmtpd's DATA reading takes by itself. Prints JSON and a table.

    .venv/bin/python benchmarks/large_mail.py [--sizes 1,10,25] [--parallel 1,4]
        [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import date
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
SENDER = "frank@acme.example"
DEPT = "it@acme.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_mail(size: int) -> tuple[bytes, str]:
    """A mail of about `size` bytes carrying one attachment of random bytes; returns the mail
    and the attachment's SHA-256."""
    # base64 with 76-character lines: 4/3 the bytes, plus CRLF per 57 bytes of data.
    payload = os.urandom(int((size - 2048) * 57 / 78))
    m = EmailMessage()
    m["From"] = SENDER
    m["To"] = DEPT
    m["Subject"] = f"Scan of {len(payload) // MiB} MiB"
    m["Date"] = formatdate()
    m["Message-ID"] = f"<large-{uuid.uuid4().hex}@client.example>"
    m.set_content("Hello team,\n\nthe scan is attached.\n\nThanks,\nFrank\n")
    m.add_attachment(payload, maintype="application", subtype="pdf", filename="scan.pdf")
    data = m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data, hashlib.sha256(payload).hexdigest()


SINK_SERVER = r"""
import sys
from aiosmtpd.controller import Controller
class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
c = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]), decode_data=False,
               data_size_limit=int(sys.argv[2]))
c.start()
sys.stdin.read()
"""


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: 5 > /proc/<pid>/clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def settle(pids: list[int], timeout: float = 30) -> None:
    """Wait until the RSS of every process has stayed within 1 MiB for half a second."""
    deadline = time.monotonic() + timeout
    last = [status_kib(p, "VmRSS") for p in pids]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = [status_kib(p, "VmRSS") for p in pids]
        if all(abs(a - b) < 1024 for a, b in zip(now, last, strict=True)):
            return
        last = now


def status_kib(pid: int, field: str) -> int:
    """A `VmHWM`/`VmRSS` line of /proc/<pid>/status, in KiB (0 once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def runner_children(pid: int) -> list[int]:
    """The intake runner processes among the children of `pid` (multiprocessing's spawned
    children; its resource tracker is not one)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for c in children:
            try:
                cmdline = Path(f"/proc/{c}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                out.append(int(c))
    return sorted(set(out))


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ticketgate run exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"ticketgate run did not listen on {port}")


def send(port: int, data: bytes, out: list[float], errors: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as s:
        s.ehlo()
        s.mail(SENDER, [f"SIZE={len(data)}"])
        s.rcpt(DEPT)
        t0 = time.perf_counter()
        code, text = s.data(data)
        out.append(time.perf_counter() - t0)
        if code != 250:
            errors.append(f"{code} {text!r}")


def wait_stored(url: str, shas: list[str], timeout: float = 600) -> dict[str, int]:
    """Poll until no mail is queued; returns the outcomes, and fails unless every attachment
    is stored whole."""
    from sqlalchemy import create_engine, func, select

    from store import models as m

    eng = create_engine(url)
    try:
        deadline = time.monotonic() + timeout
        with eng.connect() as c:
            while True:
                c.rollback()
                queued = c.scalar(
                    select(func.count())
                    .select_from(m.InboundMail)
                    .where(m.InboundMail.outcome == "queued")
                )
                if not queued:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{queued} mails still queued after {timeout} s")
                time.sleep(0.05)
            outcomes = dict(
                c.execute(
                    select(m.InboundMail.outcome, func.count()).group_by(m.InboundMail.outcome)
                ).all()
            )
            stored = set(c.scalars(select(m.Blob.sha256).where(m.Blob.sha256.in_(shas))))
    finally:
        eng.dispose()
    if stored != set(shas):
        raise SystemExit(f"{len(set(shas) - stored)} attachments not stored; {outcomes}")
    return {str(k): int(v) for k, v in outcomes.items()}


def run_case(size_mib: int, parallel: int, backend: str) -> dict[str, object]:
    mails = [build_mail(size_mib * MiB) for _ in range(parallel)]
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        schema = ""
        pg = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
        if backend == "postgres":
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from smtp_ingest import pg_schema_url

            url, schema = pg_schema_url(pg)
        else:
            url = f"sqlite:///{d}/bench.db"
        env = {
            **os.environ,
            "TICKETGATE_CONFIG": f"{d}/ticketgate.toml",
            "TICKETGATE__DATABASE__URL": url,
            "TICKETGATE__SMTP__PORT": str(port),
            "TICKETGATE__HTTP__PORT": str(free_port()),
            "TICKETGATE__MAIL__SECRET": "bench-secret-0123456789",
            "TICKETGATE__OUTBOUND__MAILDIR": f"{d}/outbox",
            "TICKETGATE__OUTBOUND__WORKERS": "0",
            # A 25 MiB mail is just within the default 26214400; its attachment (19 MiB) is
            # over the default per-file cap of 10 MiB, which would drop it unstored.
            "TICKETGATE__SMTP__MAX_MESSAGE_BYTES": str(27 * MiB),
            "TICKETGATE__SMTP__MAX_ATTACHMENT_BYTES": str(32 * MiB),
            "TICKETGATE__SMTP__MAX_TOTAL_ATTACHMENT_BYTES": str(32 * MiB),
        }
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
            deadline = time.monotonic() + 60
            while not (children := runner_children(proc.pid)):
                if time.monotonic() > deadline:
                    raise SystemExit("no intake runner child found")
                time.sleep(0.05)
            # One small mail first: what the first mail loads (modules, caches) is no cost of
            # a large one. Then the peaks start from the idle RSS.
            warm, warm_sha = build_mail(64 * 1024)
            send(port, warm, [], [])
            wait_stored(url, [warm_sha])
            settle([proc.pid, *children])
            resets = [reset_peak(p) for p in (proc.pid, *children)]  # each, not all() short
            reset = all(resets)
            idle = {"run": status_kib(proc.pid, "VmRSS")}
            idle.update({str(c): status_kib(c, "VmRSS") for c in children})
            times: list[float] = []
            errors: list[str] = []
            threads = [
                threading.Thread(target=send, args=(port, data, times, errors)) for data, _ in mails
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise SystemExit(f"not accepted: {errors}")
            edge_peak = status_kib(proc.pid, "VmHWM")
            outcomes = wait_stored(url, [sha for _, sha in mails])
            peaks = {"run": status_kib(proc.pid, "VmHWM")}
            peaks.update({str(c): status_kib(c, "VmHWM") for c in children})
        finally:
            proc.terminate()
            proc.wait(60)
            if schema:
                sys.path.insert(0, str(ROOT / "benchmarks"))
                from smtp_ingest import drop_schema

                drop_schema(pg, schema)
    in_flight = sum(len(data) for data, _ in mails)
    runner_key = str(children[0])

    def growth(key: str) -> float:
        return round((peaks[key] - idle[key]) * 1024 / in_flight, 2)

    return {
        "size_mib": size_mib,
        "parallel": parallel,
        "mail_bytes": len(mails[0][0]),
        "data_to_250_s": round(max(times), 3),
        "run_idle_mib": round(idle["run"] / 1024, 1),
        "run_peak_mib": round(peaks["run"] / 1024, 1),
        "run_peak_at_last_250_mib": round(edge_peak / 1024, 1),
        "run_growth_per_input": growth("run"),
        "runner_idle_mib": round(idle[runner_key] / 1024, 1),
        "runner_peak_mib": round(peaks[runner_key] / 1024, 1),
        "runner_growth_per_input": growth(runner_key),
        "runners": len(children),
        "peaks_reset_after_warm_up": reset,
        "outcomes": outcomes,
    }


def run_sink(size_mib: int, parallel: int) -> dict[str, object]:
    """The same mails to a bare aiosmtpd server that answers 250 and keeps nothing: the memory
    aiosmtpd's DATA reading takes by itself."""
    mails = [build_mail(size_mib * MiB) for _ in range(parallel)]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SINK_SERVER, str(port), str(27 * MiB)], stdin=subprocess.PIPE
    )
    try:
        wait_port(port, proc)
        warm, _ = build_mail(64 * 1024)
        send(port, warm, [], [])
        settle([proc.pid])
        reset_peak(proc.pid)
        idle = status_kib(proc.pid, "VmRSS")
        times: list[float] = []
        threads = [threading.Thread(target=send, args=(port, data, times, [])) for data, _ in mails]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = status_kib(proc.pid, "VmHWM")
    finally:
        proc.kill()
        proc.wait()
    in_flight = sum(len(data) for data, _ in mails)
    return {
        "size_mib": size_mib,
        "parallel": parallel,
        "data_to_250_s": round(max(times), 3),
        "sink_idle_mib": round(idle / 1024, 1),
        "sink_peak_mib": round(peak / 1024, 1),
        "sink_growth_per_input": round((peak - idle) * 1024 / in_flight, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,10,25", help="mail sizes in MiB")
    ap.add_argument("--parallel", default="1,4", help="mails sent at once")
    ap.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    a = ap.parse_args()
    if a.backend == "postgres" and not os.environ.get("TICKETGATE_TEST_POSTGRES_URL"):
        raise SystemExit("--backend postgres needs TICKETGATE_TEST_POSTGRES_URL")
    cases = [
        run_case(int(size), int(par), a.backend)
        for par in a.parallel.split(",")
        for size in a.sizes.split(",")
    ]
    sinks = [
        run_sink(int(size), int(par))
        for par in a.parallel.split(",")
        for size in a.sizes.split(",")
    ]
    for case, sink in zip(cases, sinks, strict=True):
        case["aiosmtpd_sink_growth_per_input"] = sink["sink_growth_per_input"]
    report = {
        "benchmark": "large_mail",
        "backend": a.backend,
        "date": date.today().isoformat(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "cases": cases,
        "aiosmtpd_sink": sinks,
    }
    print(json.dumps(report, indent=2))
    print(
        f"\n{'MiB':>4} {'par':>3} {'DATA→250 s':>10} {'run idle':>8} {'run peak':>8} "
        f"{'run ×':>6} {'runner idle':>11} {'runner peak':>11} {'runner ×':>8} {'sink ×':>6}"
    )
    for c in cases:
        print(
            f"{c['size_mib']:>4} {c['parallel']:>3} {c['data_to_250_s']:>10} "
            f"{c['run_idle_mib']:>8} {c['run_peak_mib']:>8} {c['run_growth_per_input']:>6} "
            f"{c['runner_idle_mib']:>11} {c['runner_peak_mib']:>11} "
            f"{c['runner_growth_per_input']:>8} {c['aiosmtpd_sink_growth_per_input']:>6}"
        )
    print(
        "\n× = (peak RSS − idle RSS) / bytes of mail in flight (size × parallel); sink = a bare"
        " aiosmtpd server that answers 250 and keeps nothing"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
