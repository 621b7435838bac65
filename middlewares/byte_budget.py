"""Cluster-wide per-website byte budgets (a downloader middleware).

All workers together download at most *b* bytes from one website in any
sliding window of ``BYTE_BUDGET_WINDOW_SECONDS`` (60 s). Before each download
the middleware reserves bytes in Redis (``lua/reserve.lua``: a reservation log
timed by the Redis server's clock); after it, the reservation is settled to the
bytes that really arrived (``lua/settle.lua``): status line, headers and body
before decompression, what Scrapy's ``downloader/response_bytes`` counts.
Request bytes are not counted.

A request that may not be downloaded yet goes back to the frontier with
``frontier_requeue=True`` and ``frontier_not_before=<Unix time>`` (and
``dont_filter=True``, so no dupefilter drops it); the middleware never sleeps.

Settings (README, "Byte budget"): ``BYTE_BUDGET_ENABLED``, ``BYTE_BUDGET_DEFAULT``,
``BYTE_BUDGET_PER_WEBSITE``, ``BYTE_BUDGET_WINDOW_SECONDS``, ``BYTE_BUDGET_STRICT``,
``BYTE_BUDGET_DEFAULT_ESTIMATE``, ``BYTE_BUDGET_ESTIMATE_MARGIN``, ``BYTE_BUDGET_STOP_SLACK``,
``BYTE_BUDGET_REFRESH_SECONDS``, ``BYTE_BUDGET_RETRY_SECONDS``, ``BYTE_BUDGET_PARK_MAX_SECONDS``,
``BYTE_BUDGET_LEASE_DOWNLOADS``, ``BYTE_BUDGET_LEASE_SECONDS``, ``BYTE_BUDGET_FALLBACK_WORKERS``,
``BYTE_BUDGET_KEY_PREFIX``, ``BYTE_BUDGET_REDIS_URL``; ``WEBSITE_KEY`` picks the website.

Run-time overrides: ``python -m middlewares.byte_budget set shop-a.test 200000``
(see :mod:`middlewares.byte_budget_cli`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError
from scrapy import signals
from scrapy.downloadermiddlewares.stats import get_header_size, get_status_size
from scrapy.exceptions import NotConfigured, StopDownload
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.httpobj import urlparse_cached

from crawler.website import website_key
from middlewares.byte_budget_config import UNLIMITED, Config, parse_budget

if TYPE_CHECKING:
    from typing import Self

    from redis.commands.core import AsyncScript
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

# Importers of these names (the command line, tests, bench) predate the split
# into byte_budget_*.py modules: they stay importable from here.
__all__ = ["UNLIMITED", "ByteBudgetMiddleware", "Config", "load_script", "overrides_key", "parse_budget", "website_keys"]

logger = logging.getLogger(__name__)


def overrides_key(prefix: str) -> str:
    """Hash of run-time overrides: website -> bytes per window or ``"unlimited"``."""
    return f"{prefix}:bb:overrides"


def website_keys(prefix: str, website: str) -> list[str]:
    """KEYS of both scripts; the hash tag puts them in one cluster slot."""
    base = f"{prefix}:bb:{{{website}}}"
    return [f"{base}:log", f"{base}:inflight", f"{base}:state"]


def load_script(client: aioredis.Redis | Any, name: str) -> AsyncScript:
    source = files("middlewares").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return client.register_script(source)


@dataclass(slots=True, eq=False)
class _Lease:
    """Bytes reserved in Redis once for several downloads of this worker.

    With the budget far from binding, one reservation and one settle serve up
    to ``BYTE_BUDGET_LEASE_DOWNLOADS`` downloads (Redis round trips were most
    of the middleware's cost). For the sliding-window proof a lease is one
    reservation: all its downloads happen between its grant and its settle,
    and each stays within its share of it.

    A lease reserves a quarter more estimates than it serves downloads: the
    spare room absorbs pages whose ``Content-Length`` is above the estimate,
    which strict mode would otherwise stop and fetch again. The next lease is
    reserved in the background once three quarters of this one are handed out
    (or of its time has passed), so downloads do not wait for Redis.
    """

    website: str
    member: str
    amount: int  # reserved in Redis
    estimate: int  # bytes per download, from Redis at grant time
    committed: int = 0  # handed out to downloads
    counted: int = 0  # bytes of finished downloads
    inflight: int = 0
    open: bool = True
    downloads: int = 0  # handed out so far (at most BYTE_BUDGET_LEASE_DOWNLOADS)
    renew_at: float = 0.0  # loop time after which the next lease is reserved in the background
    renewing: bool = False
    learn: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Grant:
    """A granted download in progress (local state read by the byte signals)."""

    website: str
    member: str  # "" for a grant from the local fallback budget
    reserved: int
    head: int = 0
    body: int = 0
    sized: bool = False  # reserved at a size learned from an earlier stop: never stop again
    expected: int = -1  # total size announced by Content-Length, when known
    chunked: bool = False  # no Content-Length: HTTP/1.1 chunked (or read to close)
    stopped: bool = False
    lease: _Lease | None = None


@dataclass(slots=True)
class _LocalBudget:
    """The same reservation log, in memory, for one worker while Redis is down."""

    entries: deque[tuple[float, int]] = field(default_factory=deque)  # (end time, bytes), settled
    inflight: int = 0

    def reserve(self, budget: int, window: float, n: int, retry: float) -> tuple[bool, float]:
        now = time.time()
        while self.entries and self.entries[0][0] <= now - window:
            self.entries.popleft()
        used = self.inflight + sum(size for _, size in self.entries)
        n = max(min(n, budget), 1)
        if budget > 0 and used + n <= budget:
            self.inflight += n
            return True, now
        freed, need = 0, used + n - budget
        for end, size in self.entries:
            freed += size
            if freed >= need:
                return False, end + window
        return False, now + (window if budget <= 0 else retry)

    def settle(self, reserved: int, size: int) -> None:
        self.inflight = max(self.inflight - reserved, 0)
        if size > 0:
            self.entries.append((time.time(), size))


def _chunked_overhead(body: int) -> int:
    """Wire bytes of a chunked body that Scrapy's response does not show.

    Twisted drops the ``Transfer-Encoding: chunked`` header and the chunk
    framing. Counted: that header line and the framing of one chunk plus the
    last one (``%x\r\n``, ``\r\n``, ``0\r\n\r\n``): exact for a body sent in
    one chunk, a few bytes short per further chunk (under 0.3% for 4 KB chunks).
    """
    return len(b"Transfer-Encoding: chunked\r\n") + len(b"%x\r\n\r\n" % body) + len(b"0\r\n\r\n")


def _waits_in_place(request: Request) -> bool:
    return bool(request.meta.get("dont_obey_robotstxt")) and request.url.endswith("/robots.txt")


class ByteBudgetMiddleware:
    """Reserve bytes in Redis before each download, settle them after it."""

    def __init__(self, crawler: Crawler, config: Config) -> None:
        if not is_asyncio_available():
            raise RuntimeError("ByteBudgetMiddleware needs the asyncio reactor (TWISTED_REACTOR)")
        assert crawler.stats is not None
        self.crawler: Crawler = crawler
        self.config: Config = config
        self.stats = crawler.stats
        self.redis: aioredis.Redis | None = None
        self._reserve: AsyncScript | None = None
        self._settle: AsyncScript | None = None
        self._overrides: dict[str, int | None] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._grants: dict[Request, _Grant] = {}
        self._unsettled: list[tuple[str, str, int, list[int]]] = []  # settles that failed: retried later
        self._redis_down_since: float | None = None
        self._backoff = config.retry
        self._local: dict[str, _LocalBudget] = {}
        self._leases: dict[str, _Lease] = {}  # the open lease per website
        self._pending: dict[str, asyncio.Future[None]] = {}  # reservation in flight per website
        self._websites: dict[str, str] = {}  # netloc -> website key (website_key parses the URL)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        # Per-request counters, added to the crawl's stats every
        # BYTE_BUDGET_REFRESH_SECONDS and at close (a stats call costs more
        # than the rest of a non-binding request's bookkeeping).
        self._counts: dict[str, int] = {}
        self._status_sizes: dict[int, int] = {}  # status -> len(b"HTTP/1.1 200 OK\r\n")
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(self.headers_received, signal=signals.headers_received)
        crawler.signals.connect(self.bytes_received, signal=signals.bytes_received)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("BYTE_BUDGET_ENABLED"):
            raise NotConfigured
        return cls(crawler, Config.from_settings(crawler.settings))

    # -- life cycle ---------------------------------------------------------

    async def spider_opened(self) -> None:
        self.redis = aioredis.Redis.from_url(self.config.redis_url)
        self._reserve = load_script(self.redis, "reserve")
        self._settle = load_script(self.redis, "settle")
        await self._refresh_overrides()
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
        self._closing = True
        self._flush_counts()
        if self._tasks:  # lease renewals in flight install their lease before it is closed below
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        # Downloads cut short by the shutdown count what they received.
        for request, grant in list(self._grants.items()):
            del self._grants[request]
            size = grant.head + grant.body + (_chunked_overhead(grant.body) if grant.chunked else 0)
            await self._settle_grant(grant, size, learn=-1)
        for lease in list(self._leases.values()):
            self._close_lease(lease)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush_unsettled()
        self._flush_counts()
        if self.redis is not None:
            await self.redis.aclose()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh)
            self._flush_counts()
            await self._refresh_overrides()

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

    async def _refresh_overrides(self) -> None:
        """Run-time overrides from Redis (``python -m middlewares.byte_budget set ...``)."""
        assert self.redis is not None
        try:
            raw = await self.redis.hgetall(overrides_key(self.config.prefix))
        except RedisError as exc:
            self._redis_error(exc)
            return
        overrides = {}
        for site, value in raw.items():
            name = site.decode() if isinstance(site, bytes) else site
            try:
                text = value.decode() if isinstance(value, bytes) else value
                overrides[name] = parse_budget(f"override for {name}", text)
            except ValueError:
                logger.error("Ignoring invalid byte budget override %(site)s=%(value)r",
                             {"site": name, "value": value}, extra={"spider": self.crawler.spider})
        if overrides != self._overrides:
            logger.info("Byte budget run-time overrides: %(o)s", {"o": overrides},
                        extra={"spider": self.crawler.spider})
        self._overrides = overrides
        await self._flush_unsettled()

    def budget_for(self, website: str) -> int | None:
        """Bytes per window for ``website``: run-time override, setting, default."""
        if website in self._overrides:
            return self._overrides[website]
        if website in self.config.per_website:
            return self.config.per_website[website]
        return self.config.default

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
        grant: _Grant | tuple[float, float] | None = await self._grant_from_lease(website, budget, known)
        # One reservation in flight per website: with leases, the requests
        # that arrive meanwhile are served from the lease it brings.
        while grant is None and (pending := self._pending.get(website)) is not None:
            await asyncio.shield(pending)
            grant = await self._grant_from_lease(website, budget, known)
        if grant is None:
            grant = await self._reserve_single_flight(request, website, budget, known)
        while not isinstance(grant, _Grant) and _waits_in_place(request):
            # Fetched with engine.download_async() (robots.txt), not through the
            # frontier: a returned request would be retried at once, in a loop.
            # Every request of the website waits for this one anyway.
            await asyncio.sleep(min(max(grant[0] - grant[1], self.config.retry), self.config.park_max))
            budget = self.budget_for(website)
            if budget is None:
                return None
            grant = await self._try_reserve(request, website, budget, known)
        if isinstance(grant, _Grant):
            self._grants[request] = grant
            self._count("byte_budget/granted")
            self._count("byte_budget/bytes_reserved", grant.reserved)
            return None
        self.stats.inc_value("byte_budget/denied")
        # Parked for at most BYTE_BUDGET_PARK_MAX_SECONDS, so a run-time budget
        # change reaches parked websites within REFRESH + PARK_MAX seconds.
        not_before, now = grant
        return self._requeue(request, min(not_before, now + self.config.park_max))

    async def _reserve_single_flight(
        self, request: Request, website: str, budget: int, known: int
    ) -> _Grant | tuple[float, float]:
        if self.config.lease_downloads == 1:
            return await self._try_reserve(request, website, budget, known)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[website] = done
        try:
            return await self._try_reserve(request, website, budget, known)
        finally:
            if self._pending.get(website) is done:
                del self._pending[website]
            done.set_result(None)

    async def _try_reserve(
        self, request: Request | str, website: str, budget: int, known: int
    ) -> _Grant | tuple[float, float]:
        """A grant, or (not before, now): when to try again, by the Redis server's clock."""
        c = self.config
        assert self._reserve is not None
        try:
            result = await self._reserve(
                keys=website_keys(c.prefix, website),
                args=[budget, c.window, known, c.default_estimate, c.lease, c.retry, c.estimate_margin,
                      c.lease_downloads + c.lease_downloads // 4],
            )
        except RedisError as exc:
            self._redis_error(exc)
            return self._reserve_without_redis(website, budget, known)
        if self._redis_down_since is not None:
            logger.info("Byte budget: Redis is back", extra={"spider": self.crawler.spider})
            self._redis_down_since = None
            self._backoff = c.retry
        if int(result[0]) == 1:
            n, granted = int(result[3]), int(result[4])
            if granted <= n:
                return _Grant(website, result[1].decode(), n, sized=known > 0)
            loop = asyncio.get_running_loop()
            lease = _Lease(website, result[1].decode(), granted, n, committed=n, inflight=1, downloads=1,
                           renew_at=loop.time() + 0.75 * c.lease_seconds)
            old = self._leases.get(website)
            if old is not None:
                self._close_lease(old)
            self._leases[website] = lease
            loop.call_later(c.lease_seconds, self._close_lease, lease)
            self.stats.inc_value("byte_budget/leases")
            return _Grant(website, "", n, sized=known > 0, lease=lease)
        not_before = float(result[1])
        if int(result[4]):
            self.stats.inc_value("byte_budget/exhausted")
            logger.warning(
                "Byte budget of %(website)s exhausted: %(budget)d bytes per %(window)gs; "
                "its requests wait until %(nb).3f (in %(wait).1fs)",
                {"website": website, "budget": budget, "window": c.window, "nb": not_before,
                 "wait": not_before - float(result[2])},
                extra={"spider": self.crawler.spider},
            )
        logger.debug("Byte budget: %(request)s waits until %(nb).3f", {"request": request, "nb": not_before},
                     extra={"spider": self.crawler.spider})
        return not_before, float(result[2])

    async def _grant_from_lease(self, website: str, budget: int, known: int) -> _Grant | None:
        lease = self._leases.get(website)
        if lease is None:
            return None
        n = known or lease.estimate
        if lease.downloads >= self.config.lease_downloads or lease.committed + n > lease.amount:
            # Used up: settle it first when it is idle, so the next
            # reservation does not see its unused bytes as taken.
            if self._close_lease(lease, settle=False):
                await self._settle_lease(lease)
            return None
        lease.committed += n
        lease.inflight += 1
        lease.downloads += 1
        if (not lease.renewing and not self._closing and website not in self._pending
                and (4 * lease.downloads >= 3 * self.config.lease_downloads
                     or asyncio.get_running_loop().time() >= lease.renew_at)):
            lease.renewing = True
            self._renew_lease(website, budget)
        return _Grant(website, "", n, sized=known > 0, lease=lease)

    def _renew_lease(self, website: str, budget: int) -> None:
        """Reserve the next lease in the background; it replaces the open one when granted."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[website] = done  # process_request waits for it rather than reserving again

        async def renew() -> None:
            try:
                grant = await self._try_reserve("lease renewal", website, budget, 0)
            finally:
                if self._pending.get(website) is done:
                    del self._pending[website]
                done.set_result(None)
            if not isinstance(grant, _Grant):
                return  # denied: the next request reserves for itself
            if grant.lease is not None:
                # No download is using it yet: only its timer or the next one closes it.
                grant.lease.committed, grant.lease.inflight, grant.lease.downloads = 0, 0, 0
                return
            # Near the limit the script granted one download's bytes, which no download uses.
            if grant.member:
                try:
                    await self._settle_in_redis(website, grant.member, 0, [-1])
                except RedisError as exc:
                    self._redis_error(exc)
                    self._unsettled.append((website, grant.member, 0, [-1]))
            else:
                self._local.setdefault(website, _LocalBudget()).settle(grant.reserved, 0)

        task = asyncio.get_running_loop().create_task(renew())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close_lease(self, lease: _Lease, settle: bool = True) -> bool:
        """No more downloads from this lease; it is settled when its downloads are done.

        True if it is idle and ``settle`` is False: the caller settles it.
        """
        if not lease.open:
            return False
        lease.open = False
        if self._leases.get(lease.website) is lease:
            del self._leases[lease.website]
        if lease.inflight:
            return False
        if not settle:
            return True
        task = asyncio.get_running_loop().create_task(self._settle_lease(lease))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return False

    async def _settle_lease(self, lease: _Lease) -> None:
        try:
            await self._settle_in_redis(lease.website, lease.member, lease.counted, lease.learn)
        except RedisError as exc:
            self._redis_error(exc)
            self._unsettled.append((lease.website, lease.member, lease.counted, lease.learn))

    def _reserve_without_redis(self, website: str, budget: int, known: int) -> _Grant | tuple[float, float]:
        c = self.config
        now = time.time()
        if not c.fallback_workers:
            # Fail closed: no download without a grant; try again with backoff.
            self._backoff = min(self._backoff * 2, c.park_max)
            return now + self._backoff, now
        local = self._local.setdefault(website, _LocalBudget())
        n = known or c.default_estimate
        ok, when = local.reserve(budget // c.fallback_workers, c.window, n, c.retry)
        if ok:
            self.stats.inc_value("byte_budget/fallback_granted")
            return _Grant(website, "", max(min(n, budget // c.fallback_workers), 1), sized=known > 0)
        return when, now

    def _requeue(self, request: Request, not_before: float | None) -> Request:
        meta = {**request.meta, "frontier_requeue": True}
        if not_before is not None:
            meta["frontier_not_before"] = not_before
        meta["byte_budget_denials"] = int(meta.get("byte_budget_denials", 0)) + 1
        return request.replace(meta=meta, dont_filter=True)

    # -- byte counting (synchronous signals: local state only) ----------------

    def headers_received(self, headers: Any, body_length: int, request: Request, spider: Any) -> None:
        grant = self._grants.get(request)
        if grant is None:
            return
        # The status line is not known yet: count "HTTP/1.1 200 OK\r\n" now,
        # the exact one from the response in process_response.
        grant.head = get_header_size(headers) + self._status_size(200) + 4
        grant.chunked = not isinstance(body_length, int)  # Twisted's UNKNOWN_LENGTH is a str
        if isinstance(body_length, int) and body_length >= 0:
            grant.expected = grant.head + body_length
            if self.config.strict and not grant.sized and grant.expected > grant.reserved:
                lease = grant.lease
                if lease is not None and lease.amount - lease.committed >= grant.expected - grant.reserved:
                    # Room left in the lease: take the difference from it.
                    lease.committed += grant.expected - grant.reserved
                    grant.reserved = grant.expected
                    return
                grant.stopped = True
                raise StopDownload(fail=False)

    def bytes_received(self, data: bytes, request: Request, spider: Any) -> None:
        grant = self._grants.get(request)
        if grant is not None:
            grant.body += len(data)

    # -- responses ----------------------------------------------------------

    async def process_response(self, request: Request, response: Response) -> Request | Response:
        grant = self._grants.pop(request, None)
        if grant is None:
            return response
        size = len(response.body) + get_header_size(response.headers) + self._status_size(response.status) + 4
        if grant.chunked:
            size += _chunked_overhead(len(response.body))
        if grant.stopped and "download_stopped" in response.flags:
            # Stopped after the headers: its Content-Length is above the grant.
            # The server may have sent part of the body before our close
            # reached it: count up to BYTE_BUDGET_STOP_SLACK of it.
            body_length = grant.expected - grant.head
            counted = size + min(body_length, self.config.stop_slack)
            self.stats.inc_value("byte_budget/stopped")
            logger.debug("Byte budget: %(response)s stopped at %(size)d bytes, counted %(counted)d",
                         {"response": response, "size": size, "counted": counted},
                         extra={"spider": self.crawler.spider})
            await self._settle_grant(grant, counted, learn=grant.expected)
            meta = {**request.meta, "byte_budget_size": grant.expected}
            # Not parked: its website is not out of budget, this request only
            # needs a larger reservation (if that is denied, it is parked then).
            # A not-before here made the frontier hand back every buffered
            # request of the website to Redis.
            return self._requeue(request.replace(meta=meta), None)
        # No per-response log line: with Scrapy's logging set-up a DEBUG record
        # is built even at LOG_LEVEL=INFO, ~1% of a worker's CPU (py-spy).
        # byte_budget/bytes_settled has the total.
        await self._settle_grant(grant, size, learn=size)
        return response

    async def process_exception(self, request: Request, exception: Exception) -> None:
        grant = self._grants.pop(request, None)
        if grant is not None:
            logger.debug("Byte budget: %(request)s failed (%(exc)r) after %(size)d bytes",
                         {"request": request, "exc": exception, "size": grant.head + grant.body},
                         extra={"spider": self.crawler.spider})
            size = grant.head + grant.body + (_chunked_overhead(grant.body) if grant.chunked else 0)
            await self._settle_grant(grant, size, learn=-1)

    async def _settle_grant(self, grant: _Grant, size: int, learn: int) -> float | None:
        """Settle in Redis (or locally); the server time, when Redis answered."""
        self._count("byte_budget/settled")
        self._count("byte_budget/bytes_settled", size)
        lease = grant.lease
        if lease is not None:
            lease.counted += size
            if learn >= 0:
                lease.learn.append(learn)
            lease.inflight -= 1
            if not lease.open and lease.inflight == 0:
                await self._settle_lease(lease)
            return None
        if not grant.member:
            local = self._local.setdefault(grant.website, _LocalBudget())
            local.settle(grant.reserved, size)
            return None
        try:
            return await self._settle_in_redis(grant.website, grant.member, size, [learn])
        except RedisError as exc:
            self._redis_error(exc)
            self._unsettled.append((grant.website, grant.member, size, [learn]))
            return None

    async def _settle_in_redis(self, website: str, member: str, size: int, learn: list[int]) -> float:
        c = self.config
        assert self._settle is not None
        result = await self._settle(keys=website_keys(c.prefix, website),
                                    args=[member, size, c.window, c.lease, *learn])
        return float(result[0])

    async def _flush_unsettled(self) -> None:
        while self._unsettled:
            website, member, size, learn = self._unsettled[0]
            try:
                await self._settle_in_redis(website, member, size, learn)
            except RedisError:
                return
            self._unsettled.pop(0)

    def _redis_error(self, exc: Exception) -> None:
        self.stats.inc_value(f"byte_budget/redis_error/{type(exc).__name__}")
        if self._redis_down_since is None:
            self._redis_down_since = time.monotonic()
            logger.error(
                "Byte budget: Redis unavailable (%(exc)s); %(mode)s",
                {"exc": exc, "mode": f"local budget b/{self.config.fallback_workers}"
                 if self.config.fallback_workers else "no downloads from budgeted websites until it is back"},
                extra={"spider": self.crawler.spider},
            )


if __name__ == "__main__":
    from middlewares.byte_budget_cli import main

    raise SystemExit(main())
