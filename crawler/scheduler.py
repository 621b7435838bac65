"""The shared frontier: a Scrapy scheduler on scrapy-redis's data model, website-aware and non-blocking.

Scrapy calls a scheduler synchronously (``enqueue_request``, ``next_request``,
``has_pending_requests``); Redis is reached only from asyncio tasks
(``redis.asyncio``), never on the reactor thread's critical path:

* **outbox**: ``enqueue_request`` encodes the request (:mod:`crawler.request_codec`,
  JSON, no pickle) and appends it to a local outbox. A flush task sends the
  outbox in one Lua call (``lua/push.lua``) that deduplicates and stores
  atomically: a fingerprint is stored only with its request. One flush per
  ``FRONTIER_FLUSH_DELAY`` at most, so one round trip carries every link of
  one or several responses.
* **prefetch**: ``next_request`` serves a local buffer, refilled by one Lua call
  (``lua/pop.lua``) that pops up to ``FRONTIER_PREFETCH`` requests fairly across
  the websites that may be served now, and wakes the engine when they arrive.
  The buffer (:mod:`crawler.prefetch`) is served round-robin across websites,
  preferring websites whose download slot has room.
* **websites**: one queue per website (``crawler.website.website_key``), a zset
  of websites by the time each may next be served, and not-before marks
  (:meth:`FrontierScheduler.mark_not_before`, or a downloader middleware
  returning a request with meta ``frontier_requeue`` / ``frontier_not_before``).
* **in flight**: every request handed to the engine is tracked until the engine
  has processed its outcome (it leaves the engine's in-progress set). A leased
  delivery (a later issue) acknowledges the lease at that point, in
  ``_sweep_in_flight``, and pops with a lease in ``lua/pop.lua``.
* **cluster view**: a heartbeat task records this worker as busy and, while it
  is idle, polls the cluster (queued websites, seeds, last busy worker) for
  :class:`crawler.frontier.FrontierSpider`'s cluster-wide idle close.

On close, prefetched requests go back to Redis and the outbox is flushed.

Settings: ``REDIS_URL``, ``WEBSITE_KEY``, ``FRONTIER_KEY_PREFIX``,
``FRONTIER_PREFETCH``, ``FRONTIER_FLUSH_DELAY``, ``FRONTIER_FLUSH_MAX``,
``FRONTIER_SEEN_CACHE``, ``FRONTIER_IDLE_POLL_SECONDS``,
``FRONTIER_IDLE_CLOSE_SECONDS`` (see README, "Frontier").
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.request import RequestFingerprinter

from crawler.frontier_config import FrontierConfig
from crawler.frontier_store import (
    MODE_DEDUPE,
    MODE_DONT_FILTER,
    MODE_REQUEUE,
    FrontierStore,
    PushEntry,
    Status,
    split_member,
)
from crawler.prefetch import Buffered, PrefetchBuffer
from crawler.request_codec import UndecodableRequestError, UnencodableRequestError, decode_request, encode_request
from crawler.website import website_key

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred

logger = logging.getLogger(__name__)

META_REQUEUE = "frontier_requeue"
META_NOT_BEFORE = "frontier_not_before"
# Largest batch sent in one Lua call: a script blocks Redis while it runs.
_PUSH_CHUNK = 500
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
        # outbox
        self._outbox: list[PushEntry] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_failures = 0
        self._seen: set[str] = set()
        # URLs of GET requests without a body that Redis has seen: with Scrapy's
        # default fingerprinter (URL, method and body only), the same URL string
        # means the same fingerprint, so known duplicates skip canonicalisation.
        self._seen_urls: set[str] = set()
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
        # What Scrapy's downloader gives a new download slot (Downloader._get_slot).
        settings = crawler.settings
        self._slot_concurrency = (settings.getint("CONCURRENT_REQUESTS_PER_IP")
                                  or settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN"))
        self._slot_settings: dict[str, Any] = settings.getdict("DOWNLOAD_SLOTS")
        self._refill_task: asyncio.Task[None] | None = None
        self._pop_after = 0.0  # monotonic time before which popping is pointless
        self._pop_timer: asyncio.TimerHandle | None = None
        self._not_before: dict[str, float] = {}  # website -> Unix time (Redis clock)
        self._clock_offset = 0.0  # Redis clock - local clock
        # requests handed to the engine, until their outcome is processed
        self._in_flight: dict[Request, str] = {}
        # cluster view
        self._cluster_sites = 0
        self._status: Status | None = None
        self._status_at = 0.0
        self._last_busy_report = 0.0
        self._last_seed_check = 0.0
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeat = min(1.0, config.idle_close / 4) if config.idle_close else 1.0
        self._closing = False
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler, FrontierConfig.from_settings(crawler.settings))

    # -- lifecycle -----------------------------------------------------

    def open(self, spider: Spider) -> Deferred[None]:
        return deferred_from_coro(self._open(spider))

    async def _open(self, spider: Spider) -> None:
        self.spider = spider
        self._loop = asyncio.get_running_loop()
        prefix = self.config.key_prefix % {"spider": spider.name}
        self.redis = Redis.from_url(self.config.redis_url)
        self.store = FrontierStore(self.redis, prefix)
        self.seeds_key = getattr(spider, "redis_key", None)
        # Fails the start-up loudly when Redis is unreachable; registers this worker as busy.
        self._apply_status(await self._call(self.store.status(self.worker_id, True, self.seeds_key)))
        self._last_busy_report = time.monotonic()
        self._heartbeat_task = self._loop.create_task(self._heartbeat_loop())
        logger.info(
            "Frontier open: worker %(worker)s, keys %(prefix)s:*, website key %(mode)s, prefetch %(prefetch)d, "
            "flush delay %(delay).3fs, idle close %(close)ss; %(sites)d websites queued",
            {"worker": self.worker_id, "prefix": prefix, "mode": self.config.website_mode,
             "prefetch": self.config.prefetch, "delay": self.config.flush_delay,
             "close": self.config.idle_close or "never", "sites": self._cluster_sites},
            extra={"spider": spider},
        )

    def close(self, reason: str) -> Deferred[None]:
        return deferred_from_coro(self._close(reason))

    async def _close(self, reason: str) -> None:
        self._closing = True
        for timer in (self._flush_timer, self._pop_timer):
            if timer is not None:
                timer.cancel()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._refill_task is not None:
            await asyncio.gather(self._refill_task, return_exceptions=True)
        if self._background:  # seed reading (stops at its next batch), dead letters
            await asyncio.gather(*self._background, return_exceptions=True)
        self._return_buffer()
        for _ in range(20):  # Redis may be briefly away: retry for a while, then say what is lost
            if self._flush_task is not None:
                await asyncio.gather(self._flush_task, return_exceptions=True)
            if not self._outbox:
                break
            await self._flush()
        if self._outbox:
            logger.error("Frontier closing (%(reason)s): %(n)d requests could not be stored in Redis and are lost",
                         {"reason": reason, "n": len(self._outbox)}, extra={"spider": self.spider})
            self.stats.inc_value("frontier/lost_on_close", len(self._outbox))
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

    def has_pending_requests(self) -> bool:
        return bool(len(self._prefetch) or self._outbox or self._flush_task or self._refill_task
                    or self._cluster_sites)

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
            payload = encode_request(request, self.spider)
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
        self._schedule_flush()
        return True

    def next_request(self) -> Request | None:
        item = self._take()
        if len(self._prefetch) * 2 <= self.config.prefetch:
            self._want_refill()
        if item is None:
            if self._refill_task is not None and not len(self._prefetch):
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
        self._hold_website(website, until)
        mark = float(await self._call(self.store.mark_not_before(website, until)))
        self._not_before[website] = max(self._not_before.get(website, 0.0), mark)
        self.stats.inc_value("frontier/not_before_marked")
        return mark

    def cluster_idle_seconds(self) -> float:
        """How long the whole cluster has had nothing queued, no seeds and no busy worker (0: busy now)."""
        st = self._status
        if st is None or self._locally_busy() or st.sites_with_work or st.seeds:
            return 0.0
        last = st.last_busy if st.last_busy is not None else st.now
        return max(0.0, st.now - last) + (time.monotonic() - self._status_at)

    # -- local buffer ------------------------------------------------------

    def _take(self) -> Buffered | None:
        taken, held = self._prefetch.take(self._downloader_slots(), self._is_held, self._turn,
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
        slot_settings = self._slot_settings.get(website)
        if slot_settings:
            return int(slot_settings.get("concurrency", self._slot_concurrency))
        return self._slot_concurrency

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
        self._schedule_flush()

    def _add_popped(self, website: str, member: bytes) -> bool:
        fp, payload = split_member(member)
        try:
            request = decode_request(payload, self.spider)
        except UndecodableRequestError as exc:
            logger.error("Undecodable request in the frontier (%(website)s), moved to %(key)s: %(reason)s",
                         {"website": website, "key": self.store.dead_key if self.store else "?", "reason": exc},
                         extra={"spider": self.spider})
            self.stats.inc_value("frontier/undecodable")
            if self.store is not None:
                self.spawn(self._call(self.store.dead_letter(self.store.dead_key, [member])))
            return False
        self._prefetch.add(website, Buffered(request, fp, -request.priority, payload))
        return True

    # -- outbox --------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_task is not None or self._loop is None:
            return  # the running flush reschedules itself
        if len(self._outbox) >= self.config.flush_max or not self.config.flush_delay:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            self._start_flush()
        elif self._flush_timer is None:
            self._flush_timer = self._loop.call_later(self.config.flush_delay, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_timer = None
        if self._flush_task is None and self._outbox and self._loop is not None:
            self._flush_task = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        assert self.store is not None
        batch, self._outbox = self._outbox[:_PUSH_CHUNK], self._outbox[_PUSH_CHUNK:]
        try:
            flags, sites = await self._call(self.store.push(batch, self.worker_id))
        except RedisError:
            self._outbox[:0] = batch  # nothing lost: retried after a pause
            self._flush_failures += 1
            await asyncio.sleep(min(0.1 * 2 ** self._flush_failures, 5.0))
        else:
            self._flush_failures = 0
            self._last_busy_report = time.monotonic()
            self._cluster_sites = sites
            stored = 0
            if self.config.seen_cache and len(self._seen) > self.config.seen_cache:
                self._seen.clear()
                self._seen_urls.clear()
            for entry, ok in zip(batch, flags, strict=True):
                if entry.mode != MODE_REQUEUE:
                    self._seen.add(entry.fingerprint)
                    if entry.url is not None:
                        self._seen_urls.add(entry.url)
                if ok:
                    stored += 1
                else:
                    self.stats.inc_value("dupefilter/filtered")  # seen by another worker (or earlier)
            self.stats.inc_value("scheduler/enqueued/redis", stored)
            if stored:
                self._pop_after = 0.0  # new work: worth popping again now
                if len(self._prefetch) * 2 <= self.config.prefetch:
                    self._want_refill()
        finally:
            self._flush_task = None
            if self._outbox and not self._closing:
                self._schedule_flush()

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

    # -- prefetch ------------------------------------------------------

    def _want_refill(self) -> None:
        if self._refill_task is not None or self._closing or self._loop is None or self.store is None:
            return
        if time.monotonic() < self._pop_after:
            return
        self._refill_task = self._loop.create_task(self._refill())

    async def _refill(self) -> None:
        assert self.store is not None
        try:
            while not self._closing:
                want = self.config.prefetch - len(self._prefetch)
                if want <= 0:
                    break
                result = await self._call(self.store.pop(want, self.worker_id))
                self._clock_offset = result.now - time.time()
                self._cluster_sites = result.sites_with_work
                added = sum(self._add_popped(site, member) for site, member in result.items)
                if result.items:
                    self._last_busy_report = time.monotonic()
                if added:
                    self._wake_engine()
                if len(result.items) < want:
                    # Nothing more is ready: ask again at the earliest not-before time
                    # or after the idle poll interval, or as soon as we push new work.
                    wait = self.config.idle_poll
                    if result.next_ready is not None:
                        wait = min(wait, max(0.0, result.next_ready - result.now))
                    self._pop_after = time.monotonic() + wait
                    if result.sites_with_work and self._loop is not None:
                        if self._pop_timer is not None:
                            self._pop_timer.cancel()
                        self._pop_timer = self._loop.call_later(wait + 0.001, self._want_refill)
                    break
        except RedisError:
            self._pop_after = time.monotonic() + 1.0
        finally:
            self._refill_task = None

    # -- heartbeat and cluster view -----------------------------------

    def _locally_busy(self) -> bool:
        return bool(len(self._prefetch) or self._outbox or self._flush_task or self._in_flight)

    async def _heartbeat_loop(self) -> None:
        assert self.store is not None
        tick = min(self._heartbeat, self.config.idle_poll)
        was_busy = True
        while True:
            await asyncio.sleep(tick)
            self._sweep_in_flight()
            busy = self._locally_busy()
            try:
                now = time.monotonic()
                if busy and now - self._last_seed_check >= self._heartbeat:
                    # A busy worker takes new seeds too (scrapy-redis reads them only when idle).
                    self._last_seed_check = self._last_busy_report = now
                    status = await self._call(self.store.status(self.worker_id, True, self.seeds_key))
                    self._apply_status(status)
                    if status.seeds:
                        self._seeds_waiting(status.seeds)
                elif busy and now - self._last_busy_report >= self._heartbeat:
                    self._apply_status(await self._call(self.store.status(self.worker_id, True, None)))
                    self._last_busy_report = now
                elif not busy:
                    # was_busy: record the end of this worker's busy spell exactly.
                    status = await self._call(self.store.status(self.worker_id, was_busy, self.seeds_key))
                    self._apply_status(status)
                    if status.sites_ready:
                        self._pop_after = 0.0
                        self._want_refill()
                    if status.seeds:
                        self._seeds_waiting(status.seeds)
                    self._wake_engine()  # lets FrontierSpider.spider_idle look at the cluster view
            except RedisError:
                pass  # counted and logged in _call; the next tick retries
            was_busy = busy

    def _seeds_waiting(self, count: int) -> None:
        hook = getattr(self.spider, "frontier_seeds_waiting", None)
        if hook is not None and len(self._outbox) < _SEED_BACKLOG:
            hook(count)

    def _apply_status(self, status: Status) -> None:
        self._status = status
        self._status_at = time.monotonic()
        self._cluster_sites = status.sites_with_work
        self._clock_offset = status.now - time.time()

    def _sweep_in_flight(self) -> None:
        """Forget requests whose outcome the engine has processed (a lease would be acknowledged here)."""
        if not self._in_flight:
            return
        slot = getattr(self._engine(), "_slot", None)
        inprogress = getattr(slot, "inprogress", None)
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
        return time.time() + self._clock_offset

    def _downloader_slots(self) -> dict[str, Any] | None:
        downloader = getattr(self._engine(), "downloader", None)
        return getattr(downloader, "slots", None)

    def _engine(self) -> Any:
        # None outside a running crawl (the scheduler is usable on its own, as in the tests).
        return getattr(self.crawler, "_engine", None)

    def _wake_engine(self) -> None:
        # The engine polls next_request from its nextcall loop and a 5 s
        # heartbeat; prefetched requests or a changed cluster view should not
        # wait for the heartbeat.
        slot = getattr(self._engine(), "_slot", None)
        if slot is not None and slot.closing is None:
            slot.nextcall.schedule()

