"""Engine and session set-up: durable commits on SQLite (WAL, synchronous=FULL) and PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
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


class _WriterTurn:
    """SQLite has one writer at a time. Writers that collide wait in SQLite's busy handler,
    which sleeps in steps of up to 100 ms and favours nobody: with the SMTP edge and an intake
    runner writing at once, that gave the edge a p99 of a quarter second (2026-12-01). Instead
    each writing transaction first takes its turn here: a lock for the threads of this process,
    then an flock on a file beside the database for the other processes, both handed over the
    moment the holder lets go. Re-entrant within a thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.local = threading.RLock()
        self.fd: int | None = None
        self.depth = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        with self.local:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fd = self.fd
            if self.depth == 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
                if self.depth == 0:
                    fcntl.flock(fd, fcntl.LOCK_UN)


_TURNS: dict[str, _WriterTurn] = {}
_TURNS_LOCK = threading.Lock()


def writer_turn(engine: Engine) -> AbstractContextManager[None]:
    """Hold this around a writing transaction: on a SQLite file, the writers of every process
    take turns (`_WriterTurn`); elsewhere (PostgreSQL, an in-memory database, a folder where
    the turn file cannot be made) it does nothing and the database's own locking decides."""
    u = engine.url
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return nullcontext()
    path = str(Path(u.database).absolute()) + ".writer"
    with _TURNS_LOCK:
        turn = _TURNS.get(path)
        if turn is None:
            try:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError:
                return nullcontext()
            turn = _TURNS[path] = _WriterTurn(path)
    return turn.held()


@contextmanager
def write_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a writing transaction, committed when the block ends (rolled back on an
    exception), in this writer's turn (`writer_turn`)."""
    bind = factory.kw["bind"]
    with writer_turn(bind), factory() as s, s.begin():
        yield s
