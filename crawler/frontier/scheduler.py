"""The shared frontier: a Scrapy scheduler on scrapy-redis's data model, website-aware and non-blocking.

Scrapy calls a scheduler synchronously; Redis is reached only from asyncio
tasks, never on the reactor thread's critical path. ``enqueue_request``
encodes a request (:mod:`.codec`) into the :mod:`.outbox`, stored in batches
(``lua/push.lua``); ``next_request`` serves the :mod:`.prefetch` buffer,
refilled (:mod:`.refill`, ``lua/pop.lua``) fairly across the websites that
may be served now; the :mod:`.cluster_view` heartbeat keeps the cluster idle
close informed. Popped requests are leased to this worker until their
outcome is processed (:mod:`.delivery`, :mod:`.leases`); requests that
finally fail go to the failed list (:mod:`.failures`). Redis failures go
through :mod:`.redis_health` (one WARNING, one INFO per outage), tasks
through :mod:`.tasks` (none dies silently), start-up problems through
:mod:`.startup`. On close, what the worker holds goes back to Redis within
``FRONTIER_CLOSE_TIMEOUT``. docs/frontier.md
describes the design and every ``FRONTIER_*`` setting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import AuthenticationError, NoPermissionError, RedisError
from scrapy import signals
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.defer import deferred_from_coro

from crawler.frontier import intake
from crawler.frontier.closing import hand_back, stop_tasks
from crawler.frontier.cluster_view import ClusterView
from crawler.frontier.config import FrontierConfig
from crawler.frontier.delivery import Delivery
from crawler.frontier.outbox import Outbox
from crawler.frontier.partitions import PartitionedStore, PartitionLayoutError
from crawler.frontier.prefetch import Buffered, PrefetchBuffer
from crawler.frontier.redis_health import RedisHealth, safe_url
from crawler.frontier.refill import Refill
from crawler.frontier.startup import StartupCheck
from crawler.frontier.store import MODE_REQUEUE, PushEntry
from crawler.frontier.tasks import Tasks
from crawler.scrapy_internals import downloader_slots, new_slot_concurrency, wake_engine

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine
    from typing import Self

    from redis.asyncio import Redis
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred

    from crawler.frontier.store import PopResult, Status

logger = logging.getLogger(__name__)

META_REQUEUE = intake.META_REQUEUE
META_NOT_BEFORE = intake.META_NOT_BEFORE
# No more seeds are read while this many requests wait in the outbox.
_SEED_BACKLOG = 5000
T = TypeVar("T")


class FrontierScheduler:
    """Scrapy scheduler over the shared Redis frontier (see module docstring)."""

    def __init__(self, crawler: Crawler, config: FrontierConfig | None, startup_error: str | None = None) -> None:
        """``config`` is None when the settings are invalid: ``startup_error`` says why, and ``open`` closes
        the worker with that one message (a ValueError here would end in a cascade of Scrapy errors)."""
        if not is_asyncio_available():
            raise RuntimeError("FrontierScheduler needs the asyncio reactor (TWISTED_REACTOR)")
        self.crawler = crawler
        self._startup = StartupCheck(crawler, startup_error)
        self.config = config or FrontierConfig.placeholder()
        config = self.config
        assert crawler.stats is not None
        self.stats = crawler.stats
        self.spider: Spider | None = None
        self.store: PartitionedStore | None = None
        self.redis: Redis | None = None
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.seeds_key: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened = False
        self._closing = False
        self._health = RedisHealth(self.stats, config.redis.url)
        self._tasks: Tasks | None = None
        self._outbox = Outbox(config, self.stats, self._push_batch, self._pushed, self._start_task,
                             crawler.settings.getbool("DUPEFILTER_DEBUG"))
        # prefetch buffer: website -> requests, served round-robin
        self._prefetch = PrefetchBuffer()
        # Requests handed out in this event-loop turn, by website (see PrefetchBuffer.take).
        # Cleared on the next turn, when they have reached their download slot (a
        # downloader middleware that awaits first delays that: not counted meanwhile).
        self._turn: dict[str, int] = {}
        self._delivery = Delivery(crawler, config, self.worker_id, self._outbox, self._health.call, self._start_task)
        self._refill = Refill(config, self._delivery.pop, self._prefetch.__len__, self._popped, self._start_task)
        self._cluster = ClusterView(config)
        self._heartbeat: asyncio.Task[None] | None = None
        self._gate = self._delivery.gate
        self._intake = intake.Intake(crawler, config, self._outbox, self._gate, self._server_now)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        try:
            return cls(crawler, FrontierConfig.from_settings(crawler.settings))
        except ValueError as exc:
            return cls(crawler, None, str(exc))

    # -- lifecycle -----------------------------------------------------

    def open(self, spider: Spider) -> Deferred[None]:
        return deferred_from_coro(self._open(spider))

    async def _open(self, spider: Spider) -> None:
        self.spider = self._intake.spider = spider
        problem = getattr(spider, "frontier_startup_error", None)
        if problem:
            self._startup.fail(problem, spider)
        if self._startup.problem:
            return
        prefix = self.config.key_prefix % {"spider": spider.name}
        self.redis = self.config.redis.async_client()
        self.store = PartitionedStore(self.redis, prefix, self.config.seen.spec, self.config.partitions)
        self._delivery.open(self.store, spider)
        self.seeds_key = getattr(spider, "redis_key", None)
        try:
            await self.store.check_layout()
            # Registers this worker as busy.
            status = await self.store.status(self.worker_id, True, self.seeds_key)
        except PartitionLayoutError as exc:
            await self.redis.aclose()
            self._startup.fail(str(exc), spider)
            return
        except RedisError as exc:
            self.stats.inc_value(f"frontier/redis_error/{type(exc).__name__}")
            await self.redis.aclose()
            advice = ("; check the user and password in REDIS_URL"
                      if isinstance(exc, (AuthenticationError, NoPermissionError)) else "")
            self._startup.fail(f"cannot use Redis at REDIS_URL={safe_url(self.config.redis.url)}: {exc}{advice}",
                               spider)
            return
        self._cluster.apply(status)
        self._opened = True
        self._loop = asyncio.get_running_loop()
        self._tasks = Tasks(self._loop, self.stats, self._give_up)
        # The heartbeat (which takes seeds and pops) starts once every component
        # has opened: a worker whose pipelines refuse to start consumes nothing.
        self.crawler.signals.connect(self._start_heartbeat, signal=signals.spider_opened)
        logger.info(
            "Frontier open: worker %(worker)s, keys %(prefix)s:*%(parts)s, website key %(mode)s, "
            "prefetch %(prefetch)d, flush delay %(delay).3fs, idle close %(close)ss, lease %(lease)s; "
            "%(sites)d websites queued",
            {"worker": self.worker_id, "prefix": prefix, "mode": self.config.website_mode,
             "parts": f" in {self.config.partitions} partitions ({', '.join(p.prefix for p in self.store.partitions)})"
             if self.config.partitions > 1 else "",
             "prefetch": self.config.prefetch, "delay": self.config.flush_delay,
             "lease": f"{self.config.lease:g}s" if self.config.lease else "off",
             "close": self.config.idle_close or "never", "sites": self._cluster.sites_with_work},
            extra={"spider": spider},
        )

    def _start_heartbeat(self) -> None:
        if self._tasks is not None and self._heartbeat is None and not self._closing:
            self._heartbeat = self._tasks.start_loop("heartbeat", lambda: self._cluster.heartbeat(self))

    def close(self, reason: str) -> Deferred[None]:
        return deferred_from_coro(self._close(reason))

    async def _close(self, reason: str) -> None:
        """Return what this worker holds to Redis, within FRONTIER_CLOSE_TIMEOUT (a silent Redis cannot hold us)."""
        if not self._opened:
            return
        self._closing = True
        try:
            async with asyncio.timeout(self.config.close_timeout):
                await self._close_parts()
        except TimeoutError:
            self.stats.inc_value("frontier/close_timeout")
            logger.error("Frontier closing (%(reason)s): Redis did not answer within FRONTIER_CLOSE_TIMEOUT "
                         "(%(t).1fs)", {"reason": reason, "t": self.config.close_timeout},
                         extra={"spider": self.spider})
        lost = len(self._outbox) + len(self._prefetch)
        if lost:
            logger.error("Frontier closing (%(reason)s): %(n)d requests could not be stored in Redis%(fate)s",
                         {"reason": reason, "n": lost, "fate": "; they or the requests that produced them come "
                          "back after FRONTIER_LEASE_SECONDS" if self.config.lease else " and are lost"},
                         extra={"spider": self.spider})
            self.stats.inc_value("frontier/lost_on_close", lost)
        if self.store is not None:
            self.stats.set_value("frontier/redis_calls", self.store.calls)
        if len(self._delivery.failed):
            self.stats.inc_value("frontier/failed_unrecorded", len(self._delivery.failed))
        if self.redis is not None:
            # Closing the connection pool does not wait for Redis.
            await self.redis.aclose()

    async def _close_parts(self) -> None:
        assert self._tasks is not None
        delivery = self._delivery
        writers = (self._outbox.task, delivery.failed.task)
        await stop_tasks(self._heartbeat, self._refill, [t for t in self._tasks.running if t not in writers])
        # Prefetched requests go back to Redis (without the dupefilter).
        self._hand_back(self._prefetch.drain(), "frontier/returned_on_close")
        returned = await hand_back(self._outbox, delivery.failed, delivery.release)
        if returned:
            self.stats.inc_value("frontier/returned_unanswered", returned)

    def _give_up(self, reason: str) -> None:
        engine = self.crawler.engine
        self.spawn(engine.close_spider_async(reason=reason))

    # -- Scrapy's scheduler interface ----------------------------------

    def __len__(self) -> int:
        """Requests prefetched from Redis and waiting in this worker (Scrapy's scheduler interface)."""
        return len(self._prefetch)

    def has_pending_requests(self) -> bool:
        return bool(len(self._prefetch) or self._outbox.busy or self._refill.task or self._cluster.sites_with_work)

    def enqueue_request(self, request: Request) -> bool:
        entry = self._intake.entry(request)
        if entry is None:
            return False
        self._outbox.append(entry)
        if entry.mode == MODE_REQUEUE:
            self.stats.inc_value("frontier/requeued")
            if entry.not_before > self._server_now():
                self._hold_website(entry.website, entry.not_before)
        self._outbox.schedule()
        return True

    def next_request(self) -> Request | None:
        if not self._delivery.may_hand_out():
            return None  # the engine asks again when one of its requests is done
        item = self._take()
        if len(self._prefetch) * 2 <= self.config.prefetch:
            self._refill.want()
        if item is None:
            if self._refill.task is not None and not len(self._prefetch):
                # The engine asked while the buffer was empty and a pop was on its way:
                # a sign FRONTIER_PREFETCH is too small for this crawl's speed.
                self.stats.inc_value("frontier/prefetch_empty")
            return None
        self._delivery.handed_out(item)
        self.stats.inc_value("scheduler/dequeued/redis")
        return item.request

    # -- API for other components ----------------------------------------

    async def mark_not_before(self, website: str, until: float) -> float:
        """No worker serves ``website`` before ``until`` (Unix time, Redis clock); returns the mark in force."""
        assert self.store is not None
        until = self._intake.cap_not_before(website, until)
        self._hold_website(website, until)
        mark = float(await self._health.call(self.store.mark_not_before(website, until)))
        self._hold_website(website, mark)
        self.stats.inc_value("frontier/not_before_marked")
        return mark

    def cluster_idle_seconds(self) -> float:
        """How long the whole cluster has had nothing queued, no seeds and no busy worker (0: busy now)."""
        return self._cluster.idle_seconds(self.locally_busy())

    async def settled(self) -> None:
        """Wait until no push and no pop is under way (everything enqueued so far is in Redis);
        returns at once while Redis is away."""
        while not self._health.down:
            if self._outbox.task is not None:
                await asyncio.gather(self._outbox.task, return_exceptions=True)
            elif self._refill.task is not None:
                await asyncio.gather(self._refill.task, return_exceptions=True)
            elif self._outbox.entries:
                self._outbox.schedule()
                await asyncio.sleep(0.001)  # the flush timer
            else:
                return

    def wants_seeds(self) -> bool:
        """Whether seeds should be read now (not closing, not too many requests waiting to be stored)."""
        return not self._closing and len(self._outbox) < _SEED_BACKLOG

    def record_failure(self, request: Request, reason: str) -> None:
        """``request`` finally failed: it goes to the spider's failed list (crawler.frontier.failures)."""
        self._delivery.record_failure(request, reason, self._intake.describe)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the scheduler waits for when it closes (before its last flush)."""
        assert self._tasks is not None, "spawn needs an open scheduler"
        return self._tasks.start("background", coro)

    async def redis_call(self, awaitable: Awaitable[T]) -> T:
        """Await a call on :attr:`store`: failures counted and logged as the frontier's own."""
        return await self._health.call(awaitable)

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
        return self._prefetch.held(website, self._server_now())

    def _hold_website(self, website: str, until: float) -> None:
        self._requeue_held(website, self._prefetch.hold(website, until))

    def _requeue_held(self, website: str, items: list[Buffered]) -> None:
        """Send a held website's prefetched requests back to Redis, so no worker keeps them."""
        self._hand_back([(website, item) for item in items], "frontier/returned_held")
        self._outbox.schedule()

    def _hand_back(self, items: list[tuple[str, Buffered]], stat: str) -> None:
        for website, item in items:
            self._outbox.append(PushEntry(website, item.fingerprint, MODE_REQUEUE, item.score,
                                          self._prefetch.not_before(website), item.payload))
            self._delivery.leases.done(item.lease)
        if items:
            self.stats.inc_value(stat, len(items))

    # -- enqueue -------------------------------------------------------

    async def _push_batch(self, batch: list[PushEntry]) -> tuple[list[bool], int]:
        assert self.store is not None
        return await self._health.call(self.store.push(batch, self.worker_id))

    def _pushed(self, sites_with_work: int, stored: int) -> None:
        """The outbox stored a batch: new work is worth popping now."""
        self._cluster.pushed(sites_with_work)
        if stored:
            self._refill.pop_now()

    # -- popping -----------------------------------------------------------

    def _popped(self, result: PopResult) -> None:
        self._cluster.popped(result)
        added = False
        for website, lease, member in result.items:
            item = self._delivery.decode(website, lease, member)
            if item is not None:
                self._prefetch.add(website, item)
                added = True
        if added or result.reclaimed:
            self._wake_engine()

    # -- the heartbeat's host (crawler.frontier.cluster_view.HeartbeatHost) ----

    def locally_busy(self) -> bool:
        self._delivery.in_flight.sweep()
        return bool(len(self._prefetch) or self._outbox.busy or len(self._delivery.in_flight))

    def renew_due(self) -> bool:
        return self._delivery.leases.renew_due()

    async def cluster_status(self, busy: bool, with_seeds: bool) -> Status:
        return await self._delivery.status(busy, self.seeds_key if with_seeds else None)

    def seeds_waiting(self, count: int) -> None:
        hook = getattr(self.spider, "frontier_seeds_waiting", None)
        if hook is not None and self.wants_seeds():
            hook(count)

    def work_ready(self) -> None:
        self._refill.pop_now()

    def idle_tick(self) -> None:
        self._wake_engine()  # lets FrontierSpider.spider_idle look at the cluster view

    # -- helpers -------------------------------------------------------

    def _start_task(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tasks is not None, "the frontier's tasks start after open"
        return self._tasks.start(name, coro)

    def _server_now(self) -> float:
        return self._cluster.server_now()

    def _wake_engine(self) -> None:
        # Prefetched requests or a changed cluster view should not wait for the engine's 5 s heartbeat.
        wake_engine(self.crawler)
