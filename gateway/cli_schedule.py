"""CLI commands of the scheduler: `tick [--at ISO-TIME]` and `report [--json] [--since DATE]`."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from gateway.bootstrap import App, make_scheduler
from gateway.service.report import build_report, report_lines


class BadTime(ValueError):
    """An --at or --since value that is no ISO time."""


def parse_instant(text: str) -> datetime:
    """An ISO 8601 time or date; without an offset it is UTC (what an operator's script
    means); a date alone is its midnight."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadTime(f"{text!r} is not an ISO time (e.g. 2026-03-09T12:00:00+01:00)") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def cmd_tick(args: argparse.Namespace, app: App) -> int:
    at = parse_instant(args.at) if args.at else None
    report = make_scheduler(app).tick(at)
    if args.json:
        print(
            json.dumps(
                {
                    "at": report.at.isoformat(),
                    "tickets": report.tickets,
                    "failed": report.failed,
                    "done": dict(sorted(report.counts.items())),
                },
                indent=2,
            )
        )
    else:
        done = ", ".join(f"{k} {n}" for k, n in sorted(report.counts.items()))
        print(f"tick {report.at.isoformat()}: {done or 'nothing due'}")
    return 1 if report.failed else 0


def cmd_report(args: argparse.Namespace, app: App) -> int:
    since = parse_instant(args.since) if args.since else None
    rep = build_report(app.sessions, since=since)
    if args.json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        print("\n".join(report_lines(rep)))
    return 0
