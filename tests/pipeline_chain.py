"""The project's item chain (context middleware, validate, enrich, MongoDB writer) driven without a crawl.

Real components on a real crawler (``get_crawler``): items go through
``ItemContextMiddleware.process_spider_output`` with a real response, then
through the pipelines in order, and ``item_scraped`` is sent as Scrapy's
scraper does. Used by the tests and ``python -m bench mongo``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from scrapy import Request, Spider, signals
from scrapy.http import HtmlResponse
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from crawler.items import Article, Product
from pipelines.enrich import EnrichPipeline
from pipelines.item_context import ItemContextMiddleware
from pipelines.mongo_writer import MongoWriterPipeline
from pipelines.validate import ValidatePipeline
from settings import MONGO_WRITER_COLLECTIONS, VALIDATE_SCHEMAS

if TYPE_CHECKING:
    from pathlib import Path

    from scrapy.crawler import Crawler


def product(i: int, host: str = "shop-a.test", **fields: Any) -> Product:
    values: dict[str, Any] = {"url": f"http://{host}/item/{i}", "title": f"Product {i}", "sku": f"SKU-{i:06d}",
                              "price": 10.0 + i, "currency": "EUR", "in_stock": True}
    values.update(fields)
    return Product(**values)


def article(i: int, **fields: Any) -> Article:
    values: dict[str, Any] = {"url": f"http://news.test/item/{i}", "headline": f"Story {i}", "author": "A. Writer",
                              "published": "2026-01-02T03:04:05Z", "section": "world"}
    values.update(fields)
    return Article(**values)


def response_for(item: Any, body: bytes | None = None, meta: dict[str, Any] | None = None) -> HtmlResponse:
    url = item.url if hasattr(item, "url") else item["url"]
    return HtmlResponse(url, body=body or f"<html><body>{url}</body></html>".encode(),
                        request=Request(url, meta=meta or {}))


def chain_crawler(mongo_uri: str, database: str, journal_dir: Path, **settings: Any) -> Crawler:
    base: dict[str, Any] = {
        "MONGO_URI": mongo_uri,
        "MONGO_DATABASE": database,
        "VALIDATE_SCHEMAS": VALIDATE_SCHEMAS,
        "MONGO_WRITER_COLLECTIONS": MONGO_WRITER_COLLECTIONS,
        "MONGO_WRITER_JOURNAL_DIR": str(journal_dir),
        "MONGO_WRITER_SERVER_TIMEOUT": 1.0,
        "MONGO_WRITER_RETRY_BACKOFF": 0.05,
        "MONGO_WRITER_RETRY_BACKOFF_MAX": 0.2,
        "MONGO_WRITER_RETRY_TIMES": 2,
        "ENRICH_JOB_ID": "job-1",
    }
    crawler = get_crawler(Spider, settings_dict={**base, **settings})
    crawler.spider = crawler._create_spider("test_spider")
    assert crawler.stats is not None
    crawler.stats.open_spider()
    return crawler


class Chain:
    """Context middleware + ValidatePipeline + EnrichPipeline + MongoWriterPipeline."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.middleware = build_from_crawler(ItemContextMiddleware, crawler)
        self.validate = build_from_crawler(ValidatePipeline, crawler)
        self.enrich = build_from_crawler(EnrichPipeline, crawler)
        self.writer = build_from_crawler(MongoWriterPipeline, crawler)
        self.scraped: list[Any] = []

    @property
    def stats(self) -> dict[str, Any]:
        assert self.crawler.stats is not None
        return self.crawler.stats.get_stats()

    async def open(self) -> None:
        self.validate.open_spider()
        self.enrich.open_spider()
        await self.writer.open_spider()

    async def close(self) -> None:
        await self.writer.close_spider()

    async def process(self, response: HtmlResponse, item: Any) -> Any:
        (item,) = list(self.middleware.process_spider_output(response, [item]))
        item = self.validate.process_item(item)
        item = self.enrich.process_item(item)
        item = await self.writer.process_item(item)
        await self.crawler.signals.send_catch_log_async(signals.item_scraped, item=item, response=response,
                                                        spider=self.crawler.spider)
        self.scraped.append(item)
        return item

    async def feed(self, pairs: list[tuple[HtmlResponse, Any]], concurrency: int = 8) -> None:
        """Process items with up to ``concurrency`` in flight, as Scrapy's CONCURRENT_ITEMS does."""
        queue = list(reversed(pairs))

        async def worker() -> None:
            while queue:
                response, item = queue.pop()
                await self.process(response, item)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
