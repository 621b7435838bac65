"""The frontier's outbox: new requests on their way into Redis, stored in batches by one flush task.

Part of :mod:`crawler.frontier.scheduler`. ``enqueue_request`` encodes the request
(:mod:`crawler.frontier.codec`, JSON, no pickle) and appends it here. A flush
task sends the outbox in one Lua call (``lua/push.lua``) that deduplicates and
stores atomically: a fingerprint is stored only with its request. One flush per
``FRONTIER_FLUSH_DELAY`` at most (at once from ``FRONTIER_FLUSH_MAX`` requests),
so one round trip carries every link of one or several responses. A failed
push keeps its batch for a retry after a pause: nothing is lost.

The fingerprints Redis has confirmed (and the URLs that alone decide them) are
remembered here (``FRONTIER_SEEN_CACHE``), so the scheduler drops known
duplicates without a round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from crawler.frontier.store import MODE_REQUEUE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from typing import Any

    from scrapy import Request
    from scrapy.statscollectors import StatsCollector

    from crawler.frontier.config import FrontierConfig
    from crawler.frontier.store import PushEntry

    PushBatch = Callable[[list[PushEntry]], Awaitable[tuple[list[bool], int]]]
    StartTask = Callable[[str, Coroutine[Any, Any, None]], asyncio.Task[None]]

logger = logging.getLogger(__name__)

# Largest batch sent in one Lua call: a script blocks Redis while it runs.
_PUSH_CHUNK = 500
_RETRY_CAP = 5.0


class Outbox:
    """Requests waiting to be stored in Redis, sent by one flush task at a time."""

    def __init__(self, config: FrontierConfig, stats: StatsCollector, push: PushBatch,
                 stored: Callable[[int, int], None], start: StartTask, debug_duplicates: bool = False) -> None:
        """``push`` stores a batch (flag per entry, websites with work); ``stored(websites_with_work, n)``
        is told after each stored batch; ``start`` runs the flush task; ``debug_duplicates``: DUPEFILTER_DEBUG."""
        self._config = config
        self._stats = stats
        self._push = push
        self._stored = stored
        self._start_task = start
        self.entries: list[PushEntry] = []
        # Entries ever appended, and how many of the first ones are stored (FIFO: a failed batch goes back first).
        self.appended = 0
        self.stored = 0
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self._failures = 0
        self._debug_duplicates = debug_duplicates
        self._log_duplicates = True
        self.seen: set[str] = set()
        # URLs of GET requests without a body that Redis has seen: with Scrapy's
        # default fingerprinter (URL, method and body only), the same URL string
        # means the same fingerprint, so known duplicates skip canonicalisation.
        self.seen_urls: set[str] = set()
        # With FRONTIER_SEEN_TTL, what Redis forgets must not stay known here:
        # the caches are dropped once per generation.
        seen = config.seen
        self._cache_period = seen.ttl / (seen.generations - 1) if seen.ttl else 0.0
        self._cache_reset_at = time.monotonic() + self._cache_period

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def busy(self) -> bool:
        """Requests wait here or are on their way to Redis."""
        return bool(self.entries or self.task)

    def filtered(self, request: Request) -> None:
        """``request`` is a known duplicate (found in this worker's caches): counted, the first one logged."""
        self._stats.inc_value("dupefilter/filtered")
        # As Scrapy's RFPDupeFilter: the first duplicate only, unless DUPEFILTER_DEBUG.
        if self._log_duplicates:
            logger.debug("Filtered duplicate request %(request)s%(more)s",
                         {"request": request, "more": "" if self._debug_duplicates else
                          " - no more duplicates will be shown (see DUPEFILTER_DEBUG to show all duplicates)"})
            self._log_duplicates = self._debug_duplicates

    def append(self, entry: PushEntry) -> None:
        self.entries.append(entry)
        self.appended += 1

    def schedule(self) -> None:
        """Flush now, or within ``FRONTIER_FLUSH_DELAY``."""
        if self.task is not None or self.closing:
            return  # the running flush reschedules itself; close() flushes the rest
        if len(self.entries) >= self._config.flush_max or not self._config.flush_delay:
            if self.timer is not None:
                self.timer.cancel()
            self._start()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self._config.flush_delay, self._start)

    def _start(self) -> None:
        self.timer = None
        if self.task is None and self.entries and not self.closing:
            self.task = self._start_task("flush", self.flush())

    async def flush(self) -> None:
        """Send one batch (kept for a retry after a pause when Redis fails)."""
        batch, self.entries = self.entries[:_PUSH_CHUNK], self.entries[_PUSH_CHUNK:]
        try:
            flags, sites = await self._push(batch)
        except RedisError:
            self.entries[:0] = batch  # nothing lost: retried after a pause
            self._failures += 1
            if not self.closing:
                await asyncio.sleep(min(0.1 * 2 ** self._failures, _RETRY_CAP))
        else:
            self._failures = 0
            self.stored += len(batch)
            self._remember(batch, flags)
            self._stats.inc_value("scheduler/enqueued/redis", sum(flags))
            self._stored(sites, sum(flags))
        finally:
            if asyncio.current_task() is self.task:
                self.task = None
                if self.entries and not self.closing:
                    self.schedule()

    def _remember(self, batch: list[PushEntry], flags: list[bool]) -> None:
        expired = self._cache_period and time.monotonic() >= self._cache_reset_at
        if expired or (self._config.seen_cache and len(self.seen) > self._config.seen_cache):
            self.seen.clear()
            self.seen_urls.clear()
            self._cache_reset_at = time.monotonic() + self._cache_period
        for entry, ok in zip(batch, flags, strict=True):
            if entry.mode != MODE_REQUEUE:
                self.seen.add(entry.fingerprint)
                if entry.url is not None:
                    self.seen_urls.add(entry.url)
            if not ok:
                self._stats.inc_value("dupefilter/filtered")  # seen by another worker (or earlier)

    async def close(self, retry_pause: float = 0.5) -> None:
        """Flush everything left, retrying until Redis takes it: the caller bounds the time."""
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        while self.entries:
            await self.flush()
            if self.entries:
                await asyncio.sleep(retry_pause)
