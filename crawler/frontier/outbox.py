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
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from crawler.frontier.store import MODE_REQUEUE

if TYPE_CHECKING:
    from crawler.frontier.scheduler import FrontierScheduler
    from crawler.frontier.store import PushEntry

# Largest batch sent in one Lua call: a script blocks Redis while it runs.
_PUSH_CHUNK = 500


class Outbox:
    """Requests waiting to be stored in Redis, sent by one flush task at a time."""

    def __init__(self, scheduler: FrontierScheduler) -> None:
        self._scheduler = scheduler
        self._config = scheduler.config
        self._stats = scheduler.stats
        self.entries: list[PushEntry] = []
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._failures = 0
        self.seen: set[str] = set()
        # URLs of GET requests without a body that Redis has seen: with Scrapy's
        # default fingerprinter (URL, method and body only), the same URL string
        # means the same fingerprint, so known duplicates skip canonicalisation.
        self.seen_urls: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, entry: PushEntry) -> None:
        self.entries.append(entry)

    def schedule(self) -> None:
        """Flush now, or within ``FRONTIER_FLUSH_DELAY``."""
        loop = self._scheduler._loop
        if self.task is not None or loop is None:
            return  # the running flush reschedules itself
        if len(self.entries) >= self._config.flush_max or not self._config.flush_delay:
            if self.timer is not None:
                self.timer.cancel()
            self._start()
        elif self.timer is None:
            self.timer = loop.call_later(self._config.flush_delay, self._start)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _start(self) -> None:
        self.timer = None
        loop = self._scheduler._loop
        if self.task is None and self.entries and loop is not None:
            self.task = loop.create_task(self.flush())

    async def flush(self) -> None:
        """Send one batch (retried later, and kept, when Redis fails)."""
        scheduler = self._scheduler
        assert scheduler.store is not None
        batch, self.entries = self.entries[:_PUSH_CHUNK], self.entries[_PUSH_CHUNK:]
        try:
            flags, sites = await scheduler._call(scheduler.store.push(batch, scheduler.worker_id))
        except RedisError:
            self.entries[:0] = batch  # nothing lost: retried after a pause
            self._failures += 1
            await asyncio.sleep(min(0.1 * 2 ** self._failures, 5.0))
        else:
            self._failures = 0
            stored = 0
            if self._config.seen_cache and len(self.seen) > self._config.seen_cache:
                self.seen.clear()
                self.seen_urls.clear()
            for entry, ok in zip(batch, flags, strict=True):
                if entry.mode != MODE_REQUEUE:
                    self.seen.add(entry.fingerprint)
                    if entry.url is not None:
                        self.seen_urls.add(entry.url)
                if ok:
                    stored += 1
                else:
                    self._stats.inc_value("dupefilter/filtered")  # seen by another worker (or earlier)
            self._stats.inc_value("scheduler/enqueued/redis", stored)
            scheduler._pushed(sites, stored)
        finally:
            self.task = None
            if self.entries and not scheduler._closing:
                self.schedule()

    async def close(self) -> int:
        """Flush everything left; Redis may be briefly away: retry for a while. Returns how many are left."""
        for _ in range(20):
            if self.task is not None:
                await asyncio.gather(self.task, return_exceptions=True)
            if not self.entries:
                break
            await self.flush()
        return len(self.entries)
