"""PolitenessMiddleware in-process: a real Crawler, real Redis, real Requests and Responses."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from scrapy import Request
from scrapy.http import Headers, HtmlResponse
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler
from twisted.internet.error import ConnectionRefusedError as TxConnectionRefusedError

from crawler.scrapy_internals import DownloadHeld
from devtools.services import free_port
from middlewares.politeness.cli import main as cli
from middlewares.politeness.middleware import PolitenessMiddleware
from middlewares.robotstxt import robots_crawl_delay

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def run(redis_url: str, extra: dict[str, Any], body: Callable[[PolitenessMiddleware], Awaitable[None]]) -> Any:
    """Build the middleware on a real crawler and run ``body`` between open and close."""
    async def main() -> Any:
        crawler = get_crawler(settings_dict={"POLITENESS_ENABLED": True, "REDIS_URL": redis_url,
                                             "POLITENESS_KEY_PREFIX": "t", "REDIS_RETRIES": 0,
                                             "REDIS_SOCKET_TIMEOUT": 1, "REDIS_CONNECT_TIMEOUT": 1, **extra})
        mw = build_from_crawler(PolitenessMiddleware, crawler)
        await mw.spider_opened()
        try:
            await body(mw)
        finally:
            await mw.spider_closed()
        return crawler.stats.get_stats()

    return asyncio.run(main())


def response(request: Request, status: int = 200, headers: dict[str, str] | None = None) -> HtmlResponse:
    return HtmlResponse(request.url, status=status, headers=Headers(headers or {}), body=b"<html></html>",
                        request=request)


def calls(mw: PolitenessMiddleware) -> int:
    assert mw.store is not None
    return mw.store.calls


def test_a_quiet_website_costs_no_redis_call(redis_url: str) -> None:
    async def body(mw: PolitenessMiddleware) -> None:
        before = calls(mw)
        for n in range(50):
            request = Request(f"http://shop-a.test/item/{n}")
            assert await mw.process_request(request) is None
            assert await mw.process_response(request, response(request)) is not None
        assert calls(mw) == before

    run(redis_url, {}, body)


def test_a_429_parks_its_website_takes_it_from_retry_and_leaves_others_alone(redis_url: str) -> None:
    async def body(mw: PolitenessMiddleware) -> None:
        request = Request("http://www.shop-a.test/item/1")
        assert await mw.process_request(request) is None
        t0 = time.time()
        again = await mw.process_response(request, response(request, 429, {"Retry-After": "30"}))
        assert isinstance(again, Request) and not again.dont_filter  # the frontier's requeue skips the dupefilter
        assert again.meta["frontier_requeue"] is True and again.meta["politeness_requeues"] == 1
        assert again.meta["frontier_not_before"] >= t0 + 30 - 0.5
        # The next request of the website is parked here, without asking Redis.
        before = calls(mw)
        other = Request("http://shop-a.test/item/2")
        parked = await mw.process_request(other)
        assert isinstance(parked, Request) and parked.meta["frontier_not_before"] == again.meta["frontier_not_before"]
        assert calls(mw) == before
        # ... also when it already passed process_request and waits in its download slot.
        assert mw._hold(Request("http://shop-a.test/item/3")) is not None
        held = await mw.process_exception(other, DownloadHeld(again.meta["frontier_not_before"]))
        assert isinstance(held, Request)
        # Another website is not slowed.
        assert await mw.process_request(Request("http://shop-b.test/")) is None
        assert mw._hold(Request("http://shop-b.test/")) is None
        assert calls(mw) == before

    stats = run(redis_url, {}, body)
    assert stats["politeness/requeued/rate_limited"] == 1
    assert stats["politeness/transition/parked"] == 1
    assert stats["politeness/denied/parked"] == 1


def test_max_requeues_hands_the_response_to_retry(redis_url: str) -> None:
    async def body(mw: PolitenessMiddleware) -> None:
        request = Request("http://shop-a.test/", meta={"politeness_requeues": 2})
        resp = response(request, 503, {"Retry-After": "1"})
        assert await mw.process_response(request, resp) is resp

    stats = run(redis_url, {"POLITENESS_MAX_REQUEUES": 2}, body)
    assert stats["politeness/gave_up"] == 1


def test_breaker_opens_after_k_failures_and_requeues_while_open(redis_url: str) -> None:
    async def body(mw: PolitenessMiddleware) -> None:
        exc = TxConnectionRefusedError()
        for n in range(2):
            assert await mw.process_exception(Request(f"http://down.test/{n}"), exc) is None  # RetryMiddleware's
        opened = await mw.process_exception(Request("http://down.test/2"), exc)
        assert isinstance(opened, Request) and opened.meta["frontier_requeue"]
        assert isinstance(await mw.process_request(Request("http://down.test/3")), Request)
        # Exceptions politeness does not count are left alone.
        assert await mw.process_exception(Request("http://other.test/"), ValueError("x")) is None

    stats = run(redis_url, {"POLITENESS_BREAKER_FAILURES": 3, "POLITENESS_BREAKER_COOL_SECONDS": 30}, body)
    assert stats["politeness/transition/opened"] == 1
    assert stats["politeness/requeued/breaker"] == 1


def test_crawl_delay_from_robots_gates_the_website(redis_url: str) -> None:
    async def body(mw: PolitenessMiddleware) -> None:
        mw.crawler.signals.send_catch_log(robots_crawl_delay, netloc="www.slow.test", url="http://www.slow.test/",
                                          delay=5.0)
        assert await mw.process_request(Request("http://www.slow.test/a")) is None
        second = await mw.process_request(Request("http://slow.test/b"))
        assert isinstance(second, Request) and second.meta["frontier_requeue"]
        assert await mw.process_request(Request("http://fast.test/")) is None

    stats = run(redis_url, {}, body)
    assert stats["politeness/denied/delay"] == 1


def test_run_time_rate_reaches_the_worker_at_the_next_refresh(redis_url: str) -> None:
    async def body(mw: PolitenessMiddleware) -> None:
        assert cli(["--redis-url", redis_url, "--prefix", "t", "rate", "set", "limited.test", "1/60"]) == 0
        assert mw._sync is not None
        await mw._sync.refresh()
        assert await mw.process_request(Request("http://limited.test/1")) is None
        assert isinstance(await mw.process_request(Request("http://limited.test/2")), Request)

    stats = run(redis_url, {}, body)
    assert stats["politeness/denied/rate"] == 1


def test_redis_down_fails_closed_for_gated_websites_only(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"

    async def body(mw: PolitenessMiddleware) -> None:
        held = await mw.process_request(Request("http://limited.test/"))
        assert isinstance(held, Request) and held.meta["frontier_requeue"]
        assert await mw.process_request(Request("http://free.test/")) is None

    stats = run(dead, {"POLITENESS_RATE_PER_WEBSITE": {"limited.test": "100/1"}}, body)
    assert stats["politeness/denied/redis_unavailable"] == 1
    assert any(key.startswith("politeness/redis_error/") for key in stats)


def test_redis_down_a_429_still_parks_its_website_here(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"

    async def body(mw: PolitenessMiddleware) -> None:
        request = Request("http://shop-a.test/")
        t0 = time.time()
        again = await mw.process_response(request, response(request, 429, {"Retry-After": "20"}))
        assert isinstance(again, Request) and again.meta["frontier_not_before"] >= t0 + 19
        assert isinstance(await mw.process_request(Request("http://shop-a.test/2")), Request)

    run(dead, {}, body)


def test_retries_of_one_broken_url_do_not_open_the_breaker(redis_url: str) -> None:
    async def body(mw: PolitenessMiddleware) -> None:
        for attempt in range(6):
            request = Request("http://shop-a.test/broken/1", meta={"retry_times": attempt} if attempt else {})
            resp = response(request, 500)
            assert await mw.process_response(request, resp) is resp
        assert await mw.process_request(Request("http://shop-a.test/item/1")) is None

    stats = run(redis_url, {"POLITENESS_BREAKER_FAILURES": 3}, body)
    assert stats.get("politeness/transition/opened") is None
    assert stats["politeness/transition/failed"] == 1
