"""Cluster-wide per-website byte budgets (a downloader middleware).

All workers together download at most *b* bytes from one website in any
sliding window of ``BYTE_BUDGET_WINDOW_SECONDS`` (60 s), plus the one download
that holds the website's overdraft token (docs/byte-budget.md, "The
contract"). Downloads are metered: past its grant a download draws more
(``lua/draw.lua``) and is stopped when it may not. Before each download
the middleware reserves bytes in Redis (``lua/reserve.lua``: a reservation log
timed by the Redis server's clock); after it, the reservation is settled to the
bytes that really arrived (``lua/settle.lua``): status line, headers and body
before decompression, what Scrapy's ``downloader/response_bytes`` counts.
Request bytes are not counted.

A request that may not be downloaded yet goes back to the frontier with
``frontier_requeue=True`` and ``frontier_not_before=<Unix time>``, which the
frontier stores again without its dupefilter; the middleware never sleeps.

Settings (docs/byte-budget.md): ``BYTE_BUDGET_ENABLED``, ``BYTE_BUDGET_DEFAULT``,
``BYTE_BUDGET_PER_WEBSITE``, ``BYTE_BUDGET_WINDOW_SECONDS``, ``BYTE_BUDGET_STRICT``,
``BYTE_BUDGET_DEFAULT_ESTIMATE``, ``BYTE_BUDGET_ESTIMATE_QUANTILE``, ``BYTE_BUDGET_STOP_SLACK``,
``BYTE_BUDGET_DRAW_BYTES``, ``BYTE_BUDGET_REFRESH_SECONDS``, ``BYTE_BUDGET_RETRY_SECONDS``,
``BYTE_BUDGET_PARK_MAX_SECONDS``, ``BYTE_BUDGET_LEASE_DOWNLOADS``, ``BYTE_BUDGET_LEASE_SECONDS``,
``BYTE_BUDGET_FALLBACK_WORKERS``, ``BYTE_BUDGET_KEY_PREFIX``, ``BYTE_BUDGET_REDIS_URL``;
``WEBSITE_KEY`` picks the website.

Run-time overrides: ``python -m middlewares.byte_budget set shop-a.test 200000``
(see :mod:`middlewares.byte_budget.cli`).

This module is the middleware: life cycle, requests, responses and the byte
counting signals. Its parts: :mod:`~middlewares.byte_budget.config` (the
settings), :mod:`~middlewares.byte_budget.budgets` (each website's budget),
:mod:`~middlewares.byte_budget.leases` (this worker's grants, leases and
turns), :mod:`~middlewares.byte_budget.store` (Redis keys and scripts, and
the local budget while Redis is down), :mod:`~middlewares.byte_budget.wire`
(what a download cost on the wire).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from scrapy import signals
from scrapy.downloadermiddlewares.stats import get_header_size, get_status_size
from scrapy.exceptions import NotConfigured, StopDownload
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.httpobj import urlparse_cached

from crawler.stopping import stop_task
from crawler.website import website_key
from middlewares.byte_budget.budgets import Budgets
from middlewares.byte_budget.config import ByteBudgetConfig
from middlewares.byte_budget.leases import Grant, Leases
from middlewares.byte_budget.store import BudgetStore
from middlewares.byte_budget.wire import arrived_members, chunked_overhead

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)


def _is_robots(request: Request) -> bool:
    return request.url.endswith("/robots.txt")


def _waits_in_place(request: Request) -> bool:
    return bool(request.meta.get("dont_obey_robotstxt")) and _is_robots(request)


class ByteBudgetMiddleware:
    """Reserve bytes in Redis before each download, settle them after it."""

    def __init__(self, crawler: Crawler, config: ByteBudgetConfig) -> None:
        if not is_asyncio_available():
            raise RuntimeError("ByteBudgetMiddleware needs the asyncio reactor (TWISTED_REACTOR)")
        assert crawler.stats is not None
        self.crawler: Crawler = crawler
        self.config: ByteBudgetConfig = config
        self.stats = crawler.stats
        self._store = BudgetStore(crawler, config)  # Redis, or this worker's memory while it is down
        self._leases = Leases(crawler, config, self._store)
        self._budgets = Budgets(crawler, config, self._store)
        self._refresher: asyncio.Task[None] | None = None
        self._grants: dict[Request, Grant] = {}
        self._websites: dict[str, str] = {}  # netloc -> website key (website_key parses the URL)
        # Per-request counters, added to the crawl's stats every
        # BYTE_BUDGET_REFRESH_SECONDS and at close (a stats call costs more
        # than the rest of a non-binding request's bookkeeping).
        self._counts: dict[str, int] = {}
        self._status_sizes: dict[int, int] = {}  # status -> len(b"HTTP/1.1 200 OK\r\n")
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)
        # Sent for every response and every chunk of every body: held strongly
        # (no weak-reference call per dispatch; disconnected at close), and
        # the handlers take **kwargs, which spares pydispatch's argument filter.
        crawler.signals.connect(self.headers_received, signal=signals.headers_received, weak=False)
        crawler.signals.connect(self.bytes_received, signal=signals.bytes_received, weak=False)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("BYTE_BUDGET_ENABLED"):
            raise NotConfigured
        return cls(crawler, ByteBudgetConfig.from_settings(crawler.settings))

    # -- life cycle ---------------------------------------------------------

    async def spider_opened(self) -> None:
        self._store.open()
        await self.refresh_overrides()
        self._refresher = asyncio.create_task(self._refresh_loop())
        c = self.config
        logger.info(
            "Byte budget: default %(default)s bytes per %(window)gs, per website %(per)s, strict=%(strict)s, "
            "Redis unavailable: %(fallback)s",
            {"default": c.default if c.default is not None else "unlimited", "window": c.window,
             "per": c.per_website, "strict": c.strict,
             "fallback": f"local budget b/{c.fallback_workers}" if c.fallback_workers else "fail closed"},
            extra={"spider": self.crawler.spider},
        )

    async def spider_closed(self) -> None:
        self._leases.stop_renewing()
        self._flush_counts()
        for handler, signal in ((self.headers_received, signals.headers_received),
                                (self.bytes_received, signals.bytes_received)):
            self.crawler.signals.disconnect(handler, signal=signal, weak=False)
        # Lease renewals in flight install their lease before it is closed below.
        await self._leases.drain()
        await stop_task(self._refresher)
        # Downloads cut short by the shutdown count what they received.
        for request, grant in list(self._grants.items()):
            del self._grants[request]
            if grant.drawing is not None:
                await grant.drawing
            size = grant.head + grant.body + (chunked_overhead(grant.body) if grant.chunked else 0)
            await self._settle_grant(grant, size, learn=-1)
        self._leases.close_all()
        await self._leases.drain()
        await self._store.flush_unsettled()
        self._flush_counts()
        await self._store.aclose()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh)
            self._flush_counts()
            await self.refresh_overrides()

    def _count(self, key: str, n: int = 1) -> None:
        counts = self._counts
        counts[key] = counts.get(key, 0) + n

    def _flush_counts(self) -> None:
        counts, self._counts = self._counts, {}
        for key, n in counts.items():
            self.stats.inc_value(key, n)

    def _status_size(self, status: int) -> int:
        size = self._status_sizes.get(status)
        if size is None:
            size = self._status_sizes[status] = get_status_size(status)
        return size

    async def refresh_overrides(self) -> None:
        """Read the run-time overrides; send the settles kept while Redis was down."""
        await self._budgets.refresh()
        await self._store.flush_unsettled()

    def budget_for(self, website: str) -> int | None:
        """Bytes per window for ``website``: run-time override, setting, default."""
        return self._budgets.budget_for(website)

    # -- requests -----------------------------------------------------------

    async def process_request(self, request: Request) -> Request | None:
        if request.meta.get("byte_budget_dont_count"):
            return None
        netloc = urlparse_cached(request).netloc
        website = self._websites.get(netloc)
        if website is None:
            website = self._websites[netloc] = website_key(request.url, self.config.website_mode)
        budget = self.budget_for(website)
        if budget is None:
            self._count("byte_budget/unlimited")
            return None
        known = int(request.meta.get("byte_budget_size", 0))
        overdraft = bool(request.meta.get("byte_budget_overdraft"))
        grant = await self._leases.grant(request, website, budget, known, overdraft)
        while not isinstance(grant, Grant) and _waits_in_place(request):
            # Fetched with engine.download_async() (robots.txt), not through the
            # frontier: a returned request would be retried at once, in a loop.
            # Every request of the website waits for this one anyway.
            await asyncio.sleep(min(max(grant.not_before - grant.now, self.config.retry), self.config.park_max))
            budget = self.budget_for(website)
            if budget is None:
                return None
            grant = await self._leases.reserve(request, website, budget, known, overdraft or known > budget)
        if not isinstance(grant, Grant) and grant.not_before - grant.now <= self._leases.turn_horizon:
            turn = await self._leases.wait_for_turn(request, website, known, overdraft, self.budget_for,
                                                    grant)
            if turn is None:
                return None  # no budget any more
            grant = turn
        if isinstance(grant, Grant):
            self._grants[request] = grant
            self._count("byte_budget/granted")
            self._count("byte_budget/bytes_reserved", grant.reserved)
            return None
        self.stats.inc_value("byte_budget/denied")
        # Parked for at most BYTE_BUDGET_PARK_MAX_SECONDS, so a run-time budget
        # change reaches parked websites within REFRESH + PARK_MAX seconds.
        return self._requeue(request, min(grant.not_before, grant.now + self.config.park_max))

    def _requeue(self, request: Request, not_before: float | None) -> Request:
        meta = {**request.meta, "frontier_requeue": True}
        if not_before is not None:
            meta["frontier_not_before"] = not_before
        meta["byte_budget_denials"] = int(meta.get("byte_budget_denials", 0)) + 1
        # No dont_filter: RedirectMiddleware would copy it to the redirect's
        # target, which would then be fetched again if it is also linked.
        return request.replace(meta=meta)

    # -- byte counting (synchronous signals: local state only) ----------------

    def headers_received(self, headers: Any, body_length: int, request: Request, **kwargs: Any) -> None:
        grant = self._grants.get(request)
        if grant is None:
            return
        # The status line is not known yet: count "HTTP/1.1 200 OK\r\n" now,
        # the exact one from the response in process_response.
        grant.head = get_header_size(headers) + self._status_size(200) + 4
        grant.chunked = not isinstance(body_length, int)  # Twisted's UNKNOWN_LENGTH is a str
        if isinstance(body_length, int) and body_length >= 0:
            grant.expected = grant.head + body_length
        if grant.lease is None:
            # Settled on its own: its bytes are marked as they arrive (see bytes_received).
            grant.next_mark = grant.head + self.config.draw_bytes
        self._meter(grant)

    def bytes_received(self, data: bytes, request: Request, **kwargs: Any) -> None:
        grant = self._grants.get(request)
        if grant is not None:
            grant.body += len(data)
            received = grant.head + grant.body
            if received >= grant.next_mark:
                # Its bytes count from when they arrived, not from its end (wire.arrived_members).
                grant.marks.append((received, time.monotonic()))
                grant.next_mark = received + self.config.draw_bytes
            if received > grant.reserved - self._ahead(grant) or grant.denied:
                self._meter(grant)

    def _ahead(self, grant: Grant) -> int:
        """How far ahead of the bytes a download draws: from its first draw on, half an increment."""
        return self.config.draw_bytes // 2 if grant.draws else 0

    def _meter(self, grant: Grant) -> None:
        """Keep the bytes of a download covered: draw more, or stop it when it may not have more."""
        # The token's holder draws too (never denied), so what it took is
        # counted as it arrives: the token is free again as soon as it is done.
        if grant.local or not self.config.strict:
            return
        received = grant.head + grant.body
        if grant.denied:
            # Stop it, unless what is left is already on the wire (the server
            # has written it to its socket; stopping would throw it away).
            if grant.expected < 0 or grant.expected - received > self.config.stop_slack:
                grant.stopped = True
                raise StopDownload(fail=False)
            return
        if grant.drawing is not None:
            return
        if grant.expected >= 0:
            amount = grant.expected - grant.reserved  # Content-Length: all of it at once
        elif received > grant.reserved - self._ahead(grant):
            amount = received - grant.reserved + self.config.draw_bytes
        else:
            return
        if amount <= 0 or self._leases.take_spare(grant, amount):
            return
        grant.drawing = asyncio.get_running_loop().create_task(self._draw(grant, amount))

    async def idle(self) -> None:
        """Wait for the lease renewals and settles running in the background (for tests and tools)."""
        await self._leases.drain()

    async def metered(self, request: Request) -> None:
        """Wait for the draw in flight of ``request``'s download, if any (for tests and tools)."""
        grant = self._grants.get(request)
        if grant is not None and grant.drawing is not None:
            await grant.drawing

    async def _draw(self, grant: Grant, amount: int) -> None:
        if not grant.holder:
            grant.holder = self._leases.new_holder()
        try:
            drawn = await self._store.draw(grant.website, grant.budget, amount, grant.holder,
                                           grant.reserved + amount)
        except RedisError as exc:
            self._store.redis_error(exc)
            drawn = None  # fail closed, as a reservation would
        grant.drawing = None
        if drawn is None:
            grant.denied = True
            self._count("byte_budget/draws_denied")
            return
        self._count("byte_budget/draws")
        self._count("byte_budget/bytes_drawn", amount)
        grant.draws.append(drawn.member)
        grant.drawn_at.append(drawn.now)
        grant.reserved += amount
        if drawn.overdraft and not grant.overdraft:
            grant.overdraft = True
            self.stats.inc_value("byte_budget/overdrafts")

    # -- responses ----------------------------------------------------------

    async def process_response(self, request: Request, response: Response) -> Request | Response:
        grant = self._grants.pop(request, None)
        if grant is None:
            return response
        if grant.drawing is not None:
            await grant.drawing  # its member is settled with the download
        size = len(response.body) + get_header_size(response.headers) + self._status_size(response.status) + 4
        if grant.chunked:
            size += chunked_overhead(len(response.body))
        if grant.stopped and "download_stopped" in response.flags:
            # Its draw was denied. The server may have pushed more than we read
            # (socket buffers, ours and its own): count up to
            # BYTE_BUDGET_STOP_SLACK of it, never more than the page.
            counted = size + self.config.stop_slack
            if grant.expected >= 0:
                counted = min(counted, grant.expected)
            self._count("byte_budget/stopped")
            self._count("byte_budget/bytes_stopped", counted)
            logger.debug("Byte budget: %(response)s stopped at %(size)d bytes, counted %(counted)d",
                         {"response": response, "size": size, "counted": counted},
                         extra={"spider": self.crawler.spider})
            await self._settle_grant(grant, counted, learn=-1)
            meta = dict(request.meta)
            if grant.expected >= 0:
                meta["byte_budget_size"] = grant.expected  # reserved in full: never stopped again
            else:
                # Size unknown (chunked): retried as the website's one overdraft,
                # which is never stopped, reserving at least what it cost.
                meta["byte_budget_size"] = counted
                meta["byte_budget_overdraft"] = True
            # Not parked: its website is not out of budget, this request only
            # needs a larger reservation (if that is denied, it is parked then).
            return self._requeue(request.replace(meta=meta), None)
        # No per-response log line: with Scrapy's logging set-up a DEBUG record
        # is built even at LOG_LEVEL=INFO, ~1% of a worker's CPU (py-spy).
        # byte_budget/bytes_settled has the total.
        await self._settle_grant(grant, size, learn=-1 if _is_robots(request) else size)
        return response

    async def process_exception(self, request: Request, exception: Exception) -> None:
        grant = self._grants.pop(request, None)
        if grant is not None:
            if grant.drawing is not None:
                await grant.drawing
            logger.debug("Byte budget: %(request)s failed (%(exc)r) after %(size)d bytes",
                         {"request": request, "exc": exception, "size": grant.head + grant.body},
                         extra={"spider": self.crawler.spider})
            size = grant.head + grant.body + (chunked_overhead(grant.body) if grant.chunked else 0)
            await self._settle_grant(grant, size, learn=-1)

    async def _settle_grant(self, grant: Grant, size: int, learn: int) -> float | None:
        """Settle in Redis (or locally); the server time, when Redis answered."""
        try:
            return await self._settle(grant, size, learn)
        finally:
            self._leases.turn_done(grant.website)

    async def _settle(self, grant: Grant, size: int, learn: int) -> float | None:
        self._count("byte_budget/settled")
        self._count("byte_budget/bytes_settled", size)
        if grant.local:
            self._store.settle_locally(grant.website, grant.reserved, size)
            return None
        if grant.lease is not None:
            if not grant.draws and not grant.overdraft:
                await self._leases.release(grant.lease, size, learn)
                return None
            # Its share of the lease goes back with the lease; what it took
            # beyond that is settled now, with its draws (and the token).
            await self._leases.release(grant.lease, min(size, grant.base), learn)
            return await self._store.settle(grant.website, arrived_members(grant, reservation=False),
                                            max(size - grant.base, 0), [-1], grant.holder)
        if grant.marks:
            self._count("byte_budget/arrival_marks", len(grant.marks))
        return await self._store.settle(grant.website,
                                        arrived_members(grant, reservation=True, redis_time=self._store.redis_time_by),
                                        size, [learn], grant.holder)
