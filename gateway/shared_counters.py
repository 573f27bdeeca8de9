"""Counters in shared memory, for `/metrics` across `run`'s child processes.

`run` makes them before it starts its runner and delivery processes and hands them over at
spawn; a child counts into them and `run`'s /metrics reads them. A child started again after
a crash goes on from the same figures (Prometheus counters do not go back)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence


class SharedCounters:
    """A fixed set of named counters (``names``) that every process given them adds to."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._values = multiprocessing.get_context("spawn").Array("q", len(self.names))

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``; a name not in the set is ignored."""
        i = self._index.get(name)
        if i is not None:
            with self._values.get_lock():
                self._values[i] += n

    def snapshot(self) -> dict[str, int]:
        with self._values.get_lock():
            return {name: int(self._values[i]) for i, name in enumerate(self.names)}
