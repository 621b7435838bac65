"""Requests handed to Scrapy's engine, tracked until the engine has processed their outcome.

Part of :mod:`crawler.frontier.scheduler`. A worker with requests in flight
is busy (the cluster idle close waits for it). Leased delivery (issue 14)
would acknowledge a request's lease where :meth:`InFlight.sweep` forgets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawler.scrapy_internals import in_progress

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler


class InFlight:
    """Requests handed out, by request, with their fingerprint."""

    def __init__(self, crawler: Crawler) -> None:
        self._crawler = crawler
        self._requests: dict[Request, str] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, request: Request, fingerprint: str) -> None:
        self._requests[request] = fingerprint

    def sweep(self) -> None:
        """Forget the requests whose outcome the engine has processed (all of them outside a crawl)."""
        if not self._requests:
            return
        inprogress = in_progress(self._crawler)
        if inprogress is None:
            self._requests.clear()
            return
        for request in [r for r in self._requests if r not in inprogress]:
            del self._requests[request]
