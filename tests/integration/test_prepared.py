"""`store.prepared.Prepared` stores and reads exactly what `Connection.execute` does, inside
the caller's transaction, and raises the same SQLAlchemy exceptions (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, event, func, insert, literal_column, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from store import models as m
from store.db import is_storage_error, make_engine
from store.prepared import Prepared
from tests.conftest import Env

_RECORD = insert(m.InboundMail)
_PREPARED_RECORD = Prepared(_RECORD)
_BLOB = insert(m.Blob)


def _record(key: str, at: datetime) -> dict[str, object]:
    return {
        "dedupe_key": key,
        "message_id": "<a@b>",
        "sender": "frank@acme.example",
        "channel": "email",
        "outcome": "ticket",
        "rule": "new ticket: no rule matched",
        "ticket_id": None,
        "raw_sha256": None,
        "at": at,
        "detail": {"defects": ["ä", "x" * 10], "n": 1, "ok": True, "none": None},
    }


def test_insert_stores_what_execute_stores(env: Env) -> None:
    """Time zones, JSON, NULLs and text come back the same either way."""
    at = datetime(2026, 11, 26, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with env.app.engine.begin() as conn:
        conn.execute(_RECORD, _record("by-execute", at))
        _PREPARED_RECORD(conn, _record("by-prepared", at))
    with env.app.sessions() as s:
        rows = {
            r.dedupe_key: r for r in s.scalars(select(m.InboundMail).order_by(m.InboundMail.id))
        }
    a, b = rows["by-execute"], rows["by-prepared"]
    for column in m.InboundMail.__table__.columns:
        if column.key not in ("id", "dedupe_key"):
            assert getattr(a, column.key) == getattr(b, column.key), column.key
    assert b.at == at and b.at.tzinfo is not None
    assert b.detail["defects"] == ["ä", "x" * 10]


def test_bytes_and_returning(env: Env) -> None:
    """Binary data is stored as given; an INSERT … RETURNING hands back the new id."""
    data = bytes(range(256)) * 4
    with env.app.engine.begin() as conn:
        Prepared(_BLOB)(conn, {"sha256": "f" * 64, "size": len(data), "data": data})
        new_id = Prepared(insert(m.InboundMail).returning(m.InboundMail.id))(
            conn, _record("returning", datetime.now(UTC))
        )
    with env.app.sessions() as s:
        blob = s.get(m.Blob, "f" * 64)
        assert blob is not None and blob.data == data
        record = s.get(m.InboundMail, new_id)
        assert record is not None and record.dedupe_key == "returning"


def test_select_with_a_limit_held_by_the_statement(env: Env) -> None:
    window = (
        select(m.InboundMail.id)
        .where(m.InboundMail.sender == bindparam("sender"), m.InboundMail.at >= bindparam("since"))
        .limit(2)
        .subquery()
    )
    count = Prepared(select(func.count()).select_from(window))
    now = datetime.now(UTC)
    with env.app.engine.begin() as conn:
        for i in range(4):
            _PREPARED_RECORD(conn, _record(f"k{i}", now - timedelta(minutes=i)))
        # inside the same transaction: the rows just written are seen
        assert count(conn, {"sender": "frank@acme.example", "since": now - timedelta(hours=1)}) == 2
        assert count(conn, {"sender": "frank@acme.example", "since": now}) == 1
        assert count(conn, {"sender": "nobody@acme.example", "since": now}) == 0
        rows = Prepared(
            select(m.InboundMail.dedupe_key, m.InboundMail.rule).where(
                m.InboundMail.dedupe_key == bindparam("key")
            )
        ).rows(conn, {"key": "k3"})
    assert rows == [("k3", "new ticket: no rule matched")]


def test_rolled_back_with_the_transaction(env: Env) -> None:
    now = datetime.now(UTC)
    with pytest.raises(RuntimeError), env.app.engine.begin() as conn:
        _PREPARED_RECORD(conn, _record("gone", now))
        raise RuntimeError("rollback")
    with env.app.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(m.InboundMail)).scalar_one() == 0


def test_driver_errors_are_sqlalchemy_errors(env: Env) -> None:
    """The same exception classes as `Connection.execute`: a duplicate key is an
    IntegrityError (not "storage unavailable"), SQL the database refuses is its DBAPIError."""
    now = datetime.now(UTC)
    with env.app.engine.begin() as conn:
        _PREPARED_RECORD(conn, _record("once", now))
    with env.app.engine.connect() as conn, pytest.raises(IntegrityError) as caught:
        _PREPARED_RECORD(conn, _record("once", now))
    assert not is_storage_error(caught.value)
    assert caught.value.orig is not None  # the driver's own exception is kept

    broken = select(literal_column("no_such_column")).select_from(m.InboundMail.__table__)
    with env.app.engine.connect() as conn, pytest.raises(DBAPIError) as by_execute:
        conn.execute(broken)
    with env.app.engine.connect() as conn, pytest.raises(DBAPIError) as by_prepared:
        Prepared(broken)(conn, {})
    assert type(by_prepared.value) is type(by_execute.value)


def test_a_column_left_out_is_refused_not_defaulted(env: Env) -> None:
    """Column defaults are not filled in: leaving out a column that has one is an error when
    the statement is compiled, not a silently different row."""
    values = {
        "message_id": 1,
        "sha256": "a" * 64,
        "filename": "a.txt",
        "content_type": "text/plain",
        "size": 1,
    }  # no "inline", which has a default
    with env.app.engine.connect() as conn, pytest.raises(ValueError, match="defaults"):
        Prepared(insert(m.Attachment))(conn, values)


def test_sqlite_begin_immediate_on_a_locked_database_is_a_storage_error(tmp_path: Path) -> None:
    """The write transaction's `BEGIN IMMEDIATE` runs on the driver's cursor: while another
    connection holds the write lock it fails as SQLAlchemy's OperationalError (a storage
    error: the SMTP answer is 451), and once the lock is gone it begins as before."""
    engine = make_engine(f"sqlite:///{tmp_path}/locked.db")

    @event.listens_for(engine, "connect")
    def _short_wait(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=20")  # after make_engine's 30 s

    other = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError) as err, engine.begin():
            pass
        assert is_storage_error(err.value) and "locked" in str(err.value)
        other.execute("ROLLBACK")
        with engine.begin() as conn:
            assert conn.exec_driver_sql("select 1").scalar() == 1
    finally:
        other.close()
        engine.dispose()


@pytest.mark.parametrize("dialect_name", ["sqlite", "postgresql"])
def test_datetime_bind_memo_answers_as_the_processor(dialect_name: str) -> None:
    """A datetime column's remembered bind answers are the processor's own, also for equal
    instants in other zones (12:00+00:00 == 13:00+01:00, which a naive column writes as
    different wall-clock text) and for values that are not datetimes."""
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import postgresql, sqlite

    from store.models import UTCDateTime
    from store.prepared import _memo_datetimes

    dialect = (sqlite if dialect_name == "sqlite" else postgresql).dialect()
    noon = datetime(2026, 12, 1, 12, tzinfo=UTC)
    one_pm_cet = datetime(2026, 12, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    assert noon == one_pm_cet
    for type_ in (DateTime(), DateTime(timezone=True), UTCDateTime()):
        proc = type_.dialect_impl(dialect).bind_processor(dialect)
        memo = _memo_datetimes(proc, type_)
        if proc is None:
            assert memo is None
            continue
        assert memo is not None
        for value in (noon, one_pm_cet, noon, one_pm_cet, None):
            assert memo(value) == proc(value), (type_, value)
