"""ByteBudgetMiddleware in-process: settings, grants, settles and turns; a real Crawler, real Redis, real
Requests and Responses."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from scrapy import Request
from scrapy.downloadermiddlewares.redirect import RedirectMiddleware
from scrapy.http import Headers, Response
from scrapy.settings import Settings
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from middlewares.byte_budget.config import ByteBudgetConfig
from middlewares.byte_budget.middleware import ByteBudgetMiddleware
from middlewares.byte_budget.store import website_keys
from tests.byte_budget_helpers import response, run, server_time, settings, wire_size
from tests.redis_clients import sync_redis

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)


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
