"""Slack acks under load: signed `/ticket new IT: …` and `/ticket take TKT-n` requests from 8
concurrent clients to the Slack app at /slack/events, while mail arrives over SMTP (the intake
runner processing it) and the delivery worker posts to a local fake Slack Web API. Reports
the time to the HTTP 200 (the ack; Slack's limit is 3 s) — p50, p95, p99 — and how many
tickets the commands raised once the listeners caught up.

    .venv/bin/python benchmarks/slack_commands.py [-n 400] [--clients 8] [--mails 200]
                                                  [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import os
import random
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from smtp_ingest import bench_database, build_messages, drop_schema

    from gateway.bootstrap import build, make_edge, make_runner, make_slack, make_worker
    from gateway.config import load_settings
    from gateway.mail.smtp_server import SmtpEdgeServer
    from gateway.service.org_import import import_org
    from store.migrate import upgrade
    from tests.conftest import crlf, free_port, write_demo_org
    from tests.fake_slack import BOT_TOKEN, SIGNING_SECRET, SlackClient, fake_slack

    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=400, help="requests in all")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--mails", type=int, default=200)
    ap.add_argument("--backend", default="sqlite", choices=("sqlite", "postgres"))
    a = ap.parse_args()
    pg = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as d, fake_slack() as fake:
        url, schema = bench_database(a.backend, d, "slack.db")
        requesters = {
            "U0KARL": "karl@acme.example",
            "U0LENA": "lena@acme.example",
            "U0MIA": "mia@acme.example",
            "U0DIETER": "dieter@acme.example",
        }
        takers = {"U0ALICE": "alice@acme.example", "U0BOB": "bob@acme.example"}
        for uid, email in {**requesters, **takers}.items():
            fake.add_user(uid, email)
        env = {
            "TICKETGATE__DATABASE__URL": url,
            "TICKETGATE__MAIL__SECRET": "bench-secret-0123456789",
            "TICKETGATE__MAIL__DOMAIN": "tickets.acme.example",
            "TICKETGATE__SMTP__SENDER_RATE_PER_HOUR": "1000000",
            "TICKETGATE__SMTP__SENDER_BURST_PER_MINUTE": "1000000",
            "TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "1000000",
            "TICKETGATE__MAIL__NOTICES_PER_SENDER_HOUR": "1000000",
            "TICKETGATE__OUTBOUND__MAILDIR": f"{d}/outbox",
            "TICKETGATE__SLACK__ENABLED": "true",
            "TICKETGATE__SLACK__API_URL": fake.url,
            "TICKETGATE__SLACK__BOT_TOKEN": BOT_TOKEN,
            "TICKETGATE__SLACK__SIGNING_SECRET": SIGNING_SECRET,
        }
        app = build(load_settings(Path(d) / "ticketgate.toml", env))
        try:
            upgrade(app.engine)
            with app.sessions() as s, s.begin():
                import_org(s, write_demo_org(Path(d)), mail_domain="tickets.acme.example")
            runner = make_runner(app)
            runtime = make_slack(app, port=0)
            worker = make_worker(app, {"slack": runtime.poster})
            port = free_port()
            edge = SmtpEdgeServer(
                make_edge(app, on_queued=runner.wake),
                host="127.0.0.1",
                port=port,
                max_message_bytes=app.settings.smtp.max_message_bytes,
                hostname="tickets.acme.example",
            )
            edge.start()
            runner.start(name="bench-runner")
            worker.start(name="bench-delivery")
            runtime.start()
            client = SlackClient(
                f"http://127.0.0.1:{runtime.entry.port}/slack/events", app.service.clock
            )
            # warm up: identities cached, connections open, as in a running installation
            for uid in list(requesters) + list(takers):
                client.command("list", user=uid)
            time.sleep(1.0)
            mails = build_messages(a.mails)
            mail_done = threading.Event()

            def send_mail() -> None:
                with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                    for sender, rcpts, data in mails:
                        smtp.sendmail(sender, rcpts, crlf(data))
                mail_done.set()

            latencies: list[float] = []
            statuses: list[int] = []
            lock = threading.Lock()
            per_client = a.n // a.clients

            def slack_client(c: int) -> None:
                rnd = random.Random(c)
                mine = SlackClient(client.url, app.service.clock, counter=[c * 1_000_000])
                for i in range(per_client):
                    if i % 2 == 0:
                        uid = rnd.choice(list(requesters))
                        text = f"new IT: bench {c}-{i} the printer again"
                    else:
                        uid = rnd.choice(list(takers))
                        text = f"take TKT-{rnd.randint(1, max(1, (c + 1) * i))}"
                    ans = mine.command(text, user=uid)
                    with lock:
                        latencies.append(ans.seconds)
                        statuses.append(ans.status)

            started = time.monotonic()
            mailer = threading.Thread(target=send_mail)
            mailer.start()
            threads = [threading.Thread(target=slack_client, args=(c,)) for c in range(a.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - started
            mailer.join()
            lat = sorted(latencies)

            def pct(p: float) -> float:
                return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

            print(
                f"backend={a.backend} clients={a.clients} requests={len(lat)} mails={a.mails} "
                f"wall={wall:.1f}s all-200={all(s == 200 for s in statuses)}"
            )
            print(
                f"ack ms: p50={pct(0.50):.1f} p95={pct(0.95):.1f} p99={pct(0.99):.1f} "
                f"max={lat[-1] * 1000:.1f} mean={statistics.mean(lat) * 1000:.1f}"
            )
            deadline = time.monotonic() + 120
            from sqlalchemy import func, select

            from store import models as m

            while time.monotonic() < deadline:
                with app.sessions() as s:
                    n = s.scalar(
                        select(func.count())
                        .select_from(m.Ticket)
                        .where(m.Ticket.channel == "slack")
                    )
                if n and n >= a.n // 2 // a.clients * a.clients:
                    break
                time.sleep(0.5)
            print(
                f"tickets raised by /ticket new: {n} (of {per_client // 2 * a.clients + (per_client % 2) * a.clients})"
            )
            runtime.stop()
            worker.stop()
            runner.stop()
            edge.stop()
        finally:
            app.close()
            if schema:
                drop_schema(pg, schema)


if __name__ == "__main__":
    main()
