"""The delivery worker: fans out events, claims outbox rows, renders each for its recipient, sends.

A mail is resent only when its send failed or its outcome is unknown, always from its own
outbox row, rendered with the Message-ID that row was given: the receiving side can tell a
resend from a new mail. While the database is down the loop says so once (then a reminder a
minute), not a traceback a pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from gateway.mail.delivery import PermanentDeliveryError, TemporaryDeliveryError, Transport
from gateway.mail.outbound import CommandResult, HistoryLine, Notice, Renderer
from gateway.service.outbox import ChannelSender, DeliveryOutcome, OutboxItem, OutboxService
from gateway.service.storage_state import StorageState

log = logging.getLogger("ticketgate.delivery")


def notice_from_payload(p: dict[str, Any]) -> Notice:
    """The outbox payload (JSON) back into the renderer's value."""
    return Notice(
        kind=p["kind"],
        ticket_ref=p["ticket_ref"],
        subject=p["subject"],
        status=p["status"],
        target=p["target"],
        requester=p["requester"],
        recipient_email=p["recipient_email"],
        recipient_name=p["recipient_name"],
        role=p["role"],
        from_address=p["from_address"],
        from_name=p["from_name"],
        reply_address=p["reply_address"],
        message_id=p["message_id"],
        in_reply_to=p.get("in_reply_to"),
        references=tuple(p.get("references", ())),
        thread_index=p["thread_index"],
        auto_submitted=p.get("auto_submitted"),
        actor=p.get("actor", ""),
        body=p.get("body", ""),
        remark=p.get("remark", ""),
        history=tuple(
            HistoryLine(
                h["status"], h["actor"], datetime.fromisoformat(h["at"]), h.get("remark", "")
            )
            for h in p.get("history", ())
        ),
        applied_commands=tuple(
            CommandResult(c["command"], bool(c["applied"]), c.get("reason", ""))
            for c in p.get("applied_commands", ())
        ),
        commands_hint=tuple(p.get("commands_hint", ())),
        extra=dict(p.get("extra", {})),
        date=datetime.fromisoformat(p["date"]),
        loop_token=p["loop_token"],
    )


class DeliveryWorker:
    """One loop: fan out pending events, claim due rows, send them, mark each sent / retry / dead."""

    def __init__(
        self,
        outbox: OutboxService,
        transport: Transport,
        renderer: Renderer,
        *,
        poll_seconds: float = 1.0,
        batch: int = 20,
        monotonic: Callable[[], float] = time.monotonic,
        senders: Mapping[str, ChannelSender] | None = None,
    ) -> None:
        # Other channels' senders (Slack): their rows are claimed with the mail, each batch
        # handed to its sender; mail is delivered here.
        self.senders = dict(senders or {})
        self.outbox = outbox
        self.transport = transport
        self.renderer = renderer
        self.poll_seconds = poll_seconds
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.storage = StorageState(log, "delivery", meanwhile="will retry", monotonic=monotonic)

    def deliver(self, item: OutboxItem) -> str:
        try:
            data = self.renderer.render(notice_from_payload(item.payload))
            self.transport.send(
                envelope_from=self.outbox.envelope_sender(item),
                recipient=item.recipient,
                data=data,
            )
        except PermanentDeliveryError as e:
            log.warning("outbox %s to %s: permanent failure: %s", item.id, item.recipient, e)
            return self.outbox.failed(item.id, str(e), permanent=True)
        except TemporaryDeliveryError as e:
            log.info("outbox %s to %s: will retry: %s", item.id, item.recipient, e)
            return self.outbox.failed(item.id, str(e), permanent=False)
        except Exception as e:
            log.exception("outbox %s: cannot render or send", item.id)
            return self.outbox.failed(item.id, f"{type(e).__name__}: {e}", permanent=False)
        self.outbox.sent(item.id)
        return "sent"

    def record(self, outcome: DeliveryOutcome) -> str:
        """A channel sender's outcome for one row: sent, retried (no earlier than its
        ``retry_after``) or dead-lettered."""
        if outcome.result == "sent":
            self.outbox.sent(outcome.item_id)
            return "sent"
        return self.outbox.failed(
            outcome.item_id,
            outcome.error,
            permanent=outcome.result == "dead",
            retry_after=outcome.retry_after,
        )

    def run_once(self) -> int:
        """Fan out pending events, then deliver everything due now; returns how many outbox
        rows (mails, Slack posts) were handled."""
        n = 0
        channels = ("email", *self.senders)
        while True:
            fanned = self.outbox.fan_out(self.batch)
            items = self.outbox.claim(self.batch, channels=channels)
            if not items and not fanned:
                return n
            for item in items:
                if item.channel not in self.senders:
                    self.deliver(item)
            for name, sender in self.senders.items():
                batch = [i for i in items if i.channel == name]
                if batch:
                    for outcome in sender.deliver(batch):
                        self.record(outcome)
            n += len(items)

    def step(self) -> int:
        """One pass of the loop: `run_once`, its failure logged by state (StorageState: one
        line when the database goes away, a reminder a minute, one line when it is back);
        returns how many rows were handled (0 after a failure)."""
        try:
            handled = self.run_once()
        except Exception as e:  # noqa: BLE001 - the loop must outlive any one failure
            self.storage.failed(e)
            return 0
        self.storage.succeeded()
        return handled

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.step():
                self._stop.wait(self.poll_seconds)

    def start(self, name: str = "delivery") -> None:
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
