"""The project on a real Redis Cluster (3 masters on loopback) and behind Redis Sentinel, chosen by REDIS_URL."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest
import redis
from pymongo import MongoClient
from redis.cluster import RedisCluster as SyncRedisCluster
from scrapy import Request
from scrapy.settings import Settings

from crawler.frontier.partitions import partition_of, partition_prefixes
from crawler.redis_client import RedisClientConfig
from devtools.demo import analyse
from devtools.services import Server, free_port, start_redis, start_redis_cluster
from tests.conftest import TEST_SITES, assert_clean_log, start_crawl, wait_crawl
from tests.frontier_helpers import Schedulers, drain

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from devtools.services import RedisCluster
    from tests.conftest import DemoSite


@pytest.fixture(scope="module")
def cluster(state_dir: Path) -> Iterator[RedisCluster]:
    started = start_redis_cluster(state_dir / "cluster")
    yield started
    started.stop()


@pytest.fixture
def cluster_url(cluster: RedisCluster) -> Iterator[str]:
    client = SyncRedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    client.flushall(target_nodes=SyncRedisCluster.PRIMARIES)
    yield cluster.url
    client.close()


def test_a_cluster_url_makes_a_cluster_client(cluster_url: str) -> None:
    client = RedisClientConfig.from_settings(Settings({"REDIS_URL": cluster_url})).sync_client()
    assert isinstance(client, SyncRedisCluster)
    assert len(client.get_primaries()) == 3
    client.close()


@pytest.mark.asyncio
async def test_concurrent_first_calls_through_a_fresh_cluster_client(cluster_url: str) -> None:
    """A worker's first calls go out together (outbox, heartbeat, byte budget): none may fail.

    Before crawler.redis_client.AsyncRedisCluster, redis-py 8.1 failed about one
    in ten of 50 concurrent first calls through a fresh client (1 in 3 rounds
    at least); 20 rounds of 50 passed with no error after it.
    """
    config = RedisClientConfig.from_settings(Settings({"REDIS_URL": cluster_url}))
    failures: list[BaseException] = []
    for _ in range(20):
        client = config.async_client()
        try:
            replies = await asyncio.gather(
                *(client.eval("return redis.call('INCR', KEYS[1])", 1, "{first-calls}n") for _ in range(50)),
                return_exceptions=True)
        finally:
            await client.aclose()
        failures += [r for r in replies if isinstance(r, BaseException)]
    assert failures == []


@pytest.mark.parametrize("url", ["http://x:1", "redis+cluster://x/0", "redis+sentinel://127.0.0.1:1"])
def test_a_bad_redis_url_names_the_setting(url: str) -> None:
    with pytest.raises(ValueError, match="REDIS_URL"):
        RedisClientConfig.from_settings(Settings({"REDIS_URL": url})).sync_client()


@pytest.mark.asyncio
@pytest.mark.parametrize("dedupe", ["exact", "bloom"])
async def test_frontier_on_a_cluster(cluster_url: str, dedupe: str) -> None:
    schedulers = Schedulers(cluster_url)
    try:
        a = await schedulers.open(FRONTIER_DEDUPE=dedupe, FRONTIER_BLOOM_CAPACITY=1000)
        b = await schedulers.open(FRONTIER_DEDUPE=dedupe, FRONTIER_BLOOM_CAPACITY=1000)
        assert a.store is not None
        await a.store.mark_not_before("c.test", (await a.store.pop(0, "clock")).now + 3600)
        for s in (a, b):
            for host in ("a.test", "b.test", "c.test"):
                for i in range(20):
                    s.enqueue_request(Request(f"http://{host}/{i}"))
            await s.settled()
        got = [r.url for r in await drain(a)] + [r.url for r in await drain(b)]
        # Each URL once (dedupe across both workers), none of the held website.
        assert sorted(got) == sorted(f"http://{h}/{i}" for h in ("a.test", "b.test") for i in range(20))
        assert await a.store.release_not_before("c.test")
        assert len(await drain(b)) == 20
    finally:
        await schedulers.close_all()


def test_two_workers_crawl_a_website_on_a_cluster(
    demo_site: DemoSite, cluster_url: str, mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    """The whole stack (frontier, seeds, byte budget, politeness, pipelines) with REDIS_URL a cluster."""
    site = TEST_SITES[0]
    client = SyncRedisCluster.from_url(cluster_url.replace("redis+cluster://", "redis://").split(",")[0])
    client.lpush("shop_a:start_urls", json.dumps({"url": demo_site.url(site.host)}))
    client.close()
    mark = demo_site.mark()
    env = {"REDIS_URL": cluster_url, "MONGO_URI": mongo_server_uri, "MONGO_DATABASE": mongo_db,
           "RESOLVE_HOSTS": "*.test:127.0.0.1"}
    # A budget (10 MB per 60 s: not binding) so that every download runs the byte budget's scripts too.
    settings = {"FRONTIER_IDLE_CLOSE_SECONDS": "2", "CONCURRENT_REQUESTS_PER_DOMAIN": "8",
                "BYTE_BUDGET_DEFAULT": "10000000"}
    results = [wait_crawl(c) for c in [start_crawl(tmp_path, "shop_a", settings, env, name=f"c{i}") for i in (1, 2)]]
    for result in results:
        assert result.returncode == 0, result.log[-3000:]
        assert result.stats["finish_reason"] == "finished"
        assert_clean_log(result.log)
        assert not [k for k in result.stats if "redis_error" in k]
    assert sum(r.stats.get("byte_budget/settled", 0) for r in results) > 0
    summary = analyse([r for r in demo_site.log(mark) if r["host"] == site.host], {"shop_a": site.host})[site.host]
    assert summary["distinct"] == sum(site.expected_pages().values()) + 1  # every page, robots.txt
    with MongoClient(mongo_server_uri) as mongo:
        assert mongo[mongo_db]["product"].count_documents({}) == site.items


def test_two_workers_crawl_three_websites_over_three_partitions_on_a_cluster(
    demo_site: DemoSite, cluster_url: str, tmp_path: Path
) -> None:
    """FRONTIER_PARTITIONS=3: the three demo websites live in three partitions (on three masters), two workers
    crawl them all, and the demo server saw every page fetched once (error pages: plus their retries)."""
    hosts = [site.host for site in TEST_SITES]
    prefixes = partition_prefixes("{politeness_probe}", 3)
    assert sorted(partition_of(h, 3) for h in hosts) == [0, 1, 2]
    client = SyncRedisCluster.from_url(cluster_url.replace("redis+cluster://", "redis://").split(",")[0])
    assert len({client.keyslot(f"{p}:sites") * 3 // 16384 for p in prefixes}) == 3  # one partition per master
    for host in hosts:
        client.lpush("politeness_probe:start_urls", json.dumps({"url": demo_site.url(host)}))
    mark = demo_site.mark()
    env = {"REDIS_URL": cluster_url, "RESOLVE_HOSTS": "*.test:127.0.0.1"}
    settings = {"SPIDER_MODULES": "crawler.spiders,tests.spiders", "ITEM_PIPELINES": {},
                "FRONTIER_PARTITIONS": "3", "FRONTIER_IDLE_CLOSE_SECONDS": "2",
                "CONCURRENT_REQUESTS_PER_DOMAIN": "8"}
    crawls = [start_crawl(tmp_path, "politeness_probe", settings, env, name=f"p{i}") for i in (1, 2)]
    results = [wait_crawl(c, 180) for c in crawls]
    for result in results:
        assert result.returncode == 0, result.log[-3000:]
        assert result.stats["finish_reason"] == "finished"
        assert_clean_log(result.log)
        assert not [k for k in result.stats if "redis_error" in k]
    # Each partition held its website's frontier: its seen set has the fingerprints of that website only.
    for host in hosts:
        part = prefixes[partition_of(host, 3)]
        assert client.scard(f"{part}:seen") > 0 and client.zcard(f"{part}:leases") == 0
    client.close()
    log = demo_site.log(mark)
    summary = analyse(log, {h: h for h in hosts})
    for site in TEST_SITES:
        got = summary[site.host]
        pages = {r["path"] for r in log if r["host"] == site.host and r["path"] != "/robots.txt"}
        assert got["duplicates"]["unexplained"] == 0, got  # no page fetched twice
        assert len(pages) == site.expected_pages()["home"] + site.expected_pages()["listings"] + \
            site.expected_pages()["items"] + site.expected_pages()["redirects"] + site.expected_pages()["errors"], got
    assert sum(r.stats.get("scheduler/dequeued/redis", 0) for r in results) >= sum(
        len({r["path"] for r in log if r["host"] == h}) for h in hosts)


@pytest.fixture(scope="module")
def sentinel(state_dir: Path) -> Iterator[str]:
    """A master and one Sentinel watching it as ``mymaster``: the URL to reach the master through it."""
    master = start_redis(state_dir / "sentinel-master")
    port = free_port()
    workdir = state_dir / f"sentinel-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
    exe = shutil.which("redis-server")
    assert exe is not None
    log = workdir / "sentinel.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([exe, str(conf), "--sentinel"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    node = Server("sentinel", proc, port, f"redis://127.0.0.1:{port}", log)
    try:
        with redis.Redis(port=port, socket_timeout=5) as r:
            for _ in range(200):
                try:
                    if r.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster"):
                        break
                except redis.ConnectionError:
                    pass
                subprocess.run(["sleep", "0.05"], check=True)
        yield f"redis+sentinel://127.0.0.1:{port}/mymaster/0"
    finally:
        node.stop()
        master.stop()


@pytest.mark.asyncio
async def test_frontier_through_sentinel(sentinel: str) -> None:
    schedulers = Schedulers(sentinel)
    try:
        a = await schedulers.open()
        for i in range(10):
            a.enqueue_request(Request(f"http://a.test/{i}"))
            a.enqueue_request(Request(f"http://a.test/{i}"))  # a duplicate
        await a.settled()
        assert sorted(r.url for r in await drain(a)) == sorted(f"http://a.test/{i}" for i in range(10))
    finally:
        await schedulers.close_all()
