"""``python -m crawler status``: its Redis cost, and what it shows of a live two-worker crawl."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
import redis
from redis.asyncio import Redis as AsyncRedis
from scrapy.settings import Settings

from crawler.frontier.seen import SeenConfig
from crawler.frontier.store import MODE_DEDUPE, FrontierStore, PopReceipts, PushEntry
from crawler.status import SpiderStatus, StatusKeys, read_status, render
from demosite.sites import SiteConfig
from devtools.services import ROOT, start_demosite
from middlewares.byte_budget.store import load_script
from middlewares.byte_budget.store import website_keys as budget_keys
from middlewares.politeness.config import PolitenessConfig
from middlewares.politeness.store import Event, PolitenessStore
from tests.conftest import start_crawl, wait_crawl

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

WEBSITES = 1000
TIMEOUT = 120.0  # overall limit of the waits below; none is a timed assertion
KEYS = StatusKeys("{shop_a}", "shop_a:start_urls", "crawler", "crawler")


def status_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crawler", "--redis-url", redis_url, "status", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


async def _fill(client: AsyncRedis, per_website: int, offset: int) -> None:
    """``per_website`` more requests in each of WEBSITES websites (website i gets i % 7 more, for a ranking)."""
    store = FrontierStore(client, KEYS.prefix)
    entries = [PushEntry(f"site{w:04d}.test", f"{offset}-{w}-{i}", MODE_DEDUPE, 0, 0, b"{}")
               for w in range(WEBSITES) for i in range(per_website + (w % 7 if offset == 0 else 0))]
    for i in range(0, len(entries), 5000):
        await store.push(entries[i:i + 5000], "filler")
    await store.mark_not_before("site0003.test", float((await client.time())[0]) + 600)
    await client.hset("crawler:bb:overrides", "site0005.test", "100000")


async def _commands(r: AsyncRedis) -> int:
    """Commands the server has run, but INFO itself."""
    stats: dict[str, Any] = await r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def _status(redis_url: str, top: int = 20, **kwargs: Any) -> SpiderStatus:
    client = AsyncRedis.from_url(redis_url)
    try:
        return await read_status(client, "shop_a", KEYS, top=top, per_website=kwargs.get("per_website", {}),
                                 default_budget=kwargs.get("default_budget"))
    finally:
        await client.aclose()


def _shown(status: SpiderStatus) -> int:
    return len(status.top) + len(status.parked) + len(status.politeness) + len(status.budgets) + len(status.workers)


@pytest.mark.timeout(600)
@pytest.mark.asyncio
async def test_redis_cost_grows_with_websites_shown_never_with_the_queue(redis_url: str) -> None:
    r = AsyncRedis.from_url(redis_url)
    try:
        await _fill(r, 100, 0)
        queued = 100 * WEBSITES + sum(w % 7 for w in range(WEBSITES))
        costs = {}
        for top in (5, 50):
            before = await _commands(r)
            status = await _status(redis_url, top)
            costs[top] = await _commands(r) - before
            assert status.queued_total == queued >= 100_000 and status.websites_queued == WEBSITES
            assert len(status.top) == top and [row["queued"] for row in status.top[:3]] == [106, 106, 106]
            assert status.top == sorted(status.top, key=lambda row: -row["queued"])  # the deepest first
            assert status.parked_total == 1 and status.parked[0]["website"] == "site0003.test"
            assert status.parked[0]["reasons"] == ["not_before"] and status.index_missing == 0
            assert status.budgets == [{"website": "site0005.test", "used": 0, "budget": 100000,
                                       "source": "run-time override"}]
            # A fixed 20 commands at most (connection set-up included) and 5 per website shown; the
            # queue's 1,000 websites and 100,000 requests cost nothing (before the depth index: >= 1,000).
            assert costs[top] <= 20 + 5 * _shown(status), (top, costs[top], _shown(status))
        assert costs[5] <= costs[50] < 100  # 1,000 websites queued: the old scan sent one ZCARD each
        await _fill(r, 100, 1)  # twice the queued requests, the same websites
        before = await _commands(r)
        again = await _status(redis_url, 50)
        assert again.queued_total == queued + 100 * WEBSITES
        assert await _commands(r) - before == costs[50]
    finally:
        await r.aclose()


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[FrontierStore]:
    """shop_a's frontier store on the test Redis (its client closed after the test)."""
    client = AsyncRedis.from_url(redis_url)
    yield FrontierStore(client, KEYS.prefix)
    await client.aclose()


@pytest.mark.asyncio
async def test_depth_index_follows_every_script_that_moves_requests(redis_url: str, store: FrontierStore) -> None:
    client = store.redis
    await store.push([PushEntry(f"s{w}.test", f"{w}-{i}", MODE_DEDUPE, 0, 0, b"{}")
                      for w in range(3) for i in range(w + 2)], "w1")
    await store.push([PushEntry("s0.test", "0-0", MODE_DEDUPE, 0, 0, b"{}")], "w1")  # a duplicate: not stored
    assert await store.deepest(10) == ([("s2.test", 4), ("s1.test", 3), ("s0.test", 2)], 3, 9)
    receipts = PopReceipts()
    popped = await store.pop(6, "w1", receipts)  # two from each website (its fair share)
    assert len(popped.items) == 6
    assert await store.deepest(10) == ([("s2.test", 2), ("s1.test", 1)], 2, 3)
    handled = [field for _, field, _ in popped.items]  # the worker processed the first six
    receipts.failed(receipts.next_id(), 4)  # a pop whose reply "never arrives"
    await store.pop(4, "w1", receipts)  # the last three
    assert await store.deepest(10) == ([], 0, 0) and await store.queued() == 0
    assert await store.release("w1", handled, receipts) == 3  # release.lua: the unhandled back to their queues
    top, websites, total = await store.deepest(10)
    assert (top, websites, total) == ([("s2.test", 2), ("s1.test", 1)], 2, 3)
    assert {w.decode() for w in await client.zrange(store.sites_key, 0, -1)} == {"s1.test", "s2.test"}
    # A frontier written before the index existed: reindex rebuilds it.
    await client.delete(store.depths_key, store.queued_key)
    assert (await _status(redis_url)).index_missing == websites
    out = subprocess.run([sys.executable, "-m", "crawler", "reindex", "shop_a", "--redis-url", redis_url],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and "depth index rebuilt: 3 requests queued" in out.stdout, out.stderr
    assert await store.deepest(10) == (top, websites, total)
    await client.delete(store.depths_key, store.queued_key)
    assert await store.reindex() == 3 and await store.deepest(10) == (top, websites, total)


@pytest.mark.asyncio
async def test_a_pop_without_the_depth_index_strands_nothing(store: FrontierStore) -> None:
    """pop.lua trusts the index's new value when it says the queue holds more, and asks the queue
    (EXISTS) when it does not: a frontier whose index is missing (written before it) loses no website."""
    await store.push([PushEntry("s0.test", f"0-{i}", MODE_DEDUPE, 0, 0, b"{}") for i in range(5)], "w1")
    await store.redis.delete(store.depths_key, store.queued_key)
    receipts = PopReceipts()
    first = await store.pop(2, "w1", receipts)  # all it asked: the index says -2, the queue holds 3
    assert len(first.items) == 2 and first.sites_with_work == 1
    rest = await store.pop(10, "w1", receipts)
    assert len(rest.items) == 3 and rest.sites_with_work == 0


@pytest.mark.asyncio
async def test_parked_websites_say_why(redis_url: str) -> None:
    """Each politeness reason and the byte budget, from the components' own scripts, as status shows them."""
    client = AsyncRedis.from_url(redis_url)

    def store(cool: float) -> PolitenessStore:
        return PolitenessStore(client, PolitenessConfig.from_settings(Settings({
            "REDIS_URL": redis_url, "POLITENESS_KEY_PREFIX": "crawler", "POLITENESS_BREAKER_FAILURES": 1,
            "POLITENESS_BREAKER_COOL_SECONDS": cool})))

    politeness = store(600)
    frontier = FrontierStore(client, KEYS.prefix)
    try:
        await politeness.report("retry.test", "rate", "", 600, 1.0)
        await politeness.report("backoff.test", "rate", "", None, 1.0)
        await politeness.report("open.test", "fail", "", None, 1.0)
        half = await store(0.2).report("half.test", "fail", "", None, 1.0)
        await politeness.admit("delay.test", "t", 600, 0, 0, 1)
        await politeness.admit("rate.test", "t", 0, 5, 600, 1)
        for site in ("retry.test", "backoff.test", "open.test", "half.test"):
            await politeness.announce(Event(site, 0, "parked"), half.now)
        reserve = load_script(client, "reserve")
        denied = await reserve(keys=budget_keys("crawler", "budget.test"), args=[0, 60, 1000, 1000, 60, 1, 1, "", 0])
        assert int(denied[0]) == 0
        while (await client.time())[0] <= half.until:  # the event: half.test's cooling is over
            await asyncio.sleep(0.05)
        sites = ["retry.test", "backoff.test", "open.test", "half.test", "delay.test", "rate.test", "budget.test",
                 "other.test"]
        far = float((await client.time())[0]) + 900
        for site in sites:
            await frontier.push([PushEntry(site, site, MODE_DEDUPE, 0, far, b"{}")], "w")
        await client.hset("crawler:bb:overrides", "budget.test", "0")
        status = await _status(redis_url, default_budget=None)
        reasons = {row["website"]: row["reasons"] for row in status.parked}
        assert reasons == {"retry.test": ["retry_after"], "backoff.test": ["backoff"], "open.test": ["breaker_open"],
                           "half.test": ["breaker_half_open"], "delay.test": ["crawl_delay"],
                           "rate.test": ["request_rate"], "budget.test": ["byte_budget"],
                           "other.test": ["not_before"]}
        assert all(row["until"] == far for row in status.parked) and status.parked_total == len(sites)
        polite = {row["website"]: row["reason"] for row in status.politeness}
        assert polite == {"retry.test": "retry_after", "backoff.test": "backoff", "open.test": "breaker_open",
                          "half.test": "breaker_half_open"} and status.politeness_total == 4
        text = render([status])
        assert "breaker half-open, waiting for its probe" in text and "byte budget spent this window" in text
    finally:
        await client.aclose()


def test_cli_text_and_json(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as r:
        r.rpush("shop_a:start_urls", "http://shop-a.test/")
        r.zadd("{shop_a}:workers", {"host:1:abc": float(r.time()[0]) - 3600})
    out = status_cli(redis_url, "shop_a")
    assert out.returncode == 0, out.stderr
    found = re.search(r"== shop_a .*\nworkers: 1\n  host:1:abc  last busy (\d+)s ago", out.stdout)
    assert found and 3600 <= int(found.group(1)) < 3600 + TIMEOUT, out.stdout  # a minute's margin for a slow run
    assert "queued: 0 requests in 0 websites" in out.stdout and "seeds waiting 1" in out.stdout
    data = json.loads(status_cli(redis_url, "shop_a", "--json").stdout)
    assert data["shop_a"]["seeds_waiting"] == 1 and data["shop_a"]["workers"][0]["id"] == "host:1:abc"
    everything = json.loads(status_cli(redis_url, "--json").stdout)
    assert {"news", "shop_a", "shop_b"} <= set(everything)
    assert status_cli(redis_url, "nope").returncode != 0


@pytest.mark.e2e
def test_a_live_two_worker_crawl(redis_url: str, mongo_server_uri: str, mongo_db: str, tmp_path: Path) -> None:
    hosts = ("a.shop-a.test", "b.shop-a.test")  # two websites (WEBSITE_KEY=host), both allowed to shop_a
    # A third answers 429 with Retry-After: 600 to everything but robots.txt: politeness parks it.
    throttled = SiteConfig(host="c.shop-a.test", items=20, errors=0, throttle_after=0, throttle_for=3600,
                           throttle_retry_after=600)
    server = start_demosite(tmp_path / "site", (*(SiteConfig(host=h, items=200, page_bytes=1500, errors=0)
                                                  for h in hosts), throttled))
    try:
        with redis.Redis.from_url(redis_url) as r:
            r.lpush("shop_a:start_urls", *(f"http://{h}:{server.port}/" for h in (*hosts, throttled.host)))
            # Small budgets (run-time overrides, as `python -m middlewares.byte_budget set` writes them; the
            # CLI itself follows the project's WEBSITE_KEY) park both websites again and again: the workers
            # keep running with queued requests.
            r.hset("crawler:bb:overrides", mapping=dict.fromkeys(hosts, "40000"))
        env = {"REDIS_URL": redis_url, "MONGO_URI": mongo_server_uri, "MONGO_DATABASE": mongo_db,
               "RESOLVE_HOSTS": "*.test:127.0.0.1"}
        settings = {"BYTE_BUDGET_PARK_MAX_SECONDS": "10", "WEBSITE_KEY": "host"}
        crawls = [start_crawl(tmp_path, "shop_a", settings, env, name=f"w{i}") for i in (1, 2)]
        try:
            deadline = time.monotonic() + TIMEOUT
            seen: dict[str, Any] = {}
            while time.monotonic() < deadline:
                assert all(c.proc.poll() is None for c in crawls)
                out = status_cli(redis_url, "shop_a", "--json")
                assert out.returncode == 0, out.stderr
                seen = json.loads(out.stdout)["shop_a"]
                reasons = {r for row in seen["parked"] for r in row["reasons"]}
                if (len(seen["workers"]) == 2 and seen["websites_queued"] == 3
                        and {"byte_budget", "retry_after"} <= reasons and all(row["used"] for row in seen["budgets"])):
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"status never showed two workers, three queues and parked websites: {seen}")
            assert seen["workers_total"] == 2
            depths = {row["website"]: row["queued"] for row in seen["top"]}
            assert set(depths) == {*hosts, throttled.host} and all(depths.values())
            assert sum(depths.values()) == seen["queued_total"]
            parked = {row["website"]: row for row in seen["parked"]}
            budgeted = [parked[h] for h in hosts if h in parked]
            assert budgeted and all(row["until"] > seen["now"] for row in budgeted)
            # Each says the byte budget, but a mark that is just ending: its window (the reason) may have
            # ended a moment before the mark itself, set to the window's end plus the worker's pop latency.
            assert any("byte_budget" in row["reasons"] for row in budgeted), budgeted
            assert all("byte_budget" in row["reasons"] or row["in"] < 1.0 for row in budgeted), budgeted
            held = parked[throttled.host]  # parked by politeness until Retry-After's 600 s are over
            assert held["reasons"] == ["retry_after"] and 600 - TIMEOUT < held["until"] - seen["now"] <= 600
            assert [(p["website"], p["reason"]) for p in seen["politeness"]] == [(throttled.host, "retry_after")]
            assert [(b["website"], b["budget"], b["source"]) for b in seen["budgets"]] == [
                (h, 40000, "run-time override") for h in hosts]
            text = status_cli(redis_url, "shop_a").stdout
            assert "workers: 2" in text and all(h in text for h in hosts) and "Retry-After" in text
        finally:
            for crawl in crawls:
                crawl.proc.terminate()
            for crawl in crawls:
                wait_crawl(crawl)
    finally:
        server.stop()


def test_watch_redraws_in_place_until_interrupted(redis_url: str) -> None:
    import signal

    with subprocess.Popen([sys.executable, "-m", "crawler", "--redis-url", redis_url, "status", "shop_a",
                           "--watch", "0.1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            assert proc.stdout is not None
            seen = b""
            deadline = time.monotonic() + TIMEOUT
            while seen.count(b"\x1b[H\x1b[2J== shop_a") < 2 and time.monotonic() < deadline:
                seen += proc.stdout.read1(4096)
            assert seen.count(b"\x1b[H\x1b[2J== shop_a") >= 2  # home, clear screen, the status: twice
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.asyncio
@pytest.mark.parametrize("seen", [SeenConfig(), SeenConfig(ttl=3600), SeenConfig(mode="bloom", capacity=10_000)])
async def test_fingerprints_seen_in_every_dedupe_mode(redis_url: str, seen: SeenConfig) -> None:
    client = AsyncRedis.from_url(redis_url)
    try:
        await FrontierStore(client, KEYS.prefix, seen.spec).push(
            [PushEntry("s.test", f"fp{i}", MODE_DEDUPE, 0, 0, b"{}") for i in range(40)], "w")
        status = await read_status(client, "shop_a", replace(KEYS, seen_spec=seen.spec), top=5, per_website={},
                                   default_budget=None)
        assert status.seen == 40 and status.queued_total == 40
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_status_shows_leases_and_failed_requests(redis_url: str, store: FrontierStore) -> None:
    client = store.redis
    await store.push([PushEntry("a.test", f"fp{i}", MODE_DEDUPE, 0, 0, b"{}") for i in range(5)], "w1")
    popped = await store.pop(3, "w1", PopReceipts(), lease=60)
    await client.rpush(store.failed_key, b'{"reason": "test"}')
    status = await _status(redis_url)
    assert status.lease_workers == 1 and status.failed == 1
    assert [(x["worker"], x["held"]) for x in status.leases] == [("w1", 3)]
    assert 0 < status.leases[0]["deadline_in"] <= 60
    text = render([status])
    assert "leases: 3 requests held by 1 workers" in text and "failed requests 1" in text
    await store.pop(0, "w1", PopReceipts(), lease=60, acks=[field for _, field, _ in popped.items])
    assert (await _status(redis_url)).lease_workers == 0  # all acknowledged: the lease is gone
