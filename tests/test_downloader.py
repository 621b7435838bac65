"""crawler.downloader.Downloader: a download slot never runs more than its concurrency.

Seen from the demo server: a real ``scrapy crawl`` through the frontier (which
hands the engine requests in batches) opens no more connections to a website
than ``CONCURRENT_REQUESTS_PER_DOMAIN``, the number Scrapy's connection pool
keeps per host. Scrapy 2.19's own downloader starts every request that reaches
a slot in one event-loop turn, up to ``CONCURRENT_REQUESTS``, and the pool
closes and reopens the surplus on every burst.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import redis

from tests.conftest import assert_clean_log

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import CrawlResult, DemoSite

ENV = {"RESOLVE_HOSTS": "*.test:127.0.0.1"}


def test_download_slot_concurrency_holds_for_batches(demo_site: DemoSite, redis_url: str,
                                                     run_crawl: Callable[..., CrawlResult]) -> None:
    per_domain = 2
    with redis.Redis.from_url(redis_url) as r:
        r.lpush("shop_a:start_urls", demo_site.url("shop-a.test", "/"))
    mark = demo_site.mark()
    result = run_crawl("shop_a", {"FRONTIER_IDLE_CLOSE_SECONDS": "1", "MONGO_WRITER_ENABLED": "False",
                                  "CONCURRENT_REQUESTS": "32", "CONCURRENT_REQUESTS_PER_DOMAIN": str(per_domain)},
                       env={**ENV, "REDIS_URL": redis_url})
    assert result.returncode == 0, result.log[-3000:]
    assert result.stats["finish_reason"] == "finished"
    assert_clean_log(result.log)
    records = [rec for rec in demo_site.log(mark) if rec["host"] == "shop-a.test"]
    assert len(records) == result.stats["downloader/request_count"] >= 300
    # Batches did reach the engine: more requests waited in the slot than it may run.
    assert result.stats["scheduler/dequeued/redis"] >= 300
    conns = collections.Counter(rec["conn"] for rec in records)
    # At most per_domain downloads at a time, all on kept-alive connections.
    assert len(conns) <= per_domain, f"{len(conns)} connections for {len(records)} requests"
