"""The frontier's refill: pops requests from Redis into the scheduler's prefetch buffer.

Part of :mod:`crawler.frontier.scheduler`. One task at a time pops up to
``FRONTIER_PREFETCH`` requests in one Lua call (``lua/pop.lua``), fairly across
the websites that may be served now, and wakes the engine when they arrive;
the scheduler asks for a refill when the buffer is half empty. When Redis has
nothing more that is ready, popping is pointless until the earliest not-before
time or the ``FRONTIER_IDLE_POLL_SECONDS`` interval, or until new work is
pushed (:meth:`Refill.pop_now`); when nothing is queued anywhere, only
then.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from typing import Any

    from crawler.frontier.config import FrontierConfig
    from crawler.frontier.store import PopResult

    StartTask = Callable[[str, Coroutine[Any, Any, None]], asyncio.Task[None]]

# After a failed pop: wait 0.5 s, doubling up to 30 s, with jitter.
_BACKOFF_FIRST = 0.5
_BACKOFF_CAP = 30.0


class Refill:
    """Pops into the prefetch buffer, one task at a time, not sooner than useful."""

    def __init__(self, config: FrontierConfig, pop: Callable[[int], Awaitable[PopResult]],
                 buffered: Callable[[], int], deliver: Callable[[PopResult], None], start: StartTask) -> None:
        """``pop(n)`` pops up to n requests; ``buffered()`` is the prefetch buffer's size;
        ``deliver`` takes each pop's result; ``start`` runs the refill task."""
        self._config = config
        self._pop = pop
        self._buffered = buffered
        self._deliver = deliver
        self._start_task = start
        self.task: asyncio.Task[None] | None = None
        self.pop_after = 0.0  # monotonic time before which popping is pointless
        self.closing = False
        self._failures = 0
        self._timer: asyncio.TimerHandle | None = None

    def want(self) -> None:
        """Start a refill, unless one runs or popping is pointless now."""
        if self.task is not None or self.closing or time.monotonic() < self.pop_after:
            return
        self.task = self._start_task("refill", self._refill())

    def pop_now(self) -> None:
        """Work arrived (pushed here, or ready in the cluster): pop without waiting for the poll interval."""
        if self._failures:
            return  # Redis is away: the backoff decides
        self.pop_after = 0.0
        if self._buffered() * 2 <= self._config.prefetch:
            self.want()

    async def stop(self) -> None:
        """No more pops; waits for the one under way (the caller bounds the time)."""
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    async def _refill(self) -> None:
        try:
            while not self.closing:
                want = self._config.prefetch - self._buffered()
                if want <= 0:
                    break
                try:
                    result = await self._pop(want)
                except RedisError:
                    self._failures += 1
                    backoff = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** (self._failures - 1))
                    self._later(backoff * random.uniform(0.5, 1.0))
                    break
                self._failures = 0
                self._deliver(result)
                if len(result.items) < want:
                    if result.sites_with_work:
                        # Nothing more is ready: ask again at the earliest not-before time
                        # or after the idle poll interval, or as soon as we push new work.
                        wait = self._config.idle_poll
                        if result.next_ready is not None:
                            wait = min(wait, max(0.0, result.next_ready - result.now))
                        self._later(wait)
                    else:
                        # Nothing queued anywhere: pop again only when work arrives (pop_now:
                        # pushed here, or seen ready by the heartbeat). Popping on every
                        # next_request would keep a refill under way, and the engine would
                        # never find the worker idle (the idle close waited for Scrapy's 5 s tick).
                        self.pop_after = math.inf
                    break
        finally:
            self.task = None

    def _later(self, wait: float) -> None:
        """Pop again in ``wait`` seconds (not sooner)."""
        self.pop_after = time.monotonic() + wait
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(wait + 0.001, self.want)
