"""Frontier glue: spiders that share a scrapy-redis frontier.

:class:`FrontierSpider` is scrapy-redis's ``RedisSpider`` made to work under
Scrapy 2.19:

* Scrapy 2.13+ drives spiders through ``async def start()`` and never calls
  ``start_requests()``, so seeds from the spider's ``redis_key`` are read in
  ``start()`` and again whenever the worker goes idle.
* scrapy-redis measures ``MAX_IDLE_TIME_BEFORE_CLOSE`` from import time. Here a
  worker closes only after the shared frontier has been empty, with this
  worker idle, for ``FRONTIER_IDLE_CLOSE_SECONDS`` measured from the moment it
  became idle (0: never close, run as a service waiting for seeds).
* An idle worker looks at the shared frontier every
  ``FRONTIER_IDLE_POLL_SECONDS`` instead of Scrapy's 5-second heartbeat, so a
  second worker joins in as soon as the first one has pushed links.

Settings: ``FRONTIER_IDLE_CLOSE_SECONDS`` (float, default 0),
``FRONTIER_IDLE_POLL_SECONDS`` (float, default 0.25), plus scrapy-redis's own
``REDIS_URL``, ``REDIS_START_URLS_KEY``, ``REDIS_START_URLS_BATCH_SIZE``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import DontCloseSpider
from scrapy_redis.spiders import RedisSpider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler


def _non_negative(crawler: Crawler, name: str) -> float:
    raw = crawler.settings.get(name)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds >= 0, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return value


class FrontierSpider(RedisSpider):  # type: ignore[misc]  # scrapy-redis ships no type hints
    """A spider whose requests live in the shared Redis frontier."""

    idle_close_seconds: float
    idle_poll_seconds: float
    _idle_since: float | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        spider: Self = super().from_crawler(crawler, *args, **kwargs)
        spider.idle_close_seconds = _non_negative(crawler, "FRONTIER_IDLE_CLOSE_SECONDS")
        spider.idle_poll_seconds = _non_negative(crawler, "FRONTIER_IDLE_POLL_SECONDS") or 0.25
        # scrapy-redis's own idle timer is replaced by ours (see spider_idle).
        spider.max_idle_time = 0
        crawler.signals.connect(spider._busy, signal=signals.response_received)
        return spider

    async def start(self) -> AsyncIterator[Request]:
        for request in self.next_requests():
            yield request

    def _busy(self) -> None:
        self._idle_since = None

    def spider_idle(self) -> None:
        """Pull seeds; keep the worker open until the cluster's frontier has drained."""
        found = False
        for request in self.next_requests():
            self.crawler.engine.crawl(request)
            found = True
        now = time.monotonic()
        if found or self._idle_since is None:
            self._idle_since = now
        idle_for = now - self._idle_since
        if self.idle_close_seconds and idle_for >= self.idle_close_seconds:
            return  # let the engine close us
        self._wake_soon()
        raise DontCloseSpider

    def _wake_soon(self) -> None:
        # Without this the engine looks at the (shared) scheduler only on its
        # 5 s heartbeat while idle. engine.crawl() is the public way to
        # schedule the engine's next loop, but it needs a request; the slot's
        # nextcall is what crawl() itself uses.
        def poke() -> None:
            engine = self.crawler.engine
            slot = getattr(engine, "_slot", None)
            if slot is not None and slot.closing is None:
                slot.nextcall.schedule()

        asyncio.get_running_loop().call_later(self.idle_poll_seconds, poke)
