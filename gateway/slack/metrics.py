"""Counters of the Slack adapter for `/metrics` (requests, refusals, retries, posts)."""

from __future__ import annotations

import threading
from collections import Counter


class SlackCounters:
    """Thread-safe Prometheus counters, named with their labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
