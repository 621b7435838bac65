"""Failure accounting: a request that finally fails is recorded in the spider's failed list, never lost.

Part of :mod:`crawler.frontier.scheduler`. :class:`FrontierFailuresMiddleware`
(a downloader middleware outside every other one, so it sees what
RetryMiddleware gave up on) and the ``spider_error`` signal report requests
that finally failed to the scheduler's :meth:`record_failure`: a download
error nobody handles (no errback; ``IgnoreRequest`` is a decision, not a
failure), a response whose status is in ``RETRY_HTTP_CODES`` after the
retries (a 404 is an answer, not a failure), an exception raised by a
callback or errback. :class:`FailedLog` stores them in ``<p>:failed``
(JSON records: reason, url, website, fingerprint, score, payload) before the
request's lease is acknowledged (:mod:`.leases`). ``python -m crawler failed``
lists them and re-queues them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from scrapy import Request, signals
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response

from crawler.scrapy_internals import DownloadHeld

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector
    from twisted.python.failure import Failure

    StartTask = Callable[[str, Coroutine[Any, Any, None]], asyncio.Task[None]]

logger = logging.getLogger(__name__)

_RETRY_CAP = 5.0


class FailedLog:
    """Failed requests on their way to the failed list, written by one task at a time."""

    def __init__(self, write: Callable[[list[dict[str, Any]]], Awaitable[None]], start: StartTask,
                 stats: StatsCollector) -> None:
        self._write = write
        self._start_task = start
        self._stats = stats
        self._pending: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None
        self.appended = 0
        self.stored = 0
        self._failures = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, record: dict[str, Any]) -> None:
        self._pending.append(record)
        self.appended += 1
        self._stats.inc_value("frontier/failed")
        if self.task is None:
            self.task = self._start_task("failed", self._flush_all())

    async def _flush_all(self) -> None:
        try:
            while self._pending:
                if not await self.flush():
                    self._failures += 1
                    await asyncio.sleep(min(0.1 * 2 ** self._failures, _RETRY_CAP))
        finally:
            self.task = None

    async def flush(self) -> bool:
        """Write what is pending; False if Redis failed (kept for a retry)."""
        batch, self._pending = self._pending, []
        try:
            await self._write(batch)
        except RedisError:
            self._pending[:0] = batch
            return False
        self._failures = 0
        self.stored += len(batch)
        return True

    async def close(self, retry_pause: float) -> None:
        """Write everything left, retrying until Redis takes it: the caller bounds the time."""
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        while self._pending and not await self.flush():
            await asyncio.sleep(retry_pause)


class FrontierFailuresMiddleware:
    """Reports requests that finally failed to the frontier scheduler (see module docstring)."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self._retry_codes = {int(x) for x in crawler.settings.getlist("RETRY_HTTP_CODES")}
        self._retry = crawler.settings.getbool("RETRY_ENABLED")
        crawler.signals.connect(self._spider_error, signal=signals.spider_error)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def process_response(self, request: Request, response: Response) -> Response:
        if (self._retry and response.status in self._retry_codes and not request.meta.get("dont_retry")
                and not request.meta.get("handle_httpstatus_all")
                and response.status not in request.meta.get("handle_httpstatus_list", ())):
            self._record(request, f"HTTP {response.status} after {request.meta.get('retry_times', 0)} retries")
        return response

    def process_exception(self, request: Request, exception: Exception) -> None:
        if not isinstance(exception, (IgnoreRequest, DownloadHeld)) and request.errback is None:
            self._record(request, f"{type(exception).__name__}: {exception}"[:500])

    def _spider_error(self, failure: Failure, response: Response | Failure, spider: Any) -> None:
        request = response.request if isinstance(response, Response) else getattr(response, "request", None)
        if isinstance(request, Request):
            self._record(request, f"callback raised {type(failure.value).__name__}: {failure.value}"[:500])

    def _record(self, request: Request, reason: str) -> None:
        engine = self.crawler.engine
        hook = getattr(getattr(engine, "scheduler", None), "record_failure", None)
        if hook is not None:
            hook(request, reason)
