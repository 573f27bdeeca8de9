"""A loop's log while its passes fail: one line per change of state, then a reminder a minute."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.service.errors import StorageUnavailable

# While a loop keeps failing the same way, it says so again this often.
REMINDER_SECONDS = 60.0


class StorageState:
    """Whether a loop's passes fail, and the log lines that say so (issue 12: no traceback a
    second while the database is down).

    `failed(error)` after a failed pass, `succeeded()` after a good one. The first failure of a
    kind is one line: StorageUnavailable a WARNING with its reason, anything else an ERROR with
    its traceback. Further failures of that kind are silent but for a reminder every
    `reminder_seconds`; a failure of another kind is a change of state, said at once; the first
    good pass after failures says how long they lasted."""

    def __init__(
        self,
        log: logging.Logger,
        who: str,
        *,
        meanwhile: str,
        reminder_seconds: float = REMINDER_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.who = who
        self.meanwhile = meanwhile
        self.reminder_seconds = reminder_seconds
        self._monotonic = monotonic
        self._kind: str | None = None  # None while passes succeed
        self._since = 0.0
        self._said = 0.0

    @property
    def failing(self) -> bool:
        return self._kind is not None

    def failed(self, error: BaseException) -> None:
        now = self._monotonic()
        storage = isinstance(error, StorageUnavailable)
        kind = "storage" if storage else f"{type(error).__module__}.{type(error).__qualname__}"
        if self._kind is None:
            self._since = now
        if kind != self._kind:
            self._kind, self._said = kind, now
            if storage:
                self.log.warning(
                    "%s: storage unavailable (%s); %s", self.who, error, self.meanwhile
                )
            else:
                self.log.error(
                    "%s: unexpected error (%s); %s",
                    self.who,
                    _describe(error),
                    self.meanwhile,
                    exc_info=error,
                )
        elif now - self._said >= self.reminder_seconds:
            self._said = now
            what = "storage still unavailable" if storage else "still failing"
            reason = error if storage else _describe(error)
            self.log.warning("%s: %s after %.0f s (%s)", self.who, what, now - self._since, reason)

    def succeeded(self) -> None:
        if self._kind is None:
            return
        what = "storage back" if self._kind == "storage" else "working again"
        self.log.warning("%s: %s after %.0f s", self.who, what, self._monotonic() - self._since)
        self._kind = None


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
