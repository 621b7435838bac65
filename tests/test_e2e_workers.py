"""Two real worker processes share one Redis frontier and one MongoDB."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import redis
from pymongo import MongoClient

from devtools.demo import analyse
from tests.conftest import TEST_SITES, assert_clean_log, start_crawl, wait_crawl

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import DemoSite


def test_two_workers_share_the_crawl(
    demo_site: DemoSite, redis_url: str, mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    site = TEST_SITES[0]  # shop-a.test
    with redis.Redis.from_url(redis_url) as r:
        r.lpush("shop_a:start_urls", json.dumps({"url": demo_site.url(site.host)}))
    mark = demo_site.mark()
    env = {"REDIS_URL": redis_url, "MONGO_URI": mongo_server_uri, "MONGO_DATABASE": mongo_db,
           "RESOLVE_HOSTS": "*.test:127.0.0.1"}
    settings = {"FRONTIER_IDLE_CLOSE_SECONDS": "2", "CONCURRENT_REQUESTS_PER_DOMAIN": "8"}
    crawls = [start_crawl(tmp_path, "shop_a", settings, env, name=f"w{i}") for i in (1, 2)]
    results = [wait_crawl(c) for c in crawls]
    for result in results:
        assert result.returncode == 0, result.log[-3000:]
        assert result.stats["finish_reason"] == "finished"
        assert_clean_log(result.log)
        # The project's workers run with the GC tuning (crawler/extensions/gc_tuning.py) on.
        assert result.stats["gc_tuning/frozen_objects"] > 10_000

    records = [r for r in demo_site.log(mark) if r["host"] == site.host]
    summary = analyse(records, {"shop_a": site.host})[site.host]
    expected = site.expected_pages()
    # Every distinct URL once: home, listings, items, redirects, error pages, robots.txt.
    assert summary["distinct"] == sum(expected.values()) + 1
    # Duplicates only where explained: each worker reads robots.txt once,
    # RetryMiddleware fetches each 500 page 3 times, and a 429 page (always
    # 429, Retry-After: 1) is fetched once, again after each of politeness's
    # 3 parks (POLITENESS_MAX_REQUEUES), then twice more by RetryMiddleware:
    # exactly. (A 500 answered while the website was parked by a 429 was once
    # requeued like a failure under an open breaker, up to 3 more fetches.)
    errors = min(site.errors, site.pages)
    dup = summary["duplicates"]
    assert dup["robots"] == 1 and dup["unexplained"] == 0, summary
    assert summary["error_fetches"] == {**{f"/broken/{k}": 3 for k in range(1, errors + 1)},
                                        **{f"/busy/{k}": 1 + 3 + 2 for k in range(1, errors + 1)}}, summary
    assert dup["retries"] == 2 * errors + 5 * errors, summary

    pages = [res.stats["downloader/response_count"] for res in results]
    assert sum(pages) == summary["requests"]  # the server's log agrees with the crawlers' stats
    assert min(pages) >= 0.2 * sum(pages), f"one worker did almost nothing: {pages}"
    wire = summary["bytes"]
    counted = sum(res.stats["downloader/response_bytes"] for res in results)
    # Scrapy rebuilds headers and drops chunk framing; within 2% of the wire.
    assert abs(counted - wire) / wire < 0.02

    with MongoClient(mongo_server_uri) as client:
        docs = list(client[mongo_db]["product"].find({}, {"_id": 0}))
    assert len(docs) == site.items == sum(res.stats["item_scraped_count"] for res in results)
    assert len({d["url"] for d in docs}) == site.items
    assert {d["sku"] for d in docs} == {f"SHOP-A-{n:06d}" for n in range(site.items)}
