"""Engine and session set-up: durable commits on SQLite (WAL, synchronous=FULL) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

READ_ONLY = "ticketgate_read_only"


class StorageUnavailable(Exception):
    """The database cannot be reached or written: the caller should answer 'try later' (451)."""


def is_storage_error(exc: BaseException) -> bool:
    """Errors that mean the store is down or read-only, not that our data is wrong."""
    if isinstance(exc, StorageUnavailable):
        return True
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Build the engine for ``url``; SQLite gets WAL, FULL sync, foreign keys, BEGIN IMMEDIATE."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            u,
            echo=echo,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=8,
            max_overflow=8,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            # Autocommit at the driver level so that we emit BEGIN IMMEDIATE ourselves: a
            # deferred transaction that reads and then writes can fail with SQLITE_BUSY_SNAPSHOT
            # when another process committed in between; IMMEDIATE takes the write lock first.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # A 250 after DATA is a promise (RFC 5321 §6.1): NORMAL may lose the last commits on
            # power loss, FULL fsyncs the WAL on every commit.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Reads (RCPT checks, views) take no write lock: in WAL mode a deferred transaction
            # reads a snapshot while the writer commits. Only `read_session` asks for one,
            # because a deferred transaction that reads and then writes can fail as above.
            read_only = conn.get_execution_options().get(READ_ONLY)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    engine = create_engine(u, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)

    @event.listens_for(engine, "connect")
    def _pg_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("SET synchronous_commit = on")
        cur.close()
        dbapi_conn.commit()

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


@contextmanager
def read_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reading only: on SQLite a deferred transaction, so that a reader never
    queues behind (or holds up) the intake writer for the database's write lock."""
    with factory() as s:
        s.connection(execution_options={READ_ONLY: True})
        yield s
