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
