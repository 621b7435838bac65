"""The frontier's cluster view: this worker's heartbeat, and what it knows of the other workers.

Part of :mod:`crawler.frontier.scheduler`. A heartbeat task records this worker as busy
(at least every ``min(1, FRONTIER_IDLE_CLOSE_SECONDS / 4)`` seconds; pushes and
pops report it too) and, while it is idle, polls the cluster (queued websites,
seeds, last busy worker) every ``FRONTIER_IDLE_POLL_SECONDS`` for
:class:`crawler.frontier.spider.FrontierSpider`'s cluster-wide idle close. A busy
worker takes new seeds too (scrapy-redis reads them only when idle). Each tick
also sweeps the scheduler's in-flight requests.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from crawler.frontier.scheduler import FrontierScheduler
    from crawler.frontier.store import PopResult, Status


class ClusterView:
    """The cluster as this worker last saw it, kept fresh by a heartbeat task."""

    def __init__(self, scheduler: FrontierScheduler) -> None:
        self._scheduler = scheduler
        config = scheduler.config
        self.sites_with_work = 0  # websites with queued requests, cluster-wide
        self.clock_offset = 0.0  # Redis clock - local clock
        self._status: Status | None = None
        self._status_at = 0.0
        self.last_busy_report = 0.0
        self._last_seed_check = 0.0
        self._interval = min(1.0, config.idle_close / 4) if config.idle_close else 1.0
        self._tick = min(self._interval, config.idle_poll)
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.last_busy_report = time.monotonic()
        self._task = loop.create_task(self._heartbeat_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def apply(self, status: Status) -> None:
        self._status = status
        self._status_at = time.monotonic()
        self.sites_with_work = status.sites_with_work
        self.clock_offset = status.now - time.time()

    def popped(self, result: PopResult) -> None:
        self.clock_offset = result.now - time.time()
        self.sites_with_work = result.sites_with_work
        if result.items:
            self.last_busy_report = time.monotonic()

    def pushed(self, sites_with_work: int) -> None:
        self.last_busy_report = time.monotonic()
        self.sites_with_work = sites_with_work

    def server_now(self) -> float:
        return time.time() + self.clock_offset

    def idle_seconds(self, locally_busy: bool) -> float:
        """How long the whole cluster has had nothing queued, no seeds and no busy worker (0: busy now)."""
        st = self._status
        if st is None or locally_busy or st.sites_with_work or st.seeds:
            return 0.0
        last = st.last_busy if st.last_busy is not None else st.now
        return max(0.0, st.now - last) + (time.monotonic() - self._status_at)

    async def _heartbeat_loop(self) -> None:
        scheduler = self._scheduler
        store = scheduler.store
        assert store is not None
        was_busy = True
        while True:
            await asyncio.sleep(self._tick)
            scheduler._sweep_in_flight()
            busy = scheduler._locally_busy()
            try:
                now = time.monotonic()
                if busy and now - self._last_seed_check >= self._interval:
                    # A busy worker takes new seeds too (scrapy-redis reads them only when idle).
                    self._last_seed_check = self.last_busy_report = now
                    status = await scheduler._call(store.status(scheduler.worker_id, True, scheduler.seeds_key))
                    self.apply(status)
                    if status.seeds:
                        scheduler._seeds_waiting(status.seeds)
                elif busy and now - self.last_busy_report >= self._interval:
                    self.apply(await scheduler._call(store.status(scheduler.worker_id, True, None)))
                    self.last_busy_report = now
                elif not busy:
                    # was_busy: record the end of this worker's busy spell exactly.
                    status = await scheduler._call(store.status(scheduler.worker_id, was_busy, scheduler.seeds_key))
                    self.apply(status)
                    if status.sites_ready:
                        scheduler._refill.pop_now()
                    if status.seeds:
                        scheduler._seeds_waiting(status.seeds)
                    scheduler._wake_engine()  # lets FrontierSpider.spider_idle look at the cluster view
            except RedisError:
                pass  # counted and logged in FrontierScheduler._call; the next tick retries
            was_busy = busy
