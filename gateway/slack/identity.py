"""Who a Slack user is: the employee whose email is the user's profile email (`users.info`),
kept for a while (the expiry is `slack.identity_cache_seconds`).

A user of another workspace (Slack Connect), a deleted user, a bot, a guest (restricted) and a
user whose email is no employee's get a refusal, never an identity. When `users.info` cannot
be asked (no `users:read.email` scope, Slack unreachable) the Slack id the org file names is
used, and only that."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from gateway.service.clock import Clock
from gateway.service.slack import SlackActor, SlackService, Workspace

log = logging.getLogger("ticketgate.slack")


@dataclass(frozen=True)
class Identity:
    """An employee, or why the user is not one (said back to them)."""

    actor: SlackActor | None
    refusal: str = ""


class SlackIdentity:
    def __init__(
        self,
        client: WebClient,
        service: SlackService,
        *,
        clock: Clock,
        ttl_seconds: float = 3600.0,
        refusal_ttl_seconds: float = 60.0,
    ) -> None:
        self.client = client
        self.service = service
        self.clock = clock
        self.ttl = timedelta(seconds=ttl_seconds)
        self.refusal_ttl = timedelta(seconds=refusal_ttl_seconds)
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[datetime, Identity]] = {}
        self.lookups = 0

    def resolve(self, ws: Workspace, user_id: str) -> Identity:
        key = (ws.team_id, user_id)
        now = self.clock.now()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = self._look_up(ws, user_id)
        ttl = self.ttl if found.actor is not None else self.refusal_ttl
        with self._lock:
            self._cache[key] = (now + ttl, found)
        return found

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    def _look_up(self, ws: Workspace, user_id: str) -> Identity:
        self.lookups += 1
        try:
            user = self.client.users_info(user=user_id).get("user") or {}
        except SlackApiError as e:
            error = e.response.get("error", "") if e.response is not None else ""
            if error in ("user_not_found", "user_not_visible"):
                return Identity(None, "Slack does not know you in this workspace.")
            return self._named(ws, user_id, f"users.info failed: {error or 'error'}")
        except SlackClientError as e:
            return self._named(ws, user_id, f"users.info failed: {type(e).__name__}")
        except OSError as e:
            return self._named(ws, user_id, f"users.info failed: {type(e).__name__}")
        if user.get("team_id") not in (None, ws.team_id) and not user.get("enterprise_user"):
            return Identity(
                None,
                "You belong to another Slack workspace; ticketgate serves "
                f"{ws.org_name}'s own workspace only.",
            )
        if user.get("deleted") or user.get("is_bot"):
            return Identity(None, "This Slack account cannot raise or act on tickets.")
        if user.get("is_restricted") or user.get("is_ultra_restricted"):
            return Identity(None, "Guest accounts cannot raise or act on tickets.")
        email = str((user.get("profile") or {}).get("email") or "")
        if not email:
            return self._named(ws, user_id, "users.info gave no email (users:read.email)")
        actor = self.service.link(ws.org_id, email, user_id)
        if actor is None:
            return Identity(None, f"Your Slack email {email} is not an employee of {ws.org_name}.")
        if not actor.active:
            return Identity(None, f"{actor.email} is deactivated and can no longer raise or act.")
        return Identity(actor)

    def _named(self, ws: Workspace, user_id: str, why: str) -> Identity:
        log.info("slack user %s: %s; using the org file's Slack id", user_id, why)
        actor = self.service.named_employee(ws.org_id, user_id)
        if actor is None:
            return Identity(None, "ticketgate could not look you up in Slack; try again later.")
        if not actor.active:
            return Identity(None, f"{actor.email} is deactivated and can no longer raise or act.")
        return Identity(actor)
