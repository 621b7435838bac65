"""The seen set's modes against a real Redis: exact, Bloom (bounded memory), expiry by generations, forgetting."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from scrapy import Request
from scrapy.settings import Settings

from crawler.frontier.seen import SeenConfig
from crawler.frontier.store import MODE_DEDUPE, MODE_DONT_FILTER, FrontierStore, PushEntry
from tests.frontier_helpers import Schedulers, drain
from tests.redis_clients import async_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis as AsyncRedis

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)


def fingerprints(n: int) -> list[str]:
    """``n`` random 40-hex fingerprints (as Scrapy's SHA1 fingerprints are)."""
    return [os.urandom(20).hex() for _ in range(n)]


@pytest_asyncio.fixture
async def client(redis_url: str) -> AsyncIterator[AsyncRedis]:
    c = async_redis(redis_url)
    yield c
    async for key in c.scan_iter(match="{seen_test*"):
        await c.delete(key)
    await c.aclose()


def store(client: AsyncRedis, name: str, **settings: object) -> FrontierStore:
    return FrontierStore(client, f"{{seen_test_{name}}}", SeenConfig.from_settings(Settings(settings)).spec)


async def add_all(s: FrontierStore, fps: list[str], chunk: int = 1000, op: str = "add") -> list[int]:
    """``op`` for every fingerprint, ``chunk`` per call (a busy machine's Redis answers each within the timeout)."""
    out: list[int] = []
    for i in range(0, len(fps), chunk):
        out += await s.seen(op, fps[i:i + chunk])
    return out


@pytest.mark.asyncio
async def test_bloom_false_positive_rate_is_what_was_asked(client: AsyncRedis) -> None:
    # 218,000 at 1% is 9.59 bits each: 2.09 Mbit, one 256 KiB segment almost exactly (no slack to hide in).
    s = store(client, "fp", FRONTIER_DEDUPE="bloom", FRONTIER_BLOOM_CAPACITY=218_000, FRONTIER_BLOOM_ERROR_RATE=0.01)
    stored = fingerprints(218_000)
    new = await add_all(s, stored)
    assert sum(new) >= 218_000 - 2180  # a false positive while filling says "seen": about p/2 of them
    assert set(await add_all(s, stored, op="check")) == {1}  # no false negative, ever
    fresh = await add_all(s, fingerprints(40_000), op="check")
    # Expected 400 (1%); 1.5x is 600, ten standard deviations away.
    assert sum(fresh) <= 600
    assert await s.seen_count() == sum(new)


@pytest.mark.asyncio
async def test_bloom_memory_is_fixed_by_capacity_and_error_rate(client: AsyncRedis) -> None:
    config = SeenConfig.from_settings(Settings({"FRONTIER_DEDUPE": "bloom", "FRONTIER_BLOOM_CAPACITY": 1_000_000}))
    s = FrontierStore(client, "{seen_test_mem}", config.spec)
    await add_all(s, fingerprints(1000))
    segments = [k async for k in client.scan_iter(match="{seen_test_mem}:seen:0:*")]
    usage = [await client.memory_usage(k) for k in segments]
    assert {await client.strlen(k) for k in segments} == {262_128}
    # 1M at 0.1%: 14.4 bits each = 1.80 MB, in 7 segments of 256 KiB; per key ~100 B of Redis bookkeeping.
    assert config.bloom_bytes() == 7 * 262_144
    assert sum(usage) <= config.bloom_bytes() + 200 * len(segments)


@pytest.mark.asyncio
async def test_bloom_grows_by_adding_filters(client: AsyncRedis) -> None:
    s = store(client, "grow", FRONTIER_DEDUPE="bloom", FRONTIER_BLOOM_CAPACITY=1000, FRONTIER_BLOOM_ERROR_RATE=0.01)
    stored = fingerprints(5000)
    new = await add_all(s, stored, chunk=500)
    assert set(await add_all(s, stored, op="check")) == {1}
    meta = await client.hgetall("{seen_test_grow}:seen:meta")
    assert int(meta[b"f"]) == 3  # 1,000 + 2,000 + 4,000
    assert int(meta[b"t"]) == sum(new)
    # The chain stays below 2p = 2% (expected ~1.2%); 3% is far out of reach of chance on 20,000.
    assert sum(await add_all(s, fingerprints(20_000), op="check")) < 600


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["exact", "bloom"])
async def test_forgotten_fingerprint_is_stored_again_once(client: AsyncRedis, mode: str) -> None:
    s = store(client, f"forget_{mode}", FRONTIER_DEDUPE=mode)

    async def push(fp: str) -> bool:
        entry = PushEntry("a.test", fp, MODE_DEDUPE, 0, 0, b"{}")
        return (await s.push([entry], "w"))[0][0]

    fp = fingerprints(1)[0]
    assert await push(fp) and not await push(fp)
    await s.seen("forget", [fp])
    assert await s.seen("check", [fp]) == [0]
    assert await push(fp)  # a later run crawls it again
    assert not await push(fp)  # and only once
    assert await s.seen("check", [fp]) == [1]


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["exact", "bloom"])
async def test_fingerprints_expire_after_the_ttl(client: AsyncRedis, mode: str) -> None:
    ttl = 2.0
    s = store(client, f"ttl_{mode}", FRONTIER_DEDUPE=mode, FRONTIER_SEEN_TTL=ttl, FRONTIER_SEEN_GENERATIONS=2,
              FRONTIER_BLOOM_CAPACITY=1000)
    fp = fingerprints(1)[0]
    t0 = await redis_time(client)
    entry = PushEntry("a.test", fp, MODE_DONT_FILTER, 0, 0, b"{}")
    await s.push([entry], "w")  # dont_filter: marks it seen
    first, t1 = (await s.seen("check", [fp]))[0], await redis_time(client)
    if t1 - t0 < ttl:  # remembered for at least the TTL (a stall of the test longer than that proves nothing)
        assert first == 1
    keys = [k async for k in client.scan_iter(match=f"{{seen_test_ttl_{mode}}}:seen*")]
    assert keys and min([await client.ttl(k) for k in keys]) > 0  # nothing stays for ever
    # Forgotten by 2 x ttl (2 generations of ttl each), never before ttl: both on Redis's clock.
    while (await s.seen("check", [fp]))[0] == 1:
        assert await redis_time(client) - t0 < 10 * ttl, "never forgotten"
        await asyncio.sleep(0.05)
    assert await redis_time(client) - t0 >= ttl
    assert (await s.push([PushEntry("a.test", fp, MODE_DEDUPE, 0, 0, b"{}")], "w"))[0] == [True]


async def redis_time(client: AsyncRedis) -> float:
    seconds, micros = await client.time()
    return seconds + micros / 1e6


@pytest.mark.asyncio
async def test_bloom_scheduler_filters_duplicates_cluster_wide(redis_url: str) -> None:
    schedulers = Schedulers(redis_url)
    try:
        a = await schedulers.open(FRONTIER_DEDUPE="bloom", FRONTIER_BLOOM_CAPACITY=1000)
        b = await schedulers.open(FRONTIER_DEDUPE="bloom", FRONTIER_BLOOM_CAPACITY=1000)
        for s in (a, b, a):
            s.enqueue_request(Request("http://a.test/same"))
            s.enqueue_request(Request("http://a.test/forced", dont_filter=True))
            await s.settled()
        got = sorted(r.url for r in await drain(a) + await drain(b))
        assert got == ["http://a.test/forced"] * 3 + ["http://a.test/same"]
        assert sum(s.crawler.stats.get_value("dupefilter/filtered", 0) for s in (a, b)) == 2
    finally:
        await schedulers.close_all()


@pytest.mark.parametrize(("name", "value"), [
    ("FRONTIER_DEDUPE", "fuzzy"), ("FRONTIER_BLOOM_CAPACITY", "0"), ("FRONTIER_BLOOM_ERROR_RATE", "0.5"),
    ("FRONTIER_BLOOM_ERROR_RATE", "0"), ("FRONTIER_SEEN_TTL", "-1"), ("FRONTIER_SEEN_GENERATIONS", "1"),
])
def test_invalid_seen_settings_name_the_setting(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        SeenConfig.from_settings(Settings({name: value}))


def test_default_is_the_exact_set_for_ever() -> None:
    assert SeenConfig.from_settings(Settings()).spec == ""
