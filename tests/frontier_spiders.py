"""Spiders used only by the frontier's end-to-end tests (loaded with SPIDER_MODULES)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from crawler.frontier.spider import FrontierSpider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)


class SlowCallbackSpider(FrontierSpider):
    """Spends SLOW_CALLBACK_SECONDS in each callback: busy, yet nothing queued in Redis."""

    name = "frontier_slow"

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        await asyncio.sleep(self.settings.getfloat("SLOW_CALLBACK_SECONDS"))
        if response.meta.get("depth", 0) == 0:
            yield response.follow("/robots.txt", callback=self.parse)


class BadRequestSpider(FrontierSpider):
    """Yields one request the frontier cannot store (a lambda callback) next to good ones."""

    name = "frontier_bad"

    def parse(self, response: Response) -> Iterator[Request]:
        if response.meta.get("depth", 0) == 0:
            yield response.follow("/bad", callback=lambda r: None)
            yield response.follow("/robots.txt")


class RaisingSpider(FrontierSpider):
    """Its second page's callback raises; its third page's server refuses the connection (no errback)."""

    name = "frontier_raising"

    def parse(self, response: Response) -> Iterator[Request]:
        yield response.follow("/robots.txt", callback=self.parse_broken)
        yield response.follow("http://refused.test:1/", callback=self.parse_broken)

    def parse_broken(self, response: Response) -> None:
        raise ValueError("no parser for this page")


class PostponeOnceMiddleware:
    """Does what a byte budget does when a website is over budget, once: postpones a request.

    The first item page it sees goes back to the frontier with its website held
    for POSTPONE_SECONDS (the frontier's requeue contract).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.done = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler.settings.getfloat("POSTPONE_SECONDS"))

    async def process_request(self, request: Request) -> Request | None:
        if self.done or "/item/" not in request.url:
            return None
        self.done = True
        until = time.time() + self.seconds
        logger.info("Postponed %s until %.6f", request.url, until)
        return request.replace(meta={**request.meta, "frontier_requeue": True, "frontier_not_before": until})


class GateProbeSpider(FrontierSpider):
    """Fetches its seeds and follows nothing: what the demo server logs is exactly what got through the gate."""

    name = "frontier_gate"
    allowed_domains = ["shop-a.test"]

    def parse(self, response: Response) -> None:
        logger.info("Parsed %(url)s", {"url": response.url})

    def parse_other(self, response: Response) -> None:
        logger.info("Parsed other %(url)s", {"url": response.url})

    def _private_helper(self, response: Response) -> None:
        raise AssertionError("a private method was called from a seed")
