"""Spiders that share the Redis frontier (:mod:`crawler.frontier.scheduler`).

:class:`FrontierSpider` keeps scrapy-redis's ``RedisSpider`` interface
(``redis_key``, ``redis_batch_size``, ``redis_encoding``,
``make_request_from_data``) and fixes it for Scrapy 2.19:

* Seeds are read with ``redis.asyncio`` in ``async def start()`` (Scrapy 2.13+
  never calls ``start_requests()``), and again whenever the frontier's
  heartbeat sees seeds waiting (checked every second while the worker is
  busy, every ``FRONTIER_IDLE_POLL_SECONDS`` while idle). Each batch is taken
  atomically (MULTI: LRANGE + LTRIM), so every seed goes to one worker.
* A seed is a JSON object ``{"url": ..., "meta": {...}, "priority": 0,
  "method": "GET", "headers": {...}, "body": "...", "callback": "parse_x",
  "dont_filter": true}`` or a plain ``http(s)://`` URL. As in scrapy-redis,
  other keys of the object are form data (a ``FormRequest``). Seeds are
  untrusted: they pass the decoding gate (:mod:`crawler.frontier.gate`:
  size, scheme, callback and meta-key rules). A refused seed is logged with
  the reason, counted (``frontier/seeds/rejected``,
  ``frontier/gate/refused/<rule>``) and moved unchanged to the dead-letter
  list ``<redis_key>:dead`` (an oversized one is dropped); the worker carries on.
* ``FRONTIER_IDLE_CLOSE_SECONDS``: a worker closes only when the *whole
  cluster* has had nothing queued, no seeds waiting and no busy worker for
  that long (0: never, run as a service). scrapy-redis measured its idle time
  from import time.

Settings: ``FRONTIER_IDLE_CLOSE_SECONDS`` (float, default 0), scrapy-redis's
``REDIS_START_URLS_KEY`` (default ``%(name)s:start_urls``),
``REDIS_START_URLS_BATCH_SIZE`` (default ``CONCURRENT_REQUESTS``),
``REDIS_ENCODING`` (default utf-8).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from scrapy import Request, signals
from scrapy.exceptions import DontCloseSpider
from scrapy_redis.spiders import RedisSpider

from crawler.frontier.config import FrontierConfig
from crawler.frontier.gate import GateConfig, GateError, MetaWarnings, check_seed_size, parse_seed
from crawler.frontier.scheduler import FrontierScheduler
from crawler.setting_values import int_setting

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

class FrontierSpider(RedisSpider):  # type: ignore[misc]  # scrapy-redis ships no type hints
    """A spider whose requests live in the shared Redis frontier."""

    redis_key: str | None = None
    redis_batch_size: int | None = None
    redis_encoding: str | None = None
    idle_close_seconds: float
    dead_letter_key: str
    gate: GateConfig

    def setup_redis(self, crawler: Crawler | None = None) -> None:
        """scrapy-redis's settings, without its blocking client.

        An invalid setting does not raise here (Scrapy would bury it under a
        cascade of follow-on errors): it is kept in ``frontier_startup_error``
        and the frontier's scheduler closes the worker with it, logged once.
        """
        crawler = crawler or self.crawler
        settings = crawler.settings
        self.frontier_startup_error: str | None = None
        self.idle_close_seconds = 0.0
        self._seeding: asyncio.Task[None] | None = None
        self._meta_warnings = MetaWarnings(crawler, self)
        try:
            self._parse_settings(settings)
        except ValueError as exc:
            self.frontier_startup_error = str(exc)
        self.dead_letter_key = f"{self.redis_key}:dead"
        crawler.signals.connect(self.spider_idle, signal=signals.spider_idle)

    def _parse_settings(self, settings: BaseSettings) -> None:
        key = self.redis_key or settings.get("REDIS_START_URLS_KEY", "%(name)s:start_urls")
        self.redis_key = str(key) % {"name": self.name}
        if not self.redis_key.strip():
            raise ValueError(f"REDIS_START_URLS_KEY must not be empty, got {key!r}")
        if not self.redis_batch_size:
            # Defaults to CONCURRENT_REQUESTS: name the setting the user actually set.
            name = "REDIS_START_URLS_BATCH_SIZE" if settings.get("REDIS_START_URLS_BATCH_SIZE") else \
                "CONCURRENT_REQUESTS"
            self.redis_batch_size = int_setting(settings, name, 16, minimum=1)
        self.redis_encoding = self.redis_encoding or settings.get("REDIS_ENCODING", "utf-8")
        self.idle_close_seconds = FrontierConfig.from_settings(settings).idle_close
        self.gate = GateConfig.from_settings(settings)

    # -- seeds -------------------------------------------------------------

    async def start(self) -> AsyncIterator[Request]:
        if not self._uses_frontier():  # a one-off run (scrapy parse, check...): a plain spider
            for url in self.start_urls:
                yield Request(url, dont_filter=True)
            return
        async for request in self._read_seeds():
            yield request

    def frontier_seeds_waiting(self, count: int) -> None:
        """Called by the scheduler's heartbeat when seeds wait in ``redis_key``."""
        if self._seeding is None or self._seeding.done():
            self._seeding = self._frontier().spawn(self._pull_seeds())

    async def _pull_seeds(self) -> None:
        engine = self.crawler.engine
        async for request in self._read_seeds():
            engine.crawl(request)

    async def _read_seeds(self) -> AsyncIterator[Request]:
        scheduler = self._frontier()
        store = scheduler.store
        assert store is not None and self.redis_key is not None and self.redis_batch_size is not None
        stats = self.crawler.stats
        assert stats is not None
        while scheduler.wants_seeds():
            try:
                popped, left = await scheduler.redis_call(
                    store.pop_seeds(self.redis_key, self.redis_batch_size, self.gate.max_seed_bytes))
            except RedisError:
                return  # counted and logged (once per outage) by the frontier; read again when seen waiting
            requests: list[Request] = []
            dead: list[bytes] = []
            for size, data in popped:
                try:
                    check_seed_size(size, self.gate)
                    made = self.make_request_from_data(data)
                    requests += [made] if isinstance(made, Request) else list(made)
                except (ValueError, TypeError) as exc:
                    reason = exc.reason if isinstance(exc, GateError) else "format"
                    stats.inc_value(f"frontier/gate/refused/{reason}")
                    # An oversized seed is not copied back into Redis.
                    kept = "dropped" if reason == "size" else f"kept in {self.dead_letter_key}"
                    logger.error("Rejected seed %(data)r from %(key)s, %(kept)s: %(reason)s",
                                 {"data": data[:200], "key": self.redis_key, "kept": kept, "reason": exc},
                                 extra={"spider": self})
                    if reason != "size":
                        dead.append(data)
                    else:
                        stats.inc_value("frontier/seeds/rejected")
            if dead:
                stats.inc_value("frontier/seeds/rejected", len(dead))
                try:
                    await store.dead_letter(self.dead_letter_key, dead)
                except RedisError as exc:
                    logger.error("Cannot keep %(n)d rejected seeds in %(dead)s: %(exc)r",
                                 {"n": len(dead), "dead": self.dead_letter_key, "exc": exc}, extra={"spider": self})
            if requests:
                stats.inc_value("frontier/seeds/read", len(requests))
                logger.debug("Read %(n)d seeds from %(key)s", {"n": len(requests), "key": self.redis_key},
                             extra={"spider": self})
            for request in requests:
                yield request
            if not left:
                return

    def make_request_from_data(self, data: bytes) -> Request:
        """A request from one seed (see module docstring); ``ValueError`` (a :class:`GateError`) when refused."""
        seed = parse_seed(data, type(self), self.gate, self.redis_encoding or "utf-8")
        self._meta_warnings.dropped("seed", seed.dropped_meta, "FRONTIER_SEED_META_ALLOW")
        return seed.request(self)

    # -- closing -----------------------------------------------------------

    def spider_idle(self) -> None:
        """Keep the worker open until the whole cluster has been idle for FRONTIER_IDLE_CLOSE_SECONDS."""
        if not self._uses_frontier():
            return  # a one-off run: close when idle, as a plain spider does
        if self.idle_close_seconds and self._frontier().cluster_idle_seconds() >= self.idle_close_seconds:
            return  # let the engine close us
        raise DontCloseSpider

    def _uses_frontier(self) -> bool:
        """False when another scheduler runs this spider (Scrapy's dev commands, crawler.commands.one_off)."""
        engine = self.crawler.engine
        return engine is None or isinstance(engine.scheduler, FrontierScheduler)

    def _frontier(self) -> FrontierScheduler:
        scheduler = self.crawler.engine.scheduler if self.crawler.engine else None
        if not isinstance(scheduler, FrontierScheduler):
            raise RuntimeError(f"{type(self).__name__} needs SCHEDULER = "
                               f"'crawler.frontier.scheduler.FrontierScheduler', got {type(scheduler).__name__}")
        return scheduler
