"""One scheduler tick with 1,000 due tickets among N (issue 13): the cost must follow the due
work, not the table. Builds a database of N untouched IT tickets of the demo org with bulk
inserts (every one with its SLA deadlines set, most of them in the future, and its history
row); five cohorts of 1,000 are due ten minutes apart. Each tick breaches its cohort's first
response and runs escalation step 1 (history, step keys, outbox events). Prints the
milliseconds of each tick, their best and their median, as JSON (the best is the figure to
compare across sizes on a shared machine: interference only ever adds), and the CPU time the
tick took in this process (``cpu_ms``), which other load disturbs far less.

    .venv/bin/python benchmarks/tick.py [-n 10000] [--backend sqlite|postgres] [--due 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, inside Berlin's working hours
COHORTS = 5
CHUNK = 20_000


def build_tickets(app: object, n: int, due: int) -> None:
    """N tickets in bulk: cohort k (k < COHORTS) is due at T0 + 10k min − 1 min, the rest
    within the next year."""
    from sqlalchemy import insert, select

    from store import models as m

    engine = app.engine  # type: ignore[attr-defined]
    with engine.begin() as c:
        dep = c.execute(select(m.Department).where(m.Department.address == "it@acme.example")).one()
        req = c.execute(select(m.Employee).where(m.Employee.email == "frank@acme.example")).one()
    policy = dep.sla[0]
    rng = random.Random(13)
    created = T0 - timedelta(days=1)
    done = 0
    while done < n:
        rows, hist = [], []
        for i in range(done, min(n, done + CHUNK)):
            cohort = i // due if i < COHORTS * due else None
            if cohort is not None:
                fr = T0 + timedelta(minutes=10 * cohort - 1)
            else:
                fr = T0 + timedelta(days=1 + rng.random() * 365)
            rows.append(
                {
                    "id": i + 1,
                    "org_id": dep.org_id,
                    "subject": f"ticket {i}",
                    "description": "",
                    "priority": "normal",
                    "assignment_type": "DEPARTMENT",
                    "from_employee_id": req.id,
                    "from_department_id": req.department_id,
                    "from_branch_id": 2,
                    "channel": "email",
                    "device": {},
                    "to_department_id": dep.id,
                    "to_branch_id": dep.branch_id,
                    "status": "RAISED",
                    "escalation_level": 0,
                    "created_at": created,
                    "updated_at": created,
                    "first_response_due": fr,
                    "resolution_due": fr + timedelta(days=3),
                    "sla_policy": policy,
                    "sla_start": created,
                    "version": 1,
                }
            )
            hist.append(
                {
                    "ticket_id": i + 1,
                    "status": "RAISED",
                    "action": "raise",
                    "actor_id": req.id,
                    "actor_label": req.email,
                    "at": created,
                    "channel": "email",
                    "remark": "",
                }
            )
        with engine.begin() as c:
            c.execute(insert(m.Ticket), rows)
            c.execute(insert(m.StatusHistory), hist)
        done += len(rows)
    if engine.dialect.name == "postgresql":
        with engine.begin() as c:
            c.exec_driver_sql(f"SELECT setval('tickets_id_seq', {int(n)})")
            c.exec_driver_sql("ANALYZE")
    else:
        with engine.begin() as c:
            c.exec_driver_sql("ANALYZE")
        # The bulk load sits in the WAL: copy it into the database now, or the first ticks'
        # commits pay for checkpointing the build (a cost of the build, not of a tick).
        raw = engine.raw_connection()  # outside a transaction (the driver autocommits)
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        finally:
            raw.close()


def main() -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from smtp_ingest import bench_database, drop_schema

    from gateway.bootstrap import build, make_scheduler
    from gateway.config import load_settings
    from gateway.service.org_import import import_org
    from store.migrate import upgrade
    from tests.conftest import write_demo_org

    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--due", type=int, default=1000)
    ap.add_argument("--backend", default="sqlite", choices=("sqlite", "postgres"))
    a = ap.parse_args()
    assert a.n >= COHORTS * a.due
    with tempfile.TemporaryDirectory() as d:
        pg = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
        url, schema = bench_database(a.backend, d, "tick.db")
        env = {
            "TICKETGATE__DATABASE__URL": url,
            "TICKETGATE__MAIL__SECRET": "bench-secret-0123456789",
            "TICKETGATE__MAIL__DOMAIN": "tickets.acme.example",
        }
        app = build(load_settings(Path(d) / "ticketgate.toml", env))
        try:
            upgrade(app.engine)
            with app.sessions() as s, s.begin():
                import_org(s, write_demo_org(Path(d) / "org"), mail_domain="tickets.acme.example")
            started = time.perf_counter()
            build_tickets(app, a.n, a.due)
            built = time.perf_counter() - started
            sched = make_scheduler(app)
            ms, cpu = [], []
            for k in range(COHORTS):
                at = T0 + timedelta(minutes=10 * k)
                t, c0 = time.perf_counter(), time.process_time()
                report = sched.tick(at)
                ms.append(round((time.perf_counter() - t) * 1000, 1))
                cpu.append(round((time.process_time() - c0) * 1000, 1))
                assert report.tickets == a.due, (report.tickets, report.counts)
                assert report.counts["escalation"] == a.due, report.counts
            print(
                json.dumps(
                    {
                        "backend": a.backend,
                        "tickets": a.n,
                        "due": a.due,
                        "build_s": round(built, 1),
                        "tick_ms": ms,
                        "best_ms": min(ms),
                        "median_ms": statistics.median(ms),
                        "best_ms_per_due_ticket": round(min(ms) / a.due, 2),
                        # this process's CPU: what other load on a shared machine disturbs least
                        "cpu_ms": cpu,
                        "median_cpu_ms": statistics.median(cpu),
                    }
                )
            )
        finally:
            app.close()
            if schema:
                drop_schema(pg, schema)


if __name__ == "__main__":
    main()
