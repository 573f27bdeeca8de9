"""The Slack adapter: bolt listeners that ack() first, translate the payload into a service
command, call the service, and answer with Block Kit (`blocks.py`).

Every request first passes `PinWorkspace`: a request from a workspace (team id) no
organization names, or from another app than the one the organization names, is answered
200 and changes nothing. Then the listener acks (Slack's 3 seconds), and the slow work runs
after the ack on bolt's listener threads. Changes are applied once per Slack id (an event's
`event_id`, an interaction's trigger or view id): a retry finds the id stored in the same
transaction as the change, and changes nothing again."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.middleware import Middleware
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from gateway.domain.lifecycle import Channel
from gateway.service.commands import Act, AttachmentData, RaiseTicket
from gateway.service.errors import AlreadyApplied, UserFacingError
from gateway.service.slack import SlackActor, SlackService, Workspace
from gateway.slack import blocks
from gateway.slack.commands import (
    MESSAGE_ACTIONS,
    Help,
    ListTickets,
    NewForm,
    NewQuick,
    Show,
    TicketAction,
    parse,
)
from gateway.slack.identity import SlackIdentity
from gateway.slack.metrics import SlackCounters

log = logging.getLogger("ticketgate.slack")
TICKET_REACTION = "ticket"
SHORTCUT = "raise_ticket"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
NOT_CONNECTED = "This Slack workspace is not connected to ticketgate."


@dataclass(frozen=True)
class AdapterOptions:
    bot_token: str
    api_url: str
    max_attachment_bytes: int = 10 * 1024 * 1024


def team_and_app(body: dict[str, Any]) -> tuple[str, str]:
    """The workspace and app a request comes from, in each payload shape: slash commands
    and events carry `team_id`, interactions `team.id`; all carry `api_app_id`."""
    team = body.get("team_id") or (body.get("team") or {}).get("id") or ""
    if not team:
        team = (body.get("user") or {}).get("team_id") or ""
    return str(team), str(body.get("api_app_id") or "")


class PinWorkspace(Middleware):
    """Only the configured workspaces (and apps) act; every other request changes nothing."""

    def __init__(
        self,
        service: SlackService,
        counters: SlackCounters,
        *,
        ttl_seconds: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.counters = counters
        # team id → its workspace (or None), kept briefly: no database read on the ack path
        self._known: dict[str, tuple[float, Workspace | None]] = {}
        self._ttl = ttl_seconds
        self._monotonic = monotonic

    def workspace(self, team: str) -> Workspace | None:
        now = self._monotonic()
        hit = self._known.get(team)
        if hit is not None and hit[0] > now:
            return hit[1]
        ws = self.service.workspace(team)
        self._known[team] = (now + self._ttl, ws)
        return ws

    def process(
        self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse:
        body = req.body
        if body.get("type") in ("url_verification",) or body.get("ssl_check"):
            return next()
        team, app_id = team_and_app(body)
        ws = self.workspace(team) if team else None
        if ws is None or (ws.app_id and app_id != ws.app_id):
            self.counters.add('ticketgate_slack_refused_total{reason="workspace"}')
            log.info("slack request from team %s app %s: not configured; ignored", team, app_id)
            text = NOT_CONNECTED if body.get("command") else ""
            return BoltResponse(status=200, body=text)
        req.context["ws"] = ws
        return next()


class SlackAdapter:
    """The listeners, over the service, the identity look-up and the Web API client."""

    def __init__(
        self,
        *,
        service: SlackService,
        identity: SlackIdentity,
        client: WebClient,
        counters: SlackCounters,
        options: AdapterOptions,
        executor: Executor | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.service = service
        self.identity = identity
        self.client = client
        self.counters = counters
        self.options = options
        quiet = logger
        if quiet is None:
            # bolt's own warnings quote request bodies (an unhandled request is logged with its
            # payload): only its errors are let through.
            quiet = logging.getLogger("ticketgate.slack.bolt")
            quiet.setLevel(logging.ERROR)
        self.app = App(
            client=client,  # its token is the bot token
            signing_secret="",
            # The HTTP server verifies signatures on the raw bytes itself (bolt's check logs
            # the failing body); Socket Mode has none.
            request_verification_enabled=False,
            token_verification_enabled=False,
            # The ack functions run in the request's thread, the work after them (lazy).
            process_before_response=True,
            logger=quiet,
            listener_executor=executor,
            before_authorize=PinWorkspace(service, counters),
        )
        self._register()

    # ---- helpers ------------------------------------------------------------------------------
    def who(self, ws: Workspace, user_id: str) -> tuple[SlackActor | None, str]:
        found = self.identity.resolve(ws, user_id)
        if found.actor is None:
            self.counters.add('ticketgate_slack_refused_total{reason="identity"}')
        return found.actor, found.refusal

    def tell(
        self,
        *,
        channel: str | None,
        user: str,
        text: str,
        bl: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
        respond: Callable[..., Any] | None = None,
    ) -> None:
        """An answer only ``user`` sees: ephemeral in the channel it came from; by the
        command's response_url, or a DM, where the app cannot post ephemerally."""
        bl = bl or blocks.note(text)
        if channel and not channel.startswith("D"):
            try:
                kw: dict[str, Any] = {"thread_ts": thread_ts} if thread_ts else {}
                self.client.chat_postEphemeral(
                    channel=channel, user=user, text=text[:3000], blocks=bl, **kw
                )
                return
            except SlackApiError as e:
                log.info("chat.postEphemeral: %s; answering otherwise", e.response.get("error"))
        if respond is not None:
            try:
                respond(text=text[:3000], blocks=bl, response_type="ephemeral")
                return
            except Exception as e:  # noqa: BLE001 - then by DM
                log.info("response_url: %s; answering by DM", type(e).__name__)
        self.client.chat_postMessage(channel=user, text=text[:3000], blocks=bl)

    def email_of(self, ws: Workspace, user_id: str) -> str:
        actor, refusal = self.who(ws, user_id)
        if actor is None:
            raise UserFacingError(f"<@{user_id}> is not an employee here: {refusal}")
        return actor.email

    def _resolve_words(self, ws: Workspace, rest: str) -> tuple[str, ...]:
        """`@U…` words of a command to employees' emails; other words as they are."""
        out = []
        for w in rest.split():
            if re.fullmatch(r"@[UW][A-Z0-9]+", w):
                out.append(self.email_of(ws, w[1:]))
            else:
                out.append(w)
        return tuple(out)

    # ---- registration ---------------------------------------------------------------------------
    def _register(self) -> None:
        """Each listener: an ack function that runs in the request's thread and answers
        Slack at once (bolt's process_before_response), and the work, run after it on the
        listener threads (a lazy listener) — so a busy moment delays the work, never the ack."""
        app = self.app

        def on(decorator: Any, ack: Callable[..., Any], work: Callable[..., Any]) -> None:
            decorator(ack=ack, lazy=[work])

        on(app.command("/ticket"), self.ack_command, self.on_command)
        on(app.action("ticket_take"), self.ack_now, self.on_button)
        on(app.action("ticket_deliver"), self.ack_now, self.on_button)
        on(app.action("ticket_return"), self.ack_now, self.on_remark_button)
        on(app.action("ticket_reject"), self.ack_now, self.on_remark_button)
        on(app.action("ticket_open"), self.ack_now, self.on_open)
        on(app.action("new_category"), self.ack_now, self.on_category)
        on(app.action(re.compile(r"^feedback_[1-5]$")), self.ack_now, self.on_feedback_button)
        on(app.view("new_ticket"), self.ack_new_ticket, self.on_new_ticket)
        on(app.view("ticket_remark"), self.ack_remark, self.on_remark)
        on(app.view("feedback_comment"), self.ack_now, self.on_feedback_comment)
        on(app.shortcut(SHORTCUT), self.ack_now, self.on_shortcut)
        # Events are acknowledged by bolt itself (an empty 200).
        on(app.event("reaction_added"), self.ack_event, self.on_reaction)
        on(app.event("message"), self.ack_event, self.on_message)
        on(app.event("app_home_opened"), self.ack_event, self.on_home)

    # ---- the acks (in the request's thread: no database, no Web API) -----------------------
    @staticmethod
    def ack_now(ack: Any) -> None:
        ack()

    @staticmethod
    def ack_event() -> None:
        return None

    @staticmethod
    def ack_command(ack: Any, body: dict[str, Any]) -> None:
        parsed = parse(body.get("text", ""))
        if isinstance(parsed, Help):
            # Nothing to look up: the answer is the ack itself.
            text = (f"{parsed.problem}\n\n" if parsed.problem else "") + blocks.HELP
            ack(text=text, response_type="ephemeral")
        else:
            ack()

    @staticmethod
    def ack_remark(ack: Any, view: dict[str, Any]) -> None:
        if not _value(view, "remark").strip():
            ack(response_action="errors", errors={"remark": "A remark is required"})
        else:
            ack()

    @staticmethod
    def ack_new_ticket(ack: Any, view: dict[str, Any]) -> None:
        errors = new_ticket_errors(view)
        if errors:
            ack(response_action="errors", errors=errors)
        else:
            ack()

    # ---- /ticket ------------------------------------------------------------------------------
    def on_command(self, body: dict[str, Any], context: Any, respond: Any) -> None:
        parsed = parse(body.get("text", ""))
        if isinstance(parsed, Help):
            return  # answered in the ack
        ws: Workspace = context["ws"]
        user, channel = body["user_id"], body.get("channel_id")
        once = f"cmd:{body.get('trigger_id') or ''}" if body.get("trigger_id") else None

        def say(text: str, bl: list[dict[str, Any]] | None = None) -> None:
            self.tell(channel=channel, user=user, text=text, bl=bl, respond=respond)

        if isinstance(parsed, NewForm):
            # The trigger lasts 3 s and works once: the modal opens first, the user is checked
            # after (and the modal replaced by the refusal).
            view = blocks.new_ticket_modal(
                self.service.form_options(ws.org_id), channel=channel or ""
            )
            opened = self.client.views_open(trigger_id=body["trigger_id"], view=view)
            actor, refusal = self.who(ws, user)
            if actor is None:
                self.client.views_update(
                    view_id=opened["view"]["id"],
                    view=blocks.info_modal("New ticket", blocks.note(refusal)),
                )
            return
        actor, refusal = self.who(ws, user)
        if actor is None:
            say(refusal)
            return
        try:
            if isinstance(parsed, NewQuick):
                ref = self._quick_raise(ws, actor, parsed, once)
                say(f"Raised {ref}: {parsed.subject}")
            elif isinstance(parsed, ListTickets):
                lines = self.service.tickets_of(actor.email, parsed.which)
                say(f"{len(lines)} open tickets", blocks.ticket_lines(parsed.which, lines))
            elif isinstance(parsed, Show):
                card = self.service.card(parsed.ref, actor.email)
                say(f"{card.ref} {card.subject}", blocks.ticket_card(card))
            elif isinstance(parsed, TicketAction):
                self._act(ws, actor, parsed, once)
                say(f"{parsed.ref}: {parsed.action} done")
        except AlreadyApplied:
            self.counters.add("ticketgate_slack_duplicates_total")
        except UserFacingError as e:
            self.counters.add('ticketgate_slack_refused_total{reason="action"}')
            say(f"Refused: {e.reason}")

    def _quick_raise(self, ws: Workspace, actor: SlackActor, q: NewQuick, once: str | None) -> str:
        target = q.target
        if target.startswith("@"):
            to = self.email_of(ws, target[1:])
        elif _EMAIL.match(target):
            to = target
        else:
            dep = self.service.department_named(ws.org_id, target)
            if dep is None:
                raise UserFacingError(f"no department {target!r} (see /ticket new)")
            to = dep.address
        return self.service.raise_ticket(
            RaiseTicket(requester=actor.email, to=to, subject=q.subject, channel=Channel.SLACK),
            once=once,
        )

    def _act(self, ws: Workspace, actor: SlackActor, a: TicketAction, once: str | None) -> None:
        if a.action in MESSAGE_ACTIONS:
            self.service.act(
                Act(a.ref, actor.email, a.action, body=a.rest, channel=Channel.SLACK), once=once
            )
            return
        args = self._resolve_words(ws, a.rest) if a.users else tuple(a.rest.split())
        self.service.act(
            Act(a.ref, actor.email, a.action, args=args, remark=a.rest, channel=Channel.SLACK),
            once=once,
        )

    # ---- buttons on the channel post -----------------------------------------------------------
    def on_button(self, body: dict[str, Any], context: Any) -> None:
        ws: Workspace = context["ws"]
        action = body["actions"][0]
        ref, name = action["value"], action["action_id"].removeprefix("ticket_")
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id")
        actor, refusal = self.who(ws, user)
        if actor is None:
            self.tell(channel=channel, user=user, text=refusal)
            return
        once = f"action:{user}:{action.get('action_ts', '')}"
        act = Act(ref, actor.email, name, channel=Channel.SLACK)
        self._act_and_tell(act, once=once, channel=channel, user=user)

    def _act_and_tell(self, act: Act, *, once: str, channel: str | None, user: str) -> None:
        """Apply a button's (or its remark modal's) action once and tell the clicker, in an
        ephemeral message, that it was done or why it was refused; a repeat says nothing."""
        try:
            self.service.act(act, once=once)
        except AlreadyApplied:
            self.counters.add("ticketgate_slack_duplicates_total")
            return
        except UserFacingError as e:
            self.counters.add('ticketgate_slack_refused_total{reason="action"}')
            self.tell(channel=channel, user=user, text=f"Refused: {e.reason}")
            return
        self.tell(channel=channel, user=user, text=f"{act.ref}: {act.action} done")

    def on_remark_button(self, body: dict[str, Any], context: Any) -> None:
        action = body["actions"][0]
        ref, name = action["value"], action["action_id"].removeprefix("ticket_")
        channel = (body.get("channel") or {}).get("id") or ""
        self.client.views_open(
            trigger_id=body["trigger_id"], view=blocks.remark_modal(ref, name, channel)
        )

    def on_remark(self, body: dict[str, Any], context: Any, view: dict[str, Any]) -> None:
        remark = _value(view, "remark")
        if not remark.strip():
            return  # answered with the error in the ack
        ws: Workspace = context["ws"]
        meta = json.loads(view.get("private_metadata") or "{}")
        user = body["user"]["id"]
        channel = meta.get("channel") or None
        actor, refusal = self.who(ws, user)
        if actor is None:
            self.tell(channel=channel, user=user, text=refusal)
            return
        act = Act(meta["ref"], actor.email, meta["action"], remark=remark, channel=Channel.SLACK)
        self._act_and_tell(act, once=f"view:{view['id']}", channel=channel, user=user)

    def on_open(self, body: dict[str, Any], context: Any) -> None:
        ws: Workspace = context["ws"]
        user = body["user"]["id"]
        ref = body["actions"][0]["value"]
        actor, refusal = self.who(ws, user)
        try:
            if actor is None:
                raise UserFacingError(refusal)
            card = self.service.card(ref, actor.email)
            bl = blocks.ticket_card(card)
        except UserFacingError as e:
            bl = blocks.note(e.reason)
        self.client.views_open(trigger_id=body["trigger_id"], view=blocks.info_modal(ref, bl))

    # ---- the new-ticket modal ---------------------------------------------------------------
    def on_category(self, body: dict[str, Any], context: Any) -> None:
        """The sub-category select follows the chosen category."""
        ws: Workspace = context["ws"]
        view = body["view"]
        chosen = (body["actions"][0].get("selected_option") or {}).get("value", "")
        meta = json.loads(view.get("private_metadata") or "{}")
        self.client.views_update(
            view_id=view["id"],
            hash=view.get("hash"),
            view=blocks.new_ticket_modal(
                self.service.form_options(ws.org_id),
                category=chosen,
                channel=meta.get("channel", ""),
            ),
        )

    def on_new_ticket(self, body: dict[str, Any], context: Any, view: dict[str, Any]) -> None:
        if new_ticket_errors(view):
            return  # answered with the errors in the ack
        department = _selected(view, "department")
        person = _value(view, "person", key="selected_user")
        subject = _value(view, "subject")
        ws: Workspace = context["ws"]
        user = body["user"]["id"]
        category = _selected(view, "category")
        sub = next((_selected(view, b) for b in _values(view) if b.startswith("sub_category:")), "")
        try:
            actor, refusal = self.who(ws, user)
            if actor is None:
                raise UserFacingError(refusal)
            to = department or self.email_of(ws, person)
            cc = tuple(self.email_of(ws, u) for u in _value_list(view, "cc"))
            bcc = tuple(self.email_of(ws, u) for u in _value_list(view, "bcc"))
            ref = self.service.raise_ticket(
                RaiseTicket(
                    requester=actor.email,
                    to=to,
                    subject=subject,
                    body=_value(view, "description"),
                    cc=cc,
                    bcc=bcc,
                    category=f"{category}/{sub}" if category and sub else category,
                    priority=_selected(view, "priority"),
                    channel=Channel.SLACK,
                ),
                once=f"view:{view['id']}",
            )
        except AlreadyApplied:
            self.counters.add("ticketgate_slack_duplicates_total")
            return
        except UserFacingError as e:
            self.counters.add('ticketgate_slack_refused_total{reason="action"}')
            self.client.chat_postMessage(channel=user, text=f"Not raised: {e.reason}")
            return
        self.client.chat_postMessage(channel=user, text=f"Raised {ref}: {subject}")

    # ---- intake from messages ---------------------------------------------------------------
    def on_shortcut(self, body: dict[str, Any], context: Any, respond: Any) -> None:
        ws: Workspace = context["ws"]
        message = body.get("message") or {}
        channel = (body.get("channel") or {}).get("id", "")
        self._raise_from_message(
            ws,
            invoker=body["user"]["id"],
            channel=channel,
            message=message,
            respond=respond,
        )

    def on_reaction(self, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        if event.get("reaction") != TICKET_REACTION:
            return
        item = event.get("item") or {}
        if item.get("type") != "message":
            return
        ws: Workspace = context["ws"]
        channel, ts = item["channel"], item["ts"]
        message = self._fetch_message(channel, ts)
        if message is None:
            self.tell(channel=channel, user=event["user"], text="That message cannot be read.")
            return
        message.setdefault("user", event.get("item_user"))
        self._raise_from_message(ws, invoker=event["user"], channel=channel, message=message)

    def _fetch_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        try:
            found = (
                self.client.conversations_history(
                    channel=channel, latest=ts, inclusive=True, limit=1
                ).get("messages")
                or []
            )
            if not found or found[0].get("ts") != ts:
                found = (
                    self.client.conversations_replies(
                        channel=channel, ts=ts, inclusive=True, limit=1
                    ).get("messages")
                    or []
                )
        except SlackApiError as e:
            log.info("reading message %s in %s: %s", ts, channel, e.response.get("error"))
            return None
        msg = next((m for m in found if m.get("ts") == ts), None)
        return dict(msg) if msg is not None else None

    def _raise_from_message(
        self,
        ws: Workspace,
        *,
        invoker: str,
        channel: str,
        message: dict[str, Any],
        respond: Callable[..., Any] | None = None,
    ) -> None:
        def say(text: str) -> None:
            self.tell(channel=channel, user=invoker, text=text, respond=respond)

        inv, refusal = self.who(ws, invoker)
        if inv is None:
            say(refusal)
            return
        author_id = message.get("user")
        if not author_id or message.get("bot_id"):
            say("Only a person's message can become a ticket.")
            return
        author, refusal = self.who(ws, str(author_id))
        if author is None:
            say(f"The message's author is not an employee here: {refusal}")
            return
        dep = self.service.department_for_channel(ws.org_id, channel)
        if dep is None:
            say("This channel is no department's channel: raise with /ticket new instead.")
            return
        text = str(message.get("text") or "")
        first = text.strip().splitlines()[0] if text.strip() else "(no subject)"
        attachments = self._files(message.get("files") or [])
        ts = str(message.get("ts", ""))
        try:
            ref = self.service.raise_ticket(
                RaiseTicket(
                    requester=author.email,
                    to=dep.address,
                    subject=first[:120],
                    body=text,
                    channel=Channel.SLACK,
                    device={"slack_channel": channel, "slack_ts": ts},
                    attachments=attachments,
                ),
                once=f"raise:{channel}:{ts}",
            )
        except AlreadyApplied:
            self.counters.add("ticketgate_slack_duplicates_total")
            say("A ticket was raised from that message already.")
            return
        except UserFacingError as e:
            say(f"Not raised: {e.reason}")
            return
        self.client.chat_postMessage(
            channel=channel, thread_ts=ts, text=f"Raised {ref} from this message."
        )

    def _files(self, files: list[dict[str, Any]]) -> tuple[AttachmentData, ...]:
        """The message's files the bot token may read, within the per-file limit; the token is
        sent to Slack's own file hosts (or the configured API's host) only."""
        out = []
        api_host = urllib.parse.urlsplit(self.options.api_url).netloc
        for f in files:
            url = f.get("url_private_download") or f.get("url_private") or ""
            host = urllib.parse.urlsplit(url).netloc
            if not url or host not in ("files.slack.com", api_host):
                continue
            if int(f.get("size") or 0) > self.options.max_attachment_bytes:
                continue
            req = urllib.request.Request(
                url, headers={"Authorization": f"Bearer {self.options.bot_token}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    data = r.read(self.options.max_attachment_bytes + 1)
            except OSError as e:
                log.info("slack file %s: not readable: %s", f.get("id"), type(e).__name__)
                continue
            if len(data) > self.options.max_attachment_bytes:
                continue
            name = re.sub(r"[\x00-\x1f/\\]", "_", str(f.get("name") or "file"))[:200]
            out.append(
                AttachmentData(
                    filename=name,
                    content_type=str(f.get("mimetype") or "application/octet-stream"),
                    data=data,
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
        return tuple(out)

    # ---- the ticket's thread ------------------------------------------------------------------
    def on_message(self, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        # Edits, deletions, joins, bot messages (ours among them) are no ticket messages.
        if event.get("subtype") or event.get("bot_id"):
            return
        thread_ts, ts = event.get("thread_ts"), event.get("ts")
        if not thread_ts or thread_ts == ts:
            return
        channel = event.get("channel", "")
        ref = self.service.ticket_for_thread(channel, thread_ts)
        if ref is None:
            return
        ws: Workspace = context["ws"]
        user = event.get("user", "")
        actor, refusal = self.who(ws, user)
        if actor is None:
            self.tell(channel=channel, user=user, text=refusal, thread_ts=thread_ts)
            return
        try:
            self.service.post_in_thread(
                ref=ref,
                actor=actor.email,
                body=str(event.get("text") or ""),
                origin=channel,
                once=f"event:{body.get('event_id') or channel + ':' + str(ts)}",
            )
        except AlreadyApplied:
            self.counters.add("ticketgate_slack_duplicates_total")
        except UserFacingError as e:
            self.counters.add('ticketgate_slack_refused_total{reason="action"}')
            self.tell(
                channel=channel,
                user=user,
                text=f"Not added to {ref}: {e.reason}",
                thread_ts=thread_ts,
            )

    # ---- App Home -----------------------------------------------------------------------------
    def on_home(self, event: dict[str, Any], context: Any) -> None:
        if event.get("tab", "home") != "home":
            return
        ws: Workspace = context["ws"]
        user = event["user"]
        actor, refusal = self.who(ws, user)
        if actor is None:
            view = {"type": "home", "blocks": blocks.note(refusal)}
        else:
            view = blocks.home(
                self.service.tickets_of(actor.email, "raised"),
                self.service.tickets_of(actor.email, "mine")
                + self.service.tickets_of(actor.email, "queue"),
            )
        self.client.views_publish(user_id=user, view=view)

    # ---- feedback ----------------------------------------------------------------------------
    def on_feedback_button(self, body: dict[str, Any], context: Any) -> None:
        ref, _, rating = body["actions"][0]["value"].partition(":")
        self.client.views_open(
            trigger_id=body["trigger_id"], view=blocks.feedback_modal(ref, int(rating))
        )

    def on_feedback_comment(self, body: dict[str, Any], context: Any, view: dict[str, Any]) -> None:
        ws: Workspace = context["ws"]
        user = body["user"]["id"]
        meta = json.loads(view.get("private_metadata") or "{}")
        ref, rating = str(meta["ref"]), int(meta["rating"])
        actor, refusal = self.who(ws, user)
        if actor is None:
            self.client.chat_postMessage(channel=user, text=refusal)
            return
        try:
            recorded = self.service.record_feedback(
                ref=ref,
                actor=actor.email,
                rating=rating,
                comment=_value(view, "comment"),
                once=f"view:{view['id']}",
            )
        except AlreadyApplied:
            self.counters.add("ticketgate_slack_duplicates_total")
            return
        except UserFacingError as e:
            self.client.chat_postMessage(channel=user, text=f"Not recorded: {e.reason}")
            return
        replaced = recorded.previous if recorded.changed else None
        self.client.chat_postMessage(
            channel=user,
            text=f"{ref}: thank you",
            blocks=blocks.feedback_thanks(ref, rating, replaced=replaced),
        )


def new_ticket_errors(view: dict[str, Any]) -> dict[str, str]:
    """What the new-ticket modal must say before it closes (response_action errors)."""
    errors = {}
    if bool(_selected(view, "department")) == bool(_value(view, "person", key="selected_user")):
        errors["department"] = "Choose a department or a person (one of them)"
    if not _value(view, "subject").strip():
        errors["subject"] = "Give the ticket a subject"
    return errors


# ---- view state -------------------------------------------------------------------------------
def _values(view: dict[str, Any]) -> dict[str, Any]:
    return dict((view.get("state") or {}).get("values") or {})


def _element(view: dict[str, Any], block: str) -> dict[str, Any]:
    b = _values(view).get(block) or {}
    return dict(next(iter(b.values()), {}) or {})


def _value(view: dict[str, Any], block: str, *, key: str = "value") -> str:
    return str(_element(view, block).get(key) or "")


def _selected(view: dict[str, Any], block: str) -> str:
    return str((_element(view, block).get("selected_option") or {}).get("value") or "")


def _value_list(view: dict[str, Any], block: str) -> list[str]:
    return [str(u) for u in _element(view, block).get("selected_users") or []]
