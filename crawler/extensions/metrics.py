"""A Prometheus endpoint per worker (an extension; off by default).

Serves ``GET /metrics`` in Prometheus' text format from the worker's own
reactor (a Twisted web server: no thread, no blocking call), built at each
scrape from a snapshot of the Scrapy stats and a few live values (the
frontier's prefetch buffer and Redis round trips): families and labels in
:mod:`crawler.extensions.metric_families`, the reference in docs/metrics.md.
The process' own CPU, memory and file descriptors come with it
(prometheus-client's ``process_*`` and ``python_*`` families).

Many workers on one host: give ``METRICS_PORT`` a range (``9410-9429``, the
default: each worker takes the first free port) or ``0`` (any free port).
The chosen port is logged at INFO (``Metrics endpoint: http://...``).

Per-website series, for ``METRICS_WEBSITES`` and this worker's top
``METRICS_WEBSITES_TOP`` websites only: :mod:`crawler.extensions.website_metrics`
(responses are counted on ``response_downloaded``; the byte budget's gauges are
read from Redis at each scrape, the response written when they arrive).

Settings (docs/metrics.md):

``METRICS_ENABLED`` (bool, default ``False``)
``METRICS_HOST`` (str, default ``"127.0.0.1"``: loopback only)
``METRICS_PORT`` (int, or str ``"low-high"``; default ``"9410-9429"``; ``0``: any free port)
``METRICS_WEBSITES`` (list of website keys, default ``[]``)
``METRICS_WEBSITES_TOP`` (int >= 0, default ``10``)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.error import CannotListenError
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from crawler.extensions.metric_families import families
from crawler.extensions.website_metrics import (
    Budgets,
    WebsiteCounts,
    WebsiteMetricsConfig,
    read_budgets,
    response_size,
    website_families,
)
from crawler.startup import StartupError
from crawler.website import website_key, website_key_mode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from typing import Self

    from prometheus_client.metrics_core import Metric
    from redis.asyncio import Redis
    from scrapy import Request as ScrapyRequest
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from twisted.internet.interfaces import IListeningPort
    from twisted.web.server import Request

    from middlewares.byte_budget.config import ByteBudgetConfig

logger = logging.getLogger(__name__)

DEFAULT_PORTS = "9410-9429"


def parse_ports(raw: Any) -> tuple[int, int]:
    """``METRICS_PORT`` as an inclusive (low, high) range; ``(0, 0)``: any free port."""
    error = ValueError(f"METRICS_PORT must be a port, 0, or a range 'low-high' of ports, got {raw!r}")
    if isinstance(raw, bool):
        raise error
    text = str(raw).strip()
    low_text, _, high_text = text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if high_text else low
    except ValueError:
        raise error from None
    if (low == 0 and high != 0) or not (0 <= low <= high <= 65535):
        raise error
    return low, high


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Parsed ``METRICS_*`` settings."""

    host: str
    ports: tuple[int, int]
    websites: WebsiteMetricsConfig = field(default_factory=lambda: WebsiteMetricsConfig(frozenset(), 10))

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        host = settings.get("METRICS_HOST", "127.0.0.1")
        if not isinstance(host, str) or not host.strip():
            raise ValueError(f"METRICS_HOST must be an address to listen on, got {host!r}")
        return cls(host=host.strip(), ports=parse_ports(settings.get("METRICS_PORT", DEFAULT_PORTS)),
                   websites=WebsiteMetricsConfig.from_settings(settings))


class _WorkerCollector:
    """Collects the worker's families at each scrape (on the reactor thread, as the server runs there)."""

    def __init__(self, crawler: Crawler, websites: WebsiteCounts) -> None:
        self.crawler = crawler
        self.websites = websites
        self.budgets: Budgets | None = None  # read just before each scrape

    def collect(self) -> Iterator[Metric]:
        stats = self.crawler.stats.get_stats() if self.crawler.stats is not None else {}
        spider = self.crawler.spider.name if self.crawler.spider is not None else ""
        yield from families(dict(stats), spider, self._live())
        yield from website_families(self.websites, spider, self.budgets)

    def _live(self) -> dict[str, float]:
        live: dict[str, float] = {"pid": float(os.getpid())}
        engine = self.crawler.engine
        scheduler = getattr(engine, "scheduler", None) if engine is not None else None
        store = getattr(scheduler, "store", None)
        calls = getattr(store, "calls", None)
        if isinstance(calls, int):  # FrontierStore counts its round trips as they happen
            live["crawler_frontier_redis_calls"] = float(calls)
        if scheduler is not None and hasattr(scheduler, "__len__"):
            live["crawler_frontier_prefetched"] = float(len(scheduler))
        return live


class _MetricsResource(Resource):
    """``GET /metrics``: the registry in Prometheus' text format."""

    isLeaf = True  # noqa: N815  # Twisted's name

    def __init__(self, registry: CollectorRegistry, before: Callable[[], Awaitable[None]]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's
        self.registry = registry
        self.before = before  # reads what the scrape needs from Redis

    def render_GET(self, request: Request) -> bytes | int:  # noqa: N802  # Twisted's name
        if request.path != b"/metrics":
            request.setResponseCode(404)
            return b"Not found: the metrics are at /metrics\n"
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())  # type: ignore[no-untyped-call]
        deferred_from_coro(self._render(request))
        return NOT_DONE_YET

    async def _render(self, request: Request) -> None:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        try:
            await self.before()
        finally:
            if not gone:
                request.write(generate_latest(self.registry))  # type: ignore[no-untyped-call]
                request.finish()  # type: ignore[no-untyped-call]


class MetricsExtension:
    """Prometheus endpoint of one worker (see module docstring)."""

    def __init__(self, crawler: Crawler, config: MetricsConfig) -> None:
        if not is_asyncio_available():
            raise RuntimeError("MetricsExtension needs the asyncio reactor (TWISTED_REACTOR)")
        self.crawler = crawler
        self.config = config
        self.websites = WebsiteCounts(config.websites)
        self._website_mode = website_key_mode(crawler.settings)
        self.collector = _WorkerCollector(crawler, self.websites)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._budget: ByteBudgetConfig | None = None
        if crawler.settings.getbool("BYTE_BUDGET_ENABLED"):
            from middlewares.byte_budget.config import ByteBudgetConfig

            self._budget = ByteBudgetConfig.from_settings(crawler.settings)
        self._redis: Redis | None = None
        # process_*: CPU, memory, open files, read from /proc (memory-backed, no disk I/O) at each scrape.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.port: IListeningPort | None = None
        self.url = ""
        # Now rather than at engine_started, so a port that cannot be had stops the crawl at start-up.
        self.listen()
        crawler.signals.connect(self.engine_stopped, signal=signals.engine_stopped)
        crawler.signals.connect(self.response_downloaded, signal=signals.response_downloaded)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("METRICS_ENABLED"):
            raise NotConfigured
        return cls(crawler, MetricsConfig.from_settings(crawler.settings))

    def listen(self) -> None:
        """Listen on the first free port of the range; :class:`StartupError` when none is free."""
        from twisted.internet import reactor

        site = Site(_MetricsResource(self.registry, self.read_budgets))  # type: ignore[no-untyped-call]  # Twisted's
        site.noisy = False
        low, high = self.config.ports
        for port in range(low, high + 1):
            try:
                self.port = reactor.listenTCP(port, site, interface=self.config.host)  # type: ignore[arg-type]
            except CannotListenError:
                continue
            break
        else:
            raise StartupError(f"METRICS_PORT {low}-{high}: no free port on {self.config.host} for the "
                               "metrics endpoint; widen the range or use 0")
        bound = self.port.getHost().port  # type: ignore[attr-defined]
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        self.url = f"http://{host}:{bound}/metrics"
        logger.info("Metrics endpoint: %(url)s", {"url": self.url})

    def response_downloaded(self, response: Response, request: ScrapyRequest) -> None:
        self.websites.add(website_key(request.url, self._website_mode), response_size(response))

    async def read_budgets(self) -> None:
        """The byte budget's gauges for the websites shown, from Redis (none when it fails)."""
        if self._budget is None:
            return
        if self._redis is None:
            self._redis = self._budget.redis.async_client()
        try:
            self.collector.budgets = await read_budgets(self._redis, self._budget, self.websites.shown())
        except RedisError as exc:
            self.collector.budgets = None
            if self.crawler.stats is not None:
                self.crawler.stats.inc_value(f"metrics/redis_error/{type(exc).__name__}")

    async def engine_stopped(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            stopped = port.stopListening()
            if stopped is not None:
                await maybe_deferred_to_future(stopped)
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose()
