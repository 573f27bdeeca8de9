"""Storage errors as the channels see them: StorageUnavailable ("try again later"), nothing else."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gateway.service.errors import StorageUnavailable
from store.db import is_storage_error


@contextmanager
def storage_errors(on_error: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Inside the block, an error that means the database is down or read-only becomes
    StorageUnavailable, after `on_error` (which drops the pooled connections, so that the
    next try opens new ones: a file that was read-only, a server that restarted)."""
    try:
        yield
    except StorageUnavailable:
        raise
    except Exception as e:
        if not is_storage_error(e):
            raise
        on_error()
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageUnavailable(first) from e
