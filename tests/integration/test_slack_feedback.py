"""Feedback from Slack (issue 13's rule): a Slack-linked requester's feedback request is a DM
with buttons 1–5; a click opens the comment modal; the answer is stored once per modal, a
later one replaces it, and only the requester may answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.bootstrap import make_scheduler
from gateway.service.commands import Act
from tests.conftest import Database, poll_until
from tests.fake_slack import SlackGateway, slack_gateway, text_input


@pytest.fixture
def sg(database: Database, tmp_path: Path) -> Iterator[SlackGateway]:
    with slack_gateway(database, tmp_path / "install") as g:
        g.fake.add_user("U0KARL", "karl@acme.example")
        g.fake.add_user("U0ALICE", "alice@acme.example")
        yield g


def closed_by_karl(sg: SlackGateway) -> str:
    sg.client.command("new IT: Webcam", user="U0KARL")
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
    ref = str(sg.gw.tickets()[0]["ref"])
    svc = sg.service
    svc.act(Act(ref, "alice@acme.example", "take"))
    svc.act(Act(ref, "alice@acme.example", "deliver"))
    svc.act(Act(ref, "karl@acme.example", "close"))
    return ref


def rate(sg: SlackGateway, ref: str, rating: int, comment: str, user: str = "U0KARL") -> str:
    """Click the rating button, submit the comment modal; the DM answer."""
    opened = sg.fake.count("views.open")
    sg.client.button(f"feedback_{rating}", f"{ref}:{rating}", user=user, channel="D0KARL")
    view = sg.wait("views.open", opened + 1)[-1]["view"]
    assert view["callback_id"] == "feedback_comment"
    dms = sg.fake.count("chat.postMessage")
    sg.client.submit(
        "feedback_comment",
        {"comment": text_input(comment)},
        user=user,
        private_metadata=view["private_metadata"],
        view_id=f"V0FB{rating}{user}",
    )
    return str(sg.wait("chat.postMessage", dms + 1)[-1]["text"])


def feedback(sg: SlackGateway, ref: str) -> object:
    return sg.gw.ticket(ref)["feedback"]


def test_feedback_buttons_record_once_and_a_later_answer_replaces(sg: SlackGateway) -> None:
    ref = closed_by_karl(sg)
    sg.gw.env.clock.advance(hours=2)
    make_scheduler(sg.gw.env.app).tick()
    sg.deliver()
    [request] = [
        p
        for p in sg.fake.of("chat.postMessage")
        if p["channel"] == "U0KARL" and "feedback_" in json.dumps(p.get("blocks"))
    ]
    buttons = [e for b in request["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == [f"feedback_{n}" for n in range(1, 6)]
    assert "How was the service" in json.dumps(request["blocks"])
    # Alice is not the requester: refused, nothing stored.
    assert "only the requester" in rate(sg, ref, 1, "bad", user="U0ALICE")
    assert feedback(sg, ref) is None
    assert "thank you" in rate(sg, ref, 4, "quick and friendly")
    fb = feedback(sg, ref)
    assert isinstance(fb, dict) and (fb["rating"], fb["comment"]) == (4, "quick and friendly")
    # The same submission retried: applied once.
    sg.client.submit(
        "feedback_comment",
        {"comment": text_input("quick and friendly")},
        user="U0KARL",
        private_metadata=json.dumps({"ref": ref, "rating": 4}),
        view_id="V0FB4U0KARL",
    )
    poll_until(
        lambda: sg.counter("ticketgate_slack_duplicates_total") == 1,
        timeout=10,
        what="the duplicate",
    )
    # A later answer replaces the first, and the history says so.
    rate(sg, ref, 5, "even better on reflection")
    fb = feedback(sg, ref)
    assert isinstance(fb, dict) and fb["rating"] == 5
    remarks = [h["remark"] for h in sg.gw.ticket(ref)["history"] if h["channel"] == "slack"]
    assert "rated 4/5: quick and friendly" in remarks
    assert any(r.startswith("rating changed from 4/5 to 5/5") for r in remarks)


def test_feedback_on_an_open_ticket_is_refused(sg: SlackGateway) -> None:
    sg.client.command("new IT: Still open", user="U0KARL")
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
    ref = str(sg.gw.tickets()[0]["ref"])
    assert "once it is closed" in rate(sg, ref, 3, "early")
    assert feedback(sg, ref) is None
