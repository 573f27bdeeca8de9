"""The delivery loop while its database is down (issue 12): one line when it goes, a reminder a
minute, one line when it is back; never a traceback a poll. SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from gateway.mail.delivery_worker import DeliveryWorker
from gateway.service.commands import RaiseTicket
from tests.conftest import Database, Env, demo_env, postgres_schema, with_search_path
from tests.integration.test_storage_down_postgres import Relay

PG_URL = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")


@dataclass
class Ticks:
    """A monotonic clock the test moves: the worker's reminders are due by it."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Outage:
    env: Env
    cut: Callable[[], None]
    restore: Callable[[], None]


def _sqlite_outage(tmp_path: Path) -> Iterator[Outage]:
    db = tmp_path / "tg.db"
    moved = tmp_path / "moved"

    def cut() -> None:
        # A directory where the file was: no connection can open it, root's included.
        e.app.engine.dispose()
        moved.mkdir()
        for p in tmp_path.iterdir():
            if p.name.startswith(db.name):
                p.rename(moved / p.name)
        db.mkdir()

    def restore() -> None:
        db.rmdir()
        for p in moved.iterdir():
            p.rename(tmp_path / p.name)
        moved.rmdir()

    with demo_env(Database("sqlite", f"sqlite:///{db}"), tmp_path / "install") as e:
        yield Outage(e, cut, restore)


def _postgres_outage(tmp_path: Path) -> Iterator[Outage]:
    if not PG_URL:
        pytest.skip("TICKETGATE_TEST_POSTGRES_URL is not set (.ci/run always sets it)")
    u = make_url(PG_URL)
    relay = Relay((u.host or "127.0.0.1", u.port or 5432))
    relay.up()
    url = u.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    try:
        with (
            postgres_schema() as schema,
            demo_env(Database("postgres", with_search_path(url, schema)), tmp_path / "pg") as e,
        ):
            yield Outage(e, relay.down, relay.up)
    finally:
        relay.down()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    """The demo org on a database the test can cut off and restore: a SQLite file moved away
    (a directory in its place), or PostgreSQL behind a TCP relay that stops listening."""
    if request.param == "sqlite":
        yield from _sqlite_outage(tmp_path)
    else:
        yield from _postgres_outage(tmp_path)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str, bool]]:
    """(logger, level, message, has a traceback) of everything ticketgate logged."""
    return [
        (r.name, r.levelname, r.getMessage(), r.exc_info is not None)
        for r in caplog.records
        if r.name.startswith("ticketgate")
    ]


def test_database_down_is_one_line_then_a_reminder_a_minute(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    """150 polls, one a second, with the database gone: the delivery loop logs one WARNING
    (storage unavailable, will retry) and a reminder at 60 s and 120 s, nothing else and no
    traceback; once the database is back, one line says so and the pending notices go out."""
    from gateway.bootstrap import make_worker

    made = make_worker(outage.env.app)
    ticks = Ticks()
    worker = DeliveryWorker(made.outbox, made.senders, monotonic=ticks)
    outage.env.service.raise_ticket(
        RaiseTicket("frank@acme.example", "it@acme.example", "Printer", "Paper stuck.")
    )
    caplog.set_level(logging.DEBUG, logger="ticketgate")
    outage.cut()
    try:
        for _ in range(150):
            assert worker.step() == 0
            ticks.now += 1
    finally:
        outage.restore()
    got = lines(caplog)
    assert [(name, level, has_tb) for name, level, _, has_tb in got] == [
        ("ticketgate.delivery", "WARNING", False)
    ] * 3, got
    first, *reminders = (message for _, _, message, _ in got)
    assert first.startswith("delivery: storage unavailable (") and first.endswith("); will retry")
    assert [m.split(" (")[0] for m in reminders] == [
        "delivery: storage still unavailable after 60 s",
        "delivery: storage still unavailable after 120 s",
    ]

    caplog.clear()
    assert worker.step() == 4  # Frank's acknowledgement and the three IT members' notices
    assert [message for _, _, message, _ in lines(caplog)] == ["delivery: storage back after 150 s"]
    assert {r["state"] for r in worker.outbox.rows()} == {"sent"}
    assert len(list((outage.env.dir / "outbox" / "new").iterdir())) == 4
    caplog.clear()
    assert worker.step() == 0
    assert lines(caplog) == []
