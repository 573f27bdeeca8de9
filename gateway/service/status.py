"""The gateway's health and the counts behind `/metrics`, for the status endpoint."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from gateway.service.errors import StorageUnavailable
from gateway.service.storage import storage_errors
from store import imap_queries
from store import status as store_status


class StatusService:
    """Reads the database's state for the status endpoint."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def storage_problem(self) -> str | None:
        """None when the database can be written now, else why not."""
        try:
            with storage_errors(), self.sessions() as s:
                try:
                    store_status.probe_write(s)
                finally:
                    s.rollback()
        except StorageUnavailable as e:
            return str(e)
        return None

    def metric_lines(self) -> list[str]:
        """Prometheus text lines: tickets, inbound mail by outcome, outbox rows and events by
        state. Nothing (but the health line) while the database cannot be read."""
        try:
            with storage_errors(), self.sessions() as s:
                c = store_status.counts(s)
                imap = imap_queries.counts_by_state(s)
        except StorageUnavailable:
            return ["ticketgate_storage_up 0"]
        lines = ["ticketgate_storage_up 1", f"ticketgate_tickets_total {c['tickets']['']}"]
        lines += [
            f'ticketgate_inbound{{outcome="{k}"}} {n}' for k, n in sorted(c["inbound"].items())
        ]
        lines += [f'ticketgate_outbox{{state="{k}"}} {n}' for k, n in sorted(c["outbox"].items())]
        lines += [
            f'ticketgate_outbox_events{{state="{k}"}} {n}'
            for k, n in sorted(c["outbox_events"].items())
        ]
        lines += [
            'ticketgate_outbox_channel{{channel="{}",state="{}"}} {}'.format(*k.split("|"), n)
            for k, n in sorted(c["outbox_channel"].items())
        ]
        lines += [
            f'ticketgate_imap_messages{{mailbox="{prometheus_label(box)}",state="{st}"}} {n}'
            for (box, st), n in sorted(imap.items())
        ]
        return lines


def prometheus_label(value: str) -> str:
    """A Prometheus label value: backslash and double quote escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"')
