"""Every `/ticket` subcommand and every button of the channel post, with their refusals
(wrong actor, wrong status, unknown ticket, unmapped user), over signed HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Database, poll_until
from tests.fake_slack import SlackGateway, slack_gateway, text_input

USERS = {
    "U0ALICE": "alice@acme.example",  # IT technician
    "U0BOB": "bob@acme.example",  # IT technician
    "U0CAROL": "carol@acme.example",  # IT manager: higher authority
    "U0KARL": "karl@acme.example",  # Engineering: the requester
    "U0MIA": "mia@acme.example",  # not on the tickets
    "U0LENA": "lena@acme.example",
}


@pytest.fixture
def sg(database: Database, tmp_path: Path) -> Iterator[SlackGateway]:
    with slack_gateway(database, tmp_path / "install") as g:
        for uid, email in USERS.items():
            g.fake.add_user(uid, email)
        yield g


def run(sg: SlackGateway, text: str, user: str) -> str:
    """One command; the ephemeral answer it gets."""
    before = sg.fake.count("chat.postEphemeral")
    a = sg.client.command(text, user=user)
    assert a.status == 200 and a.seconds < 3
    answers = sg.wait("chat.postEphemeral", before + 1)
    mine = [x for x in answers[before:] if x["user"] == user]
    assert mine, answers[before:]
    return str(mine[-1]["text"])


def status(sg: SlackGateway, ref: str) -> str:
    return str(sg.gw.ticket(ref)["status"])


def new(sg: SlackGateway, subject: str = "Laptop fan is loud") -> str:
    text = run(sg, f"new IT: {subject}", "U0KARL")
    assert text.startswith("Raised TKT-"), text
    return text.split()[1].rstrip(":")


def test_every_action_of_the_lifecycle_as_a_subcommand(sg: SlackGateway) -> None:
    """take, reply, respond, message, hold, pending, approve, release, to_higher_authority,
    escalate, return, assign, cc, bcc, category, priority, status, reopen, deliver, close,
    cancel and reject: each applied by someone allowed, the status as SPEC §1.5 says."""
    ref = new(sg)
    steps = [
        ("take", "U0ALICE", "", "WORKING_ON_IT"),
        ("reply", "U0ALICE", "Which model is it?", "REPLIED"),
        ("respond", "U0KARL", "A T14, two years old", "RESPONDED"),
        ("message", "U0KARL", "It is getting worse", "RESPONDED"),
        ("hold", "U0ALICE", "waiting for a free slot", "ON_HOLD"),
        ("pending", "U0ALICE", "vendor asked", "PENDING"),
        ("approve", "U0CAROL", "", "APPROVED"),
        ("take", "U0ALICE", "", "WORKING_ON_IT"),
        ("release", "U0ALICE", "", "RELEASED"),
        ("to_higher_authority", "U0ALICE", "", "TO_HIGHER_AUTHORITY"),
        ("escalate", "U0CAROL", "", "ESCALATED"),
        ("return", "U0ALICE", "send the serial number", "RETURNED"),
        ("assign", "U0ALICE", "<@U0BOB|bob>", "RETURNED"),
        ("cc", "U0ALICE", "<mailto:mia@acme.example|mia@acme.example>", "RETURNED"),
        ("bcc", "U0ALICE", "lena@acme.example", "RETURNED"),
        ("category", "U0ALICE", "Hardware/Laptop", "RETURNED"),
        ("priority", "U0ALICE", "high", "RETURNED"),
        ("status", "U0BOB", "DELIVERED", "DELIVERED"),
        ("reopen", "U0KARL", "", "REOPENED"),
        ("deliver", "U0BOB", "", "DELIVERED"),
        ("close", "U0KARL", "", "CLOSED"),
    ]
    for action, user, rest, expected in steps:
        answer = run(sg, f"{action} {ref} {rest}".strip(), user)
        assert answer == f"{ref}: {action} done", (action, answer)
        assert status(sg, ref) == expected, action
    t = sg.gw.ticket(ref)
    assert t["to"]["owner"] == "bob@acme.example"
    assert t["copies"] == {"rc": ["mia@acme.example"], "rhc": ["lena@acme.example"]}
    assert (t["category"], t["sub_category"], t["priority"]) == ("Hardware", "Laptop", "high")
    bodies = [m["body"] for m in t["messages"]]
    assert bodies[-3:] == ["Which model is it?", "A T14, two years old", "It is getting worse"]
    assert all(h["channel"] == "slack" for h in t["history"])
    cancelled, rejected = new(sg, "Second"), new(sg, "Third")
    assert run(sg, f"cancel {cancelled}", "U0KARL") == f"{cancelled}: cancel done"
    assert run(sg, f"reject {rejected} not our area", "U0ALICE") == f"{rejected}: reject done"
    assert (status(sg, cancelled), status(sg, rejected)) == ("CANCELLED", "REJECTED")


def test_refusals_wrong_actor_status_ticket_and_user(sg: SlackGateway) -> None:
    """Each refused command changes nothing and says why, ephemerally."""
    ref = new(sg)
    cases = [
        (f"take {ref}", "U0KARL", "only the assignee"),  # the requester is not assignee side
        (f"approve {ref}", "U0ALICE", "only the higher_authority"),
        (f"release {ref}", "U0ALICE", "only the owner"),  # nobody took it
        (f"reject {ref}", "U0ALICE", "remark"),  # a reject needs a remark
        (f"show {ref}", "U0MIA", f"no ticket {ref}"),  # not on the ticket: not there
        (f"take {ref}", "U0MIA", f"no ticket {ref}"),
        ("take TKT-999", "U0ALICE", "no ticket TKT-999"),
        (f"reply {ref}", "U0ALICE", "give the message text"),
        (f"assign {ref} <@U0NOBODY>", "U0ALICE", "not an employee"),
        (f"take {ref}", "U0NOBODY", "does not know you"),  # an unmapped Slack user
        ("new Nowhere: a thing", "U0KARL", "no department 'Nowhere'"),
    ]
    for text, user, why in cases:
        answer = run(sg, text, user)
        assert why.lower() in answer.lower(), (text, answer)
    t = sg.gw.ticket(ref)
    assert t["status"] == "RAISED" and len(t["history"]) == 1 and t["to"]["owner"] is None


def test_list_show_and_the_visibility_of_show(sg: SlackGateway) -> None:
    """`list mine|queue|raised` and `show`: Bob (assignee side) sees the hidden copy and the
    hidden message; Karl (requester) sees neither."""
    ref = new(sg, "Monitor flickers")
    run(sg, f"bcc {ref} lena@acme.example", "U0ALICE")
    run(sg, f"message {ref} lena's secret remark", "U0LENA")
    assert run(sg, "list raised", "U0KARL") == "1 open tickets"
    assert ref in json.dumps(sg.fake.of("chat.postEphemeral")[-1]["blocks"])
    run(sg, "list queue", "U0BOB")
    assert ref in json.dumps(sg.fake.of("chat.postEphemeral")[-1]["blocks"])
    run(sg, f"take {ref}", "U0ALICE")
    run(sg, "list", "U0ALICE")  # mine (the default): owned by Alice
    assert ref in json.dumps(sg.fake.of("chat.postEphemeral")[-1]["blocks"])
    run(sg, "list queue", "U0BOB")  # taken: no longer in the queue
    assert ref not in json.dumps(sg.fake.of("chat.postEphemeral")[-1]["blocks"])
    run(sg, f"show {ref}", "U0BOB")
    bob_view = json.dumps(sg.fake.of("chat.postEphemeral")[-1]["blocks"])
    assert "Lena Vogel" in bob_view and "secret remark" in bob_view
    run(sg, f"show {ref}", "U0KARL")
    karl_view = json.dumps(sg.fake.of("chat.postEphemeral")[-1]["blocks"])
    assert "Monitor flickers" in karl_view
    assert "Lena" not in karl_view and "secret remark" not in karl_view


def test_buttons_take_deliver_and_their_refusals(sg: SlackGateway) -> None:
    """Take by a member applies and updates the post; Take by the requester, a click by an
    unmapped user and Deliver of a closed ticket are refused ephemerally."""
    ref = new(sg)
    sg.deliver()
    before = sg.fake.count("chat.postEphemeral")
    assert sg.client.button("ticket_take", ref, user="U0KARL").status == 200
    assert "only the assignee" in sg.wait("chat.postEphemeral", before + 1)[-1]["text"]
    assert sg.client.button("ticket_take", ref, user="U0NOBODY").status == 200
    assert "does not know you" in sg.wait("chat.postEphemeral", before + 2)[-1]["text"]
    assert sg.client.button("ticket_take", ref, user="U0ALICE").status == 200
    assert sg.wait("chat.postEphemeral", before + 3)[-1]["text"] == f"{ref}: take done"
    assert status(sg, ref) == "WORKING_ON_IT"
    sg.deliver()
    update = sg.fake.of("chat.update")[-1]
    assert "WORKING_ON_IT" in update["text"] and "Alice Adams" in json.dumps(update["blocks"])
    sg.client.button("ticket_deliver", ref, user="U0ALICE")
    sg.wait("chat.postEphemeral", before + 4)
    assert status(sg, ref) == "DELIVERED"
    run(sg, f"close {ref}", "U0KARL")
    sg.deliver()
    # A closed ticket's post has no buttons left; a stale click is refused.
    assert not [b for b in sg.fake.of("chat.update")[-1]["blocks"] if b["type"] == "actions"]
    n = sg.fake.count("chat.postEphemeral")
    sg.client.button("ticket_deliver", ref, user="U0ALICE")
    assert "not allowed" in sg.wait("chat.postEphemeral", n + 1)[-1]["text"]


def test_return_and_reject_buttons_ask_for_a_remark(sg: SlackGateway) -> None:
    """Return opens the remark modal with the trigger; an empty remark is answered with
    response_action errors; a remark applies RETURNED; Reject likewise → REJECTED."""
    ref = new(sg)
    sg.client.button("ticket_return", ref, user="U0ALICE")
    opened = sg.wait("views.open")[-1]
    view = opened["view"]
    assert view["callback_id"] == "ticket_remark"
    meta = view["private_metadata"]
    empty = sg.client.submit("ticket_remark", {"remark": text_input("  ")}, private_metadata=meta)
    assert json.loads(empty.body) == {
        "response_action": "errors",
        "errors": {"remark": "A remark is required"},
    }
    assert status(sg, ref) == "RAISED"
    n = sg.fake.count("chat.postEphemeral")
    ok = sg.client.submit(
        "ticket_remark", {"remark": text_input("Which room?")}, private_metadata=meta
    )
    assert ok.status == 200
    sg.wait("chat.postEphemeral", n + 1)
    t = sg.gw.ticket(ref)
    assert t["status"] == "RETURNED" and t["history"][-1]["remark"] == "Which room?"
    sg.client.button("ticket_reject", ref, user="U0CAROL")
    meta = sg.wait("views.open", 2)[-1]["view"]["private_metadata"]
    sg.client.submit(
        "ticket_remark", {"remark": text_input("duplicate")}, user="U0CAROL", private_metadata=meta
    )
    poll_until(lambda: status(sg, ref) == "REJECTED", timeout=10, what="REJECTED")
