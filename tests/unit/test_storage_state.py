"""StorageState, the runners' log while their passes fail: a line per change, a reminder a minute."""

from __future__ import annotations

import logging

import pytest

from gateway.service.errors import StorageUnavailable
from gateway.service.storage_state import StorageState


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, bool]]:
    return [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]


def run(state: StorageState, ticks: Ticks, error: BaseException | None, seconds: int) -> None:
    """One pass a second for `seconds`, each failing with `error` (or succeeding)."""
    for _ in range(seconds):
        if error is None:
            state.succeeded()
        else:
            state.failed(error)
        ticks.now += 1


def boom() -> RuntimeError:
    try:
        raise RuntimeError("template missing\nsecond line")
    except RuntimeError as e:
        return e


def test_unexpected_error_is_one_traceback_then_reminders(caplog: pytest.LogCaptureFixture) -> None:
    """A defect failing every pass: one ERROR with its traceback, then one line a minute without
    one; a change to "storage unavailable" is said at once; success ends it with one line."""
    caplog.set_level(logging.DEBUG)
    ticks = Ticks()
    state = StorageState(
        logging.getLogger("t"), "delivery", meanwhile="will retry", monotonic=ticks
    )
    run(state, ticks, None, 5)
    assert records(caplog) == [] and not state.failing
    error = boom()
    run(state, ticks, error, 125)
    assert records(caplog) == [
        ("ERROR", "delivery: unexpected error (RuntimeError: template missing); will retry", True),
        ("WARNING", "delivery: still failing after 60 s (RuntimeError: template missing)", False),
        ("WARNING", "delivery: still failing after 120 s (RuntimeError: template missing)", False),
    ]
    assert state.failing
    caplog.clear()
    run(state, ticks, StorageUnavailable("database is locked"), 30)
    run(state, ticks, None, 3)
    assert records(caplog) == [
        ("WARNING", "delivery: storage unavailable (database is locked); will retry", False),
        ("WARNING", "delivery: storage back after 155 s", False),
    ]
    assert not state.failing


def test_storage_outage_of_a_few_seconds_is_two_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Down for 10 passes, then back: the line that it went and the line that it came back."""
    caplog.set_level(logging.DEBUG)
    ticks = Ticks()
    state = StorageState(
        logging.getLogger("t"), "intake runner", meanwhile="mail stays queued", monotonic=ticks
    )
    run(state, ticks, StorageUnavailable("connection refused"), 10)
    run(state, ticks, None, 1)
    assert records(caplog) == [
        (
            "WARNING",
            "intake runner: storage unavailable (connection refused); mail stays queued",
            False,
        ),
        ("WARNING", "intake runner: storage back after 10 s", False),
    ]
