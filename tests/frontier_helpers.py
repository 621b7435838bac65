"""Helpers for the frontier tests: real schedulers on a real Redis, driven through their public interface."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy import Spider, signals
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from crawler.frontier.scheduler import FrontierScheduler

if TYPE_CHECKING:
    from scrapy import Request


class CodecSpider(Spider):
    name = "frontier_test"
    redis_key = "frontier_test:start_urls"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seeds_told: list[int] = []

    def parse(self, response: Any) -> None:
        pass

    def parse_item(self, response: Any) -> None:
        pass

    def on_error(self, failure: Any) -> None:
        pass

    def frontier_seeds_waiting(self, count: int) -> None:
        """The frontier's hook (as FrontierSpider's): seeds wait in ``redis_key``."""
        self.seeds_told.append(count)


async def open_scheduler(redis_url: str, **settings: Any) -> FrontierScheduler:
    """A scheduler opened as the engine opens it (the caller closes it)."""
    crawler = get_crawler(CodecSpider, {"REDIS_URL": redis_url, "FRONTIER_FLUSH_DELAY": 0, **settings})
    spider = CodecSpider.from_crawler(crawler)
    crawler.spider = spider
    scheduler = build_from_crawler(FrontierScheduler, crawler)
    await maybe_deferred_to_future(scheduler.open(spider))
    # As the engine does once every component has opened: the heartbeat starts.
    await crawler.signals.send_catch_log_async(signals.spider_opened, spider=spider)
    return scheduler


async def settle(scheduler: FrontierScheduler) -> None:
    """Wait until what the scheduler was given is stored in Redis."""
    await scheduler.settled()


class Schedulers:
    """Opens schedulers (each with its own crawler) and closes those still open at the end of a test."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._open: list[FrontierScheduler] = []

    async def open(self, redis_url: str | None = None, **settings: Any) -> FrontierScheduler:
        crawler = get_crawler(CodecSpider, {"REDIS_URL": redis_url or self.redis_url, "FRONTIER_FLUSH_DELAY": 0,
                                            **settings})
        spider = CodecSpider.from_crawler(crawler)
        crawler.spider = spider
        scheduler = build_from_crawler(FrontierScheduler, crawler)
        await maybe_deferred_to_future(scheduler.open(spider))
        # As the engine does once every component has opened: the heartbeat starts.
        await crawler.signals.send_catch_log_async(signals.spider_opened, spider=spider)
        self._open.append(scheduler)
        return scheduler

    async def close(self, scheduler: FrontierScheduler, reason: str = "finished") -> None:
        self._open.remove(scheduler)
        await maybe_deferred_to_future(scheduler.close(reason))

    async def close_all(self) -> None:
        for scheduler in list(self._open):
            await self.close(scheduler)


async def drain(scheduler: FrontierScheduler, limit: int = 10_000) -> list[Request]:
    """Every request the scheduler hands out now (popping from Redis as needed)."""
    out: list[Request] = []
    await scheduler.settled()
    while len(out) < limit:
        request = scheduler.next_request()
        if request is not None:
            out.append(request)
            continue
        scheduler.work_ready()  # pop now, not after the idle poll
        await scheduler.settled()
        request = scheduler.next_request()
        if request is None:
            break
        out.append(request)
    return out
