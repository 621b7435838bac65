"""A worker whose Redis stops answering (SIGSTOP) is asked to close: it exits within a bound, and nothing
it held is lost. Judged from the demo server's log."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest
import redis

from devtools.services import start_redis
from tests.conftest import TEST_SITES, start_crawl, wait_crawl

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from devtools.services import Server
    from tests.conftest import DemoSite

ENV = {"RESOLVE_HOSTS": "*.test:127.0.0.1"}
SOCKET_TIMEOUT = 1.0
CLOSE_TIMEOUT = 20.0
# Scrapy's own shutdown (downloads under way finish, stats, extensions) on a busy 2-core machine.
MARGIN = 10.0


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Server]:
    server = start_redis(tmp_path / "redis")
    yield server
    os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def _fetched(demo_site: DemoSite, mark: int) -> list[dict[str, object]]:
    return [rec for rec in demo_site.log(mark) if rec["host"] == "shop-a.test"]


def test_worker_closes_while_redis_is_stopped_and_loses_nothing(demo_site: DemoSite, private_redis: Server,
                                                                tmp_path: Path) -> None:
    settings = {"ITEM_PIPELINES": "{}", "BYTE_BUDGET_ENABLED": "False", "FRONTIER_IDLE_CLOSE_SECONDS": "1",
                "REDIS_SOCKET_TIMEOUT": str(SOCKET_TIMEOUT), "REDIS_CONNECT_TIMEOUT": str(SOCKET_TIMEOUT),
                "FRONTIER_CLOSE_TIMEOUT": str(CLOSE_TIMEOUT), "DOWNLOAD_DELAY": "0.02",
                "CONCURRENT_REQUESTS_PER_DOMAIN": "2", "FRONTIER_PREFETCH": "16"}
    env = {**ENV, "REDIS_URL": private_redis.url}
    with redis.Redis.from_url(private_redis.url) as r:
        r.lpush("shop_a:start_urls", demo_site.url("shop-a.test", "/"))
    mark = demo_site.mark()
    w1 = start_crawl(tmp_path, "shop_a", settings, env, name="w1")
    deadline = time.monotonic() + 60
    while len(_fetched(demo_site, mark)) < 40:  # mid-crawl
        assert w1.proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    time.sleep(3 * SOCKET_TIMEOUT)  # the worker's calls time out
    w1.proc.send_signal(signal.SIGINT)  # as Ctrl-C or scrapyd's cancel
    asked = time.monotonic()
    time.sleep(2 * SOCKET_TIMEOUT)  # closing while Redis is still silent
    os.kill(private_redis.proc.pid, signal.SIGCONT)
    r1 = wait_crawl(w1, timeout=CLOSE_TIMEOUT + MARGIN)
    exited_after = time.monotonic() - asked
    assert exited_after < CLOSE_TIMEOUT + MARGIN
    assert r1.stats["finish_reason"] == "shutdown"
    assert r1.stats.get("frontier/redis_error/TimeoutError", 0) >= 1, r1.stats
    assert not r1.stats.get("frontier/lost_on_close")
    assert r1.log.count("Frontier lost Redis") == 1
    assert "Traceback" not in r1.log, r1.log[-3000:]
    # A later worker fetches everything the first one held: the crawl is complete.
    r2 = wait_crawl(start_crawl(tmp_path, "shop_a", settings, env, name="w2"), timeout=120)
    assert r2.returncode == 0, r2.log[-3000:]
    paths = {rec["path"] for rec in _fetched(demo_site, mark)}
    site = TEST_SITES[0]
    assert len(paths) == sum(site.expected_pages().values()) + 1  # + robots.txt: nothing lost
    with redis.Redis.from_url(private_redis.url) as r:
        assert not r.keys("{shop_a}:pops:*")  # nothing left unacknowledged


def test_sigterm_hands_back_at_once_and_the_other_worker_finishes(demo_site: DemoSite, private_redis: Server,
                                                                   tmp_path: Path) -> None:
    """SIGTERM (a deploy, scrapyd's cancel) mid-crawl: the worker returns what it holds and exits within
    FRONTIER_CLOSE_TIMEOUT + margin; the other worker fetches every page, no lease time to wait for (the
    lease is longer than the whole test may take, and the idle close waits for every lease). Requests that
    finally failed (500 and 429 pages after their retries) are in the spider's failed list."""
    settings = {"ITEM_PIPELINES": "{}", "BYTE_BUDGET_ENABLED": "False", "FRONTIER_IDLE_CLOSE_SECONDS": "1",
                "FRONTIER_CLOSE_TIMEOUT": str(CLOSE_TIMEOUT), "DOWNLOAD_DELAY": "0.02",
                "CONCURRENT_REQUESTS_PER_DOMAIN": "2", "FRONTIER_PREFETCH": "16", "FRONTIER_LEASE_SECONDS": "600"}
    env = {**ENV, "REDIS_URL": private_redis.url}
    with redis.Redis.from_url(private_redis.url) as r:
        r.lpush("shop_a:start_urls", demo_site.url("shop-a.test", "/"))
    mark = demo_site.mark()
    w1 = start_crawl(tmp_path, "shop_a", settings, env, name="w1")
    w2 = start_crawl(tmp_path, "shop_a", settings, env, name="w2")
    deadline = time.monotonic() + 60
    while len(_fetched(demo_site, mark)) < 60:
        assert w1.proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    w1.proc.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    r1 = wait_crawl(w1, timeout=CLOSE_TIMEOUT + MARGIN)
    assert time.monotonic() - asked < CLOSE_TIMEOUT + MARGIN
    assert r1.stats["finish_reason"] == "shutdown"
    assert not r1.stats.get("frontier/lost_on_close")
    r2 = wait_crawl(w2, timeout=120)
    assert r2.returncode == 0 and r2.stats["finish_reason"] == "finished", r2.log[-3000:]
    paths = {rec["path"] for rec in _fetched(demo_site, mark)}
    assert len(paths) == sum(TEST_SITES[0].expected_pages().values()) + 1  # + robots.txt: nothing lost
    with redis.Redis.from_url(private_redis.url) as r:
        assert not r.keys("{shop_a}:pops:*") and not r.keys("{shop_a}:q:*") and not r.zcard("{shop_a}:leases")
        failed = {json.loads(rec)["url"].split(str(demo_site.port))[1] for rec in r.lrange("{shop_a}:failed", 0, -1)}
    errors = min(TEST_SITES[0].errors, TEST_SITES[0].pages)
    assert failed == {f"/{kind}/{k}" for kind in ("broken", "busy") for k in range(1, errors + 1)}
