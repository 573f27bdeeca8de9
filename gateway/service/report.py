"""`ticketgate report`: tickets by status, department and category, SLA attainment, median
times to first response and to delivery, escalations, and feedback (average rating, answer rate)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from statistics import median
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from store import schedule_queries as sq
from store.db import read_session


def _clock(rows: list[sq.ReportRow], met: str, breached: str) -> dict[str, Any]:
    """A clock's attainment over the tickets with a policy: met in time, missed, undecided
    (still running, or stopped by the requester's close or cancel)."""
    with_policy = [r for r in rows if r.has_policy]
    missed = sum(1 for r in with_policy if getattr(r, breached))
    done = sum(1 for r in with_policy if getattr(r, met) is not None and not getattr(r, breached))
    decided = done + missed
    return {
        "met": done,
        "missed": missed,
        "undecided": len(with_policy) - decided,
        "attainment": round(done / decided, 4) if decided else None,
    }


def _median_seconds(pairs: list[tuple[datetime, datetime | None]]) -> float | None:
    spans = [(b - a).total_seconds() for a, b in pairs if b is not None]
    return round(median(spans), 1) if spans else None


def build_report(sessions: sessionmaker[Session], *, since: datetime | None) -> dict[str, Any]:
    """The report as a stable JSON shape (README "Report")."""
    with read_session(sessions) as s:
        rows = sq.report_rows(s, since=since)
        steps = sq.escalation_steps_since(s, since=since)
    ratings = [r.rating for r in rows if r.rating is not None]
    requested = sum(1 for r in rows if r.feedback_requests > 0 or r.rating is not None)
    return {
        "since": since.isoformat() if since else None,
        "tickets": len(rows),
        "by_status": dict(sorted(Counter(r.status for r in rows).items())),
        "by_department": dict(sorted(Counter(r.department for r in rows).items())),
        "by_category": dict(sorted(Counter(r.category or "(none)" for r in rows).items())),
        "sla": {
            "first_response": _clock(rows, "first_responded_at", "first_response_breached"),
            "resolution": _clock(rows, "resolved_at", "resolution_breached"),
        },
        "median_seconds": {
            "first_response": _median_seconds([(r.created_at, r.first_responded_at) for r in rows]),
            "delivery": _median_seconds([(r.created_at, r.resolved_at) for r in rows]),
        },
        "escalations": {
            "steps": steps,
            "tickets": sum(1 for r in rows if r.escalation_level > 0),
            "by_level": {
                str(k): n
                for k, n in sorted(Counter(r.escalation_level for r in rows).items())
                if k > 0
            },
            "to_higher_authority": sum(1 for r in rows if r.status == "TO_HIGHER_AUTHORITY"),
        },
        "feedback": {
            "requested": requested,
            "answered": len(ratings),
            "answer_rate": round(len(ratings) / requested, 4) if requested else None,
            "average_rating": round(sum(ratings) / len(ratings), 2) if ratings else None,
            "ratings": {str(k): n for k, n in sorted(Counter(ratings).items())},
        },
    }


def report_lines(rep: dict[str, Any]) -> list[str]:
    """The report for people."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x * 100:.1f} %"

    def hours(x: float | None) -> str:
        return "n/a" if x is None else f"{x / 3600:.1f} h"

    out = [
        f"tickets: {rep['tickets']}" + (f" (created since {rep['since']})" if rep["since"] else "")
    ]
    for key in ("by_status", "by_department", "by_category"):
        out.append(key.replace("_", " ") + ":")
        out += [f"  {k:<28} {n}" for k, n in rep[key].items()]
    for clock, c in rep["sla"].items():
        out.append(
            f"SLA {clock.replace('_', ' ')}: {pct(c['attainment'])} met"
            f" ({c['met']} met, {c['missed']} missed, {c['undecided']} undecided)"
        )
    med = rep["median_seconds"]
    out.append(f"median time to first response: {hours(med['first_response'])}")
    out.append(f"median time to delivery: {hours(med['delivery'])}")
    e = rep["escalations"]
    levels = ", ".join(f"level {k}: {n}" for k, n in e["by_level"].items()) or "none"
    out.append(
        f"escalations: {e['steps']} steps on {e['tickets']} tickets ({levels});"
        f" {e['to_higher_authority']} now with higher authority"
    )
    f = rep["feedback"]
    avg = "n/a" if f["average_rating"] is None else f"{f['average_rating']:.2f}"
    out.append(
        f"feedback: average rating {avg} of {f['answered']} answers;"
        f" answer rate {pct(f['answer_rate'])} of {f['requested']} requested"
    )
    return out
