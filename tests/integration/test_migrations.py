"""Alembic migrations: they build exactly the schema the models describe, and step down and up."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from store import models as m
from store.db import make_engine
from store.migrate import alembic_config, upgrade
from tests.conftest import Database

REVISIONS = ["0001", "0002", "0003", "0004", "0005", "0006", "0009", "0010", "0011", "0012", "0013"]


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def _migrate(engine: Engine, verb: str, target: str) -> None:
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, verb)(cfg, target)


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_migrated_schema_matches_the_models(database: Database) -> None:
    """No drift: autogenerate finds nothing between the migrated database and the models."""
    engine = make_engine(database.url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), m.Base.metadata)
        assert diff == []
        assert _tables(engine) == set(m.Base.metadata.tables)
    finally:
        engine.dispose()


def test_every_migration_steps_down_and_up_again(database: Database) -> None:
    """From head down one revision at a time to an empty database, and back to head."""
    engine = make_engine(database.url)
    try:
        upgrade(engine)
        head_tables = _tables(engine)
        assert _revision(engine) == REVISIONS[-1]
        assert {"outbox_events"} <= head_tables
        for below in reversed(["base", *REVISIONS[:-1]]):
            _migrate(engine, "downgrade", below)
            assert _revision(engine) == (None if below == "base" else below)
            if below == "0002":
                assert "outbox_events" not in _tables(engine)
                assert "outbox" in _tables(engine)
        assert _tables(engine) == set()
        upgrade(engine)
        assert _revision(engine) == REVISIONS[-1]
        assert _tables(engine) == head_tables
    finally:
        engine.dispose()


def test_0012_fills_actor_id_from_the_payload(database: Database) -> None:
    """Rows written before 0012 carry their actor only in the payload: the migration copies it
    into the column the notice cap now counts by (a system row stays without one)."""
    engine = make_engine(database.url)
    try:
        _migrate(engine, "upgrade", "0011")
        rows = [(1, '{"actor_id": 7}'), (2, '{"actor_id": null}')]
        with engine.begin() as conn:
            for i, payload in rows:
                conn.execute(
                    text(
                        "INSERT INTO outbox (channel, kind, recipient, message_id, hidden,"
                        " payload, state, attempts, next_attempt_at, last_error, created_at)"
                        " VALUES ('email', 'new_ticket', 'a@b.example', :mid, false,"
                        " :payload, 'sent', 1, CURRENT_TIMESTAMP, '', CURRENT_TIMESTAMP)"
                    ),
                    {"mid": f"m{i}@x.example", "payload": payload},
                )
        upgrade(engine)
        with engine.connect() as conn:
            got = dict(conn.execute(text("SELECT message_id, actor_id FROM outbox")).all())
        assert got == {"m1@x.example": 7, "m2@x.example": None}
    finally:
        engine.dispose()
