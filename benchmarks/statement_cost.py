"""What one INSERT of the intake runner's kind costs, four ways, on a SQLite file: SQLAlchemy
Core (cached statement, our UTC datetime type), Core with RETURNING (what an ORM flush of a new
row does), `Connection.exec_driver_sql` (SQLAlchemy, no compilation or type processing) and the
sqlite3 cursor itself. The figure behind issue 11's "SQLAlchemy's per-statement work".

    .venv/bin/python benchmarks/statement_cost.py [-n 5000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import Connection, create_engine, insert

    from store import models as m

    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    now = datetime.now(UTC)
    row = {
        "ticket_id": 1,
        "status": "RAISED",
        "action": "raise",
        "actor_id": None,
        "actor_label": "frank@acme.example",
        "at": now,
        "channel": "email",
        "remark": "",
    }
    sql = (
        "INSERT INTO status_history (ticket_id, status, action, actor_id, actor_label, at,"
        " channel, remark) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    values = (1, "RAISED", "raise", None, "frank@acme.example", now.isoformat(" "), "email", "")
    stmt = insert(m.StatusHistory)
    returning = stmt.returning(m.StatusHistory.id)

    def core(c: Connection) -> None:
        c.execute(stmt, row)

    def core_returning(c: Connection) -> None:
        c.execute(returning, row).scalar()

    def driver_sql(c: Connection) -> None:
        c.exec_driver_sql(sql, values)

    def cursor(c: Connection) -> None:
        c.connection.driver_connection.execute(sql, values)  # type: ignore[union-attr]

    ways: dict[str, Callable[[Connection], None]] = {
        "core": core,
        "core_returning": core_returning,
        "exec_driver_sql": driver_sql,
        "sqlite3_cursor": cursor,
    }
    figures: dict[str, list[float]] = {k: [] for k in ways}
    with tempfile.TemporaryDirectory() as d:
        # Foreign keys stay off (SQLite's default) so that the rows need no ticket.
        engine = create_engine(f"sqlite:///{d}/statements.db")
        m.Base.metadata.create_all(engine)
        for _ in range(a.rounds):
            for name, fn in ways.items():
                with engine.connect() as c:
                    fn(c)  # the statement cached, the connection warm
                    t = time.perf_counter()
                    for _ in range(a.n):
                        fn(c)
                    figures[name].append((time.perf_counter() - t) / a.n * 1e6)
                    c.rollback()
        engine.dispose()
    result = {
        k: {"us_per_statement": statistics.median(v), "rounds": v} for k, v in figures.items()
    }
    print(json.dumps({"n": a.n, "ways": result}, indent=2))
    print(f"\n{'way':18s} {'µs/statement':>13s}")
    for k, v in result.items():
        print(f"{k:18s} {v['us_per_statement']:13.1f}")


if __name__ == "__main__":
    main()
