"""Slack posts through the outbox: a 429 is retried after its Retry-After and posted once;
`ok: false` is a dead letter; nothing is posted twice; the API base URL ends in "/"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_settings
from tests.conftest import Database, poll_until
from tests.fake_slack import SlackGateway, slack_gateway


@pytest.fixture
def sg(database: Database, tmp_path: Path) -> Iterator[SlackGateway]:
    with slack_gateway(database, tmp_path / "install") as g:
        g.fake.add_user("U0KARL", "karl@acme.example")
        yield g


def raise_one(sg: SlackGateway) -> str:
    sg.client.command("new IT: Projector dead", user="U0KARL")
    poll_until(lambda: len(sg.gw.tickets()) == 1, timeout=10, what="the ticket")
    return str(sg.gw.tickets()[0]["ref"])


def slack_rows(sg: SlackGateway) -> list[dict[str, object]]:
    from gateway.service.outbox import OutboxService

    outbox: OutboxService = sg.worker.outbox
    return [r for r in outbox.rows() if str(r["recipient"]).startswith("slack:")]


def channel_posts(sg: SlackGateway) -> list[dict[str, object]]:
    return [
        p
        for p in sg.fake.of("chat.postMessage")
        if p["channel"] == "C0ITSUPPORT" and not p.get("thread_ts")
    ]


def test_a_429_waits_for_retry_after_then_posts_once(sg: SlackGateway) -> None:
    """chat.postMessage answers 429 Retry-After: 7: the row waits 7 s (not the mail backoff),
    then the post goes out once and its ts is kept; later runs post nothing again."""
    sg.fake.fail("chat.postMessage", status=429, retry_after=7, error="ratelimited")
    raise_one(sg)
    sg.deliver()
    assert len(channel_posts(sg)) == 1  # the 429'd attempt
    [row] = [r for r in slack_rows(sg) if r["recipient"] == "slack:#C0ITSUPPORT"]
    assert row["state"] == "pending" and row["last_error"] == "429 rate limited"
    sg.gw.env.clock.advance(seconds=6)
    sg.deliver()
    assert len(channel_posts(sg)) == 1
    sg.gw.env.clock.advance(seconds=2)
    sg.deliver()
    assert len(channel_posts(sg)) == 2  # the 429 and the one that was posted
    [row] = [r for r in slack_rows(sg) if r["recipient"] == "slack:#C0ITSUPPORT"]
    assert row["state"] == "sent"
    sg.gw.env.clock.advance(hours=2)
    sg.deliver()
    assert len(channel_posts(sg)) == 2
    assert sg.counter('ticketgate_slack_posts_total{result="retry"}') == 1


def test_ok_false_is_a_dead_letter(sg: SlackGateway) -> None:
    """channel_not_found: the row is dead at once with Slack's error; `outbox retry` would
    send it again, nothing else does."""
    sg.fake.fail("chat.postMessage", error="channel_not_found")
    raise_one(sg)
    sg.deliver()
    [row] = [r for r in slack_rows(sg) if r["recipient"] == "slack:#C0ITSUPPORT"]
    assert row["state"] == "dead" and row["last_error"] == "slack: channel_not_found"
    sg.gw.env.clock.advance(hours=1)
    sg.deliver()
    assert len(channel_posts(sg)) == 1


def test_a_resent_post_row_updates_instead_of_posting_again(sg: SlackGateway) -> None:
    """The post row handed to the poster a second time (its lease ran out after the post
    went out but before it was marked sent): chat.update of the recorded post, no second
    post."""
    from gateway.service.outbox import OutboxItem

    raise_one(sg)
    sg.deliver()
    assert len(channel_posts(sg)) == 1
    [row] = [r for r in slack_rows(sg) if r["recipient"] == "slack:#C0ITSUPPORT"]
    from store import models as m

    with sg.gw.env.app.sessions() as s:
        r = s.get(m.Outbox, row["id"])
        assert r is not None
        item = OutboxItem(
            r.id, r.kind, r.recipient, r.message_id, dict(r.payload), 2, r.ticket_id, r.channel
        )
    [outcome] = sg.runtime.poster.deliver([item])
    assert outcome.result == "sent"
    assert len(channel_posts(sg)) == 1
    assert sg.fake.count("chat.update") == 1


def test_the_api_url_is_normalised_to_end_in_a_slash(tmp_path: Path) -> None:
    """`slack.api_url` without its trailing "/" (slack_sdk joins method names onto it and
    would drop the last path segment) is read with one."""
    s = load_settings(tmp_path / "none.toml", {"TICKETGATE__SLACK__API_URL": "http://h:9/api"})
    assert s.slack.api_url == "http://h:9/api/"
    s = load_settings(tmp_path / "none.toml", {"TICKETGATE__SLACK__API_URL": "http://h:9/api//"})
    assert s.slack.api_url == "http://h:9/api/"


def test_after_a_429_the_rest_of_the_batch_waits_unsent(sg: SlackGateway) -> None:
    """Two tickets' posts in one batch; the first post is answered 429 Retry-After: 7: the
    second is not sent into the rate limit but waits the same 7 s; then both go out once."""
    sg.fake.fail("chat.postMessage", status=429, retry_after=7, error="ratelimited")
    sg.client.command("new IT: Projector dead", user="U0KARL")
    sg.client.command("new IT: Screen flickers", user="U0KARL")
    poll_until(lambda: len(sg.gw.tickets()) == 2, timeout=10, what="the tickets")
    sg.deliver()
    assert len(sg.fake.of("chat.postMessage")) == 1
    posts = [r for r in slack_rows(sg) if r["recipient"] == "slack:#C0ITSUPPORT"]
    assert [(r["state"], r["last_error"]) for r in posts] == [("pending", "429 rate limited")] * 2
    sg.gw.env.clock.advance(seconds=6)
    sg.deliver()
    assert len(sg.fake.of("chat.postMessage")) == 1
    sg.gw.env.clock.advance(seconds=2)
    sg.deliver()
    assert len(channel_posts(sg)) == 3  # the 429'd try, then each ticket's post once
    assert {r["state"] for r in slack_rows(sg)} == {"sent"}


def test_an_unreachable_slack_costs_one_try_a_batch(sg: SlackGateway) -> None:
    """Slack's address accepts connections and drops them: of a batch of three posts one is
    tried, the other two wait unsent, all three retried with the outbox's backoff."""
    import socket
    import threading

    from slack_sdk import WebClient

    from gateway.service.outbox import OutboxItem
    from gateway.slack.poster import SlackPoster

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def drop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/api/"
        poster = SlackPoster(
            WebClient(token="xoxb-test", base_url=url, timeout=5, retry_handlers=[]),
            sg.runtime.poster.service,
            sg.runtime.counters,
        )
        dm = {"op": "dm", "user": "U0KARL", "ticket_id": 1, "ref": "TKT-1", "subject": "Hi"}
        dm |= {"actor": "Karl", "text": "hi"}
        items = [
            OutboxItem(i, "new_ticket", "slack:#C0IT", f"m{i}", dm, 1, 1, "slack")
            for i in (1, 2, 3)
        ]
        outcomes = poster.deliver(items)
    finally:
        listener.close()
    assert len(accepted) == 1
    assert [o.result for o in outcomes] == ["retry"] * 3
    assert len({o.error for o in outcomes}) == 1 and outcomes[0].retry_after is None
    network = {"URLError", "RemoteDisconnected", "ConnectionResetError", "BrokenPipeError"}
    assert outcomes[0].error.split(":")[0] in network


def test_a_row_that_cannot_be_posted_does_not_hold_the_others(sg: SlackGateway) -> None:
    """A row whose payload the poster cannot read (no ``ref``): that row is retried with its
    error, the next row of the batch is posted."""
    from gateway.service.outbox import OutboxItem

    bad = {"op": "dm", "user": "U0KARL", "ticket_id": 1, "actor": "Karl", "text": "hi"}
    good = {**bad, "ref": "TKT-1", "subject": "Hi"}
    outcomes = sg.runtime.poster.deliver(
        [
            OutboxItem(1, "new_ticket", "slack:U0KARL", "m1", bad, 1, 1, "slack"),
            OutboxItem(2, "new_ticket", "slack:U0KARL", "m2", good, 1, 1, "slack"),
        ]
    )
    assert [(o.result, o.error) for o in outcomes] == [("retry", "KeyError: 'ref'"), ("sent", "")]
    assert [c["channel"] for c in sg.fake.of("chat.postMessage")] == ["U0KARL"]
