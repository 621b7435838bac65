"""Politeness under pressure, cluster-wide (a downloader middleware).

* **Retry-After and backoff**: a response with a status in
  ``POLITENESS_RETRY_AFTER_STATUSES`` (429, 503) parks its website for every
  worker until its ``Retry-After`` (seconds or HTTP date, capped by
  ``POLITENESS_RETRY_AFTER_MAX_SECONDS``), or else by exponential backoff with
  jitter per website (``POLITENESS_BACKOFF_*``); then one probe request goes
  first. The request itself goes back to the frontier to be fetched after the
  park, without spending a Scrapy retry (``POLITENESS_MAX_REQUEUES`` bounds
  the loop).
* **Circuit breaker**: ``POLITENESS_BREAKER_FAILURES`` consecutive failures
  (``POLITENESS_BREAKER_EXCEPTIONS`` / ``_STATUSES``) open the breaker: the
  website is parked for ``POLITENESS_BREAKER_COOL_SECONDS``, then exactly one
  probe goes, cluster-wide; success closes it, failure reopens it for longer.
* **Gates**: robots.txt ``Crawl-delay`` / ``Request-rate`` and a request rate per
  website (``POLITENESS_RATE_*``, run-time overrides: ``python -m middlewares.politeness``).
* **Adaptive slow-down** (optional, :mod:`.adaptive`): a website much slower than its
  own baseline gets a lower rate, cluster-wide.

Every wait is a frontier not-before mark (meta ``frontier_requeue`` /
``frontier_not_before``): no worker sleeps or holds a download slot. State lives
in Redis (:mod:`.store`, Lua on the Redis clock); a website with no signal and no
limit costs no Redis round trip (:mod:`.view`). Redis unreachable: gated and
watched websites fail closed; a signal still parks its website on this worker.

Settings: every ``POLITENESS_*`` (docs/politeness.md); ``WEBSITE_KEY`` picks the website.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.python import global_object_name
from scrapy.utils.request import request_httprepr

from crawler.scrapy_internals import DownloadHeld, add_download_hold
from crawler.website import WebsiteKeys, website_key
from middlewares.politeness.adaptive import AdaptiveSlowdown
from middlewares.politeness.config import PolitenessConfig
from middlewares.politeness.health import RedisHealth, log_transition
from middlewares.politeness.signals import FAIL, OK, RATE, backoff_delay, classify_status, parse_retry_after
from middlewares.politeness.store import Event, PolitenessStore, url_id
from middlewares.politeness.view import PolitenessView, ViewSync
from middlewares.robotstxt import robots_crawl_delay

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from middlewares.politeness.config import Rate

logger = logging.getLogger(__name__)

META_PROBE = "politeness_probe"
META_REQUEUES = "politeness_requeues"
META_EXEMPT = "politeness_exempt"
META_SENT = "politeness_sent"


class PolitenessMiddleware:
    """Park, back off, break and gate per website, cluster-wide (see module docstring)."""

    def __init__(self, crawler: Crawler, config: PolitenessConfig) -> None:
        if not is_asyncio_available():
            raise RuntimeError("PolitenessMiddleware needs the asyncio reactor (TWISTED_REACTOR)")
        assert crawler.stats is not None
        self.crawler: Crawler = crawler
        self.config: PolitenessConfig = config
        self.stats = crawler.stats
        self.view = PolitenessView(config)
        self.store: PolitenessStore | None = None
        self._sync: ViewSync | None = None
        self._website = WebsiteKeys(self.config.website_mode)
        self._counts: dict[str, int] = {}  # per-request counters, added to the stats at each refresh
        self.health = RedisHealth(crawler, config.gate_park_max)
        self.adaptive = AdaptiveSlowdown(config.adaptive, self.view, crawler, self.health.error)
        self._background: set[asyncio.Task[Any]] = set()
        self._leasing: dict[str, asyncio.Future[None]] = {}  # website -> its lease call in flight
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(self.robots_crawl_delay, signal=robots_crawl_delay)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("POLITENESS_ENABLED"):
            raise NotConfigured
        return cls(crawler, PolitenessConfig.from_settings(crawler.settings))

    # -- life cycle ---------------------------------------------------------

    async def spider_opened(self) -> None:
        redis = self.config.redis.async_client()
        self.store = PolitenessStore(redis, self.config)
        self._sync = ViewSync(self.view, self.store, redis, self.health.error, self._refreshed)
        await self._sync.start()
        if not add_download_hold(self.crawler, self._hold):
            logger.warning("Politeness: DOWNLOADER is not crawler.scrapy_internals.Downloader; requests that "
                           "wait in a download slot while their website is parked are not held back",
                           extra={"spider": self.crawler.spider})
        logger.info("Politeness: %(config)s; Redis unavailable: fail closed", {"config": self.config.summary()},
                    extra={"spider": self.crawler.spider})

    async def spider_closed(self) -> None:
        if self._sync is not None:
            await self._sync.stop()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._flush_counts()
        if self.store is not None:
            self.stats.set_value("politeness/redis_calls", self.store.calls)
            await self.store.redis.aclose()

    def robots_crawl_delay(self, netloc: str, url: str, delay: float | None,
                           request_rate: tuple[int, float] | None = None, **kwargs: Any) -> None:
        website = website_key(url, self.config.website_mode)
        self.view.set_delay(website, delay)
        if request_rate is not None:  # Request-rate: n/m, honoured as one request per m/n seconds
            self.view.set_delay(website, request_rate[1] / request_rate[0])

    def _refreshed(self, changed: dict[str, str]) -> None:
        self._flush_counts()
        if self.store is not None and self.config.adaptive.websites:
            self._spawn(self.adaptive.flush(self.store))
        if not changed:
            return
        logger.info("Politeness: run-time request rates changed: %(changed)s; in force: %(all)s",
                    {"changed": changed, "all": {k: str(v) if v else "none" for k, v in self.view.overrides.items()}},
                    extra={"spider": self.crawler.spider})

    def _count(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    def _flush_counts(self) -> None:
        counts, self._counts = self._counts, {}
        for key, n in counts.items():
            self.stats.inc_value(key, n)


    @staticmethod
    def _exempt(request: Request) -> bool:
        meta = request.meta
        # robots.txt is fetched by RobotsTxtMiddleware with engine.download_async(),
        # not through the frontier: a returned request would loop.
        return bool(meta.get(META_EXEMPT) or (meta.get("dont_obey_robotstxt") and request.url.endswith("/robots.txt")))

    # -- requests -----------------------------------------------------------

    def _hold(self, request: Request) -> float | None:
        """Called as a request leaves its download slot queue: parked meanwhile? (Local state only.)"""
        # When it left for the network (local clock): a success says something about the
        # website only if it was sent after the failures began (lua/report.lua).
        request.meta[META_SENT] = time.time()
        parked = self.view.parked
        if not parked or self._exempt(request):
            return None
        return self.view.parked_until(self._website(request))

    async def process_request(self, request: Request) -> Request | None:
        if self._exempt(request):
            return None
        website = self._website(request)
        if not self.view.needs_check(website):
            return None
        return await self._admit(request, website)

    async def _admit(self, request: Request, website: str) -> Request | None:
        view = self.view
        until = view.parked_until(website)
        if until is not None:
            return self._deny(request, until, "parked")
        rate = view.rate_for(website)
        delay = view.delays.get(website, 0.0)
        watched = website in view.watched
        leasable = rate is not None and not delay and not watched
        if leasable:
            # Single flight: requests that arrive while a lease is being fetched wait for it.
            while not view.take_permit(website):
                pending = self._leasing.get(website)
                if pending is None:
                    break
                await asyncio.shield(pending)
            else:
                self._count("politeness/granted_from_lease")
                return None
        if rate is None and not delay and not watched:
            return None  # e.g. a run-time "none" override
        return await self._ask(request, website, rate, delay, watched)

    async def _ask(self, request: Request, website: str, rate: Rate | None, delay: float,
                   watched: bool) -> Request | None:
        """One round trip to ``lua/admit.lua``."""
        view, c = self.view, self.config
        leasable = rate is not None and not delay and not watched
        # A lease holds at most a quarter of the window's requests: near the limit, one permit at a time.
        want = min(c.lease_permits, max(1, rate.requests // 4)) if leasable and rate is not None else 1
        token = str(request.meta.get(META_PROBE) or uuid.uuid4().hex[:16])
        started = time.monotonic()
        assert self.store is not None
        lease: asyncio.Future[None] | None = None
        if want > 1 and website not in self._leasing:
            lease = self._leasing[website] = asyncio.get_running_loop().create_future()
        try:
            adm = await self.store.admit(website, token, delay + c.gate_margin if delay else 0.0,
                                         rate.requests if rate else 0, rate.window + c.gate_margin if rate else 0.0,
                                         want, url_id(request.method, request.url) if watched else "")
            if adm.permits > 1:
                view.permits[website] = (adm.permits - 1, started + c.lease_seconds)
        except RedisError as exc:
            # Fail closed, like the byte budget: no request to a gated or watched website without Redis.
            return self._deny(request, view.server_now() + self.health.failed_closed(exc), "redis_unavailable")
        finally:
            if lease is not None:
                del self._leasing[website]
                lease.set_result(None)
        self.health.back()
        view.clock(adm.now)
        self._count("politeness/checked")
        if not adm.permits:
            if adm.reason == "parked":
                view.park(website, adm.not_before)
                return self._deny(request, adm.not_before, "parked")
            # Gates and the probe: parked briefly, so a run-time change or a probe's answer applies soon.
            return self._deny(request, min(adm.not_before, adm.now + c.gate_park_max), adm.reason)
        if adm.probe:
            request.meta[META_PROBE] = token
            self.stats.inc_value("politeness/probes")
            logger.debug("Politeness: %(request)s is the probe for %(website)s",
                         {"request": request, "website": website}, extra={"spider": self.crawler.spider})
        else:
            request.meta.pop(META_PROBE, None)
            if adm.clean and watched and website not in view.parked:
                view.watched.discard(website)
                self._spawn(self._forget(website, adm.now))
        return None

    def _uncount(self, request: Request, exception: Exception) -> None:
        # Scrapy's DownloaderStats (850) counted the request as sent, and its hold as an
        # exception, before the hold stopped it at its slot: downloader/request_count
        # stays the number of requests the websites saw.
        self.stats.inc_value("downloader/request_count", -1)
        self.stats.inc_value(f"downloader/request_method_count/{request.method}", -1)
        self.stats.inc_value("downloader/request_bytes", -len(request_httprepr(request)))
        self.stats.inc_value("downloader/exception_count", -1)
        self.stats.inc_value(f"downloader/exception_type_count/{global_object_name(type(exception))}", -1)

    def _deny(self, request: Request, until: float, reason: str) -> Request:
        self._count(f"politeness/denied/{reason}")
        # No dont_filter: the frontier requeues without its dupefilter anyway, and a
        # dont_filter=True would be copied by RedirectMiddleware to the redirect's target.
        meta = {**request.meta, "frontier_requeue": True, "frontier_not_before": until}
        return request.replace(meta=meta)

    def _requeue(self, request: Request, until: float, reason: str) -> Request | None:
        """Fetch again after the park, without spending a Scrapy retry; None past POLITENESS_MAX_REQUEUES."""
        n = int(request.meta.get(META_REQUEUES, 0))
        if n >= self.config.max_requeues:
            self.stats.inc_value("politeness/gave_up")
            # DEBUG: per request (the stat has the count); RetryMiddleware logs what it gives up.
            logger.debug("Politeness: %(request)s was parked %(n)d times; handing it to RetryMiddleware",
                           {"request": request, "n": n}, extra={"spider": self.crawler.spider})
            return None
        self.stats.inc_value(f"politeness/requeued/{reason}")
        meta = {**request.meta, "frontier_requeue": True, "frontier_not_before": until, META_REQUEUES: n + 1}
        return request.replace(meta=meta)

    # -- responses ----------------------------------------------------------

    async def process_response(self, request: Request, response: Response) -> Request | Response:
        if self._exempt(request):
            return response
        kind = classify_status(response.status, self.config)
        if self.config.adaptive.websites:
            self._sample(request, kind is not None, float(request.meta.get("download_latency") or 0))
        token = str(request.meta.get(META_PROBE) or "")
        if kind is None:
            if token or self.view.watched:
                website = self._website(request)
                if token or website in self.view.watched:
                    await self._report(website, OK, token, None, request, self._sent(request))
            return response
        website = self._website(request)
        if kind == RATE:
            retry_after = parse_retry_after(response.headers.get(b"Retry-After"), time.time())
            if retry_after is not None:
                retry_after = min(retry_after, self.config.retry_after_max)
            self._count("politeness/retry_after" if retry_after is not None else "politeness/backoff")
            # Hold the website here at once; Redis's answer (the cluster's level) follows.
            guess = retry_after if retry_after is not None else backoff_delay(0, self.config, -1)
            self.view.park(website, self.view.server_now() + guess)
            until, _ = await self._report(website, RATE, token, retry_after, request)
            return self._requeue(request, until, "rate_limited") or response
        until, open_now = await self._report(website, FAIL, token, None, request)
        if open_now and not token:
            return self._requeue(request, until, "breaker") or response
        # The breaker is closed, or this was its probe: RetryMiddleware retries as usual.
        # A failed probe is not requeued as the next probe: a URL that always fails
        # would otherwise keep the breaker open for ever (cooling doubling each time).
        return response

    def _sample(self, request: Request, error: bool, latency: float) -> None:
        website = self._website(request)
        if self.adaptive.applies(website):
            self.adaptive.sample(website, latency, error)

    def _sent(self, request: Request) -> float:
        """When ``request`` was sent, on the Redis clock."""
        sent = request.meta.get(META_SENT)
        if sent is not None:
            return float(sent) + self.view.offset
        # Another DOWNLOADER (no hold hook): Scrapy's download_latency ends at the response
        # head, so this is later than the truth; a stale success may then reset the count.
        return self.view.server_now() - float(request.meta.get("download_latency") or 0)

    async def process_exception(self, request: Request, exception: Exception) -> Request | None:
        if isinstance(exception, DownloadHeld):  # from self._hold: never reached the network
            self._uncount(request, exception)
            return self._deny(request, exception.until, "held")
        if self._exempt(request) or not isinstance(exception, self.config.breaker_exceptions):
            return None
        if self.config.adaptive.websites:
            self._sample(request, True, time.time() - float(request.meta.get(META_SENT) or time.time()))
        token = str(request.meta.get(META_PROBE) or "")
        until, open_now = await self._report(self._website(request), FAIL, token, None, request)
        if open_now and not token:  # a failed probe goes to RetryMiddleware (see process_response)
            return self._requeue(request, until, "breaker")
        return None

    async def _report(self, website: str, kind: str, token: str, retry_after: float | None, request: Request,
                      sent: float = 0.0) -> tuple[float, bool]:
        """Tell Redis; returns (parked until, whether its open breaker holds the website now).

        Failures count once per URL (lua/report.lua): a broken page retried by
        Scrapy, or requeued, does not open the breaker of a website that works.
        """
        assert self.store is not None
        view = self.view
        jitter = 1 + self.config.backoff_jitter * random.uniform(-1, 1)
        url = url_id(request.method, request.url) if kind == FAIL else ""
        try:
            rep = await self.store.report(website, kind, token, retry_after, jitter, sent, url)
        except RedisError as exc:
            self.health.error(exc)
            return view.report_locally(website, kind, retry_after, jitter)
        self.health.back()
        view.clock(rep.now)
        if rep.transition:
            self.stats.inc_value(f"politeness/transition/{rep.transition}")
            log_transition(self.crawler, website, rep.transition, rep.until - rep.now, rep.count, retry_after,
                           self.config.breaker_failures)
        # Exactly the cluster's park (the local guess made before the call may be longer).
        if rep.until > rep.now:
            view.parked[website] = rep.until
        else:
            view.parked.pop(website, None)
        if rep.transition:
            view.watched.add(website)
            try:
                await self.store.announce(Event(website, rep.until, rep.transition), rep.now)
            except RedisError as exc:
                self.health.error(exc)
        elif rep.clean and website in view.watched and website not in view.parked:
            view.watched.discard(website)
            self._spawn(self._forget(website, rep.now))
        # A failure while the website is parked for a 429 goes to RetryMiddleware (its retry
        # waits for the park): only an open breaker requeues, so each page's fetches are exact.
        return rep.until, rep.until > rep.now and rep.breaker_open

    async def _forget(self, website: str, clean_at: float) -> None:
        assert self.store is not None
        try:
            await self.store.forget(website, clean_at)
        except RedisError as exc:
            self.health.error(exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
