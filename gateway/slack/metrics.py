"""Counters of the Slack adapter for `/metrics` (requests, refusals, retries, posts)."""

from __future__ import annotations

import threading
from collections import Counter

from gateway.shared_counters import SharedCounters

# The outbox poster's counters: the one part of the Slack adapter that may run in a delivery
# worker's child process, so they are kept in shared memory (`post_counters`).
POST_RESULTS = ("sent", "retry", "dead")


def post_counter(result: str) -> str:
    return f'ticketgate_slack_posts_total{{result="{result}"}}'


def post_counters() -> SharedCounters:
    """The posts' counters, for every delivery worker of `run`, whichever process."""
    return SharedCounters([post_counter(r) for r in POST_RESULTS])


class SlackCounters:
    """Thread-safe Prometheus counters, named with their labels; those of ``shared``
    (`post_counters`) are kept there, for `run` and its child processes alike."""

    def __init__(self, shared: SharedCounters | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.shared = shared if shared is not None else post_counters()

    def add(self, name: str, n: int = 1) -> None:
        if name in self.shared:
            self.shared.add(name, n)
            return
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._counts)
        return {**counts, **{k: v for k, v in self.shared.snapshot().items() if v}}
