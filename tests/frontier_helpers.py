"""Helpers for the frontier tests: a real scheduler on a real Redis, driven from asyncio."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from scrapy import Spider, signals
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from crawler.frontier.scheduler import FrontierScheduler

if TYPE_CHECKING:
    from scrapy import Request


class CodecSpider(Spider):
    name = "frontier_test"

    def parse(self, response: Any) -> None:
        pass

    def parse_item(self, response: Any) -> None:
        pass

    def on_error(self, failure: Any) -> None:
        pass


async def open_scheduler(redis_url: str, **settings: Any) -> FrontierScheduler:
    crawler = get_crawler(CodecSpider, {"REDIS_URL": redis_url, "FRONTIER_FLUSH_DELAY": 0, **settings})
    spider = CodecSpider.from_crawler(crawler)
    crawler.spider = spider
    scheduler = build_from_crawler(FrontierScheduler, crawler)
    await scheduler._open(spider)
    # As the engine does once every component has opened: the heartbeat starts.
    await crawler.signals.send_catch_log_async(signals.spider_opened, spider=spider)
    return scheduler


async def settle(scheduler: FrontierScheduler) -> None:
    """Wait until every enqueued request has been sent to Redis."""
    outbox = scheduler._outbox
    while outbox.entries or outbox.task or outbox.timer:
        if outbox.task is not None:
            await outbox.task
        else:
            await asyncio.sleep(0.001)


async def drain(scheduler: FrontierScheduler, limit: int = 10_000) -> list[Request]:
    """Every request the scheduler hands out now (popping from Redis as needed)."""
    out: list[Request] = []
    scheduler._refill.pop_after = 0.0
    while len(out) < limit:
        request = scheduler.next_request()
        if request is not None:
            out.append(request)
        elif scheduler._refill.task is not None:
            await scheduler._refill.task
        else:
            break
    return out
