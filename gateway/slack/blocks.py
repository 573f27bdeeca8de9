"""Block Kit for everything the Slack adapter shows: channel posts, threads, DMs, ephemeral
answers, the new-ticket and remark modals, feedback buttons and the App Home tab.

Pure functions from plain values to the JSON Slack takes; visibility was decided before the
values got here (the service's fan-out and `TicketCard`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.service.slack import FormOptions, TicketCard, TicketLine

Block = dict[str, Any]
MAX_TEXT = 2900  # a section's text is at most 3000 characters

CHANNEL_BUTTONS = (("Take", "take"), ("Return", "return"), ("Reject", "reject"))
PRIORITIES = ("low", "normal", "high", "urgent")

HELP = """\
*`/ticket` — tickets from Slack*
• `/ticket new` — a form; `/ticket new IT: <subject>` raises to a department at once
• `/ticket list [mine|queue|raised]` — your open tickets (mine: owned by you or raised to you)
• `/ticket show TKT-n`
• `/ticket reply TKT-n <text>` (also `respond`, `message`)
• `/ticket take|release|deliver|close|cancel|reopen|approve|escalate|to_higher_authority TKT-n`
• `/ticket return|reject|hold|pending TKT-n <remark>`
• `/ticket assign TKT-n <email or @person>`, `cc`/`bcc TKT-n <emails or @people>`
• `/ticket category TKT-n Hardware/Mouse`, `/ticket priority TKT-n high`, `/ticket status TKT-n DELIVERED`
• `/ticket help`"""


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escape(text: str) -> str:
    """mrkdwn control characters (Slack: escape &, <, >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text) or " "}}


def context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(text, 2000)}]}


def plain(text: str, limit: int = 75) -> dict[str, Any]:
    return {"type": "plain_text", "text": _clip(text, limit) or " "}


def button(label: str, action_id: str, value: str, style: str | None = None) -> Block:
    b: Block = {"type": "button", "text": plain(label), "action_id": action_id, "value": value}
    if style:
        b["style"] = style
    return b


# ---- the channel post and its thread -------------------------------------------------------
def card_fields(card: dict[str, Any]) -> str:
    parts = [
        f"*Status:* {card['status']}",
        f"*Priority:* {card.get('priority') or 'normal'}",
        f"*From:* {_escape(card['requester'])}",
        f"*To:* {_escape(card['target'])}",
    ]
    if card.get("category"):
        parts.append(f"*Category:* {_escape(card['category'])}")
    if card.get("owner"):
        parts.append(f"*Owner:* {_escape(card['owner'])}")
    if card.get("rc"):
        parts.append("*Copies:* " + ", ".join(_escape(n) for n in card["rc"]))
    return "   ".join(parts)


def ticket_post(card: dict[str, Any], description: str = "") -> tuple[str, list[Block]]:
    """The department channel's post of a ticket: what it is, its state, and the buttons."""
    ref = card["ref"]
    head = f"*{ref}* {_escape(card['subject'])}"
    blocks = [section(head), context(card_fields(card))]
    if description.strip():
        blocks.append(section(_escape(description)))
    if card["status"] not in ("CLOSED", "CANCELLED", "REJECTED"):
        buttons = [button(label, f"ticket_{a}", ref) for label, a in CHANNEL_BUTTONS]
        buttons.append(button("Deliver", "ticket_deliver", ref, style="primary"))
        blocks.append({"type": "actions", "block_id": f"ticket_actions:{ref}", "elements": buttons})
    return f"{ref} {card['subject']} [{card['status']}]", blocks


def thread_message(actor: str, text: str) -> tuple[str, list[Block]]:
    return f"{actor}: {text}", [section(f"*{_escape(actor)}*\n{_escape(text)}")]


def thread_status(actor: str, status: str, remark: str) -> tuple[str, list[Block]]:
    line = f"{actor} → {status}" + (f": {remark}" if remark else "")
    return line, [context(_escape(line))]


def dm(payload: dict[str, Any]) -> tuple[str, list[Block]]:
    """A DM to one person: a new message, a status change, a feedback request."""
    ref, subject = payload["ref"], payload["subject"]
    head = f"*{ref}* {_escape(subject)}"
    if payload.get("hidden"):
        head += "  _(hidden: only the assignee side and hidden copies see this)_"
    blocks = [section(head)]
    if payload.get("feedback"):
        # The scheduler's question (it fits the outcome; a reminder says so), else ours.
        question = payload.get("question") or feedback_question(payload["status"])
        blocks.append(section(_escape(question)))
        blocks.append(
            {
                "type": "actions",
                "block_id": f"feedback:{ref}",
                "elements": [button(str(n), f"feedback_{n}", f"{ref}:{n}") for n in range(1, 6)],
            }
        )
        return _clip(f"{ref}: {question}"), blocks
    if payload.get("text"):
        blocks.append(section(f"*{_escape(payload['actor'])}*\n{_escape(payload['text'])}"))
        text = f"{ref} {payload['actor']}: {payload['text']}"
    else:
        line = f"{payload['actor']} → {payload['status']}"
        if payload.get("remark"):
            line += f": {payload['remark']}"
        blocks.append(context(_escape(line)))
        text = f"{ref} {line}"
    return _clip(text), blocks


def feedback_question(status: str) -> str:
    """SPEC §4: the question fits the outcome."""
    if status == "CLOSED":
        return "How was the service? Rate it from 1 (poor) to 5 (excellent)."
    return "Was the decision clear? Rate it from 1 (not at all) to 5 (completely)."


def feedback_thanks(ref: str, rating: int, *, replaced: int | None = None) -> list[Block]:
    again = f" (your earlier {replaced} of 5 is replaced)" if replaced is not None else ""
    return [section(f"*{ref}*: thank you — you rated it {rating} of 5{again}.")]


# ---- ephemeral answers ---------------------------------------------------------------------
def ticket_lines(which: str, lines: Sequence[TicketLine]) -> list[Block]:
    if not lines:
        return [section(f"No open tickets ({which}).")]
    rows = [
        f"*{t.ref}* {_escape(t.subject)} — {t.status}, {t.priority}; "
        f"from {_escape(t.requester)} to {_escape(t.target)}"
        for t in lines
    ]
    return [section(f"*Open tickets ({which})*"), section("\n".join(rows))]


def ticket_card(card: TicketCard, *, limit: int = 10) -> list[Block]:
    """`/ticket show`: the ticket as the viewer may see it."""
    info = {
        "ref": card.ref,
        "subject": card.subject,
        "status": card.status,
        "priority": card.priority,
        "category": card.category,
        "requester": card.requester,
        "target": card.target,
        "owner": card.owner,
        "rc": list(card.rc),
    }
    blocks = [section(f"*{card.ref}* {_escape(card.subject)}"), context(card_fields(info))]
    if card.rhc:
        blocks.append(context("*Hidden copies:* " + ", ".join(_escape(n) for n in card.rhc)))
    if card.description.strip():
        blocks.append(section(_escape(card.description)))
    for msg in card.messages[-limit:]:
        mark = " _(hidden)_" if msg.hidden else ""
        blocks.append(
            section(f"*{_escape(msg.sender)}*{mark} {msg.at:%Y-%m-%d %H:%M}\n{_escape(msg.body)}")
        )
    return blocks


def note(text: str) -> list[Block]:
    return [section(_escape(text))]


# ---- modals --------------------------------------------------------------------------------
def _option(text: str, value: str) -> dict[str, Any]:
    return {"text": plain(text), "value": value[:150]}


def new_ticket_modal(
    options: FormOptions, *, category: str = "", channel: str = ""
) -> dict[str, Any]:
    """`/ticket new`: department or person, category and sub-category (the sub-categories
    follow the chosen category: the select dispatches and the view is updated), priority,
    subject, description, copies and hidden copies."""
    subs = dict(options.categories).get(category, ())
    dept_options = [_option(d.name, d.address) for d in options.departments][:100]
    cat_options = [_option(name, name) for name, _ in options.categories][:100]
    category_element: dict[str, Any] = {
        "type": "static_select",
        "action_id": "new_category",
        "placeholder": plain("Category"),
        "options": cat_options,
    }
    if category:
        category_element["initial_option"] = _option(category, category)
    blocks: list[Block] = [
        {
            "type": "input",
            "block_id": "department",
            "optional": True,
            "label": plain("Department"),
            "element": {
                "type": "static_select",
                "action_id": "value",
                "placeholder": plain("Raise to a department …"),
                "options": dept_options,
            },
        },
        {
            "type": "input",
            "block_id": "person",
            "optional": True,
            "label": plain("… or a person"),
            "element": {"type": "users_select", "action_id": "value"},
        },
        {
            "type": "input",
            "block_id": "category",
            "optional": True,
            "dispatch_action": True,
            "label": plain("Category"),
            "element": category_element,
        },
    ]
    if subs:
        blocks.append(
            {
                "type": "input",
                "block_id": f"sub_category:{category}"[:255],
                "optional": True,
                "label": plain("Sub-category"),
                "element": {
                    "type": "static_select",
                    "action_id": "value",
                    "options": [_option(s, s) for s in subs][:100],
                },
            }
        )
    blocks += [
        {
            "type": "input",
            "block_id": "priority",
            "label": plain("Priority"),
            "element": {
                "type": "static_select",
                "action_id": "value",
                "initial_option": _option("normal", "normal"),
                "options": [_option(p, p) for p in PRIORITIES],
            },
        },
        {
            "type": "input",
            "block_id": "subject",
            "label": plain("Subject"),
            "element": {"type": "plain_text_input", "action_id": "value", "max_length": 200},
        },
        {
            "type": "input",
            "block_id": "description",
            "optional": True,
            "label": plain("Description"),
            "element": {"type": "plain_text_input", "action_id": "value", "multiline": True},
        },
        {
            "type": "input",
            "block_id": "cc",
            "optional": True,
            "label": plain("Copies"),
            "element": {"type": "multi_users_select", "action_id": "value"},
        },
        {
            "type": "input",
            "block_id": "bcc",
            "optional": True,
            "label": plain("Hidden copies (not shown to anyone else)"),
            "element": {"type": "multi_users_select", "action_id": "value"},
        },
    ]
    return {
        "type": "modal",
        "callback_id": "new_ticket",
        "title": plain("New ticket", 24),
        "submit": plain("Raise", 24),
        "close": plain("Cancel", 24),
        "private_metadata": json.dumps({"channel": channel}),
        "blocks": blocks,
    }


def remark_modal(ref: str, action: str, channel: str) -> dict[str, Any]:
    """Return and Reject need a remark (SPEC §1.5): asked for in a modal."""
    return {
        "type": "modal",
        "callback_id": "ticket_remark",
        "title": plain(f"{action.capitalize()} {ref}", 24),
        "submit": plain(action.capitalize(), 24),
        "close": plain("Cancel", 24),
        "private_metadata": json.dumps({"ref": ref, "action": action, "channel": channel}),
        "blocks": [
            {
                "type": "input",
                "block_id": "remark",
                "label": plain("Remark (required)"),
                "element": {"type": "plain_text_input", "action_id": "value", "multiline": True},
            }
        ],
    }


def feedback_modal(ref: str, rating: int) -> dict[str, Any]:
    """After a rating button: an optional comment, then the answer is recorded."""
    return {
        "type": "modal",
        "callback_id": "feedback_comment",
        "title": plain(f"Feedback {ref}", 24),
        "submit": plain("Send", 24),
        "close": plain("Cancel", 24),
        "private_metadata": json.dumps({"ref": ref, "rating": rating}),
        "blocks": [
            section(f"Your rating: *{rating}* of 5"),
            {
                "type": "input",
                "block_id": "comment",
                "optional": True,
                "label": plain("Comment"),
                "element": {"type": "plain_text_input", "action_id": "value", "multiline": True},
            },
        ],
    }


def info_modal(title: str, blocks: list[Block]) -> dict[str, Any]:
    return {
        "type": "modal",
        "title": plain(title, 24),
        "close": plain("Close", 24),
        "blocks": blocks,
    }


def home(raised: Sequence[TicketLine], queue: Sequence[TicketLine]) -> dict[str, Any]:
    """The App Home tab: the user's open tickets (raised by them, and their queue), each with
    a button that opens it."""
    blocks: list[Block] = [
        {"type": "header", "text": plain("Your tickets", 150)},
    ]
    for title, lines in (("Raised by you", raised), ("Your queue", queue)):
        blocks.append(section(f"*{title}*"))
        if not lines:
            blocks.append(context("None open."))
        for t in lines[:20]:
            blocks.append(
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": _clip(
                            f"*{t.ref}* {_escape(t.subject)}\n{t.status}, {t.priority} — "
                            f"from {_escape(t.requester)} to {_escape(t.target)}"
                        ),
                    },
                    "accessory": button("Open", "ticket_open", t.ref),
                }
            )
    return {"type": "home", "blocks": blocks}
