"""The delivery worker: fans out events, claims batches of outbox rows, hands each channel's
part to its sender (`ChannelSender`: `EmailSender` here, the Slack poster beside it), records
the batch's outcomes in one transaction. Running, it has a lane (a thread) per channel, so a
slow channel holds only its own rows.

`EmailSender` renders once per audience (`Renderer.render_audience`) and hands the batch to
the transport in one go (one relay session, one maildir sync). A mail is resent only when its
send failed or its outcome is unknown, always from its own outbox row, rendered with the
Message-ID that row was given: the receiving side can tell a resend from a new mail. While the
database is down the loop says so once (then a reminder a minute), not a traceback a pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

from gateway.mail.delivery import (
    OutgoingMail,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    Transport,
)
from gateway.mail.outbound import CommandResult, HistoryLine, Notice, Renderer, audience
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


class EmailSender:
    """The mail channel: render once per audience, send the batch through the transport."""

    channel = "email"

    def __init__(
        self,
        transport: Transport,
        renderer: Renderer,
        envelope_sender: Callable[[OutboxItem], str],
    ) -> None:
        self.transport = transport
        self.renderer = renderer
        self.envelope_sender = envelope_sender
        self.renderings = 0  # audiences rendered (for tests and the benchmark)

    def render(self, items: Sequence[OutboxItem]) -> tuple[dict[int, bytes], dict[int, str]]:
        """Each item's message bytes, rendered once per audience; and the error of each item
        that could not be rendered."""
        groups: dict[str, list[tuple[OutboxItem, Notice]]] = {}
        errors: dict[int, str] = {}
        for item in items:
            try:
                notice = notice_from_payload(item.payload)
            except Exception as e:  # noqa: BLE001 - one bad payload is that row's error
                errors[item.id] = f"{type(e).__name__}: {e}"
                continue
            groups.setdefault(repr(audience(notice)), []).append((item, notice))
        data: dict[int, bytes] = {}
        for members in groups.values():
            try:
                rendered = self.renderer.render_audience([n for _, n in members])
                self.renderings += 1
            except Exception:  # noqa: BLE001 - one at a time, to find the one that fails
                rendered = []
            if len(rendered) == len(members):
                data.update((item.id, d) for (item, _), d in zip(members, rendered, strict=True))
                continue
            for item, notice in members:
                try:
                    data[item.id] = self.renderer.render(notice)
                    self.renderings += 1
                except Exception as e:
                    log.exception("outbox %s: cannot render", item.id)
                    errors[item.id] = f"{type(e).__name__}: {e}"
        return data, errors

    def close(self) -> None:
        self.transport.close()

    def deliver(self, items: Sequence[OutboxItem]) -> list[DeliveryOutcome]:
        data, errors = self.render(items)
        outcomes = [DeliveryOutcome(i, "retry", e) for i, e in errors.items()]
        ready = [item for item in items if item.id in data]
        mails = [
            OutgoingMail(
                envelope_from=self.envelope_sender(item),
                recipient=item.recipient,
                data=data[item.id],
                key=item.message_id,
                resend=item.attempts > 1,
            )
            for item in ready
        ]
        results = self.transport.send_many(mails) if mails else []
        for item, error in zip(ready, results, strict=True):
            if error is None:
                outcomes.append(DeliveryOutcome(item.id, "sent"))
            elif isinstance(error, PermanentDeliveryError):
                log.warning(
                    "outbox %s to %s: permanent failure: %s", item.id, item.recipient, error
                )
                outcomes.append(DeliveryOutcome(item.id, "dead", str(error)))
            else:
                if isinstance(error, TemporaryDeliveryError):
                    log.info("outbox %s to %s: will retry: %s", item.id, item.recipient, error)
                else:
                    log.error("outbox %s to %s: cannot send: %r", item.id, item.recipient, error)
                outcomes.append(DeliveryOutcome(item.id, "retry", _error_text(error)))
        return outcomes


def _error_text(error: Exception) -> str:
    if isinstance(error, TemporaryDeliveryError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class DeliveryWorker:
    """Fans out pending events, claims batches of due rows, has each channel's sender deliver
    them and records the outcomes of a batch in one transaction.

    Started, it runs one lane (a thread) per channel: each lane fans out, claims only its own
    channel's rows and delivers them, so one channel's slowness (a Slack outage waiting out
    its timeouts, a relay that answers slowly) never holds another channel's rows. `run_once`
    and `step` do one pass over every channel in the calling thread (`ticketgate outbox
    deliver`, tests)."""

    def __init__(
        self,
        outbox: OutboxService,
        senders: Mapping[str, ChannelSender],
        *,
        poll_seconds: float = 1.0,
        batch: int = 50,
        monotonic: Callable[[], float] = time.monotonic,
        wake_on: threading.Event | ProcessEvent | None = None,
    ) -> None:
        self.outbox = outbox
        self.senders = dict(senders)
        self.poll_seconds = poll_seconds
        self.batch = max(1, batch)
        self._stop = threading.Event()
        # ``wake_on``, `run`'s doorbell (a multiprocessing Event), is set when a unit of work
        # in any of its processes recorded notification events. Idle, a lane waits at most
        # `poll_seconds` for it (with several lanes, a bell thread passes each ring on to
        # every lane); `stop` sets it too.
        self._wake = wake_on if wake_on is not None else threading.Event()
        self._bells: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        # The outbox's fan-out keeps a directory cache for one thread at a time.
        self._fan_out_turn = threading.Lock()
        self._storage_turn = threading.Lock()
        self.storage = StorageState(log, "delivery", meanwhile="will retry", monotonic=monotonic)

    def deliver(self, items: Sequence[OutboxItem]) -> dict[int, str]:
        """Hand each channel's items to its sender, record every outcome in one transaction;
        returns each row's new state. A sender that raises, or gives no outcome for a row,
        leaves those rows to be retried."""
        by_channel: dict[str, list[OutboxItem]] = {}
        for item in items:
            by_channel.setdefault(item.channel, []).append(item)
        outcomes: dict[int, DeliveryOutcome] = {}
        for channel, part in by_channel.items():
            sender = self.senders.get(channel)
            try:
                if sender is None:
                    raise LookupError(f"no sender for channel {channel!r}")
                given = sender.deliver(part)
            except Exception as e:
                log.exception("outbox: the %s sender failed on %d row(s)", channel, len(part))
                given = [DeliveryOutcome(i.id, "retry", f"{type(e).__name__}: {e}") for i in part]
            wanted = {i.id for i in part}
            outcomes.update((o.item_id, o) for o in given if o.item_id in wanted)
            for i in part:
                if i.id not in outcomes:
                    outcomes[i.id] = DeliveryOutcome(i.id, "retry", "the sender gave no outcome")
        return self.outbox.record([outcomes[i.id] for i in items])

    def run_once(self, channels: Sequence[str] | None = None) -> int:
        """Fan out pending events, then deliver everything of ``channels`` (default: every
        channel with a sender) due now; returns how many outbox rows (mails, posts) were
        handled."""
        n = 0
        wanted = sorted(self.senders) if channels is None else list(channels)
        while True:
            with self._fan_out_turn:
                fanned = self.outbox.fan_out(self.batch)
            if fanned:
                for bell in self._bells.values():  # new rows may be any lane's
                    bell.set()
            items = self.outbox.claim(self.batch, wanted)
            if not items and not fanned:
                return n
            if items:
                self.deliver(items)
                n += len(items)

    def step(self, channels: Sequence[str] | None = None) -> int:
        """One pass of the loop: `run_once`, its failure logged by state (StorageState: one
        line when the database goes away, a reminder a minute, one line when it is back);
        returns how many rows were handled (0 after a failure)."""
        try:
            handled = self.run_once(channels)
        except Exception as e:  # noqa: BLE001 - the loop must outlive any one failure
            with self._storage_turn:
                self.storage.failed(e)
            return 0
        with self._storage_turn:
            self.storage.succeeded()
        return handled

    def _lane(self, channel: str, bell: threading.Event | ProcessEvent) -> None:
        while not self._stop.is_set():
            if not self.step([channel]):
                bell.wait(self.poll_seconds)
                bell.clear()

    def _pass_on_rings(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(self.poll_seconds):
                self._wake.clear()
                for bell in self._bells.values():
                    bell.set()

    def start(self, name: str = "delivery") -> None:
        """One lane thread per channel (named ``name`` and the channel when there are
        several), and with several lanes the thread that passes the doorbell on to them."""
        channels = sorted(self.senders)
        if len(channels) == 1:
            self._threads = [
                threading.Thread(target=self._lane, args=(channels[0], self._wake), name=name)
            ]
        else:
            self._bells = {c: threading.Event() for c in channels}
            self._threads = [
                threading.Thread(target=self._lane, args=(c, self._bells[c]), name=f"{name}-{c}")
                for c in channels
            ]
            self._threads.append(threading.Thread(target=self._pass_on_rings, name=f"{name}-bell"))
        for t in self._threads:
            t.daemon = True
            t.start()

    def stop(self) -> None:
        """End the lanes (each finishes the batch at hand first), then close the senders."""
        self._stop.set()
        self._wake.set()
        for bell in self._bells.values():
            bell.set()
        for t in self._threads:
            t.join(timeout=30)
        self.close()

    def close(self) -> None:
        """Close every sender: the threads and sessions they keep between batches end."""
        for sender in self.senders.values():
            sender.close()
