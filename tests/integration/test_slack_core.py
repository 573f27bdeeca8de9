"""Slack over signed HTTP against a fake Web API: signatures, workspace pinning, identity,
`/ticket` subcommands and the channel post with its thread."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Database, mail, poll_until
from tests.fake_slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    SlackGateway,
    sign,
    slack_gateway,
)


@pytest.fixture
def sg(database: Database, tmp_path: Path) -> Iterator[SlackGateway]:
    with slack_gateway(database, tmp_path / "install") as g:
        g.fake.add_user("U0ALICE", "alice@acme.example")
        g.fake.add_user("U0BOB", "bob@acme.example")
        g.fake.add_user("U0CAROL", "carol@acme.example")
        g.fake.add_user("U0KARL", "karl@acme.example")
        g.fake.add_user("U0MIA", "mia@acme.example")
        yield g


def ephemeral_texts(sg: SlackGateway) -> list[str]:
    return [c["text"] for c in sg.fake.of("chat.postEphemeral")]


def wait_ephemeral(sg: SlackGateway, needle: str) -> str:
    found: list[str] = []

    def seen() -> bool:
        found[:] = [t for t in ephemeral_texts(sg) if needle in t]
        return bool(found)

    poll_until(seen, timeout=10, what=f"an ephemeral answer with {needle!r}: {ephemeral_texts(sg)}")
    return found[0]


def raise_quick(sg: SlackGateway, subject: str = "Printer jams", user: str = "U0KARL") -> str:
    before = len(sg.gw.tickets())
    assert sg.client.command(f"new IT: {subject}", user=user).status == 200
    poll_until(lambda: len(sg.gw.tickets()) > before, timeout=10, what="the ticket")
    return str(sg.gw.tickets()[-1]["ref"])


def test_a_signed_quick_raise_makes_a_ticket_and_answers_ephemerally(sg: SlackGateway) -> None:
    """`/ticket new IT: …` from Karl: 200 at once, a ticket from him to IT on channel slack,
    an ephemeral answer naming it, users.info asked once for Karl."""
    ref = raise_quick(sg)
    t = sg.gw.ticket(ref)
    assert t["from"]["employee"] == "karl@acme.example"
    assert t["from"]["channel"] == "slack"
    assert t["to"]["department"] == "it@acme.example"
    assert f"Raised {ref}" in wait_ephemeral(sg, "Raised")
    assert [c["user"] for c in sg.fake.of("users.info")] == ["U0KARL"]
    # The mapping is cached: a second command asks Slack nothing more about Karl.
    sg.client.command("list raised", user="U0KARL")
    wait_ephemeral(sg, "open tickets")
    assert sg.fake.count("users.info") == 1


def test_forged_and_stale_signatures_are_401_and_change_nothing(
    sg: SlackGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped body byte, a signature under another secret, a timestamp 301 s old: 401
    {"error": "invalid request"}, no ticket, no Slack call; no secret, token or body in logs."""
    caplog.set_level(logging.DEBUG)
    now = int(sg.gw.env.clock.now().timestamp())
    body = b"team_id=T0DEMO&user_id=U0KARL&command=%2Fticket&text=new+IT%3A+forged+secret-body"
    good = sign(body, now)
    answers = [
        sg.client.post(body + b"x", "application/x-www-form-urlencoded", signature=good),
        sg.client.post(
            body, "application/x-www-form-urlencoded", signature=sign(body, now, "other-secret")
        ),
        sg.client.post(body, "application/x-www-form-urlencoded", timestamp=now - 301),
        sg.client.post(body, "application/x-www-form-urlencoded", signature="v0=nothex"),
    ]
    assert [a.status for a in answers] == [401, 401, 401, 401]
    assert json.loads(answers[0].body) == {"error": "invalid request"}
    assert sg.gw.tickets() == []
    assert sg.fake.calls == []
    assert sg.counter('ticketgate_slack_refused_total{reason="signature"}') == 4
    logged = caplog.text
    for secret in (SIGNING_SECRET, BOT_TOKEN, "forged", "secret-body", good):
        assert secret not in logged
    # Within the window the same request is accepted.
    assert (
        sg.client.post(body, "application/x-www-form-urlencoded", timestamp=now - 299).status == 200
    )


def test_another_workspace_or_app_changes_nothing(sg: SlackGateway) -> None:
    """Signed requests from team T0OTHER, or from another app of T0DEMO: 200, no ticket, no
    users.info, and the command is told the workspace is not connected."""
    a = sg.client.command("new IT: from elsewhere", user="U0KARL", team="T0OTHER")
    b = sg.client.command("new IT: other app", user="U0KARL", app="A0OTHER")
    c = sg.client.event(
        {
            "type": "reaction_added",
            "user": "U0KARL",
            "reaction": "ticket",
            "item": {"type": "message", "channel": "C0ITSUPPORT", "ts": "1.2"},
            "item_user": "U0KARL",
            "event_ts": "1.3",
        },
        team="T0OTHER",
    )
    assert (a.status, b.status, c.status) == (200, 200, 200)
    assert "not connected" in a.body and "not connected" in b.body
    assert sg.gw.tickets() == []
    assert sg.fake.calls == []


def test_unknown_guest_and_foreign_users_get_an_ephemeral_refusal(sg: SlackGateway) -> None:
    """A user Slack does not know, one whose email is no employee's, a guest, one of another
    workspace and a deactivated employee: each told why, no ticket."""
    sg.fake.add_user("U0STRANGER", "stranger@elsewhere.example")
    sg.fake.add_user("U0GUEST", "mia@acme.example", is_restricted=True)
    sg.fake.add_user("U0CONNECT", "lena@acme.example", team="T0PARTNER")
    sg.fake.add_user("U0VICTOR", "victor@acme.example")
    cases = {
        "U0NOBODY": "does not know you",
        "U0STRANGER": "not an employee",
        "U0GUEST": "Guest",
        "U0CONNECT": "another Slack workspace",
        "U0VICTOR": "deactivated",
    }
    for user, why in cases.items():
        sg.client.command("new IT: let me in", user=user)
        wait_ephemeral(sg, why)
    assert sg.gw.tickets() == []


def test_the_org_file_slack_id_serves_when_users_info_cannot(sg: SlackGateway) -> None:
    """Alice's id U0ALICE comes from the org file: when users.info fails (missing scope),
    she is still Alice; a user the org file does not name is refused."""
    sg.fake.fail("users.info", error="missing_scope", times=2)
    ref = raise_quick(sg, user="U0ALICE", subject="Alice via the org file")
    assert sg.gw.ticket(ref)["from"]["employee"] == "alice@acme.example"
    sg.client.command("new IT: who am I", user="U0BOB")
    wait_ephemeral(sg, "could not look you up")


def test_help_and_bad_usage_are_answered_in_the_ack(sg: SlackGateway) -> None:
    """`/ticket`, `/ticket help` and an unknown subcommand: the help text in the 200 itself."""
    for text in ("", "help", "frobnicate TKT-1", "show nothing", "list everything"):
        a = sg.client.command(text)
        assert a.status == 200
        assert "/ticket new" in json.loads(a.body)["text"]
    assert [c.method for c in sg.fake.calls] in ([], ["auth.test"])


def test_mail_ticket_is_posted_and_the_thread_bridges_both_ways(sg: SlackGateway) -> None:
    """A mail to IT → a post with buttons in C0ITSUPPORT; Bob's thread reply → a REPLIED
    message and a mail to the requester; the requester's mail answer → in the thread."""
    gw = sg.gw
    gw.send(
        mail("karl@acme.example", ["it@acme.example"], "VPN down", "Since 9:00."),
        "karl@acme.example",
        ["it@acme.example"],
    )
    ref = gw.tickets()[0]["ref"]
    sg.deliver()
    post = next(p for p in sg.fake.of("chat.postMessage") if p["channel"] == "C0ITSUPPORT")
    assert ref in post["text"]
    buttons = [
        e["action_id"] for b in post["blocks"] if b["type"] == "actions" for e in b["elements"]
    ]
    assert buttons == ["ticket_take", "ticket_return", "ticket_reject", "ticket_deliver"]
    ts = _post_ts(sg, ref)
    # Bob answers in the thread
    mails_before = len(gw.deliver())
    ev = {
        "type": "message",
        "channel": "C0ITSUPPORT",
        "user": "U0BOB",
        "text": "Rebooting it now",
        "ts": "1700000100.000100",
        "thread_ts": ts,
        "channel_type": "channel",
        "event_ts": "1700000100.000100",
    }
    assert sg.client.event(ev, event_id="Ev0BOBREPLY").status == 200
    poll_until(lambda: len(gw.ticket(ref)["messages"]) == 2, timeout=10, what="Bob's message")
    t = gw.ticket(ref)
    assert t["status"] == "REPLIED"
    assert t["messages"][-1]["sender"] == "bob@acme.example"
    assert t["messages"][-1]["channel"] == "slack"
    mails = gw.deliver()
    new = mails[mails_before:]
    to_karl = [m for m in new if m["Delivered-To"] == "karl@acme.example"]
    assert to_karl and "Rebooting it now" in to_karl[-1].get_body(("plain",)).get_content()
    # Bob's message is not echoed back into the thread it came from.
    assert "Rebooting it now" not in sg.fake.channel_text("C0ITSUPPORT")
    # Karl answers by mail: it appears in the thread.
    reply = mail(
        "karl@acme.example",
        [to_karl[-1]["Reply-To"]],
        f"Re: [{ref}] VPN down",
        "Works again, thanks.",
        headers={"In-Reply-To": to_karl[-1]["Message-ID"]},
    )
    gw.send(reply, "karl@acme.example", [to_karl[-1]["Reply-To"]])
    sg.deliver()
    threaded = [p for p in sg.fake.of("chat.postMessage") if p.get("thread_ts") == ts]
    assert any("Works again, thanks." in p["text"] for p in threaded)
    # The status changes updated the post.
    assert all(u["ts"] == ts for u in sg.fake.of("chat.update"))
    assert any("REPLIED" in u["text"] for u in sg.fake.of("chat.update"))


def _post_ts(sg: SlackGateway, ref: str) -> str:
    from gateway.service.slack import SlackService
    from gateway.service.tickets import parse_ref

    ts = SlackService(sg.service).post_of(parse_ref(ref), "C0ITSUPPORT")
    assert ts is not None
    return ts


def test_the_ack_does_not_wait_for_a_slow_slack(sg: SlackGateway) -> None:
    """users.info takes 2.5 s: the command is still answered 200 within a second (the work runs
    after the ack) and the ticket and the answer follow."""
    sg.fake.delay["users.info"] = 2.5
    a = sg.client.command("new IT: Slow Slack", user="U0KARL")
    assert a.status == 200 and a.seconds < 1.0
    assert sg.gw.tickets() == []
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=15, what="the ticket")
    wait_ephemeral(sg, "Raised")


def test_socket_mode_requests_take_the_same_listeners_once(sg: SlackGateway) -> None:
    """A Socket Mode envelope (no signature, no retry headers) dispatched twice — Slack
    redelivers when an ack is lost — gives the same ticket message once."""
    from slack_bolt import BoltRequest

    raise_quick(sg, subject="Socket", user="U0KARL")
    sg.deliver()
    ts = _post_ts(sg, sg.gw.tickets()[0]["ref"])
    body = {
        "team_id": "T0DEMO",
        "api_app_id": "A0DEMO",
        "type": "event_callback",
        "event_id": "Ev0SOCKET",
        "event_time": 1700000000,
        "event": {
            "type": "message",
            "channel": "C0ITSUPPORT",
            "user": "U0BOB",
            "text": "via socket",
            "ts": "1700000200.000100",
            "thread_ts": ts,
        },
    }
    app = sg.runtime.adapter.app
    for _ in range(2):
        assert app.dispatch(BoltRequest(body=body, mode="socket_mode")).status == 200
    poll_until(
        lambda: sg.counter("ticketgate_slack_duplicates_total") == 1,
        timeout=10,
        what="the redelivery counted",
    )
    bodies = [m["body"] for m in sg.gw.tickets()[0]["messages"]]
    assert bodies.count("via socket") == 1


def test_an_unhandled_request_leaves_no_body_in_the_log(
    sg: SlackGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A signed click on a button ticketgate does not have: bolt answers 404 and logs nothing
    of the payload (its own warning would quote it)."""
    caplog.set_level(logging.DEBUG)
    a = sg.client.button("no_such_button", "private-value-4711", user="U0KARL")
    assert a.status == 404
    assert "private-value-4711" not in caplog.text
