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

Settings (docs/metrics.md):

``METRICS_ENABLED`` (bool, default ``False``)
``METRICS_HOST`` (str, default ``"127.0.0.1"``: loopback only)
``METRICS_PORT`` (int, or str ``"low-high"``; default ``"9410-9429"``; ``0``: any free port)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.error import CannotListenError
from twisted.web.resource import Resource
from twisted.web.server import Site

from crawler.extensions.metric_families import families
from crawler.startup import StartupError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Self

    from prometheus_client.metrics_core import Metric
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from twisted.internet.interfaces import IListeningPort
    from twisted.web.server import Request

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

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        host = settings.get("METRICS_HOST", "127.0.0.1")
        if not isinstance(host, str) or not host.strip():
            raise ValueError(f"METRICS_HOST must be an address to listen on, got {host!r}")
        return cls(host=host.strip(), ports=parse_ports(settings.get("METRICS_PORT", DEFAULT_PORTS)))


class _WorkerCollector:
    """Collects the worker's families at each scrape (on the reactor thread, as the server runs there)."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    def collect(self) -> Iterator[Metric]:
        stats = self.crawler.stats.get_stats() if self.crawler.stats is not None else {}
        spider = self.crawler.spider.name if self.crawler.spider is not None else ""
        return families(dict(stats), spider, self._live())

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

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:  # noqa: N802  # Twisted's name
        if request.path != b"/metrics":
            request.setResponseCode(404)
            return b"Not found: the metrics are at /metrics\n"
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())  # type: ignore[no-untyped-call]
        return generate_latest(self.registry)


class MetricsExtension:
    """Prometheus endpoint of one worker (see module docstring)."""

    def __init__(self, crawler: Crawler, config: MetricsConfig) -> None:
        if not is_asyncio_available():
            raise RuntimeError("MetricsExtension needs the asyncio reactor (TWISTED_REACTOR)")
        self.crawler = crawler
        self.config = config
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WorkerCollector(crawler))
        # process_*: CPU, memory, open files, read from /proc (memory-backed, no disk I/O) at each scrape.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.port: IListeningPort | None = None
        self.url = ""
        # Now rather than at engine_started, so a port that cannot be had stops the crawl at start-up.
        self.listen()
        crawler.signals.connect(self.engine_stopped, signal=signals.engine_stopped)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("METRICS_ENABLED"):
            raise NotConfigured
        return cls(crawler, MetricsConfig.from_settings(crawler.settings))

    def listen(self) -> None:
        """Listen on the first free port of the range; :class:`StartupError` when none is free."""
        from twisted.internet import reactor

        site = Site(_MetricsResource(self.registry))  # type: ignore[no-untyped-call]  # Twisted's
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

    async def engine_stopped(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            stopped = port.stopListening()
            if stopped is not None:
                await maybe_deferred_to_future(stopped)
