"""One spider's frontier sharded across FRONTIER_PARTITIONS hash-tagged partitions, on a real Redis (and Cluster)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ResponseError
from scrapy import Request
from scrapy.settings import Settings

from crawler.frontier.codec import encode_request
from crawler.frontier.config import FrontierConfig
from crawler.frontier.partitions import PartitionedStore, partition_of, partition_prefixes
from crawler.frontier.store import MODE_DEDUPE, MODE_REQUEUE, PopReceipts, PushEntry
from devtools.services import ROOT
from tests.frontier_helpers import Schedulers, drain
from tests.redis_clients import async_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)

N = 3
PREFIXES = partition_prefixes("{frontier_test}", N)
LEASE = 60.0
BASE = {"REDIS_URL": "redis://127.0.0.1:1"}


def websites(count: int) -> list[str]:
    return [f"site{i}.test" for i in range(count)]


def one_per_partition() -> list[str]:
    """A website in each partition, in partition order."""
    found: dict[int, str] = {}
    for w in websites(100):
        found.setdefault(partition_of(w, N), w)
    return [found[i] for i in range(N)]


@pytest_asyncio.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    c = async_redis(redis_url)
    yield c
    await c.aclose()


def entry(website: str, i: int) -> PushEntry:
    return PushEntry(website, f"{hash((website, i)) & (2**160 - 1):040x}", MODE_DEDUPE, 0, 0,
                     encode_request(Request(f"http://{website}/{i}"), None))


# -- the setting and the layout -------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, "x", 1.5, "2.5"])
def test_a_bad_partition_count_names_the_setting(value: object) -> None:
    with pytest.raises(ValueError, match=f"FRONTIER_PARTITIONS.*{re.escape(repr(value))}"):
        FrontierConfig.from_settings(Settings({**BASE, "FRONTIER_PARTITIONS": value}))


def test_partition_count_default_and_value() -> None:
    assert FrontierConfig.from_settings(Settings(BASE)).partitions == 1
    assert FrontierConfig.from_settings(Settings({**BASE, "FRONTIER_PARTITIONS": "4"})).partitions == 4


def test_partition_prefixes_keep_one_partition_and_spread_over_the_slots() -> None:
    assert partition_prefixes("{frontier_test}", 1) == ["{frontier_test}"]
    for n in (2, 3, 6):
        prefixes = partition_prefixes("crawl:{frontier_test}", n)
        assert len(set(prefixes)) == n
        for i, p in enumerate(prefixes):
            assert p.startswith(f"crawl:{{frontier_test.{i}")
            # partition i's slot is in the i-th of n equal slices: one partition per master of n
            assert key_slot(f"{p}:sites".encode()) * n // REDIS_CLUSTER_HASH_SLOTS == i
    assert partition_prefixes("{frontier_test}", 3) == PREFIXES  # stable


def test_websites_spread_over_partitions_stably() -> None:
    counts = [0] * N
    for w in websites(3000):
        counts[partition_of(w, N)] += 1
        assert partition_of(w, N) == partition_of(w, N)
    assert all(800 < c < 1200 for c in counts), counts  # ~1000 each; the margin is 6 standard deviations
    assert partition_of("a.test", 1) == 0


# -- the scheduler over three partitions ------------------------------------------


@pytest.mark.asyncio
async def test_every_request_is_popped_once_and_dedupe_holds_per_partition(schedulers: Schedulers,
                                                                          client: Redis) -> None:
    a = await schedulers.open(FRONTIER_PARTITIONS=N, FRONTIER_PREFETCH=16)
    b = await schedulers.open(FRONTIER_PARTITIONS=N, FRONTIER_PREFETCH=16)
    urls = [f"http://{w}/{i}" for w in websites(30) for i in range(10)]
    for s in (a, b):  # both workers push every URL: each is stored once
        for url in urls:
            s.enqueue_request(Request(url))
        await s.settled()
    got: list[str] = []
    for _ in range(200):
        before = len(got)
        got += [r.url for r in await drain(a)] + [r.url for r in await drain(b)]
        if len(got) == before:
            break
    assert sorted(got) == sorted(urls)
    # Every partition got its websites' requests and fingerprints, and only those.
    for i, p in enumerate(PREFIXES):
        mine = [w for w in websites(30) if partition_of(w, N) == i]
        assert mine and await client.scard(f"{p}:seen") == 10 * len(mine)
    # Pushed again, by either worker, nothing comes back.
    for s in (a, b):
        for url in urls[::7]:
            s.enqueue_request(Request(url, dont_filter=False))
        await s.settled()
    assert await drain(a) == [] and await drain(b) == []
    assert sum(s.stats.get_value("scheduler/dequeued/redis", 0) for s in (a, b)) == 300


@pytest.mark.asyncio
async def test_pops_start_at_each_partition_in_turn(schedulers: Schedulers) -> None:
    sites = one_per_partition()
    s = await schedulers.open(FRONTIER_PARTITIONS=N, FRONTIER_PREFETCH=1)
    for w in sites:
        for i in range(5):
            s.enqueue_request(Request(f"http://{w}/{i}"))
    await s.settled()
    first = [r.url.split("/")[2] for r in await drain(s, limit=N)]
    assert sorted(first) == sorted(sites)  # one pop per partition, not three from the first one


@pytest.mark.asyncio
async def test_a_dead_workers_leases_come_back_from_every_partition_and_idle_close_waits(
        schedulers: Schedulers, client: Redis) -> None:
    dead = PartitionedStore(client, "{frontier_test}", "", N)
    await dead.push([entry(w, i) for w in websites(12) for i in range(3)], "dead")
    receipts = PopReceipts()
    held = 0
    for _ in range(20):
        held += len((await dead.pop(10, "dead", receipts, LEASE)).items)
    assert held == 36
    for p in PREFIXES:  # leased in every partition
        assert await client.zscore(f"{p}:leases", "dead") is not None
    s = await schedulers.open(FRONTIER_PARTITIONS=N, FRONTIER_IDLE_CLOSE_SECONDS=0.5,
                              FRONTIER_IDLE_POLL_SECONDS=0.05, FRONTIER_LEASE_SECONDS=LEASE)
    assert await drain(s) == []
    # Only the last partition's lease is outstanding: the cluster is still not idle.
    for p in PREFIXES[:-1]:
        await client.zadd(f"{p}:leases", {"dead": 0})
    last = [w for w in websites(12) if partition_of(w, N) == N - 1]
    assert 0 < len(last) < 12
    got: list[str] = []
    deadline = time.monotonic() + 30
    while len(got) < 36 - 3 * len(last) and time.monotonic() < deadline:
        got += [r.url for r in await drain(s)]
        await asyncio.sleep(0.05)
    assert sorted(got) == sorted(f"http://{w}/{i}" for w in websites(12) if w not in last for i in range(3))
    watch_until = time.monotonic() + 1.5  # three idle-close periods
    while time.monotonic() < watch_until:
        assert s.cluster_idle_seconds() == 0
        await asyncio.sleep(0.05)
    await client.zadd(f"{PREFIXES[-1]}:leases", {"dead": 0})
    deadline = time.monotonic() + 30
    while len(got) < 36 and time.monotonic() < deadline:
        got += [r.url for r in await drain(s)]
        await asyncio.sleep(0.05)
    assert sorted(got) == sorted(f"http://{w}/{i}" for w in websites(12) for i in range(3))
    assert s.crawler.stats.get_value("frontier/leases_reclaimed") == 36
    deadline = time.monotonic() + 30
    while s.cluster_idle_seconds() == 0 and time.monotonic() < deadline:
        s.idle_tick()
        await asyncio.sleep(0.05)
    assert s.cluster_idle_seconds() > 0


@pytest.mark.asyncio
async def test_a_pop_failing_in_a_later_partition_still_delivers_what_the_first_gave(client: Redis) -> None:
    first, second, _ = one_per_partition()
    store = PartitionedStore(client, "{frontier_test}", "", N)
    await store.push([entry(first, i) for i in range(3)] + [entry(second, i) for i in range(3)], "w")
    await client.delete(f"{PREFIXES[1]}:sites")
    await client.set(f"{PREFIXES[1]}:sites", "not a zset")  # partition 1's pop fails (WRONGTYPE)
    receipts = PopReceipts()
    result = await store.pop(10, "w", receipts, LEASE)  # starts at partition 0
    assert sorted(w for w, _, _ in result.items) == [first] * 3
    assert [pop_id for pop_id, _ in receipts.lost] == ["1-2"]  # asked for again by partition 1's next pop


@pytest.mark.asyncio
async def test_a_push_retried_after_failing_in_one_partition_stores_nothing_twice(client: Redis) -> None:
    first, second, _ = one_per_partition()
    store = PartitionedStore(client, "{frontier_test}", "", N)
    batch = [PushEntry(e.website, e.fingerprint, MODE_REQUEUE, 0, 0, e.payload)  # requeues: never deduplicated
             for e in [entry(first, i) for i in range(3)] + [entry(second, i) for i in range(3)]]
    await client.set(f"{PREFIXES[1]}:sites", "not a zset")  # partition 1's push fails (WRONGTYPE)
    with pytest.raises(ResponseError):
        await store.push(batch, "w")
    await client.delete(f"{PREFIXES[1]}:sites")
    flags, _ = await store.push(batch, "w")  # the outbox's retry: the same batch
    assert flags == [True] * 6
    assert await store.queued() == 6 and await client.zcard(f"{PREFIXES[0]}:q:{first}") == 3


@pytest.mark.asyncio
async def test_pops_renew_the_lease_in_a_partition_they_no_longer_pop_from(client: Redis) -> None:
    """Partition 2 is emptied into this worker's leases; later pops find work in 0 and 1 only, yet the lease in
    2 is renewed by them (a partition not called for a quarter of the lease is called anyway)."""
    sites = one_per_partition()
    store = PartitionedStore(client, "{frontier_test}", "", N)
    await store.push([entry(sites[2], i) for i in range(2)]
                     + [entry(w, i) for w in sites[:2] for i in range(200)], "w")
    receipts, lease = PopReceipts(), 2.0
    for _ in range(2):  # pops start at partitions 0, 1: the next one starts at 2
        await store.pop(0, "w", receipts, lease)
    held = await store.pop(2, "w", receipts, lease)
    assert [w for w, _, _ in held.items] == [sites[2]] * 2
    first = await client.zscore(f"{PREFIXES[2]}:leases", "w")
    assert first is not None
    deadline = time.monotonic() + 30
    while await client.zscore(f"{PREFIXES[2]}:leases", "w") == first and time.monotonic() < deadline:
        result = await store.pop(1, "w", receipts, lease)
        assert {w for w, _, _ in result.items} <= set(sites[:2])
        await asyncio.sleep(0.05)
    assert await client.zscore(f"{PREFIXES[2]}:leases", "w") != first


@pytest.mark.asyncio
async def test_status_aggregates_every_partition(client: Redis) -> None:
    store = PartitionedStore(client, "{frontier_test}", "", N)
    # site1.test twice, the others once
    await store.push([entry(w, i) for w in websites(9) for i in range(w.count("1") + 1)], "w")
    status = await store.status("probe", False, "frontier_test:start_urls")
    assert status.sites_with_work == status.sites_ready == 9
    top, sites, total = await store.deepest(3)
    assert (sites, total) == (9, 10) and top[0] == ("site1.test", 2)
    assert await store.queued() == 10 and len(await store.queues()) == 9
    assert await store.seen_count() == 10
    popped = await store.pop(4, "w", PopReceipts(), LEASE)
    status = await store.status("probe", False, None)
    taken = Counter(w for w, _, _ in popped.items)
    assert status.sites_with_work == 9 - sum(1 for w, k in taken.items() if k == w.count("1") + 1)
    assert status.leased >= 1 and {w for w, _, _ in await store.leases()} == {"w"}


@pytest.mark.asyncio
async def test_another_partition_count_is_refused(schedulers: Schedulers, client: Redis,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    one = await schedulers.open()
    one.enqueue_request(Request("http://a.test/1"))
    await one.settled()
    await schedulers.close(one)
    with caplog.at_level(logging.ERROR):
        three = await schedulers.open(FRONTIER_PARTITIONS=N)
    for p in PREFIXES:  # nothing registered, popped nor pushed in the partitions
        assert not await client.exists(f"{p}:workers", f"{p}:sites", f"{p}:seen")
    errors = [r.getMessage() for r in caplog.records if "Frontier cannot start" in r.getMessage()]
    assert len(errors) == 1 and "FRONTIER_PARTITIONS=3" in errors[0] and "with 1 partition" in errors[0]
    await schedulers.close(three)
    # The other way round: a frontier of three partitions refuses one.
    caplog.clear()
    await (await schedulers.open(FRONTIER_PARTITIONS=2, FRONTIER_KEY_PREFIX="{other}")).settled()
    with caplog.at_level(logging.ERROR):
        await schedulers.open(FRONTIER_KEY_PREFIX="{other}")
    assert any("FRONTIER_PARTITIONS=1" in r.getMessage() and "with 2 partition" in r.getMessage()
               for r in caplog.records)


# -- the CLI and the status over every partition -----------------------------------


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crawler", "--redis-url", redis_url, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.asyncio
async def test_cli_and_status_read_every_partition(redis_url: str, client: Redis) -> None:
    store = PartitionedStore(client, "{shop_a}", "", N)
    await store.check_layout()  # as the first worker does
    entries = [entry(w, i) for w in websites(9) for i in range(2)]
    await store.push(entries, "worker-1")
    failed = one_per_partition()
    await store.record_failed([{"reason": "HTTP 500", "url": f"http://{w}/f", "website": w, "fingerprint": f"f{w}",
                                "score": 0, "time": 0, "payload": json.dumps({"v": 1, "url": f"http://{w}/f"})}
                               for w in failed])
    for p in store.partitions:  # one record in each partition's list
        assert await client.llen(p.failed_key) == 1
    refused = cli(redis_url, "queues", "shop_a")  # the project's FRONTIER_PARTITIONS: 1
    assert refused.returncode == 2 and "FRONTIER_PARTITIONS=1" in refused.stderr and "3 partition" in refused.stderr
    out = cli(redis_url, "queues", "shop_a", "--partitions", "3")
    assert out.returncode == 0, out.stderr
    assert "total queued 18 in 9 websites; seen fingerprints 18" in out.stdout and "worker-1" in out.stdout
    status = subprocess.run([sys.executable, "-m", "crawler", "status", "shop_a", "--partitions", "3", "--json",
                             "--redis-url", redis_url], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    assert status.returncode == 0, status.stderr
    got = json.loads(status.stdout)["shop_a"]
    assert (got["queued_total"], got["websites_queued"], got["seen"], got["failed"]) == (18, 9, 18, 3)
    assert got["workers_total"] == 1 and len(got["top"]) == 9
    out = cli(redis_url, "failed", "shop_a", "--partitions", "3")
    assert out.returncode == 0 and "3 failed requests" in out.stdout, out.stderr
    out = cli(redis_url, "reindex", "shop_a", "--partitions", "3")
    assert out.returncode == 0 and "depth index rebuilt: 18 requests queued" in out.stdout, out.stderr
    out = cli(redis_url, "failed", "shop_a", "--partitions", "3", "--requeue", "--yes")
    assert out.returncode == 0 and "re-queued 3 of 3" in out.stdout, out.stderr
    assert await store.queued() == 21 and [await client.llen(k) for k, _ in await store.failed_records()] == [0] * N
    fps = [e.fingerprint for e in entries[:4]]
    out = cli(redis_url, "seen", "shop_a", "check", "--fingerprint", *fps, "--partitions", "3")
    assert out.stdout.count("not seen") == 0 and out.stdout.count("seen") == 4, out.stdout + out.stderr
    assert cli(redis_url, "seen", "shop_a", "forget", "--fingerprint", *fps, "--partitions", "3").returncode == 0
    out = cli(redis_url, "seen", "shop_a", "check", "--fingerprint", *fps, "--partitions", "3")
    assert out.stdout.count("not seen") == 4, out.stdout + out.stderr
    out = cli(redis_url, "clear", "shop_a", "--partitions", "3", "--yes")
    assert out.returncode == 0, out.stderr
    assert await store.queued() == 0 and await client.get(store.layout_key) is None
