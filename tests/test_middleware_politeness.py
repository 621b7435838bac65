"""PolitenessMiddleware in-process: a real Crawler, real Redis, real Requests and Responses."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
from scrapy import Request
from scrapy.http import Headers, HtmlResponse
from twisted.internet.error import ConnectionRefusedError as TxConnectionRefusedError

from crawler.scrapy_internals import DownloadHeld
from devtools.services import free_port
from middlewares.politeness.cli import main as cli
from middlewares.politeness.middleware import PolitenessMiddleware
from middlewares.robotstxt import robots_crawl_delay
from tests.middleware_helpers import run_middleware

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def run(redis_url: str, extra: dict[str, Any], body: Callable[[PolitenessMiddleware], Awaitable[None]]) -> Any:
    """Build the middleware on a real crawler and run ``body`` between open and close."""
    return run_middleware(PolitenessMiddleware, {
        "POLITENESS_ENABLED": True, "REDIS_URL": redis_url, "POLITENESS_KEY_PREFIX": "t", "REDIS_RETRIES": 0,
        "REDIS_SOCKET_TIMEOUT": 1, "REDIS_CONNECT_TIMEOUT": 1, **extra}, body)


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


def test_requeued_copies_of_one_broken_url_count_once(redis_url: str) -> None:
    # A 500 that arrives while its website is parked (a 429 elsewhere on it) is requeued
    # without a Scrapy retry: the copy is fetched again as a first attempt. The breaker's
    # streak counts distinct URLs, so two broken pages never reach K = 3.
    async def body(mw: PolitenessMiddleware) -> None:
        for meta in ({}, {"politeness_requeues": 1}, {"politeness_requeues": 2}, {"retry_times": 1}):
            request = Request("http://shop-a.test/broken/1", meta=dict(meta))
            await mw.process_response(request, response(request, 500))
        request = Request("http://shop-a.test/broken/2")
        assert await mw.process_response(request, response(request, 500)) is not None
        assert await mw.process_request(Request("http://shop-a.test/item/1")) is None

    stats = run(redis_url, {"POLITENESS_BREAKER_FAILURES": 3}, body)
    assert stats.get("politeness/transition/opened") is None
    assert stats["politeness/transition/failed"] == 2


async def _admitted(mw: PolitenessMiddleware, request: Request, timeout: float = 10) -> Request:
    """Ask until ``request`` is let through (the event), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await mw.process_request(request) is None:
            return request
        await asyncio.sleep(0.02)
    raise AssertionError(f"{request} not admitted within {timeout}s")


def test_a_probe_on_a_url_known_to_fail_is_inconclusive(redis_url: str) -> None:
    # The breaker opened on /broken/1 and /broken/2 (always 500). A probe that is one of
    # them says nothing about the website: no longer cooling, and another URL goes first.
    async def body(mw: PolitenessMiddleware) -> None:
        for k in (1, 2):
            request = Request(f"http://small.test/broken/{k}")
            await mw.process_response(request, response(request, 500))
        # While any other request may take the probe, a known-failing URL leaves it to them
        # for a grace period (half the cooling period here) after the park ends.
        until = mw.view.parked["small.test"]
        while mw.view.server_now() < until:
            await asyncio.sleep(0.01)
        asked = mw.view.server_now()
        denied = await mw.process_request(Request("http://small.test/broken/1", meta={"retry_times": 1}))
        if asked < until + grace - 0.05:  # asked within the grace (a stalled test may not have)
            assert isinstance(denied, Request)
            assert denied.meta["frontier_not_before"] == pytest.approx(until + grace, abs=0.01)
        good = await _admitted(mw, Request("http://small.test/item/1"))
        assert good.meta.get("politeness_probe")
        assert await mw.process_response(good, response(good, 200)) is not None  # closed
        # Open it again; then the only request left is a known-failing one: it becomes the
        # probe after the grace, fails, and the breaker does not reopen for longer.
        for k in (3, 4):
            request = Request(f"http://small.test/broken/{k}")
            await mw.process_response(request, response(request, 500))
        probe = await _admitted(mw, Request("http://small.test/broken/3", meta={"retry_times": 1}))
        assert probe.meta.get("politeness_probe")
        resp = response(probe, 500)
        assert await mw.process_response(probe, resp) is resp  # to RetryMiddleware
        nxt = await mw.process_request(Request("http://small.test/item/2"))
        assert nxt is None  # not parked again: the next request is the probe at once

    grace = 0.5  # POLITENESS_BREAKER_COOL_SECONDS / 2, at most 0.5 s
    stats = run(redis_url, {"POLITENESS_BREAKER_FAILURES": 2, "POLITENESS_BREAKER_COOL_SECONDS": 1}, body)
    assert stats["politeness/transition/opened"] == 2
    assert stats["politeness/transition/closed"] == 1
    assert stats["politeness/transition/inconclusive"] == 1
    assert stats.get("politeness/transition/reopened") is None


def test_a_500_while_parked_by_a_429_goes_to_retry_not_back_to_the_frontier(redis_url: str) -> None:
    # Only an open breaker requeues a failure. A 500 that arrives while its website is
    # parked by a 429 goes to RetryMiddleware (whose retry then waits for the park):
    # requeued, it was fetched up to POLITENESS_MAX_REQUEUES more times than its retries.
    async def body(mw: PolitenessMiddleware) -> None:
        busy = Request("http://shop-a.test/busy/1")
        assert isinstance(await mw.process_response(busy, response(busy, 429, {"Retry-After": "30"})), Request)
        broken = Request("http://shop-a.test/broken/1")
        resp = response(broken, 500)
        assert await mw.process_response(broken, resp) is resp
        assert mw.view.parked_until("shop-a.test") is not None  # the park still holds its retry

    stats = run(redis_url, {}, body)
    assert stats.get("politeness/requeued/breaker") is None
    assert stats["politeness/transition/failed"] == 1
