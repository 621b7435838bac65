"""The shared frontier: a Scrapy scheduler on scrapy-redis's data model, website-aware and non-blocking.

Scrapy calls a scheduler synchronously (``enqueue_request``, ``next_request``,
``has_pending_requests``); Redis is reached only from asyncio tasks
(``redis.asyncio``), never on the reactor thread's critical path:

* **outbox** (:mod:`crawler.frontier.outbox`): ``enqueue_request`` encodes the request
  (:mod:`crawler.frontier.codec`, JSON, no pickle) and appends it to a local
  outbox. A flush task sends the outbox in one Lua call (``lua/push.lua``)
  that deduplicates and stores atomically: a fingerprint is stored only with
  its request. One flush per ``FRONTIER_FLUSH_DELAY`` at most, so one round
  trip carries every link of one or several responses.
* **prefetch**: ``next_request`` serves a local buffer, refilled
  (:mod:`crawler.frontier.refill`) by one Lua call (``lua/pop.lua``) that pops up to
  ``FRONTIER_PREFETCH`` requests fairly across the websites that may be
  served now, and wakes the engine when they arrive.
  The buffer (:mod:`crawler.frontier.prefetch`) is served round-robin across websites,
  preferring websites whose download slot has room.
* **websites**: one queue per website (``crawler.website.website_key``), a zset
  of websites by the time each may next be served, and not-before marks
  (:meth:`FrontierScheduler.mark_not_before`, or a downloader middleware
  returning a request with meta ``frontier_requeue`` / ``frontier_not_before``).
* **in flight**: every request handed to the engine is tracked until the engine
  has processed its outcome (it leaves the engine's in-progress set). A leased
  delivery (a later issue) acknowledges the lease at that point, in
  ``_sweep_in_flight``, and pops with a lease in ``lua/pop.lua``.
* **cluster view** (:mod:`crawler.frontier.cluster_view`): a heartbeat task records
  this worker as busy and, while it is idle, polls the cluster (queued
  websites, seeds, last busy worker) for
  :class:`crawler.frontier.spider.FrontierSpider`'s cluster-wide idle close.

On close, prefetched requests go back to Redis and the outbox is flushed.

Settings: ``REDIS_URL``, ``WEBSITE_KEY``, ``FRONTIER_KEY_PREFIX``,
``FRONTIER_PREFETCH``, ``FRONTIER_FLUSH_DELAY``, ``FRONTIER_FLUSH_MAX``,
``FRONTIER_SEEN_CACHE``, ``FRONTIER_IDLE_POLL_SECONDS``,
``FRONTIER_IDLE_CLOSE_SECONDS`` (docs/frontier.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from scrapy import signals
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.request import RequestFingerprinter

from crawler.frontier.cluster_view import ClusterView
from crawler.frontier.codec import UndecodableRequestError, UnencodableRequestError, decode_request, encode_request
from crawler.frontier.config import FrontierConfig
from crawler.frontier.gate import GateConfig, MetaWarnings, filter_entry_meta
from crawler.frontier.outbox import Outbox
from crawler.frontier.prefetch import Buffered, PrefetchBuffer
from crawler.frontier.refill import Refill
from crawler.frontier.store import MODE_DEDUPE, MODE_DONT_FILTER, MODE_REQUEUE, FrontierStore, PushEntry, split_member
from crawler.redis_client import check_auth
from crawler.scrapy_internals import downloader_slots, in_progress, new_slot_concurrency, wake_engine
from crawler.website import website_key

if TYPE_CHECKING:
    from typing import Self

    from redis.asyncio import Redis
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred

logger = logging.getLogger(__name__)

META_REQUEUE = "frontier_requeue"
META_NOT_BEFORE = "frontier_not_before"
# No more seeds are read while this many requests wait in the outbox.
_SEED_BACKLOG = 5000


class FrontierScheduler:
    """Scrapy scheduler over the shared Redis frontier (see module docstring)."""

    def __init__(self, crawler: Crawler, config: FrontierConfig) -> None:
        if not is_asyncio_available():
            raise RuntimeError("FrontierScheduler needs the asyncio reactor (TWISTED_REACTOR)")
        self.crawler = crawler
        self.config = config
        assert crawler.stats is not None
        self.stats = crawler.stats
        self.spider: Spider | None = None
        self.store: FrontierStore | None = None
        self.redis: Redis | None = None
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.seeds_key: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._outbox = Outbox(self)
        # The outbox's caches of what Redis has seen, read on enqueue_request's hot path.
        self._seen = self._outbox.seen
        self._seen_urls = self._outbox.seen_urls
        self._url_cache = type(crawler.request_fingerprinter) is RequestFingerprinter and bool(config.seen_cache)
        self._websites: dict[str, str] = {}  # netloc -> website key
        self._debug_duplicates = crawler.settings.getbool("DUPEFILTER_DEBUG")
        self._log_duplicates = True
        # prefetch buffer: website -> requests, served round-robin
        self._prefetch = PrefetchBuffer()
        # Requests handed out in this event-loop turn, by website (see PrefetchBuffer.take).
        # Cleared on the next turn, when they have reached their download slot (a
        # downloader middleware that awaits first delays that: not counted meanwhile).
        self._turn: dict[str, int] = {}
        self._refill = Refill(self)
        self._not_before: dict[str, float] = {}  # website -> Unix time (Redis clock)
        # requests handed to the engine, until their outcome is processed
        self._in_flight: dict[Request, str] = {}
        self._cluster = ClusterView(self)
        self._background: set[asyncio.Task[Any]] = set()
        # Entries read from Redis are untrusted input (crawler/frontier/gate.py).
        self._gate = GateConfig.from_settings(crawler.settings)
        self._meta_warnings = MetaWarnings(crawler, None)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler, FrontierConfig.from_settings(crawler.settings))

    # -- lifecycle -----------------------------------------------------

    def open(self, spider: Spider) -> Deferred[None]:
        return deferred_from_coro(self._open(spider))

    async def _open(self, spider: Spider) -> None:
        self.spider = spider
        self._meta_warnings.spider = spider
        self._loop = asyncio.get_running_loop()
        prefix = self.config.key_prefix % {"spider": spider.name}
        self.redis = self.config.redis.async_client()
        self.store = FrontierStore(self.redis, prefix)
        self.seeds_key = getattr(spider, "redis_key", None)
        # Fails the start-up loudly when Redis is unreachable; registers this worker as busy.
        self._cluster.apply(await check_auth(self._call(self.store.status(self.worker_id, True, self.seeds_key)),
                                             self.config.redis.url))
        # The heartbeat (which takes seeds and pops) starts once every component
        # has opened: a worker whose pipelines refuse to start consumes nothing.
        self.crawler.signals.connect(self._start_heartbeat, signal=signals.spider_opened)
        logger.info(
            "Frontier open: worker %(worker)s, keys %(prefix)s:*, website key %(mode)s, prefetch %(prefetch)d, "
            "flush delay %(delay).3fs, idle close %(close)ss; %(sites)d websites queued",
            {"worker": self.worker_id, "prefix": prefix, "mode": self.config.website_mode,
             "prefetch": self.config.prefetch, "delay": self.config.flush_delay,
             "close": self.config.idle_close or "never", "sites": self._cluster.sites_with_work},
            extra={"spider": spider},
        )

    def _start_heartbeat(self) -> None:
        if self._loop is not None and not self._closing:
            self._cluster.start(self._loop)

    def close(self, reason: str) -> Deferred[None]:
        return deferred_from_coro(self._close(reason))

    async def _close(self, reason: str) -> None:
        self._closing = True
        self._outbox.cancel_timer()
        await self._cluster.stop()
        await self._refill.stop()
        if self._background:  # seed reading (stops at its next batch), dead letters
            await asyncio.gather(*self._background, return_exceptions=True)
        self._return_buffer()
        lost = await self._outbox.close()
        if lost:
            logger.error("Frontier closing (%(reason)s): %(n)d requests could not be stored in Redis and are lost",
                         {"reason": reason, "n": lost}, extra={"spider": self.spider})
            self.stats.inc_value("frontier/lost_on_close", lost)
        if self.store is not None:
            self.stats.set_value("frontier/redis_calls", self.store.calls)
        if self.redis is not None:
            await self.redis.aclose()

    def _return_buffer(self) -> None:
        """Prefetched requests go back to Redis (without the dupefilter) when this worker stops."""
        returned = 0
        for website, item in self._prefetch.drain():
            self._outbox.append(PushEntry(website, item.fingerprint, MODE_REQUEUE, item.score,
                                          self._not_before.get(website, 0.0), item.payload))
            returned += 1
        if returned:
            self.stats.inc_value("frontier/returned_on_close", returned)

    # -- Scrapy's scheduler interface ----------------------------------

    def __len__(self) -> int:
        """Requests prefetched from Redis and waiting in this worker (Scrapy's scheduler interface)."""
        return len(self._prefetch)

    def has_pending_requests(self) -> bool:
        return bool(len(self._prefetch) or self._outbox.entries or self._outbox.task or self._refill.task
                    or self._cluster.sites_with_work)

    def enqueue_request(self, request: Request) -> bool:
        meta = request.meta
        requeue = bool(meta.pop(META_REQUEUE, False))
        raw_until = meta.pop(META_NOT_BEFORE, 0)
        try:
            not_before = float(raw_until or 0)
        except (TypeError, ValueError):
            logger.error("meta %(key)s of %(request)s must be a Unix time in seconds, got %(value)r; ignored",
                         {"key": META_NOT_BEFORE, "request": request, "value": raw_until},
                         extra={"spider": self.spider})
            not_before = 0.0
        if not_before:
            not_before = self._cap_not_before(request, not_before)
        url_key = (request.url if self._url_cache and request.method == "GET" and not request.body
                   and not requeue else None)
        if url_key is not None and not request.dont_filter and url_key in self._seen_urls:
            self._filtered(request)
            return False
        fp = self.crawler.request_fingerprinter.fingerprint(request).hex()
        if requeue:
            mode = MODE_REQUEUE
        elif request.dont_filter:
            mode = MODE_DONT_FILTER
        else:
            mode = MODE_DEDUPE
            if fp in self._seen:
                self._filtered(request)
                return False
        website = self._website(request)
        meta.setdefault("download_slot", website)
        try:
            payload = encode_request(request, self.spider, self._gate)
        except UnencodableRequestError as exc:
            logger.error("Cannot store %(request)s in the frontier, dropped (no fingerprint kept): %(reason)s",
                         {"request": request, "reason": exc}, extra={"spider": self.spider})
            self.stats.inc_value("frontier/unserializable")
            return False
        self._outbox.append(PushEntry(website, fp, mode, -request.priority, not_before, payload, url_key))
        if requeue:
            self.stats.inc_value("frontier/requeued")
            if not_before > self._server_now():
                self._hold_website(website, not_before)
        self._outbox.schedule()
        return True

    def next_request(self) -> Request | None:
        item = self._take()
        if len(self._prefetch) * 2 <= self.config.prefetch:
            self._refill.want()
        if item is None:
            if self._refill.task is not None and not len(self._prefetch):
                # The engine asked while the buffer was empty and a pop was on its way:
                # a sign FRONTIER_PREFETCH is too small for this crawl's speed.
                self.stats.inc_value("frontier/prefetch_empty")
            return None
        self._in_flight[item.request] = item.fingerprint
        self.stats.inc_value("scheduler/dequeued/redis")
        return item.request

    # -- API for other components ----------------------------------------

    async def mark_not_before(self, website: str, until: float) -> float:
        """No worker serves ``website`` before ``until`` (Unix time, Redis clock); returns the mark in force."""
        assert self.store is not None
        until = self._cap_not_before(website, until)
        self._hold_website(website, until)
        mark = float(await self._call(self.store.mark_not_before(website, until)))
        self._not_before[website] = max(self._not_before.get(website, 0.0), mark)
        self.stats.inc_value("frontier/not_before_marked")
        return mark

    def _cap_not_before(self, what: object, until: float) -> float:
        """A not-before mark at most FRONTIER_MAX_NOT_BEFORE_SECONDS ahead (a far-future mark parks a website)."""
        capped = self._gate.cap_not_before(until, self._server_now())
        if capped < until:
            logger.warning("Not-before mark for %(what)s capped: %(until).0f is more than "
                           "FRONTIER_MAX_NOT_BEFORE_SECONDS (%(max).0f s) ahead",
                           {"what": what, "until": until, "max": self._gate.max_not_before},
                           extra={"spider": self.spider})
            self.stats.inc_value("frontier/not_before_capped")
        return capped

    def cluster_idle_seconds(self) -> float:
        """How long the whole cluster has had nothing queued, no seeds and no busy worker (0: busy now)."""
        return self._cluster.idle_seconds(self._locally_busy())

    # -- local buffer ------------------------------------------------------

    def _take(self) -> Buffered | None:
        taken, held = self._prefetch.take(downloader_slots(self.crawler), self._is_held, self._turn,
                                          self._new_slot_concurrency)
        for website, items in held:
            self._requeue_held(website, items)
        if taken is None:
            return None
        website, item = taken
        # A request in a download slot of the spider's own choosing is not in the website's slot.
        if self._loop is not None and item.request.meta.get("download_slot") == website:
            if not self._turn:
                self._loop.call_soon(self._turn.clear)
            self._turn[website] = self._turn.get(website, 0) + 1
        return item

    def _new_slot_concurrency(self, website: str) -> int:
        return new_slot_concurrency(self.crawler, website)

    def _is_held(self, website: str) -> bool:
        until = self._not_before.get(website)
        if until is None:
            return False
        if until > self._server_now():
            return True
        del self._not_before[website]
        return False

    def _hold_website(self, website: str, until: float) -> None:
        self._not_before[website] = max(self._not_before.get(website, 0.0), until)
        if website in self._prefetch:
            self._requeue_held(website, self._prefetch.remove(website))

    def _requeue_held(self, website: str, items: list[Buffered]) -> None:
        """Send a held website's prefetched requests back to Redis, so no worker keeps them."""
        until = self._not_before.get(website, 0.0)
        for item in items:
            self._outbox.append(PushEntry(website, item.fingerprint, MODE_REQUEUE, item.score, until, item.payload))
        self.stats.inc_value("frontier/returned_held", len(items))
        self._outbox.schedule()

    def _add_popped(self, website: str, member: bytes) -> bool:
        fp, payload = split_member(member)
        try:
            request = decode_request(payload, self.spider, self._gate)
        except UndecodableRequestError as exc:
            self.stats.inc_value(f"frontier/gate/refused/{exc.reason}")
            logger.error("Undecodable request in the frontier (%(website)s), moved to %(key)s: %(reason)s",
                         {"website": website, "key": self.store.dead_key if self.store else "?", "reason": exc},
                         extra={"spider": self.spider})
            self.stats.inc_value("frontier/undecodable")
            if self.store is not None:
                self.spawn(self._call(self.store.dead_letter(self.store.dead_key, [member])))
            return False
        dropped = filter_entry_meta(request.meta, website, self._gate)
        self._meta_warnings.dropped("frontier entry", dropped, "FRONTIER_ENTRY_META_ALLOW")
        self._prefetch.add(website, Buffered(request, fp, -request.priority, payload))
        return True

    # -- enqueue -------------------------------------------------------

    def _pushed(self, sites_with_work: int, stored: int) -> None:
        """The outbox stored a batch: new work is worth popping now."""
        self._cluster.pushed(sites_with_work)
        if stored:
            self._refill.pop_now()

    def _filtered(self, request: Request) -> None:
        self.stats.inc_value("dupefilter/filtered")
        # As Scrapy's RFPDupeFilter: the first duplicate only, unless DUPEFILTER_DEBUG.
        if self._log_duplicates:
            logger.debug("Filtered duplicate request %(request)s%(more)s",
                         {"request": request, "more": "" if self._debug_duplicates else
                          " - no more duplicates will be shown (see DUPEFILTER_DEBUG to show all duplicates)"},
                         extra={"spider": self.spider})
            self._log_duplicates = self._debug_duplicates

    def _website(self, request: Request) -> str:
        # website_key() is a pure function of the host: cache it per netloc
        # (urlparse_cached is shared with Scrapy's downloader).
        netloc = urlparse_cached(request).netloc
        key = self._websites.get(netloc)
        if key is None:
            if len(self._websites) > 100_000:
                self._websites.clear()
            key = self._websites[netloc] = website_key(request.url, self.config.website_mode)
        return key

    # -- in flight, seeds (called by the cluster view's heartbeat) --------

    def _locally_busy(self) -> bool:
        return bool(len(self._prefetch) or self._outbox.entries or self._outbox.task or self._in_flight)

    def _seeds_waiting(self, count: int) -> None:
        hook = getattr(self.spider, "frontier_seeds_waiting", None)
        if hook is not None and len(self._outbox) < _SEED_BACKLOG:
            hook(count)

    def _sweep_in_flight(self) -> None:
        """Forget requests whose outcome the engine has processed (a lease would be acknowledged here)."""
        if not self._in_flight:
            return
        inprogress = in_progress(self.crawler)
        if inprogress is None:
            self._in_flight.clear()
            return
        for request in [r for r in self._in_flight if r not in inprogress]:
            del self._in_flight[request]

    # -- helpers -------------------------------------------------------

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except RedisError as exc:
            self.stats.inc_value(f"frontier/redis_error/{type(exc).__name__}")
            logger.error("Frontier Redis call failed: %(exc)r", {"exc": exc}, extra={"spider": self.spider})
            raise

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the scheduler waits for when it closes (before its last flush)."""
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _server_now(self) -> float:
        return self._cluster.server_now()

    def _wake_engine(self) -> None:
        # Prefetched requests or a changed cluster view should not wait for the engine's 5 s heartbeat.
        wake_engine(self.crawler)

