"""Requests handed to Scrapy's engine, tracked until the engine has processed their outcome.

Part of :mod:`crawler.frontier.scheduler`. A worker with requests in flight
is busy (the cluster idle close waits for it). A request whose outcome the
engine has processed (response parsed and what it produced handed on, or its
failure handled) is done: its lease is acknowledged (:mod:`.leases`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawler.scrapy_internals import in_progress

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request
    from scrapy.crawler import Crawler


class InFlight:
    """Requests handed out, by request, with their lease field."""

    def __init__(self, crawler: Crawler, done: Callable[[str], None]) -> None:
        """``done(lease)`` is told of each request whose outcome the engine has processed."""
        self._crawler = crawler
        self._done = done
        self._requests: dict[Request, str] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, request: Request) -> bool:
        return request in self._requests

    def add(self, request: Request, lease: str) -> None:
        self._requests[request] = lease

    def sweep(self) -> None:
        """Forget the requests whose outcome the engine has processed (all of them outside a crawl)."""
        if not self._requests:
            return
        inprogress = in_progress(self._crawler)
        finished = list(self._requests) if inprogress is None else [r for r in self._requests if r not in inprogress]
        for request in finished:
            self._done(self._requests.pop(request))
