"""ByteBudgetMiddleware in-process: parking, robots.txt, clocks, run-time overrides, Redis outages and leases."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
from scrapy import Request
from scrapy.downloadermiddlewares.stats import get_header_size, get_status_size
from scrapy.http import Headers

from devtools.services import free_port
from middlewares.byte_budget.cli import main as cli
from middlewares.byte_budget.store import website_keys
from tests.byte_budget_helpers import response, run, server_time, wire_size
from tests.redis_clients import sync_redis

if TYPE_CHECKING:
    from middlewares.byte_budget.middleware import ByteBudgetMiddleware

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)


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
