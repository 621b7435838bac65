"""Kill soak (issue 14): 3 workers crawl 3,451 pages while one of them is ``kill -9``'d 8 times during the
first 80% of the pages (every ~1.5-3 s here) and replaced, until the crawl closes by itself. Judged from the
demo server's log and MongoDB: every page fetched, pages fetched twice within the stated bound
(2 x (FRONTIER_PREFETCH + CONCURRENT_REQUESTS) per kill, docs/frontier.md "Leased delivery"), every item once,
no lease left. About 60-90 s on a shared 2-core machine (the long test of this file)."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
import redis
from pymongo import MongoClient

from demosite.sites import SiteConfig
from devtools.services import start_demosite, start_redis
from tests.conftest import DemoSite, start_crawl, wait_crawl

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from devtools.services import Server
    from tests.conftest import RunningCrawl

SITE = SiteConfig(host="shop-a.test", kind="shop", items=3000, page_bytes=2000, errors=0)
PREFETCH = 16
CONCURRENT = 16
LEASE = 5.0
KILLS = 8  # one at each ninth of the first 80% of the pages: the schedule follows the crawl, not the clock


@pytest.fixture
def soak_site(tmp_path: Path) -> Iterator[DemoSite]:
    server = start_demosite(tmp_path / "demo", (SITE,))
    yield DemoSite(server)
    server.stop()


@pytest.fixture
def soak_redis(tmp_path: Path) -> Iterator[Server]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def test_kill_soak_loses_nothing(soak_site: DemoSite, soak_redis: Server, mongo_server_uri: str, mongo_db: str,
                                 tmp_path: Path) -> None:
    env = {"REDIS_URL": soak_redis.url, "MONGO_URI": mongo_server_uri, "MONGO_DATABASE": mongo_db,
           "RESOLVE_HOSTS": "*.test:127.0.0.1"}
    settings = {"FRONTIER_IDLE_CLOSE_SECONDS": "2", "FRONTIER_LEASE_SECONDS": str(LEASE),
                "FRONTIER_PREFETCH": str(PREFETCH), "CONCURRENT_REQUESTS": str(CONCURRENT),
                "CONCURRENT_REQUESTS_PER_DOMAIN": str(CONCURRENT), "BYTE_BUDGET_ENABLED": "False",
                "MONGO_WRITER_JOURNAL_DIR": str(tmp_path / "journal")}
    with redis.Redis.from_url(soak_redis.url) as r:
        r.lpush("shop_a:start_urls", json.dumps({"url": soak_site.url(SITE.host)}))
    started = 0

    def start() -> RunningCrawl:
        nonlocal started
        started += 1
        return start_crawl(tmp_path, "shop_a", settings, env, name=f"w{started}")

    workers = [start() for _ in range(3)]
    expected = sum(SITE.expected_pages().values())
    kills = 0
    deadline = time.monotonic() + 300
    # Kill k comes once k ninths of 80% of the pages are fetched: however fast the machine crawls, the
    # workers are killed KILLS times mid-crawl (a fixed period let a fast machine reach 80% after 2 kills),
    # the first three while crawling since the start; then the survivors finish, reclaiming the last leases.
    while kills < KILLS:
        assert time.monotonic() < deadline, "the crawl did not end in time"
        fetched = {rec["path"] for rec in soak_site.log() if rec["host"] == SITE.host}
        if len(fetched) >= (kills + 1) * 0.8 * expected / (KILLS + 1):
            victim = workers[kills % 3]
            assert victim.proc.poll() is None, "a worker exited during the crawl"
            victim.proc.kill()  # SIGKILL: no hand-back, no flush
            victim.proc.wait()
            kills += 1
            workers[(kills - 1) % 3] = start()
        time.sleep(0.2)
    results = [wait_crawl(w, timeout=max(30.0, deadline - time.monotonic())) for w in workers]
    for res in results:  # the crawl closes by itself
        assert res.returncode == 0 and res.stats.get("finish_reason") == "finished", res.log[-3000:]

    log = [rec for rec in soak_site.log() if rec["host"] == SITE.host]
    counts = Counter(rec["path"] for rec in log if rec["path"] != "/robots.txt")
    assert len(counts) == expected, f"{expected - len(counts)} pages never fetched"
    twice = sum(n - 1 for n in counts.values())
    bound = kills * 2 * (PREFETCH + CONCURRENT)
    assert twice <= bound, f"{twice} pages fetched again after {kills} kills; the bound is {bound}"
    with MongoClient(mongo_server_uri) as client:
        docs = list(client[mongo_db]["product"].find({}, {"_id": 0, "sku": 1}))
    skus = Counter(d["sku"] for d in docs)
    assert set(skus) == {f"SHOP-A-{n:06d}" for n in range(SITE.items)} and max(skus.values()) == 1
    with redis.Redis.from_url(soak_redis.url) as r:
        assert not r.keys("{shop_a}:pops:*") and not r.zcard("{shop_a}:leases"), "a lease left behind"
        assert not r.keys("{shop_a}:q:*")
    print(f"kill soak: {kills} kills, {len(log)} fetches of {expected} pages, {twice} again (bound {bound})")
