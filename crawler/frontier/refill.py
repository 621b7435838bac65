"""The frontier's refill: pops requests from Redis into the scheduler's prefetch buffer.

Part of :mod:`crawler.frontier.scheduler`. One task at a time pops up to
``FRONTIER_PREFETCH`` requests in one Lua call (``lua/pop.lua``), fairly across
the websites that may be served now, and wakes the engine when they arrive;
the scheduler asks for a refill when the buffer is half empty. When Redis has
nothing more that is ready, popping is pointless until the earliest not-before
time or the ``FRONTIER_IDLE_POLL_SECONDS`` interval, or until new work is
pushed (:meth:`Refill.pop_now`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from crawler.frontier.scheduler import FrontierScheduler


class Refill:
    """Pops into the prefetch buffer, one task at a time, not sooner than useful."""

    def __init__(self, scheduler: FrontierScheduler) -> None:
        self._scheduler = scheduler
        self._config = scheduler.config
        self.task: asyncio.Task[None] | None = None
        self.pop_after = 0.0  # monotonic time before which popping is pointless
        self._timer: asyncio.TimerHandle | None = None

    def want(self) -> None:
        """Start a refill, unless one runs or popping is pointless now."""
        scheduler = self._scheduler
        if self.task is not None or scheduler._closing or scheduler._loop is None or scheduler.store is None:
            return
        if time.monotonic() < self.pop_after:
            return
        self.task = scheduler._loop.create_task(self._refill())

    def pop_now(self) -> None:
        """Work arrived (pushed here, or ready in the cluster): pop without waiting for the poll interval."""
        self.pop_after = 0.0
        if len(self._scheduler._prefetch) * 2 <= self._config.prefetch:
            self.want()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    async def _refill(self) -> None:
        scheduler = self._scheduler
        store = scheduler.store
        assert store is not None
        prefetch = scheduler._prefetch
        try:
            while not scheduler._closing:
                want = self._config.prefetch - len(prefetch)
                if want <= 0:
                    break
                result = await scheduler._call(store.pop(want, scheduler.worker_id))
                scheduler._cluster.popped(result)
                added = sum(scheduler._add_popped(site, member) for site, member in result.items)
                if added:
                    scheduler._wake_engine()
                if len(result.items) < want:
                    # Nothing more is ready: ask again at the earliest not-before time
                    # or after the idle poll interval, or as soon as we push new work.
                    wait = self._config.idle_poll
                    if result.next_ready is not None:
                        wait = min(wait, max(0.0, result.next_ready - result.now))
                    self.pop_after = time.monotonic() + wait
                    if result.sites_with_work and scheduler._loop is not None:
                        if self._timer is not None:
                            self._timer.cancel()
                        self._timer = scheduler._loop.call_later(wait + 0.001, self.want)
                    break
        except RedisError:
            self.pop_after = time.monotonic() + 1.0
        finally:
            self.task = None
