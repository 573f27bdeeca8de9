"""What `/healthz` and `/metrics` read: a write probe and counts of rows by state."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from store import models as m


def probe_write(s: Session) -> None:
    """A write that changes nothing (rolled back by the caller): raises when the database
    cannot be written (read-only file, full disk, server down)."""
    s.execute(
        update(m.DirectoryVersion)
        .where(m.DirectoryVersion.id == 1)
        .values(version=m.DirectoryVersion.version)
    )


def counts(s: Session) -> dict[str, dict[str, int]]:
    """Rows by state: tickets (one count), inbound mail by outcome, outbox and its events."""
    out: dict[str, dict[str, int]] = {
        "tickets": {"": int(s.scalar(select(func.count()).select_from(m.Ticket)) or 0)}
    }
    for name, col in (
        ("inbound", m.InboundMail.outcome),
        ("outbox", m.Outbox.state),
        ("outbox_events", m.OutboxEvent.state),
    ):
        out[name] = {str(k): int(n) for k, n in s.execute(select(col, func.count()).group_by(col))}
    # Outbox rows by channel and state ("slack|sent"): the delivery workers may be other
    # processes, so what they did is read here rather than from their counters.
    by = select(m.Outbox.channel, m.Outbox.state, func.count()).group_by(
        m.Outbox.channel, m.Outbox.state
    )
    out["outbox_channel"] = {f"{c}|{st}": int(n) for c, st, n in s.execute(by)}
    return out
