"""The frontier's Redis calls: every failure counted, one WARNING when Redis goes, one INFO when it is back.

Part of :mod:`crawler.frontier.scheduler`. Every call the scheduler's parts
make goes through :meth:`RedisHealth.call`. A failed call (refused, reset,
timed out: ``redis.exceptions.TimeoutError`` from the client's socket
timeout, :mod:`crawler.redis_client`) is counted in
``frontier/redis_error/<ExcClass>`` and raised to the caller, which keeps
what it holds and retries later. The log gets one line per state change, not
one per call: a WARNING at the first failure, an INFO at the first success
after it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)

T = TypeVar("T")


def safe_url(url: str) -> str:
    """``url`` without its password, for the log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisHealth:
    """Counts and logs the frontier's Redis failures; knows whether Redis is reachable now."""

    def __init__(self, stats: StatsCollector, url: str) -> None:
        self._stats = stats
        self._url = safe_url(url)
        self.down_since: float | None = None  # monotonic time of the first failure of this outage
        self._failures = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await one Redis call; a ``RedisError`` is counted, logged once per outage and raised."""
        try:
            result = await awaitable
        except RedisError as exc:
            self.failed(exc)
            raise
        self.succeeded()
        return result

    def failed(self, exc: RedisError) -> None:
        self._stats.inc_value(f"frontier/redis_error/{type(exc).__name__}")
        self._failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            self._stats.inc_value("frontier/redis_outages")
            logger.warning("Frontier lost Redis (%(url)s): %(exc)r; keeping what this worker holds and retrying",
                           {"url": self._url, "exc": exc})

    def succeeded(self) -> None:
        if self.down_since is not None:
            logger.info("Frontier: Redis is back after %(s).1fs (%(n)d failed calls)",
                        {"s": time.monotonic() - self.down_since, "n": self._failures})
            self.down_since = None
            self._failures = 0
