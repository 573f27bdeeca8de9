"""The intake writer alone: how long the group-commit writer spends per mail, and how many SQL
statements it issues, without SMTP, parsing or other threads in the way.

Builds the messages of `smtp_ingest.py`, parses and translates them beforehand, then applies
them through `GroupCommitIntake` in batches of B (as 8 concurrent SMTP sessions would hand
them over) on a fresh demo installation, SQLite by default or PostgreSQL. Prints JSON and a
short table: ms per mail, mails/s, statements per mail and the most frequent statements.

    .venv/bin/python benchmarks/intake_writer.py [-n 600] [-b 8] [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def statement_kind(sql: str) -> str:
    """`INSERT tickets`, `SELECT departments`, `SAVEPOINT` …: the verb and the first table."""
    words = sql.split()
    verb = words[0].upper()
    if verb in ("INSERT", "DELETE") and len(words) > 2:
        return f"{verb} {words[2]}"
    if verb == "UPDATE" and len(words) > 1:
        return f"{verb} {words[1]}"
    found = re.search(r"\bFROM\s+(\S+)", sql)
    return f"{verb} {found.group(1)}" if found else verb


def main() -> None:
    # Appended: a tree named in PYTHONPATH (to measure another commit) comes first.
    sys.path.append(str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from smtp_ingest import build_messages, drop_schema, pg_schema_url
    from sqlalchemy import event

    from gateway.bootstrap import build
    from gateway.config import load_settings
    from gateway.mail.parse import parse_mail
    from gateway.mail.translate import translate
    from gateway.runner import make_handler, make_intake
    from gateway.service.commands import IntakeResult, ReceiveMail
    from gateway.service.group_commit import GroupCommitIntake

    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=600)
    ap.add_argument("-b", type=int, default=8, help="mails per group-commit batch")
    ap.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        schema = None
        if a.backend == "postgres":
            base = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
            if not base:
                raise SystemExit("TICKETGATE_TEST_POSTGRES_URL is not set")
            url, schema = pg_schema_url(base)
        else:
            url = f"sqlite:///{d}/tg.db"
        env = {
            **os.environ,
            "TICKETGATE_CONFIG": f"{d}/ticketgate.toml",
            "TICKETGATE__DATABASE__URL": url,
            "TICKETGATE__MAIL__SECRET": "bench-" + "x" * 32,
            "TICKETGATE__OUTBOUND__MAILDIR": f"{d}/outbox",
            # as in smtp_ingest.py: 8 senders would pass the flood guard (120 an hour) after
            # 960 mails, and the rest would be measured as quarantines
            "TICKETGATE__SMTP__SENDER_RATE_PER_HOUR": "1000000",
        }
        try:
            subprocess.run(
                [sys.executable, "-m", "gateway", "init", "--demo"],
                env=env,
                cwd=d,
                check=True,
                capture_output=True,
            )
            app = build(load_settings(Path(env["TICKETGATE_CONFIG"]), env), need_secret=True)
            intake = make_intake(app)
            handler = make_handler(app, intake)
            cmds = [
                translate(
                    parse_mail(raw, limits=handler.limits),
                    envelope_from=sender,
                    envelope_rcpts=rcpts,
                    ctx=handler.ctx,
                )
                for sender, rcpts, raw in build_messages(a.n)
            ]
            kinds: collections.Counter[str] = collections.Counter()

            @event.listens_for(app.engine, "before_cursor_execute")
            def _count(*args: Any) -> None:
                kinds[statement_kind(args[2])] += 1

            # Prepared statements (store/prepared.py) bypass the engine's events: count them
            # where they run.
            try:
                from store.prepared import Prepared
            except ImportError:  # an older tree, measured for comparison
                Prepared = None  # type: ignore[assignment,misc]  # noqa: N806
            if Prepared is not None:
                plain_rows = Prepared.rows
                kind_of: dict[int, str] = {}

                def counted_rows(self: Any, conn: Any, params: Any) -> Any:
                    kind = kind_of.get(id(self))
                    if kind is None:
                        kind = kind_of[id(self)] = statement_kind(str(self.stmt))
                    kinds[kind] += 1
                    return plain_rows(self, conn, params)

                Prepared.rows = counted_rows  # type: ignore[method-assign]

            writer = GroupCommitIntake(intake)
            t0 = time.perf_counter()
            for i in range(0, a.n, a.b):
                batch: list[tuple[ReceiveMail, Future[IntakeResult]]] = [
                    (c, Future()) for c in cmds[i : i + a.b]
                ]
                writer._apply(batch)
                for _, fut in batch:
                    assert fut.result().code == 250, fut.result()
            seconds = time.perf_counter() - t0
            writer.close()
            handler.close()
            app.close()
        finally:
            if schema:
                drop_schema(os.environ["TICKETGATE_TEST_POSTGRES_URL"], schema)
    result = {
        "benchmark": "intake_writer",
        "backend": a.backend,
        "n": a.n,
        "batch": a.b,
        "seconds": round(seconds, 3),
        "ms_per_mail": round(1000 * seconds / a.n, 2),
        "mails_per_s": round(a.n / seconds, 1),
        "statements_per_mail": round(sum(kinds.values()) / a.n, 2),
        "statements": {k: round(v / a.n, 2) for k, v in kinds.most_common()},
    }
    print(json.dumps(result, indent=2))
    print(f"\n{'backend':<10} {'ms/mail':>8} {'mails/s':>8} {'stmts/mail':>10}")
    print(
        f"{a.backend:<10} {result['ms_per_mail']:>8} {result['mails_per_s']:>8} "
        f"{result['statements_per_mail']:>10}"
    )
    for k, v in kinds.most_common(8):
        print(f"  {v / a.n:5.2f}  {k}")


if __name__ == "__main__":
    main()
