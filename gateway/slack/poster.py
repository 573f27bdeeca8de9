"""Slack posts from the outbox (a `ChannelSender`): the ticket's channel post, its thread,
chat.update of the post, and DMs.

Outcomes: a 429 is retried after its Retry-After; `ok: false` (channel_not_found,
not_in_channel, invalid_blocks …) is dead-lettered with the error; a network failure is
retried with the outbox's backoff. After a 429 or a network failure the batch's other rows
wait with it, unsent. Nothing is posted twice: the client retries nothing itself
(an outbox row is the one retry), and a ticket's post already recorded is updated rather than
posted again."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http.client import HTTPException
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from gateway.service.outbox import DeliveryOutcome, OutboxItem
from gateway.service.slack import SlackService
from gateway.slack import blocks
from gateway.slack.metrics import SlackCounters, post_counter

log = logging.getLogger("ticketgate.slack")
THREAD_WAIT = 5.0  # seconds: a thread message whose ticket post is not out yet waits


class SlackPoster:
    channel = "slack"

    def __init__(self, client: WebClient, service: SlackService, counters: SlackCounters) -> None:
        self.client = client
        self.service = service
        self.counters = counters

    def close(self) -> None:
        """Nothing is kept between batches: the WebClient opens a connection per call."""

    def deliver(self, items: Sequence[OutboxItem]) -> list[DeliveryOutcome]:
        """One Slack call a row, in order. After a 429 or a network failure the rest of the
        batch is not sent: each of those rows is retried after the same wait, so a rate limit
        is not hit again row by row and an outage costs one timeout a batch, not one a row."""
        out = []
        hold: DeliveryOutcome | None = None  # why the rest of the batch waits
        held = 0
        for item in items:
            if hold is not None:
                outcome = DeliveryOutcome(item.id, "retry", hold.error, hold.retry_after)
                held += 1
            else:
                outcome, stop = self._deliver(item)
                hold = outcome if stop else None
            self.counters.add(post_counter(outcome.result))
            out.append(outcome)
        if held and hold is not None:
            log.info("Slack: %d more post(s) of this batch wait too (%s)", held, hold.error)
        return out

    def _deliver(self, item: OutboxItem) -> tuple[DeliveryOutcome, bool]:
        """The row's outcome, and whether the rest of the batch must wait (429, unreachable)."""
        p = item.payload
        try:
            waiting = self._send(p)
        except SlackApiError as e:
            resp = e.response
            if resp is not None and resp.status_code == 429:
                after = _retry_after(resp.headers)
                log.info("outbox %s: Slack rate limit; again in %.0f s", item.id, after)
                return DeliveryOutcome(item.id, "retry", "429 rate limited", after), True
            error = str(resp.get("error", "")) if resp is not None else ""
            if resp is not None and resp.status_code >= 500:
                return DeliveryOutcome(item.id, "retry", f"Slack HTTP {resp.status_code}"), False
            log.warning("outbox %s: Slack refused %s: %s", item.id, p.get("op"), error)
            return DeliveryOutcome(item.id, "dead", f"slack: {error or 'ok: false'}"), False
        except (OSError, HTTPException) as e:  # the network: the outbox tries again
            log.info("outbox %s: Slack unreachable: %s", item.id, type(e).__name__)
            return DeliveryOutcome(item.id, "retry", f"{type(e).__name__}: {e}"[:500]), True
        except Exception as e:  # this row's own trouble: tried again alone
            log.exception("outbox %s: cannot post", item.id)
            return DeliveryOutcome(item.id, "retry", f"{type(e).__name__}: {e}"[:500]), False
        if waiting:
            wait = DeliveryOutcome(
                item.id, "retry", "the ticket's channel post is not out yet", THREAD_WAIT
            )
            return wait, False
        return DeliveryOutcome(item.id, "sent"), False

    def _send(self, p: dict[str, Any]) -> bool:
        """One Slack call for the row; True when it must wait for the ticket's post."""
        op = p["op"]
        ticket_id = int(p["ticket_id"])
        if op == "dm":
            text, bl = blocks.dm(p)
            self.client.chat_postMessage(channel=p["user"], text=text, blocks=bl)
            return False
        channel = p["channel"]
        ts = self.service.post_of(ticket_id, channel)
        if op == "post":
            text, bl = blocks.ticket_post(p["card"], p.get("text", ""))
            if ts is not None:  # posted before (a resend of this row): bring it up to date
                self.client.chat_update(channel=channel, ts=ts, text=text, blocks=bl)
                return False
            resp = self.client.chat_postMessage(channel=channel, text=text, blocks=bl)
            self.service.record_post(ticket_id, str(resp["channel"]), str(resp["ts"]))
            return False
        if ts is None:
            return True
        if op == "update":
            text, bl = blocks.ticket_post(p["card"])
            self.client.chat_update(channel=channel, ts=ts, text=text, blocks=bl)
        elif p.get("status"):
            text, bl = blocks.thread_status(p["actor"], p["status"], p.get("remark", ""))
            self.client.chat_postMessage(channel=channel, thread_ts=ts, text=text, blocks=bl)
        else:
            text, bl = blocks.thread_message(p["actor"], p.get("text", ""))
            self.client.chat_postMessage(channel=channel, thread_ts=ts, text=text, blocks=bl)
        return False


def _retry_after(headers: Any) -> float:
    value = None
    for k, v in dict(headers or {}).items():
        if str(k).lower() == "retry-after":
            value = v[0] if isinstance(v, list) else v
    try:
        return max(1.0, float(value)) if value is not None else 30.0
    except (TypeError, ValueError):
        return 30.0
