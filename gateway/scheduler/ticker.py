"""`ticketgate run`'s scheduler: APScheduler calls the service's tick every `tick_seconds`;
every deadline lives in the database, so this job holds no state of its own."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler

from gateway.service.scheduler import Scheduler
from gateway.service.storage_state import StorageState

log = logging.getLogger("ticketgate.scheduler")


class Ticker:
    """One interval job: ``scheduler.tick()`` (never two at once; missed runs coalesce)."""

    def __init__(self, scheduler: Scheduler, *, tick_seconds: float) -> None:
        self.scheduler = scheduler
        self.tick_seconds = tick_seconds
        self._aps: BackgroundScheduler | None = None
        self._state = StorageState(log, "scheduler", meanwhile="deadlines wait for the next tick")

    def tick(self) -> None:
        try:
            self.scheduler.tick()
        except Exception as e:  # noqa: BLE001 - the job must live on; the state says it once
            self._state.failed(e)
        else:
            self._state.succeeded()

    def start(self, name: str = "scheduler") -> None:
        aps = BackgroundScheduler(timezone="UTC")
        aps.add_job(
            self.tick,
            "interval",
            seconds=self.tick_seconds,
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        aps.start()
        self._aps = aps
        log.info("scheduler: ticking every %s s", self.tick_seconds)

    def stop(self) -> None:
        if self._aps is not None:
            self._aps.shutdown(wait=True)
            self._aps = None

    def counters(self) -> dict[str, int]:
        s = self.scheduler
        out = {"ticketgate_scheduler_ticks_total": s.ticks}
        for kind, n in sorted(s.totals.items()):
            out[f'ticketgate_scheduler_done_total{{kind="{kind}"}}'] = n
        return out
