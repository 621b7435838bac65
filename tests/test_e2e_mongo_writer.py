"""Real ``scrapy crawl`` workers and the MongoDB writer: SIGTERM and kill -9 lose no acknowledged item."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import TYPE_CHECKING

import pytest
import redis
from pymongo import MongoClient

from devtools.services import free_port, start_secantus
from pipelines.journal import pending_records
from tests.conftest import TEST_SITES, assert_clean_log, start_crawl, wait_crawl

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import DemoSite, RunningCrawl

pytestmark = pytest.mark.e2e

SCRAPED = re.compile(r"DEBUG: Scraped from <\d+ (\S+)>")


def wait_scraped(crawl: RunningCrawl, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if crawl.log_path.exists() and len(SCRAPED.findall(crawl.log_path.read_text(errors="replace"))) >= count:
            return
        assert crawl.proc.poll() is None, "the worker ended early"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} items scraped in {timeout}s")


def setup(demo_site: DemoSite, redis_url: str, mongo_server_uri: str, mongo_db: str,
          tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    with redis.Redis.from_url(redis_url) as r:
        r.lpush("shop_a:start_urls", json.dumps({"url": demo_site.url(TEST_SITES[0].host)}))
    env = {"REDIS_URL": redis_url, "MONGO_URI": mongo_server_uri, "MONGO_DATABASE": mongo_db,
           "RESOLVE_HOSTS": "*.test:127.0.0.1"}
    settings = {"FRONTIER_IDLE_CLOSE_SECONDS": "1", "LOG_LEVEL": "DEBUG", "CONCURRENT_REQUESTS_PER_DOMAIN": "4",
                "MONGO_WRITER_JOURNAL_DIR": str(tmp_path / "journal"), "MONGO_WRITER_BATCH_SIZE": "50"}
    return env, settings


def product_urls(uri: str, db: str) -> list[str]:
    with MongoClient(uri) as client:
        return [d["url"] for d in client[db]["product"].find({}, {"url": 1})]


def test_sigterm_flushes_every_scraped_item(
    demo_site: DemoSite, redis_url: str, mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    env, settings = setup(demo_site, redis_url, mongo_server_uri, mongo_db, tmp_path)
    crawl = start_crawl(tmp_path, "shop_a", settings, env)
    wait_scraped(crawl, 60)
    os.kill(crawl.proc.pid, signal.SIGTERM)
    result = wait_crawl(crawl)
    assert result.returncode == 0
    assert result.stats["finish_reason"] == "shutdown"
    assert_clean_log(result.log)
    scraped = SCRAPED.findall(result.log)
    stored = product_urls(mongo_server_uri, mongo_db)
    assert len(stored) == len(set(stored)) == result.stats["item_scraped_count"] == len(scraped)
    assert set(stored) == set(scraped)
    assert result.stats["mongo_writer/left_in_journal"] == 0
    assert pending_records(tmp_path / "journal") == 0


def test_kill_9_loses_no_acknowledged_item(
    demo_site: DemoSite, redis_url: str, mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    env, settings = setup(demo_site, redis_url, mongo_server_uri, mongo_db, tmp_path)
    # A long flush interval and large batches: at the kill, most scraped
    # items are in the journal only, not yet in MongoDB.
    crawl = start_crawl(tmp_path, "shop_a", {**settings, "MONGO_WRITER_FLUSH_INTERVAL": "60",
                                             "MONGO_WRITER_BATCH_SIZE": "1000"}, env, name="killed")
    wait_scraped(crawl, 80)
    crawl.proc.kill()
    crawl.proc.wait()
    acknowledged = set(SCRAPED.findall(crawl.log_path.read_text(errors="replace")))
    assert len(acknowledged) >= 80
    assert len(product_urls(mongo_server_uri, mongo_db)) < len(acknowledged)
    assert pending_records(tmp_path / "journal") >= len(acknowledged)

    # The next worker adopts the journal and replays it. (It starts from a
    # fresh frontier: resuming scrapy-redis's queue is the frontier's business.)
    with redis.Redis.from_url(redis_url) as r:
        r.flushall()
    setup(demo_site, redis_url, mongo_server_uri, mongo_db, tmp_path)
    result = wait_crawl(start_crawl(tmp_path, "shop_a", settings, env, name="next"))
    assert result.returncode == 0, result.log[-3000:]
    assert result.stats["mongo_writer/adopted"] >= len(acknowledged)
    stored = product_urls(mongo_server_uri, mongo_db)
    assert acknowledged <= set(stored), f"lost: {sorted(acknowledged - set(stored))[:5]}"
    assert len(stored) == len(set(stored)) == TEST_SITES[0].items
    assert pending_records(tmp_path / "journal") == 0


def test_mongodb_killed_and_restarted_during_a_real_crawl(
    demo_site: DemoSite, redis_url: str, mongo_db: str, tmp_path: Path
) -> None:
    port = free_port()
    storage = tmp_path / "secantus"
    server = start_secantus(tmp_path, port, storage)
    try:
        env, settings = setup(demo_site, redis_url, server.url, mongo_db, tmp_path)
        settings.update({"MONGO_WRITER_SERVER_TIMEOUT": "0.5", "MONGO_WRITER_RETRY_TIMES": "1",
                         "MONGO_WRITER_RETRY_BACKOFF": "0.1", "MONGO_WRITER_RETRY_BACKOFF_MAX": "0.5",
                         "MONGO_WRITER_BATCH_SIZE": "20", "CONCURRENT_REQUESTS_PER_DOMAIN": "2",
                         "DOWNLOAD_DELAY": "0.01"})
        crawl = start_crawl(tmp_path, "shop_a", settings, env)
        wait_scraped(crawl, 40)
        server.kill()
        wait_scraped(crawl, 140)
        server.proc = start_secantus(tmp_path, port, storage).proc
        result = wait_crawl(crawl)
        with MongoClient(server.url) as client:
            stored = [d["url"] for d in client[mongo_db]["product"].find({}, {"url": 1})]
    finally:
        server.stop()
    assert result.returncode == 0, result.log[-3000:]
    assert_clean_log(result.log, allowed=("Gave up retrying", "MongoDB unreachable"))
    # 100 items scraped during the outage, more than the buffer (4 x 20)
    # holds: only declaring MongoDB down (no back-pressure) let them through.
    assert result.stats["mongo_writer/down"] >= 1
    scraped = SCRAPED.findall(result.log)
    assert len(stored) == len(set(stored)) == len(scraped) == result.stats["item_scraped_count"] == TEST_SITES[0].items
    assert set(stored) == set(scraped)
    assert result.stats["mongo_writer/left_in_journal"] == 0


def test_mongodb_down_for_the_whole_crawl_is_replayed_by_the_next_worker(
    demo_site: DemoSite, redis_url: str, mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    nowhere = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    env, settings = setup(demo_site, redis_url, nowhere, mongo_db, tmp_path)
    settings.update({"MONGO_WRITER_SERVER_TIMEOUT": "0.5", "MONGO_WRITER_RETRY_TIMES": "1",
                     "MONGO_WRITER_RETRY_BACKOFF": "0.1", "MONGO_WRITER_CLOSE_TIMEOUT": "2"})
    down = wait_crawl(start_crawl(tmp_path, "shop_a", settings, env, name="down"))
    assert down.returncode == 0, down.log[-3000:]
    # The crawl was not held up, and everything it scraped is in the journal.
    scraped = set(SCRAPED.findall(down.log))
    assert len(scraped) == down.stats["item_scraped_count"] == TEST_SITES[0].items
    assert down.stats["mongo_writer/down"] >= 1
    assert down.stats["mongo_writer/left_in_journal"] == TEST_SITES[0].items
    assert pending_records(tmp_path / "journal") == TEST_SITES[0].items

    # The next worker (nothing left to crawl) replays the journal and closes.
    env["MONGO_URI"] = mongo_server_uri
    result = wait_crawl(start_crawl(tmp_path, "shop_a", settings, env, name="next"))
    assert result.returncode == 0, result.log[-3000:]
    assert_clean_log(result.log)
    assert result.stats["mongo_writer/adopted"] == TEST_SITES[0].items
    stored = product_urls(mongo_server_uri, mongo_db)
    assert len(stored) == len(set(stored)) == TEST_SITES[0].items
    assert set(stored) == scraped
    assert pending_records(tmp_path / "journal") == 0
