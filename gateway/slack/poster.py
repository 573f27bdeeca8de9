"""Slack posts from the outbox (a `ChannelSender`): the ticket's channel post, its thread,
chat.update of the post, and DMs.

Outcomes: a 429 is retried after its Retry-After; `ok: false` (channel_not_found,
not_in_channel, invalid_blocks …) is dead-lettered with the error; a network failure is
retried with the outbox's backoff. Nothing is posted twice: the client retries nothing itself
(an outbox row is the one retry), and a ticket's post already recorded is updated rather than
posted again."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from gateway.service.outbox import DeliveryOutcome, OutboxItem
from gateway.service.slack import SlackService
from gateway.slack import blocks
from gateway.slack.metrics import SlackCounters

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
        out = []
        for item in items:
            outcome = self._deliver(item)
            self.counters.add(f'ticketgate_slack_posts_total{{result="{outcome.result}"}}')
            out.append(outcome)
        return out

    def _deliver(self, item: OutboxItem) -> DeliveryOutcome:
        p = item.payload
        try:
            waiting = self._send(p)
        except SlackApiError as e:
            resp = e.response
            if resp is not None and resp.status_code == 429:
                after = _retry_after(resp.headers)
                log.info("outbox %s: Slack rate limit; again in %.0f s", item.id, after)
                return DeliveryOutcome(item.id, "retry", "429 rate limited", retry_after=after)
            error = str(resp.get("error", "")) if resp is not None else ""
            if resp is not None and resp.status_code >= 500:
                return DeliveryOutcome(item.id, "retry", f"Slack HTTP {resp.status_code}")
            log.warning("outbox %s: Slack refused %s: %s", item.id, p.get("op"), error)
            return DeliveryOutcome(item.id, "dead", f"slack: {error or 'ok: false'}")
        except Exception as e:  # noqa: BLE001 - a network failure: the outbox tries again
            log.info("outbox %s: Slack unreachable: %s", item.id, type(e).__name__)
            return DeliveryOutcome(item.id, "retry", f"{type(e).__name__}: {e}"[:500])
        if waiting:
            return DeliveryOutcome(
                item.id, "retry", "the ticket's channel post is not out yet", THREAD_WAIT
            )
        return DeliveryOutcome(item.id, "sent")

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
