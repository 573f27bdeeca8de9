"""Core statements compiled once and run on the connection's DBAPI cursor.

The intake writer runs the same few INSERTs and look-ups for every mail. Through
`Connection.execute` each call builds a cache key, an execution context and a result object
around the driver's `cursor.execute`: most of the writer's CPU (valgrind instruction counts,
2026-11-26). A `Prepared` statement is compiled once per dialect and set of parameter names,
with the same bind processors SQLAlchemy would apply (time zones, JSON), and runs inside the
caller's transaction on the same DBAPI connection. A driver error is wrapped as SQLAlchemy
wraps it (`OperationalError`, `IntegrityError`, …), and a lost connection is invalidated, so
callers see exactly the exceptions `Connection.execute` raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, DateTime, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

_REQUIRED = object()


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # bind names, in the order of a positional paramstyle
    processors: tuple[Callable[[Any], Any] | None, ...]
    fixed: tuple[Any, ...]  # a value the statement holds (a LIMIT), else _REQUIRED
    positional: bool
    returns: bool


def _memo_datetimes(proc: Callable[[Any], Any] | None, type_: Any) -> Callable[[Any], Any] | None:
    """A datetime column's bind processor, remembering its recent answers: a unit binds its
    one `now` about ten times a batch, and each time it went through two processors (the time
    zone check, then SQLite's text format; valgrind: 4 % of the intake writer). Datetimes
    are immutable, so an answer holds."""
    is_datetime = isinstance(type_, DateTime) or (
        isinstance(type_, TypeDecorator) and isinstance(type_.impl_instance, DateTime)
    )
    if proc is None or not is_datetime:
        return proc
    convert = proc
    seen: dict[tuple[datetime, object], Any] = {}

    def memo(value: Any) -> Any:
        if type(value) is not datetime:
            return convert(value)
        # The zone is part of the key: 12:00+00:00 == 13:00+01:00, and a naive column's
        # processor writes the wall-clock fields.
        key = (value, value.tzinfo)
        found = seen.get(key, _REQUIRED)
        if found is _REQUIRED:
            if len(seen) >= 64:
                seen.clear()
            found = seen[key] = convert(value)
        return found

    return memo


class Prepared:
    """One Core statement (an INSERT or a SELECT), run as `prepared(conn, params)`.

    Every parameter the statement takes must be given: nothing is filled in from column
    defaults (a statement that would need one is refused when it is compiled)."""

    def __init__(self, stmt: ClauseElement) -> None:
        self.stmt = stmt
        self._compiled: dict[tuple[str, frozenset[str]], _Compiled] = {}

    def _compile(self, dialect: Dialect, keys: frozenset[str]) -> _Compiled:
        compiled: Any = self.stmt.compile(dialect=dialect, column_keys=sorted(keys))
        if compiled.insert_prefetch or compiled.update_prefetch:
            raise ValueError(f"{self.stmt}: give every column; defaults are not filled in")
        if getattr(compiled, "escaped_bind_names", None):
            raise ValueError(f"{self.stmt}: bind names that need escaping are not supported")
        positional = bool(compiled.positional)
        names = tuple(compiled.positiontup) if positional else tuple(compiled.binds)
        binds = [compiled.binds[name] for name in names]
        processors = tuple(
            _memo_datetimes(b.type.dialect_impl(dialect).bind_processor(dialect), b.type)
            for b in binds
        )
        fixed = tuple(
            _REQUIRED if name in keys or b.required else b.effective_value
            for name, b in zip(names, binds, strict=True)
        )
        # A SELECT returns rows; an INSERT only with RETURNING (asked for, or added by the
        # dialect to fetch the new id).
        returns = not compiled.isinsert or bool(compiled.effective_returning)
        return _Compiled(compiled.string, names, processors, fixed, positional, returns)

    def _args(self, c: _Compiled, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values = []
        for name, proc, fixed in zip(c.names, c.processors, c.fixed, strict=True):
            value = params[name] if fixed is _REQUIRED else fixed
            values.append(proc(value) if proc is not None else value)
        if c.positional:
            return values
        return dict(zip(c.names, values, strict=True))

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run the statement; the rows it returns (RETURNING or a SELECT), as tuples of the
        driver's values (no result processing: ids, counts and text only)."""
        dialect = conn.dialect
        key = (dialect.name, frozenset(params))
        c = self._compiled.get(key)
        if c is None:
            c = self._compiled[key] = self._compile(dialect, key[1])
        args = self._args(c, params)
        dbapi_conn: Any = conn.connection.dbapi_connection
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(c.sql, args)
            return list(cursor.fetchall()) if c.returns else []
        except dialect.loaded_dbapi.Error as e:
            invalidated = dialect.is_disconnect(e, dbapi_conn, cursor)
            if invalidated:
                conn.invalidate(e)
            raise DBAPIError.instance(
                c.sql,
                args,
                e,
                dialect.loaded_dbapi.Error,
                connection_invalidated=invalidated,
                dialect=dialect,
            ) from e
        finally:
            cursor.close()

    def __call__(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run it; the first column of the first row it returns, or None."""
        rows = self.rows(conn, params)
        return rows[0][0] if rows else None
