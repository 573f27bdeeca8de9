"""`/ticket` text → what was asked (pure): help, the form, a quick raise, a list, a show, or
an action of SPEC §1.5 on a ticket."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.domain.lifecycle import Action

# Slack escapes what it links (a slash command with `should_escape`): <@U123|name>,
# <mailto:a@b.example|a@b.example>, <#C123|name>, <https://…|…>.
_MAILTO = re.compile(r"<mailto:([^|>]+)(?:\|[^>]*)?>")
_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_REF = re.compile(r"^TKT-\d+$", re.IGNORECASE)
LISTS = ("mine", "queue", "raised")
# Actions that take free text as their remark; reply/respond/message take it as the body.
MESSAGE_ACTIONS = frozenset({"reply", "respond", "message"})
ACTIONS = frozenset(a.value for a in Action) | {"status", "to-higher-authority"}


@dataclass(frozen=True)
class Help:
    problem: str = ""


@dataclass(frozen=True)
class NewForm:
    pass


@dataclass(frozen=True)
class NewQuick:
    target: str  # a department's name or address, or a person (@U… or email)
    subject: str


@dataclass(frozen=True)
class ListTickets:
    which: str


@dataclass(frozen=True)
class Show:
    ref: str


@dataclass(frozen=True)
class TicketAction:
    action: str
    ref: str
    rest: str  # the text after the reference
    users: tuple[str, ...] = ()  # Slack user ids named in `rest` (@U…)


Parsed = Help | NewForm | NewQuick | ListTickets | Show | TicketAction


def unescape(text: str) -> str:
    """Slack's escaped links back to plain words: mail links to the address, user mentions
    to `@U…`, and &amp; &lt; &gt;."""
    text = _MAILTO.sub(lambda m: m.group(1), text)
    text = _USER.sub(lambda m: "@" + m.group(1), text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def parse(text: str) -> Parsed:
    words = unescape(text).strip()
    if not words:
        return Help()
    head, _, rest = words.partition(" ")
    head = head.lower()
    rest = rest.strip()
    if head == "help":
        return Help()
    if head == "new":
        if not rest:
            return NewForm()
        target, colon, subject = rest.partition(":")
        if not colon or not target.strip() or not subject.strip():
            return Help("`/ticket new` alone opens the form; `/ticket new IT: <subject>` raises")
        return NewQuick(target.strip(), subject.strip())
    if head == "list":
        which = rest.lower() or "mine"
        if which not in LISTS:
            return Help(f"`/ticket list` takes mine, queue or raised, not {rest!r}")
        return ListTickets(which)
    ref, _, tail = rest.partition(" ")
    if head == "show":
        if not _REF.match(ref):
            return Help("`/ticket show TKT-n`")
        return Show(ref.upper())
    name = head.replace("-", "_")
    if name not in ACTIONS and head not in ACTIONS:
        return Help(f"unknown subcommand {head!r}")
    if not _REF.match(ref):
        return Help(f"`/ticket {head} TKT-n …`: name the ticket")
    tail = tail.strip()
    users = tuple(w[1:] for w in tail.split() if re.fullmatch(r"@[UW][A-Z0-9]+", w))
    return TicketAction(name, ref.upper(), tail, users)
