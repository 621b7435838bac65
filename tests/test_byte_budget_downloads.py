"""ByteBudgetMiddleware in-process: long, chunked, stopped and failed downloads; a real Crawler and Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from scrapy import Request, signals
from scrapy.downloadermiddlewares.stats import get_header_size, get_status_size
from scrapy.exceptions import StopDownload
from scrapy.http import Headers, HtmlResponse
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from middlewares.byte_budget.middleware import ByteBudgetMiddleware
from middlewares.byte_budget.store import website_keys
from tests.byte_budget_helpers import response, run, server_time, settings, wire_size
from tests.redis_clients import sync_redis

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)


@pytest.mark.parametrize("length", [50000, "UNKNOWN"], ids=["content-length", "chunked"])
def test_a_long_download_counts_its_bytes_from_when_they_arrived(redis_url: str, length: int | str) -> None:
    """A download settled on its own: the worker marks its bytes as they arrive (every DRAW_BYTES), and each
    marked part is settled at a Redis time no earlier than its arrival, not at the download's end. (With
    Content-Length it drew all it needs with its headers; chunked, it drew as it went.)"""
    out: dict[str, Any] = {}

    async def body(mw: ByteBudgetMiddleware) -> None:
        request = Request("http://shop-a.test/big", meta={"byte_budget_size": 4000})
        assert await mw.process_request(request) is None
        headers = Headers({"Content-Type": "text/html"})
        if isinstance(length, int):
            headers["Content-Length"] = str(length)
        mw.headers_received(headers=headers, body_length=length, request=request, spider=None)
        await mw.metered(request)
        out["start"] = server_time(redis_url)
        for _ in range(5):
            mw.bytes_received(data=b"y" * 10000, request=request, spider=None)
            await mw.metered(request)
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # the response reaches the middleware later
        full = response(request, b"y" * 50000)
        assert await mw.process_response(request, full) is full
        out["settled"] = server_time(redis_url)
        out["full"] = wire_size(full)

    stats = run(redis_url, {"BYTE_BUDGET_DEFAULT": 1_000_000, "BYTE_BUDGET_DEFAULT_ESTIMATE": 4000,
                            "BYTE_BUDGET_DRAW_BYTES": 10_000}, body)
    assert "byte_budget/stopped" not in stats
    assert stats["byte_budget/arrival_marks"] == 5
    with sync_redis(redis_url) as r:
        keys = website_keys("t", "shop-a.test")
        parts = [(int(m.decode().split(":")[1]), t) for m, t in r.zrange(keys[0], 0, -1, withscores=True)]
        settled = float(r.hget(keys[2], "used"))
    full = stats["byte_budget/bytes_settled"]
    assert sum(n for n, _ in parts) == settled == full  # every byte counted once
    if isinstance(length, int):
        assert full == out["full"]
    marked = [(n, t) for n, t in parts if n >= 10000]
    assert len(marked) == 5  # a part per 10,000 bytes marked; chunked: its framing is counted at the end
    # Never dated before its bytes arrived (the bound's safety) ...
    assert min(t for _, t in marked) > out["start"]
    # ... nor at the end: the last part arrived 2 s before the settle. Its date errs late by at most
    # the clock margin (0.02 s) plus one Redis call's latency (the bound taken around a call): 1.5 s
    # of room for a busy machine.
    assert max(t for _, t in marked) < out["settled"] - 0.5


async def _hold_the_overdraft(mw: ByteBudgetMiddleware, others: list[Request]) -> Request:
    """Grant ``others``, then a chunked download draws past b = 20000: it holds the overdraft token."""
    for request in others:
        assert await mw.process_request(request) is None  # 4000 each
    big = Request("http://shop-a.test/huge", meta={"byte_budget_size": 4000})
    assert await mw.process_request(big) is None
    mw.headers_received(headers=Headers({"Content-Type": "text/html"}), body_length="UNKNOWN", request=big,
                        spider=None)
    mw.bytes_received(data=b"h" * 5000, request=big, spider=None)
    await mw.metered(big)  # drew 1000 + 10000: room left
    mw.bytes_received(data=b"h" * 10000, request=big, spider=None)
    await mw.metered(big)  # no room: the overdraft
    assert mw.crawler.stats.get_value("byte_budget/overdrafts") == 1
    return big


OVERDRAFT = {"BYTE_BUDGET_DEFAULT": 20_000, "BYTE_BUDGET_DEFAULT_ESTIMATE": 4000, "BYTE_BUDGET_DRAW_BYTES": 10_000}


def test_a_chunked_download_that_cannot_draw_is_stopped_and_counts_the_servers_bytes(redis_url: str) -> None:
    out: dict[str, Any] = {}

    async def body(mw: ByteBudgetMiddleware) -> None:
        request = Request("http://shop-a.test/chunked", meta={"byte_budget_size": 4000})
        big = await _hold_the_overdraft(mw, [request])
        headers = Headers({"Content-Type": "text/html"})
        mw.headers_received(headers=headers, body_length="UNKNOWN", request=request, spider=None)
        mw.bytes_received(data=b"z" * 3000, request=request, spider=None)
        mw.bytes_received(data=b"z" * 5000, request=request, spider=None)  # past its grant: draws
        await mw.metered(request)  # denied: no room, and the token is taken
        with pytest.raises(StopDownload):
            mw.bytes_received(data=b"z" * 100, request=request, spider=None)
        stopped = HtmlResponse(request.url, headers=headers, body=b"z" * 8100, request=request,
                               flags=["download_stopped"])
        out["retry"] = await mw.process_response(request, stopped)
        out["size"] = wire_size(stopped) - len(b"Content-Length: 8100\r\n") + len(b"Transfer-Encoding: chunked\r\n")
        await mw.process_exception(big, TimeoutError())

    stats = run(redis_url, {**OVERDRAFT, "BYTE_BUDGET_STOP_SLACK": 1000}, body)
    retry = out["retry"]
    assert isinstance(retry, Request)
    # Retried as the website's one overdraft, reserving what it cost: never stopped again.
    assert retry.meta["byte_budget_overdraft"] is True
    assert retry.meta["byte_budget_size"] >= 8100 + 1000
    assert "frontier_not_before" not in retry.meta
    assert stats["byte_budget/stopped"] == 1
    assert stats["byte_budget/draws_denied"] == 1
    # What the server may have pushed beyond what we read is counted: the slack.
    assert stats["byte_budget/bytes_stopped"] >= 8100 + 1000


def test_a_page_whose_rest_is_on_the_wire_is_not_stopped(redis_url: str) -> None:
    """Content-Length above the grant, draw denied, but the rest is within the socket buffers: keep it."""

    async def body(mw: ByteBudgetMiddleware) -> None:
        request = Request("http://shop-a.test/page", meta={"byte_budget_size": 4000})
        big = await _hold_the_overdraft(mw, [request])
        headers = Headers({"Content-Type": "text/html", "Content-Length": "30000"})
        mw.headers_received(headers=headers, body_length=30000, request=request, spider=None)
        await mw.metered(request)  # denied
        mw.bytes_received(data=b"z" * 30000, request=request, spider=None)  # no stop: it was all sent
        full = response(request, b"z" * 30000)
        assert await mw.process_response(request, full) is full
        await mw.process_exception(big, TimeoutError())

    stats = run(redis_url, {**OVERDRAFT, "BYTE_BUDGET_STOP_SLACK": 65536}, body)
    assert stats["byte_budget/draws_denied"] == 1
    assert "byte_budget/stopped" not in stats


def test_a_known_page_larger_than_the_budget_runs_as_the_overdraft(redis_url: str) -> None:
    async def body(mw: ByteBudgetMiddleware) -> None:
        big = Request("http://shop-a.test/huge", meta={"byte_budget_size": 200_000})
        assert await mw.process_request(big) is None
        second = await mw.process_request(Request("http://shop-a.test/huge2", meta={"byte_budget_size": 90_000}))
        assert isinstance(second, Request)  # one overdraft at a time
        await mw.process_response(big, response(big, b"x" * 150_000))

    stats = run(redis_url, {"BYTE_BUDGET_DEFAULT": 20_000}, body)
    assert stats["byte_budget/overdrafts"] == 1
    assert stats["byte_budget/denied"] == 1


def test_a_failed_download_counts_what_was_received(redis_url: str) -> None:
    async def body(mw: ByteBudgetMiddleware) -> None:
        request = Request("http://shop-a.test/slow")
        assert await mw.process_request(request) is None
        headers = Headers({"Content-Type": "text/html"})
        mw.headers_received(headers=headers, body_length=-1, request=request, spider=None)
        mw.bytes_received(data=b"z" * 700, request=request, spider=None)
        mw.bytes_received(data=b"z" * 300, request=request, spider=None)
        await mw.process_exception(request, TimeoutError())

    stats = run(redis_url, {"BYTE_BUDGET_DEFAULT": 100_000}, body)
    head = get_header_size(Headers({"Content-Type": "text/html"})) + get_status_size(200) + 4
    assert stats["byte_budget/bytes_settled"] == head + 1000


def test_byte_signals_reach_the_middleware_until_it_closes(redis_url: str) -> None:
    """Through the crawler's signal manager, as Scrapy's HTTP handler sends them."""
    out: dict[str, Any] = {}

    async def main() -> Any:
        crawler = get_crawler(settings_dict=settings(redis_url, BYTE_BUDGET_DEFAULT=100_000))
        mw = build_from_crawler(ByteBudgetMiddleware, crawler)
        await mw.spider_opened()
        request = Request("http://shop-a.test/slow")
        assert await mw.process_request(request) is None
        sent = crawler.signals.send_catch_log(signals.headers_received, headers=Headers({"Content-Type": "text/html"}),
                                              body_length=-1, request=request, spider=None)
        out["receivers"] = len(sent)
        for chunk in (b"z" * 700, b"z" * 300):
            crawler.signals.send_catch_log(signals.bytes_received, data=chunk, request=request, spider=None)
        await mw.process_exception(request, TimeoutError())
        await mw.spider_closed()
        out["after_close"] = crawler.signals.send_catch_log(signals.bytes_received, data=b"z", request=request,
                                                            spider=None)
        return crawler.stats.get_stats()

    stats = asyncio.run(main())
    head = get_header_size(Headers({"Content-Type": "text/html"})) + get_status_size(200) + 4
    assert out["receivers"] == 1
    assert stats["byte_budget/bytes_settled"] == head + 1000
    assert out["after_close"] == []  # disconnected: a closed middleware is not kept alive by the signals
