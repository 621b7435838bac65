"""ByteBudgetMiddleware in-process: a real Crawler, real Redis, real Requests and Responses."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
from scrapy import Request, signals
from scrapy.downloadermiddlewares.redirect import RedirectMiddleware
from scrapy.downloadermiddlewares.stats import get_header_size, get_status_size
from scrapy.exceptions import StopDownload
from scrapy.http import Headers, HtmlResponse, Response
from scrapy.settings import Settings
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from devtools.services import free_port
from middlewares.byte_budget.cli import main as cli
from middlewares.byte_budget.config import ByteBudgetConfig
from middlewares.byte_budget.middleware import ByteBudgetMiddleware
from middlewares.byte_budget.store import website_keys
from tests.middleware_helpers import run_middleware
from tests.redis_clients import sync_redis

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)


def settings(redis_url: str, **extra: Any) -> dict[str, Any]:
    # One reservation per download unless a test is about leases.
    return {"BYTE_BUDGET_ENABLED": True, "REDIS_URL": redis_url, "BYTE_BUDGET_KEY_PREFIX": "t",
            "BYTE_BUDGET_LEASE_DOWNLOADS": 1, **extra}


def run(redis_url: str, extra: dict[str, Any], body: Callable[[ByteBudgetMiddleware], Awaitable[None]]) -> Any:
    """Build the middleware on a real crawler and run ``body`` between open and close."""
    return run_middleware(ByteBudgetMiddleware, settings(redis_url, **extra), body)


def response(request: Request, body: bytes, status: int = 200, flags: list[str] | None = None) -> HtmlResponse:
    headers = Headers({"Content-Type": "text/html", "Content-Length": str(len(body))})
    return HtmlResponse(request.url, status=status, headers=headers, body=body, request=request, flags=flags)


def wire_size(resp: HtmlResponse) -> int:
    return len(resp.body) + get_header_size(resp.headers) + get_status_size(resp.status) + 4


def server_time(redis_url: str) -> float:
    with sync_redis(redis_url) as r:
        sec, usec = r.time()
    return sec + usec / 1e6


@pytest.mark.parametrize(("name", "value"), [
    ("BYTE_BUDGET_DEFAULT", "lots"),
    ("BYTE_BUDGET_DEFAULT", -1),
    ("BYTE_BUDGET_DEFAULT", 1.5),
    ("BYTE_BUDGET_DEFAULT", "2.5e0"),
    ("BYTE_BUDGET_DEFAULT", True),
    ("BYTE_BUDGET_ESTIMATE_QUANTILE", 1.5),
    ("BYTE_BUDGET_PER_WEBSITE", "[1, 2]"),
    ("BYTE_BUDGET_PER_WEBSITE", {"shop-a.test": "x"}),
    ("BYTE_BUDGET_WINDOW_SECONDS", 0),
    ("BYTE_BUDGET_WINDOW_SECONDS", "soon"),
    ("BYTE_BUDGET_FALLBACK_WORKERS", 1.5),
    ("BYTE_BUDGET_REFRESH_SECONDS", -2),
    ("BYTE_BUDGET_LEASE_DOWNLOADS", 0),
    ("BYTE_BUDGET_LEASE_DOWNLOADS", 2.5),
    ("BYTE_BUDGET_LEASE_SECONDS", 0),
    ("WEBSITE_KEY", "path"),
])
def test_invalid_settings_name_the_setting(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        ByteBudgetConfig.from_settings(Settings({"REDIS_URL": "redis://127.0.0.1:1", name: value}))


def test_config_reads_settings() -> None:
    config = ByteBudgetConfig.from_settings(Settings({
        "REDIS_URL": "redis://h:1", "BYTE_BUDGET_DEFAULT": "100000",
        "BYTE_BUDGET_PER_WEBSITE": '{"Shop-A.test": 5000, "news.test": null}',
        "BYTE_BUDGET_WINDOW_SECONDS": "10", "DOWNLOAD_TIMEOUT": 20,
    }))
    assert config.default == 100_000
    assert config.per_website == {"shop-a.test": 5000, "news.test": None}
    assert config.window == 10
    assert config.reservation_expiry == 30
    assert config.strict


@pytest.mark.parametrize(("raw", "budget"), [
    ("1e6", 1_000_000), (1e6, 1_000_000), ("2000000", 2_000_000), (2.0e6, 2_000_000), (" 0 ", 0), (0, 0),
    (None, None), ("unlimited", None), ("None", None),
])
def test_budget_values(raw: Any, budget: int | None) -> None:
    """Whole numbers in any spelling; 0 blocks the website; ``unlimited`` (None) is no budget."""
    config = ByteBudgetConfig.from_settings(Settings({"REDIS_URL": "redis://h:1", "BYTE_BUDGET_DEFAULT": raw}))
    assert config.default == budget


def test_budget_error_uses_the_same_word_as_the_cli() -> None:
    with pytest.raises(ValueError, match=r"0 blocks the website\) or 'unlimited' \(None\), got 'lots'"):
        ByteBudgetConfig.from_settings(Settings({"REDIS_URL": "redis://h:1", "BYTE_BUDGET_DEFAULT": "lots"}))


def test_unbudgeted_website_is_not_touched(redis_url: str) -> None:
    async def body(mw: ByteBudgetMiddleware) -> None:
        assert await mw.process_request(Request("http://news.test/a")) is None

    stats = run(redis_url, {"BYTE_BUDGET_PER_WEBSITE": {"shop-a.test": 1000}}, body)
    assert stats["byte_budget/unlimited"] == 1
    assert "byte_budget/granted" not in stats
    with sync_redis(redis_url) as r:
        assert r.keys("t:bb:*") == []


def test_grant_settle_and_requeue(redis_url: str) -> None:
    out: dict[str, Any] = {}

    async def body(mw: ByteBudgetMiddleware) -> None:
        first = Request("http://www.shop-a.test/item/1", meta={"mine": 1})
        assert await mw.process_request(first) is None
        resp = response(first, b"x" * 3000)
        assert await mw.process_response(first, resp) is resp
        out["size"] = wire_size(resp)
        second = Request("http://shop-a.test/item/2", meta={"mine": 2})
        before = server_time(redis_url)
        requeued = await mw.process_request(second)
        out["requeued"], out["before"] = requeued, before

    stats = run(redis_url, {"BYTE_BUDGET_PER_WEBSITE": {"shop-a.test": 4000},
                            "BYTE_BUDGET_DEFAULT_ESTIMATE": 2000, "BYTE_BUDGET_PARK_MAX_SECONDS": 300}, body)
    requeued = out["requeued"]
    assert isinstance(requeued, Request)
    assert requeued.url == "http://shop-a.test/item/2"
    # The frontier requeues without its dupefilter; a dont_filter=True would be
    # copied by RedirectMiddleware to the redirect's target (fetched twice).
    assert not requeued.dont_filter
    assert requeued.meta["mine"] == 2
    assert requeued.meta["frontier_requeue"] is True
    assert requeued.meta["byte_budget_denials"] == 1
    # The learned estimate (3000 + margin) no longer fits before the first
    # page leaves the 60 s window, by the Redis server's clock.
    assert out["before"] + 59 < requeued.meta["frontier_not_before"] < out["before"] + 61
    assert stats["byte_budget/granted"] == 1
    assert stats["byte_budget/denied"] == 1
    assert stats["byte_budget/exhausted"] == 1
    assert stats["byte_budget/bytes_settled"] == out["size"]
    with sync_redis(redis_url) as r:
        state = website_keys("t", "shop-a.test")[2]
        assert float(r.hget(state, "used")) == out["size"]


def test_a_denied_request_that_redirects_leaves_its_target_to_the_dupefilter(redis_url: str) -> None:
    """A requeued request's redirect target is deduplicated: fetched once even if it is also linked."""
    out: dict[str, Any] = {}

    async def body(mw: ByteBudgetMiddleware) -> None:
        first = Request("http://shop-a.test/item/1")
        assert await mw.process_request(first) is None
        await mw.process_response(first, response(first, b"x" * 3000))
        denied = await mw.process_request(Request("http://shop-a.test/old/2"))
        assert isinstance(denied, Request)
        redirect = build_from_crawler(RedirectMiddleware, mw.crawler)
        moved = Response(denied.url, status=301, headers={"Location": "/item/2"}, request=denied)
        out["target"] = redirect.process_response(denied, moved)

    run(redis_url, {"BYTE_BUDGET_PER_WEBSITE": {"shop-a.test": 4000}, "BYTE_BUDGET_DEFAULT_ESTIMATE": 2000}, body)
    target = out["target"]
    assert isinstance(target, Request)
    assert target.url == "http://shop-a.test/item/2"
    assert not target.dont_filter


def test_requests_wait_in_place_for_their_turn_with_the_token(redis_url: str) -> None:
    """Nothing learned of a tight budget: downloads take turns with the token, the next as soon as one is done."""
    out: dict[str, Any] = {}

    async def body(mw: ByteBudgetMiddleware) -> None:
        first = Request("http://shop-a.test/item/1")
        assert await mw.process_request(first) is None  # the token's holder
        second, third = Request("http://shop-a.test/item/2"), Request("http://shop-a.test/item/3")
        waiting = [asyncio.create_task(mw.process_request(r)) for r in (second, third)]
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in waiting)
        await mw.process_response(first, response(first, b"x" * 3000))
        out["second"] = await asyncio.wait_for(waiting[0], 5)  # first come, first served
        assert not waiting[1].done()
        await mw.process_response(second, response(second, b"x" * 3000))
        out["third"] = await asyncio.wait_for(waiting[1], 5)
        await mw.process_response(third, response(third, b"x" * 3000))

    # Other workers' turns are polled every RETRY / 10 = 3 s: these come from the settles here.
    stats = run(redis_url, {"BYTE_BUDGET_PER_WEBSITE": {"shop-a.test": 100_000},
                            "BYTE_BUDGET_PARK_MAX_SECONDS": 60, "BYTE_BUDGET_RETRY_SECONDS": 30}, body)
    assert out["second"] is None and out["third"] is None  # granted, not sent back to the frontier
    assert stats["byte_budget/granted"] == 3
    assert stats["byte_budget/overdrafts"] == 3
    assert "byte_budget/denied" not in stats
    assert "byte_budget/exhausted" not in stats  # waiting for the token is not exhaustion


def test_a_turn_freed_by_another_worker_is_polled_not_slept_on(redis_url: str) -> None:
    """The token held in another worker: the first waiter polls every RETRY / 10, not every RETRY.

    A denial for the token says "retry in BYTE_BUDGET_RETRY_SECONDS" only as a
    guess; the holder may be done any moment. Here RETRY is 10 s (poll 1 s):
    the waiter must get its turn well within 5 s of the other worker's settle.
    """
    extra = {"BYTE_BUDGET_PER_WEBSITE": {"shop-a.test": 100_000}, "BYTE_BUDGET_PARK_MAX_SECONDS": 60,
             "BYTE_BUDGET_RETRY_SECONDS": 10}
    out: dict[str, float] = {}

    async def body(mw: ByteBudgetMiddleware) -> None:
        other: ByteBudgetMiddleware = build_from_crawler(ByteBudgetMiddleware,
                                                         get_crawler(settings_dict=settings(redis_url, **extra)))
        await other.spider_opened()
        try:
            first = Request("http://shop-a.test/item/1")
            assert await other.process_request(first) is None  # the other worker holds the token
            second = Request("http://shop-a.test/item/2")
            waiting = asyncio.create_task(mw.process_request(second))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            await other.process_response(first, response(first, b"x" * 3000))
            settled = time.monotonic()
            assert await asyncio.wait_for(waiting, 20) is None  # granted in place
            out["after"] = time.monotonic() - settled
            await mw.process_response(second, response(second, b"x" * 3000))
        finally:
            await other.spider_closed()

    run(redis_url, extra, body)
    assert out["after"] < 5, out


def test_a_page_above_its_grant_draws_the_rest_and_is_not_stopped(redis_url: str) -> None:
    out: dict[str, Any] = {}

    async def body(mw: ByteBudgetMiddleware) -> None:
        request = Request("http://shop-a.test/big", meta={"byte_budget_size": 4000})
        assert await mw.process_request(request) is None
        headers = Headers({"Content-Type": "text/html", "Content-Length": "50000"})
        mw.headers_received(headers=headers, body_length=50000, request=request, spider=None)  # no stop
        await mw.metered(request)
        mw.bytes_received(data=b"y" * 50000, request=request, spider=None)
        full = response(request, b"y" * 50000)
        assert await mw.process_response(request, full) is full
        out["full"] = wire_size(full)

    stats = run(redis_url, {"BYTE_BUDGET_DEFAULT": 1_000_000, "BYTE_BUDGET_DEFAULT_ESTIMATE": 4000}, body)
    assert "byte_budget/stopped" not in stats
    assert stats["byte_budget/draws"] == 1
    assert stats["byte_budget/bytes_drawn"] == out["full"] - 4000
    assert stats["byte_budget/bytes_settled"] == out["full"]
    with sync_redis(redis_url) as r:
        keys = website_keys("t", "shop-a.test")
        assert r.zcard(keys[1]) == 0  # the reservation and the draw, both settled
        assert float(r.hget(keys[2], "used")) == out["full"]


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


def test_parking_is_capped_so_budget_changes_reach_parked_websites(redis_url: str) -> None:
    out: list[Any] = []

    async def body(mw: ByteBudgetMiddleware) -> None:
        a = Request("http://shop-a.test/1")
        assert await mw.process_request(a) is None
        await mw.process_response(a, response(a, b"x" * 2000))
        before = server_time(redis_url)
        out.append(await mw.process_request(Request("http://shop-a.test/2")))
        out.extend((before, server_time(redis_url)))

    run(redis_url, {"BYTE_BUDGET_DEFAULT": 2500}, body)  # window 60 s, park at most 2.5 s
    requeued, before, after = out
    assert before + 2.5 <= requeued.meta["frontier_not_before"] <= after + 2.5


def test_robots_txt_waits_in_place(redis_url: str) -> None:
    """engine.download_async() would re-send a returned request at once: robots.txt waits instead."""
    out: list[Any] = []

    async def body(mw: ByteBudgetMiddleware) -> None:
        a = Request("http://shop-a.test/1")
        assert await mw.process_request(a) is None
        await mw.process_response(a, response(a, b"x" * 2000))
        with sync_redis(redis_url) as r:  # when the first page was settled (Redis time)
            settled = max(t for _, t in r.zrange(website_keys("t", "shop-a.test")[0], 0, -1, withscores=True))
        robots = Request("http://shop-a.test/robots.txt", meta={"dont_obey_robotstxt": True})
        out.append(await mw.process_request(robots))
        out.append(server_time(redis_url) - settled)

    stats = run(redis_url, {"BYTE_BUDGET_DEFAULT": 2500, "BYTE_BUDGET_WINDOW_SECONDS": 0.5,
                            "BYTE_BUDGET_DEFAULT_ESTIMATE": 400}, body)
    assert out[0] is None
    # Granted only once the first page had left the window (one window after its settle; the time
    # from settle to this request's first try, however long on a busy machine, does not matter).
    assert out[1] >= 0.5
    assert stats["byte_budget/granted"] == 2
    assert "byte_budget/denied" not in stats


_real_time = time.time


def test_clock_skew_does_not_matter(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers whose clocks are an hour off still agree: all times are Redis TIME."""
    results = []
    for skew in (-3600.0, 0.0, 3600.0):
        with sync_redis(redis_url) as r:
            r.flushall()
        monkeypatch.setattr(time, "time", lambda skew=skew: _real_time() + skew)

        async def body(mw: ByteBudgetMiddleware) -> None:
            a = Request("http://shop-a.test/1")
            assert await mw.process_request(a) is None
            await mw.process_response(a, response(a, b"x" * 2000))
            results.append((server_time(redis_url), await mw.process_request(Request("http://shop-a.test/2"))))

        run(redis_url, {"BYTE_BUDGET_DEFAULT": 2500, "BYTE_BUDGET_WINDOW_SECONDS": 30,
                        "BYTE_BUDGET_PARK_MAX_SECONDS": 300}, body)
    for now, requeued in results:
        assert isinstance(requeued, Request)
        assert now + 29 < requeued.meta["frontier_not_before"] <= now + 30


def test_runtime_override_via_cli(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def body(mw: ByteBudgetMiddleware) -> None:
        assert mw.budget_for("shop-a.test") == 1000
        assert mw.budget_for("news.test") is None
        assert cli(["--redis-url", redis_url, "--prefix", "t", "set", "shop-a.test", "250000"]) == 0
        assert cli(["set", "news.test", "5000", "--redis-url", redis_url, "--prefix", "t"]) == 0  # options after
        await mw.refresh_overrides()  # what the refresh task does every BYTE_BUDGET_REFRESH_SECONDS
        assert mw.budget_for("shop-a.test") == 250_000
        assert mw.budget_for("news.test") == 5000
        assert cli(["--redis-url", redis_url, "--prefix", "t", "set", "news.test", "unlimited"]) == 0
        assert cli(["--redis-url", redis_url, "--prefix", "t", "unset", "shop-a.test"]) == 0
        await mw.refresh_overrides()
        assert mw.budget_for("shop-a.test") == 1000
        assert mw.budget_for("news.test") is None

    run(redis_url, {"BYTE_BUDGET_PER_WEBSITE": {"shop-a.test": 1000}, "BYTE_BUDGET_REFRESH_SECONDS": 3600}, body)
    assert "news.test" in capsys.readouterr().out


def test_refresh_reads_the_overrides_only_when_their_counter_moved(redis_url: str) -> None:
    """A refresh costs one GET while nothing changed, not a copy of the hash; the command line moves the counter."""
    async def body(mw: ByteBudgetMiddleware) -> None:
        with sync_redis(redis_url) as r:
            r.hset("t:bb:overrides", "shop-a.test", "2000")  # by hand, no counter yet: read at every refresh
            await mw.refresh_overrides()
            assert mw.budget_for("shop-a.test") == 2000
            assert cli(["--redis-url", redis_url, "--prefix", "t", "set", "news.test", "5000"]) == 0
            await mw.refresh_overrides()
            assert (mw.budget_for("shop-a.test"), mw.budget_for("news.test")) == (2000, 5000)
            r.hset("t:bb:overrides", "shop-a.test", "3000")  # by hand again: the counter did not move
            await mw.refresh_overrides()
            assert mw.budget_for("shop-a.test") == 2000  # the hash was not read
            assert cli(["--redis-url", redis_url, "--prefix", "t", "unset", "news.test"]) == 0
            await mw.refresh_overrides()
            assert (mw.budget_for("shop-a.test"), mw.budget_for("news.test")) == (3000, 1000)

    run(redis_url, {"BYTE_BUDGET_DEFAULT": 1000, "BYTE_BUDGET_REFRESH_SECONDS": 3600}, body)


def test_cli_show_says_when_a_website_is_unknown(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["show", "nowhere.test", "--redis-url", redis_url, "--prefix", "t"]) == 1
    assert "nowhere.test: unknown website" in capsys.readouterr().out
    assert cli(["set", "shop-a.test", "5000", "--redis-url", redis_url, "--prefix", "t"]) == 0
    assert cli(["show", "shop-a.test", "--redis-url", redis_url, "--prefix", "t"]) == 0
    assert "shop-a.test: budget 5000; counted 0 bytes" in capsys.readouterr().out


def test_cli_rejects_bad_input(redis_url: str) -> None:
    with pytest.raises(SystemExit):
        cli(["--redis-url", redis_url, "set", "shop-a.test", "-5"])
    with pytest.raises(SystemExit):
        cli(["--redis-url", redis_url, "set", "www.shop-a.test", "5"])  # not a website key
    with sync_redis(redis_url) as r:
        assert r.keys("*") == []


def test_redis_down_fails_closed(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    out: list[Any] = []

    async def body(mw: ByteBudgetMiddleware) -> None:
        for n in range(3):
            out.append((time.time(), await mw.process_request(Request(f"http://shop-a.test/{n}"))))
        # An unbudgeted website is not affected.
        out.append((0, await mw.process_request(Request("http://news.test/"))))

    stats = run(dead, {"BYTE_BUDGET_PER_WEBSITE": {"shop-a.test": 100_000}}, body)
    for t, requeued in out[:3]:
        assert isinstance(requeued, Request)
        assert requeued.meta["frontier_requeue"] is True
        assert not requeued.dont_filter  # the frontier requeues without its dupefilter
        assert requeued.meta["frontier_not_before"] > t
    assert out[3][1] is None
    assert "byte_budget/granted" not in stats
    assert stats["byte_budget/denied"] == 3
    assert stats["byte_budget/redis_error/ConnectionError"] >= 3


def test_redis_down_with_local_fallback_budget(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    out: list[Any] = []

    async def body(mw: ByteBudgetMiddleware) -> None:
        for n in range(6):
            request = Request(f"http://shop-a.test/{n}", meta={"byte_budget_size": 1000})
            result = await mw.process_request(request)
            out.append(result)
            if result is None:
                await mw.process_response(request, response(request, b"x" * 800))

    # b = 4000 shared by 2 workers: this one may use 2000 per window.
    stats = run(dead, {"BYTE_BUDGET_DEFAULT": 4000, "BYTE_BUDGET_FALLBACK_WORKERS": 2}, body)
    assert stats["byte_budget/fallback_granted"] == 2
    assert [r is None for r in out] == [True, True, False, False, False, False]


def test_lease_serves_many_downloads_with_one_reservation(redis_url: str) -> None:
    """Far from binding: one Redis reservation for several downloads, settled once, exactly."""
    out: dict[str, Any] = {}

    async def body(mw: ByteBudgetMiddleware) -> None:
        sizes = []
        for n in range(10):
            request = Request(f"http://shop-a.test/{n}", meta={"byte_budget_size": 1000})
            assert await mw.process_request(request) is None
            resp = response(request, b"x" * 500)
            await mw.process_response(request, resp)
            sizes.append(wire_size(resp))
            await mw.idle()  # a renewal, when one was started, is in place before the next request
        out["sizes"] = sizes

    # Leases last an hour: they end by being used up (4 downloads) or at close,
    # never by the clock, so the count does not depend on the machine's speed.
    stats = run(redis_url, {"BYTE_BUDGET_DEFAULT": 10**9, "BYTE_BUDGET_LEASE_DOWNLOADS": 4,
                            "BYTE_BUDGET_LEASE_SECONDS": 3600}, body)
    assert stats["byte_budget/granted"] == 10
    # The next lease is reserved once 3 of 4 downloads are handed out, and
    # replaces the open one: 3 + 3 + 3 + 1 downloads.
    assert stats["byte_budget/leases"] == 4
    with sync_redis(redis_url) as r:
        keys = website_keys("t", "shop-a.test")
        assert r.zcard(keys[1]) == 0
        assert r.zcard(keys[0]) == 4
        assert float(r.hget(keys[2], "used")) == sum(out["sizes"])
        # All ten sizes were learned, from four settles.
        assert r.hget(keys[2], "sizes").decode().split(",") == [str(size) for size in out["sizes"]]


def test_lease_shrinks_to_one_download_when_the_budget_binds(redis_url: str) -> None:
    async def body(mw: ByteBudgetMiddleware) -> None:
        for n in range(3):
            request = Request(f"http://shop-a.test/{n}", meta={"byte_budget_size": 1000})
            assert await mw.process_request(request) is None
        denied = await mw.process_request(Request("http://shop-a.test/x", meta={"byte_budget_size": 1000}))
        assert isinstance(denied, Request)

    # b = 3000: room for exactly 3 pages; a lease of 32 would take more than a quarter of it.
    stats = run(redis_url, {"BYTE_BUDGET_DEFAULT": 3000, "BYTE_BUDGET_LEASE_DOWNLOADS": 32}, body)
    assert stats["byte_budget/granted"] == 3
    assert stats["byte_budget/denied"] == 1


def test_lease_spare_room_takes_a_page_above_the_estimate(redis_url: str) -> None:
    """A lease of L downloads reserves L + L/4 estimates: the spare absorbs a larger Content-Length."""
    out: dict[str, Any] = {}

    async def body(mw: ByteBudgetMiddleware) -> None:
        requests = [Request(f"http://shop-a.test/{n}", meta={"byte_budget_size": 1000}) for n in range(4)]
        for request in requests:  # 4 x 1000 bytes handed out of a 5000-byte lease
            assert await mw.process_request(request) is None
        with sync_redis(redis_url) as r:
            out["reserved"] = [m.decode() for m in r.zrange(website_keys("t", "shop-a.test")[1], 0, -1)]
        headers = Headers({"Content-Type": "text/html", "Content-Length": "1500"})
        size = get_header_size(headers) + get_status_size(200) + 4 + 1500
        assert size - 1000 <= 1000  # fits in the spare room
        mw.headers_received(headers=headers, body_length=1500, request=requests[0], spider=None)  # no stop
        for request in requests:
            await mw.process_response(request, response(request, b"x" * 500))

    stats = run(redis_url, {"BYTE_BUDGET_DEFAULT": 1_000_000, "BYTE_BUDGET_DEFAULT_ESTIMATE": 1000,
                            "BYTE_BUDGET_LEASE_DOWNLOADS": 4}, body)
    assert [m.split(":")[1] for m in out["reserved"]] == ["5000"]
    assert "byte_budget/stopped" not in stats
    assert stats["byte_budget/granted"] == 4


def test_next_lease_is_reserved_in_the_background(redis_url: str) -> None:
    """Once 3/4 of a lease is handed out the next one is reserved while downloads go on."""
    out: dict[str, Any] = {}

    async def body(mw: ByteBudgetMiddleware) -> None:
        requests = [Request(f"http://shop-a.test/{n}", meta={"byte_budget_size": 1000}) for n in range(4)]
        for request in requests[:3]:
            assert await mw.process_request(request) is None
        await mw.idle()  # the renewal, done while the first lease still serves
        with sync_redis(redis_url) as r:
            out["inflight"] = r.zcard(website_keys("t", "shop-a.test")[1])
        # The 4th download comes from the renewed lease, without a reservation of its own.
        assert await mw.process_request(requests[3]) is None
        for request in requests:
            resp = response(request, b"x" * 500)
            await mw.process_response(request, resp)
            out["size"] = out.get("size", 0) + wire_size(resp)

    stats = run(redis_url, {"BYTE_BUDGET_DEFAULT": 10**9, "BYTE_BUDGET_LEASE_DOWNLOADS": 4}, body)
    assert out["inflight"] == 2  # the first lease and the one reserved ahead
    assert stats["byte_budget/leases"] == 2
    assert stats["byte_budget/granted"] == 4
    with sync_redis(redis_url) as r:
        keys = website_keys("t", "shop-a.test")
        assert r.zcard(keys[1]) == 0  # both settled at close
        assert float(r.hget(keys[2], "used")) == out["size"]
