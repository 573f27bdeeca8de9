"""Tickets from Slack messages (the :ticket: reaction, the "Raise ticket" shortcut), the
new-ticket modal, App Home, DMs, and Slack's retries applied once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Database, poll_until
from tests.fake_slack import (
    SlackGateway,
    select,
    slack_gateway,
    text_input,
    user_pick,
    users_pick,
)


@pytest.fixture
def sg(database: Database, tmp_path: Path) -> Iterator[SlackGateway]:
    with slack_gateway(database, tmp_path / "install") as g:
        for uid, email in {
            "U0ALICE": "alice@acme.example",
            "U0BOB": "bob@acme.example",
            "U0KARL": "karl@acme.example",
            "U0MIA": "mia@acme.example",
            "U0LENA": "lena@acme.example",
        }.items():
            g.fake.add_user(uid, email)
        yield g


def karl_message(sg: SlackGateway, ts: str = "1700000500.000100") -> dict[str, object]:
    """Karl's message in IT's channel, with a file the bot token may read."""
    sg.fake.files["F0SCREEN/screen.png"] = b"\x89PNG fake screenshot"
    msg = {
        "type": "message",
        "user": "U0KARL",
        "text": "The printer on floor 2 eats paper\nIt started this morning.",
        "ts": ts,
        "team": "T0DEMO",
        "files": [
            {
                "id": "F0SCREEN",
                "name": "screen.png",
                "mimetype": "image/png",
                "size": 20,
                "url_private": sg.fake.files_url + "F0SCREEN/screen.png",
                "url_private_download": sg.fake.files_url + "F0SCREEN/screen.png",
            },
            {
                "id": "F0ELSEWHERE",
                "name": "x.txt",
                "mimetype": "text/plain",
                "size": 3,
                "url_private": "https://attacker.example/steal",
            },
        ],
    }
    sg.fake.messages.setdefault("C0ITSUPPORT", []).append(msg)
    return msg


def reaction(user: str, ts: str, name: str = "ticket") -> dict[str, object]:
    return {
        "type": "reaction_added",
        "user": user,
        "reaction": name,
        "item": {"type": "message", "channel": "C0ITSUPPORT", "ts": ts},
        "item_user": "U0KARL",
        "event_ts": "1700000600.000100",
    }


def test_a_ticket_reaction_raises_from_the_message_once(sg: SlackGateway) -> None:
    """Alice reacts :ticket: to Karl's message: a ticket from Karl to IT with the message as
    its text and the readable file attached; the event retried (X-Slack-Retry-Num 1, 2) and
    a second reaction raise nothing more; a thread reply names the ticket."""
    msg = karl_message(sg)
    assert sg.client.event(reaction("U0ALICE", str(msg["ts"])), event_id="Ev0REACT1").status == 200
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
    for retry in (1, 2):
        a = sg.client.event(reaction("U0ALICE", str(msg["ts"])), event_id="Ev0REACT1", retry=retry)
        assert a.status == 200
    sg.client.event(reaction("U0BOB", str(msg["ts"])), event_id="Ev0REACT2")
    poll_until(
        lambda: sg.counter("ticketgate_slack_duplicates_total") == 3,
        timeout=10,
        what="three duplicates counted",
    )
    assert sg.counter("ticketgate_slack_retries_total") == 2
    [t] = sg.gw.tickets()
    assert t["from"]["employee"] == "karl@acme.example"
    assert t["to"]["department"] == "it@acme.example"
    assert t["subject"] == "The printer on floor 2 eats paper"
    assert "It started this morning." in t["description"]
    [att] = t["messages"][0]["attachments"]
    assert (att["name"], att["type"], att["size"]) == ("screen.png", "image/png", 20)
    said = sg.wait("chat.postMessage")
    assert any(p.get("thread_ts") == msg["ts"] and t["ref"] in p["text"] for p in said)
    # Other reactions are nobody's business.
    sg.client.event(reaction("U0ALICE", str(msg["ts"]), name="thumbsup"), event_id="Ev0THUMB")
    assert len(sg.gw.tickets()) == 1


def test_the_raise_ticket_shortcut_raises_and_refuses_an_unknown_author(sg: SlackGateway) -> None:
    """The message shortcut (message_action) raises from the message; a message by a user who
    is no employee is refused ephemerally to the one who used the shortcut."""
    msg = karl_message(sg, ts="1700000700.000100")
    payload = {
        "type": "message_action",
        "callback_id": "raise_ticket",
        "user": {"id": "U0BOB", "name": "bob", "team_id": "T0DEMO"},
        "channel": {"id": "C0ITSUPPORT", "name": "it-support"},
        "message": msg,
        "message_ts": msg["ts"],
        "response_url": "http://127.0.0.1:1/response",
        "action_ts": "1700000701.000001",
    }
    assert sg.client.interaction(dict(payload)).status == 200
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
    assert sg.gw.tickets()[0]["from"]["employee"] == "karl@acme.example"
    stranger = {**msg, "user": "U0STRANGER", "ts": "1700000800.000100"}
    sg.client.interaction({**payload, "message": stranger})
    answer = sg.wait("chat.postEphemeral")[-1]
    assert answer["user"] == "U0BOB" and "not an employee" in answer["text"]
    assert len(sg.gw.tickets()) == 1


def test_a_retried_thread_reply_is_one_message(sg: SlackGateway) -> None:
    """A thread reply delivered three times (the retries carry X-Slack-Retry-Num) is one
    message; an edit and a bot message in the thread are none."""
    sg.client.command("new IT: Keyboard missing keys", user="U0KARL")
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
    ref = sg.gw.tickets()[0]["ref"]
    sg.deliver()
    post_ts = _post_ts(sg)
    ev = {
        "type": "message",
        "channel": "C0ITSUPPORT",
        "user": "U0ALICE",
        "text": "On my way",
        "ts": "1700000900.000100",
        "thread_ts": post_ts,
        "event_ts": "1700000900.000100",
    }
    for retry in (None, 1, 2):
        assert sg.client.event(ev, event_id="Ev0THREAD", retry=retry).status == 200
    sg.client.event({**ev, "subtype": "message_changed"}, event_id="Ev0EDIT")
    sg.client.event({**ev, "bot_id": "B0OTHER", "ts": "1700000901.000100"}, event_id="Ev0BOT")
    poll_until(
        lambda: sg.counter("ticketgate_slack_duplicates_total") == 2,
        timeout=10,
        what="two duplicates",
    )
    msgs = sg.gw.ticket(ref)["messages"]
    assert [m["body"] for m in msgs][1:] == ["On my way"]
    assert sg.gw.ticket(ref)["status"] == "REPLIED"


def test_a_thread_reply_by_a_non_participant_or_hidden_copy_is_refused(sg: SlackGateway) -> None:
    """Mia (not on the ticket) and Lena (only a hidden copy) write in the thread: nothing is
    added; each is told why in an ephemeral message in the thread."""
    sg.client.command("new IT: Dock broken", user="U0KARL")
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
    ref = sg.gw.tickets()[0]["ref"]
    sg.client.command(f"bcc {ref} lena@acme.example", user="U0ALICE")
    poll_until(lambda: sg.gw.ticket(ref)["copies"]["rhc"], timeout=10, what="the hidden copy")
    sg.deliver()
    post_ts = _post_ts(sg)
    n = sg.fake.count("chat.postEphemeral")
    for i, user in enumerate(("U0MIA", "U0LENA")):
        ev = {
            "type": "message",
            "channel": "C0ITSUPPORT",
            "user": user,
            "text": "me too",
            "ts": f"170000100{i}.000100",
            "thread_ts": post_ts,
        }
        sg.client.event(ev)
    answers = sg.wait("chat.postEphemeral", n + 2)[n:]
    by_user = {a["user"]: a for a in answers}
    assert "not a participant" in by_user["U0MIA"]["text"]
    assert "hidden copy" in by_user["U0LENA"]["text"]
    assert all(a["thread_ts"] == post_ts for a in answers)
    assert len(sg.gw.ticket(ref)["messages"]) == 1


def test_the_new_ticket_modal(sg: SlackGateway) -> None:
    """`/ticket new` opens the modal with the command's trigger first; choosing a category
    updates the sub-category select; a submission with neither department nor person is
    answered with errors; a full one raises with copies, hidden copies, sub-category and
    priority, and Karl gets a DM naming the ticket."""
    sg.client.command("new", user="U0KARL")
    opened = sg.wait("views.open")[0]
    command_trigger = sg.client.counter[0]
    assert opened["trigger_id"].endswith(f"{command_trigger:06d}")
    assert next(c.method for c in sg.fake.calls if c.method != "auth.test") == "views.open"
    view = opened["view"]
    assert view["callback_id"] == "new_ticket"
    blocks = {b["block_id"]: b for b in view["blocks"]}
    assert {
        "department",
        "person",
        "category",
        "priority",
        "subject",
        "description",
        "cc",
        "bcc",
    } <= set(blocks)
    assert "IT" in json.dumps(blocks["department"])
    sg.client.interaction(
        {
            "type": "block_actions",
            "user": {"id": "U0KARL", "team_id": "T0DEMO"},
            "container": {"type": "view", "view_id": "V00000001"},
            "view": {**view, "id": "V00000001", "hash": "1.abc", "state": {"values": {}}},
            "actions": [
                {
                    "type": "static_select",
                    "action_id": "new_category",
                    "block_id": "category",
                    "action_ts": "1.1",
                    "selected_option": {
                        "value": "Hardware",
                        "text": {"type": "plain_text", "text": "Hardware"},
                    },
                }
            ],
        }
    )
    updated = sg.wait("views.update")[0]
    assert updated["view_id"] == "V00000001"
    sub = next(b for b in updated["view"]["blocks"] if b["block_id"].startswith("sub_category"))
    assert "Mouse" in json.dumps(sub)
    bad = sg.client.submit("new_ticket", {"subject": text_input("Mouse broken")}, user="U0KARL")
    assert json.loads(bad.body)["response_action"] == "errors"
    assert "department" in json.loads(bad.body)["errors"]
    values = {
        "department": select("it@acme.example"),
        "person": user_pick(None),
        "category": select("Hardware"),
        "sub_category:Hardware": select("Mouse"),
        "priority": select("high"),
        "subject": text_input("Mouse broken"),
        "description": text_input("The left button sticks."),
        "cc": users_pick(["U0MIA"]),
        "bcc": users_pick(["U0LENA"]),
    }
    assert sg.client.submit("new_ticket", values, user="U0KARL", view_id="V0SUBMIT").status == 200
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
    t = sg.gw.tickets()[0]
    assert (t["subject"], t["description"]) == ("Mouse broken", "The left button sticks.")
    assert (t["category"], t["sub_category"], t["priority"]) == ("Hardware", "Mouse", "high")
    assert t["copies"] == {"rc": ["mia@acme.example"], "rhc": ["lena@acme.example"]}
    dm = sg.wait("chat.postMessage")[-1]
    assert dm["channel"] == "U0KARL" and t["ref"] in dm["text"]
    # The same submission again (a retry) raises nothing more.
    sg.client.submit("new_ticket", values, user="U0KARL", view_id="V0SUBMIT")
    poll_until(
        lambda: sg.counter("ticketgate_slack_duplicates_total") == 1,
        timeout=10,
        what="the duplicate",
    )
    assert len(sg.gw.tickets()) == 1


def test_the_new_ticket_modal_refuses_an_unmapped_user(sg: SlackGateway) -> None:
    """An unknown Slack user gets the modal replaced by the refusal."""
    sg.client.command("new", user="U0NOBODY")
    upd = sg.wait("views.update")[0]
    assert "does not know you" in json.dumps(upd["view"])


def test_app_home_shows_open_tickets(sg: SlackGateway) -> None:
    """app_home_opened → views.publish of Karl's raised tickets and Alice's queue, each with
    an Open button; Open shows the ticket in a modal."""
    sg.client.command("new IT: Headset crackles", user="U0KARL")
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
    ref = sg.gw.tickets()[0]["ref"]
    home = {
        "type": "app_home_opened",
        "user": "U0KARL",
        "channel": "D0KARL",
        "tab": "home",
        "event_ts": "1700001100.000100",
    }
    sg.client.event(home)
    published = sg.wait("views.publish")[0]
    assert published["user_id"] == "U0KARL" and published["view"]["type"] == "home"
    assert ref in json.dumps(published["view"]) and "Headset crackles" in json.dumps(published)
    sg.client.event({**home, "user": "U0ALICE"})
    alice = sg.wait("views.publish", 2)[1]
    assert ref in json.dumps(alice["view"])  # in her department's queue
    opener = next(
        e for b in published["view"]["blocks"] if b.get("accessory") for e in [b["accessory"]]
    )
    assert opener["action_id"] == "ticket_open"
    sg.client.interaction(
        {
            "type": "block_actions",
            "user": {"id": "U0KARL", "team_id": "T0DEMO"},
            "container": {"type": "view", "view_id": "V0HOME"},
            "actions": [{**opener, "action_ts": "1.2"}],
        }
    )
    shown = sg.wait("views.open")[0]
    assert "Headset crackles" in json.dumps(shown["view"])


def test_a_slack_linked_requester_gets_dms(sg: SlackGateway) -> None:
    """Karl (Slack-linked) gets a DM of Alice's reply and of her status change; a hidden
    message goes by DM to the assignee side who are Slack-linked, never to Karl."""
    sg.client.command("new IT: Second screen", user="U0KARL")
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
    ref = sg.gw.tickets()[0]["ref"]
    sg.client.command(f"bcc {ref} lena@acme.example", user="U0ALICE")
    sg.client.command(f"reply {ref} Which port?", user="U0ALICE")
    poll_until(lambda: len(sg.gw.ticket(ref)["messages"]) == 2, timeout=10, what="the reply")
    sg.client.command(f"message {ref} only for the assignees", user="U0LENA")
    poll_until(lambda: len(sg.gw.ticket(ref)["messages"]) == 3, timeout=10, what="the hidden")
    sg.deliver()
    dms = [p for p in sg.fake.of("chat.postMessage") if p["channel"].startswith("U")]
    to_karl = " ".join(json.dumps(p) for p in dms if p["channel"] == "U0KARL")
    assert "Which port?" in to_karl
    assert "only for the assignees" not in to_karl and "Lena" not in to_karl
    hidden_to = {p["channel"] for p in dms if "only for the assignees" in json.dumps(p)}
    assert "U0ALICE" in hidden_to and "U0KARL" not in hidden_to
    assert "only for the assignees" not in sg.fake.channel_text("C0ITSUPPORT")


def _post_ts(sg: SlackGateway) -> str:
    from gateway.service.slack import SlackService

    ts = SlackService(sg.service).post_of(1, "C0ITSUPPORT")
    assert ts is not None
    return ts
