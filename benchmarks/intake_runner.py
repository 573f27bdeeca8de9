"""The intake runner alone: N realistic mails queued beforehand, then processed by one runner
in this process (no SMTP, no edge), on SQLite or PostgreSQL; ms a mail, split into parsing and
applying. The figure behind `smtp_ingest.py`'s end-to-end rate.

    .venv/bin/python benchmarks/intake_runner.py [-n 600] [--backend sqlite|postgres] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from smtp_ingest import bench_database, build_messages, drop_schema

    from gateway.bootstrap import build, make_inbound, make_runner
    from gateway.config import load_settings
    from gateway.mail.headers import queue_mail, read_headers
    from gateway.runners.intake import IntakeRunner
    from gateway.service.org_import import import_org
    from store.migrate import upgrade
    from tests.conftest import write_demo_org

    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=600)
    ap.add_argument("--backend", default="sqlite", choices=("sqlite", "postgres"))
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        pg = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
        url, schema = bench_database(a.backend, d, "runner.db")
        env = {
            "TICKETGATE__DATABASE__URL": url,
            "TICKETGATE__MAIL__SECRET": "bench-secret-0123456789",
            "TICKETGATE__MAIL__DOMAIN": "tickets.acme.example",
            "TICKETGATE__SMTP__SENDER_RATE_PER_HOUR": "1000000",
            "TICKETGATE__SMTP__SENDER_BURST_PER_MINUTE": "1000000",
            "TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "1000000",
            "TICKETGATE__MAIL__NOTICES_PER_SENDER_HOUR": "1000000",
            "TICKETGATE__INTAKE__BATCH_SIZE": str(a.batch),
        }
        app = build(load_settings(Path(d) / "ticketgate.toml", env))
        try:
            upgrade(app.engine)
            with app.sessions() as s, s.begin():
                import_org(s, write_demo_org(Path(d)), mail_domain="tickets.acme.example")
            inbound = make_inbound(app)
            queued = [
                queue_mail(raw, read_headers(raw), envelope_from=sender, envelope_rcpts=rcpts)
                for sender, rcpts, raw in build_messages(a.n)
            ]
            for i in range(0, len(queued), 32):
                inbound.enqueue(queued[i : i + 32])
            runner = make_runner(app)
            parse_s = [0.0]

            class Timed(IntakeRunner):
                def parse(self, mail):  # type: ignore[no-untyped-def]
                    t = time.perf_counter()
                    try:
                        return super().parse(mail)
                    finally:
                        parse_s[0] += time.perf_counter() - t

            timed = Timed(runner.intake, ctx=runner.ctx, limits=runner.limits, batch_size=a.batch)
            t0 = time.perf_counter()
            done = timed.run_until_idle()
            wall = time.perf_counter() - t0
        finally:
            app.close()
            if schema:
                drop_schema(pg, schema)
    result = {
        "benchmark": "intake_runner",
        "backend": a.backend,
        "n": a.n,
        "batch": a.batch,
        "processed": done,
        "ms_per_mail": round(wall / done * 1000, 3),
        "parse_ms_per_mail": round(parse_s[0] / done * 1000, 3),
        "apply_ms_per_mail": round((wall - parse_s[0]) / done * 1000, 3),
        "mails_per_s": round(done / wall, 1),
    }
    print(json.dumps(result, indent=2))
    print(f"\n{'backend':<9} {'mails/s':>8} {'ms/mail':>8} {'parse':>7} {'apply':>7}")
    print(
        f"{a.backend:<9} {result['mails_per_s']:>8} {result['ms_per_mail']:>8} "
        f"{result['parse_ms_per_mail']:>7} {result['apply_ms_per_mail']:>7}"
    )


if __name__ == "__main__":
    main()
