"""crawler.scrapy_internals: the Scrapy internals it relies on are still there, and its Downloader works.

The first tests fail, naming the internal, when a Scrapy upgrade changes
something :mod:`crawler.scrapy_internals` depends on: re-check that module
against the new release, then update the recorded fingerprints here.

crawler.scrapy_internals.Downloader: a download slot never runs more than its concurrency.

Seen from the demo server: a real ``scrapy crawl`` through the frontier (which
hands the engine requests in batches) opens no more connections to a website
than ``CONCURRENT_REQUESTS_PER_DOMAIN``, the number Scrapy's connection pool
keeps per host. Scrapy 2.19's own downloader starts every request that reaches
a slot in one event-loop turn, up to ``CONCURRENT_REQUESTS``, and the pool
closes and reopens the surplus on every burst.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
from typing import TYPE_CHECKING

import pytest
import redis
import scrapy
from scrapy.core import engine as scrapy_engine
from scrapy.core.downloader import Downloader as ScrapyDownloader
from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware as ScrapyRobotsTxtMiddleware
from scrapy.utils.test import get_crawler

from tests.conftest import assert_clean_log

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import CrawlResult, DemoSite

ENV = {"RESOLVE_HOSTS": "*.test:127.0.0.1"}

# sha256 (first 16 hex digits) of the source of Scrapy 2.19.0's functions that
# crawler.scrapy_internals copies or whose private state it reads.
_SOURCES = {
    "scrapy.core.downloader.Downloader._process_queue": (ScrapyDownloader._process_queue, "872b81a4bbb4cb1a"),
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware.robot_parser":
        (ScrapyRobotsTxtMiddleware.robot_parser, "4e961c394befa0fc"),
}


def test_scrapy_is_the_release_the_internals_were_checked_against() -> None:
    assert scrapy.__version__.startswith("2.19."), (
        f"crawler/scrapy_internals.py was checked against Scrapy 2.19, found {scrapy.__version__}"
    )


@pytest.mark.parametrize("name", sorted(_SOURCES))
def test_copied_or_relied_on_source_is_unchanged(name: str) -> None:
    function, digest = _SOURCES[name]
    found = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert found == digest, f"{name} changed in this Scrapy release: re-check crawler/scrapy_internals.py"


@pytest.mark.parametrize(("owner", "attribute"), [
    (scrapy_engine._Slot, "nextcall"),
    (scrapy_engine._Slot, "inprogress"),
    (scrapy_engine._Slot, "closing"),
    (ScrapyDownloader, "slots"),
    (ScrapyDownloader, "ip_concurrency"),
    (ScrapyDownloader, "domain_concurrency"),
    (ScrapyDownloader, "per_slot_settings"),
])
def test_private_attributes_are_still_set(owner: type, attribute: str) -> None:
    source = inspect.getsource(owner.__init__)  # type: ignore[misc]
    assert f"self.{attribute}" in source, (
        f"{owner.__qualname__}.{attribute} is gone: re-check crawler/scrapy_internals.py"
    )


def test_engine_slot_and_crawler_engine_names() -> None:
    crawler = get_crawler()
    assert hasattr(crawler, "_engine"), "Crawler._engine is gone: re-check crawler/scrapy_internals.py"
    assert "self._slot" in inspect.getsource(scrapy_engine.ExecutionEngine), (
        "ExecutionEngine._slot is gone: re-check crawler/scrapy_internals.py"
    )
    assert "self._parsers" in inspect.getsource(ScrapyRobotsTxtMiddleware.__init__), (
        "RobotsTxtMiddleware._parsers is gone: re-check crawler/scrapy_internals.py"
    )


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
    # Requests held at their slot queue by politeness are not counted (politeness undoes DownloaderStats).
    assert len(records) == result.stats["downloader/request_count"] >= 300
    # Batches did reach the engine: more requests waited in the slot than it may run.
    assert result.stats["scheduler/dequeued/redis"] >= 300
    conns = collections.Counter(rec["conn"] for rec in records)
    # At most per_domain downloads at a time, all on kept-alive connections.
    assert len(conns) <= per_domain, f"{len(conns)} connections for {len(records)} requests"
