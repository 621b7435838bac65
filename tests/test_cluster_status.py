"""``python -m crawler status``: its Redis cost, and what it shows of a live two-worker crawl."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from crawler.frontier.store import MODE_DEDUPE, FrontierStore, PushEntry
from crawler.status import StatusKeys, read_status
from devtools.services import ROOT
from tests.conftest import start_crawl, wait_crawl

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import DemoSite

WEBSITES = 1000
TIMEOUT = 120.0  # overall limit of the waits below; none is a timed assertion
KEYS = StatusKeys("{shop_a}", "shop_a:start_urls", "crawler")


def status_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crawler", "--redis-url", redis_url, "status", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


async def _fill(redis_url: str, per_website: int, offset: int) -> None:
    """``per_website`` more requests in each of WEBSITES websites (website i gets i % 7 more, for a ranking)."""
    client = AsyncRedis.from_url(redis_url)
    store = FrontierStore(client, KEYS.prefix)
    entries = [PushEntry(f"site{w:04d}.test", f"{offset}-{w}-{i}", MODE_DEDUPE, 0, 0, b"{}")
               for w in range(WEBSITES) for i in range(per_website + (w % 7 if offset == 0 else 0))]
    for i in range(0, len(entries), 5000):
        await store.push(entries[i:i + 5000], "filler")
    await store.mark_not_before("site0003.test", float((await client.time())[0]) + 600)
    await client.hset("crawler:bb:overrides", "site0005.test", "100000")
    await client.aclose()


def _commands(r: redis.Redis) -> int:
    """Commands the server has run, but INFO itself."""
    stats: dict[str, Any] = r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def _status(redis_url: str) -> Any:
    client = AsyncRedis.from_url(redis_url)
    try:
        return await read_status(client, "shop_a", KEYS, top=20, per_website={}, default_budget=None)
    finally:
        await client.aclose()


@pytest.mark.timeout(600)
def test_redis_cost_grows_with_websites_never_with_queued_requests(redis_url: str) -> None:
    asyncio.run(_fill(redis_url, 100, 0))
    queued = 100 * WEBSITES + sum(w % 7 for w in range(WEBSITES))
    with redis.Redis.from_url(redis_url) as r:
        before = _commands(r)
        status = asyncio.run(_status(redis_url))
        cost = _commands(r) - before
        assert status.queued_total == queued >= 100_000 and status.websites_queued == WEBSITES
        assert [row["queued"] for row in status.top[:3]] == [106, 106, 106]  # the deepest first
        assert status.parked_total == 1 and status.parked[0]["website"] == "site0003.test"
        assert status.budgets == [{"website": "site0005.test", "used": 0, "budget": 100000,
                                   "source": "run-time override"}]
        # One ZCARD per website, one HGET per budget shown, and a fixed few.
        assert WEBSITES <= cost <= WEBSITES + 1 + 20, cost
        asyncio.run(_fill(redis_url, 100, 1))  # twice the queued requests, the same websites
        before = _commands(r)
        again = asyncio.run(_status(redis_url))
        assert again.queued_total == queued + 100 * WEBSITES
        assert _commands(r) - before == cost


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
def test_a_live_two_worker_crawl(demo_site: DemoSite, redis_url: str, mongo_server_uri: str, mongo_db: str,
                                 tmp_path: Path) -> None:
    with redis.Redis.from_url(redis_url) as r:
        r.lpush("shop_a:start_urls", demo_site.url("shop-a.test"))
    env = {"REDIS_URL": redis_url, "MONGO_URI": mongo_server_uri, "MONGO_DATABASE": mongo_db,
           "RESOLVE_HOSTS": "*.test:127.0.0.1"}
    # A small budget parks shop-a.test again and again: the workers keep running with queued requests.
    budget = subprocess.run([sys.executable, "-m", "middlewares.byte_budget", "--redis-url", redis_url, "set",
                             "shop-a.test", "40000"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert budget.returncode == 0, budget.stderr
    settings = {"BYTE_BUDGET_PARK_MAX_SECONDS": "10"}
    crawls = [start_crawl(tmp_path, "shop_a", settings, env, name=f"w{i}") for i in (1, 2)]
    try:
        deadline = time.monotonic() + TIMEOUT
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert all(c.proc.poll() is None for c in crawls)
            out = status_cli(redis_url, "shop_a", "--json")
            assert out.returncode == 0, out.stderr
            seen = json.loads(out.stdout)["shop_a"]
            used = seen["budgets"][0]["used"] if seen["budgets"] else 0
            if len(seen["workers"]) == 2 and seen["parked"] and seen["queued_total"] and used:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"status never showed two workers and a parked website: {seen}")
        assert seen["top"][0]["website"] == "shop-a.test" and seen["top"][0]["queued"] == seen["queued_total"] > 0
        assert seen["parked"][0]["website"] == "shop-a.test" and seen["parked"][0]["until"] > seen["now"]
        budget_row = seen["budgets"][0]
        assert budget_row == {"website": "shop-a.test", "budget": 40000, "used": budget_row["used"],
                              "source": "run-time override"} and budget_row["used"] > 0
        text = status_cli(redis_url, "shop_a").stdout
        assert "workers: 2" in text and "shop-a.test" in text
    finally:
        for crawl in crawls:
            crawl.proc.terminate()
        for crawl in crawls:
            wait_crawl(crawl)


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
