"""Raw 20-byte fingerprints (issue 16, item 3), and a frontier written before them, read after the upgrade.

Before raw fingerprints, the exact seen set held 40 hex characters, a queue
member was ``<seq:016x>:<hex>:<json>`` and a lease record the cjson array
``[website, member, score]``. The data below is written in that form directly,
as the scripts of that time left it; a worker upgraded in place must not
crawl a URL again nor lose a queued or leased request.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from scrapy.settings import Settings

from crawler.frontier.seen import SeenConfig
from crawler.frontier.store import MODE_DEDUPE, MODE_DONT_FILTER, FrontierStore, PopReceipts, PushEntry, split_member
from tests.redis_clients import async_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis as AsyncRedis

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)

PAYLOAD = b'{"v":2,"url":"https://a.test/x"}'


@pytest_asyncio.fixture
async def client(redis_url: str) -> AsyncIterator[AsyncRedis]:
    c = async_redis(redis_url, socket_timeout=10)
    yield c
    async for key in c.scan_iter(match="{rawfp*"):
        await c.delete(key)
    await c.aclose()


def entry(fp: str, mode: int = MODE_DEDUPE, website: str = "a.test") -> PushEntry:
    return PushEntry(website, fp, mode, 0.0, 0.0, PAYLOAD)


async def old_queue(client: AsyncRedis, s: FrontierStore, website: str, fps: list[str]) -> None:
    """Requests queued (and their fingerprints seen) in the form of the scripts before raw fingerprints."""
    await client.sadd(s.seen_key, *fps)
    seq = int(await client.incrby(s.seq_key, len(fps))) - len(fps)
    members = {f"{seq + i:016x}:{fp}:".encode() + PAYLOAD: 0 for i, fp in enumerate(fps)}
    await client.zadd(s.queue_key(website), members)
    seconds, _ = await client.time()
    await client.zadd(s.sites_key, {website: seconds - 1})
    await client.zadd(s.depths_key, {website: len(fps)})
    await client.incrby(s.queued_key, len(fps))


@pytest.mark.asyncio
async def test_fingerprints_are_stored_as_20_raw_bytes(client: AsyncRedis) -> None:
    s = FrontierStore(client, "{rawfp_new}")
    fp = os.urandom(20).hex()
    assert (await s.push([entry(fp)], "w"))[0] == [True]
    assert await client.smembers(s.seen_key) == {bytes.fromhex(fp)}
    (member,) = await client.zrange(s.queue_key("a.test"), 0, -1)
    assert isinstance(member, bytes)
    assert len(member) == 16 + 1 + 20 + len(PAYLOAD)  # '<seq>#' + 20 bytes + the request
    assert split_member(member) == (fp, PAYLOAD)
    assert await s.seen("check", [fp]) == [1]
    assert (await s.push([entry(fp)], "w"))[0] == [False]
    popped = await s.pop(1, "w", PopReceipts(), lease=30.0)
    assert [split_member(m) for _, _, m in popped.items] == [(fp, PAYLOAD)]
    # The lease record is binary-safe: the member comes back whole when the worker releases it.
    assert await s.release("w", []) == 1
    assert await client.zrange(s.queue_key("a.test"), 0, -1) == [member]


@pytest.mark.asyncio
async def test_a_frontier_written_with_hex_fingerprints_is_read_after_the_upgrade(client: AsyncRedis) -> None:
    s = FrontierStore(client, "{rawfp_old}")
    queued, crawled = [os.urandom(20).hex() for _ in range(2)], os.urandom(20).hex()
    await old_queue(client, s, "a.test", queued)
    await client.sadd(s.seen_key, crawled)
    fresh = os.urandom(20).hex()
    # Nothing seen before is stored again, in a batch or alone; a new one is, once.
    assert (await s.push([entry(queued[0]), entry(crawled), entry(fresh), entry(fresh)], "w"))[0] == [
        False, False, True, False]
    assert (await s.push([entry(crawled)], "w"))[0] == [False]
    assert await s.seen("check", [*queued, crawled, fresh, os.urandom(20).hex()]) == [1, 1, 1, 1, 0]
    # dont_filter stores it again and does not count it twice in the seen set.
    assert (await s.push([entry(crawled, MODE_DONT_FILTER)], "w"))[0] == [True]
    assert await s.seen_count() == 4
    # Forgetting removes the old form too: the next run crawls it again, once.
    await s.seen("forget", [queued[1]])
    assert await s.seen("check", [queued[1]]) == [0]
    assert (await s.push([entry(queued[1]), entry(queued[1])], "w"))[0] == [True, False]
    # The old members come first (FIFO within a priority), then the new ones, all decoded.
    popped = await s.pop(10, "w", PopReceipts(), lease=30.0)
    assert [split_member(m)[0] for _, _, m in popped.items] == [*queued, fresh, crawled, queued[1]]
    assert {split_member(m)[1] for _, _, m in popped.items} == {PAYLOAD}


@pytest.mark.asyncio
async def test_a_lease_recorded_before_the_upgrade_goes_back_to_its_queue(client: AsyncRedis) -> None:
    s = FrontierStore(client, "{rawfp_lease}")
    fp = os.urandom(20).hex()
    member = f"{0:016x}:{fp}:".encode() + PAYLOAD
    # A dead worker's lease in the old record form (cjson [website, member, score]), expired.
    await client.hset(s.pops_key("dead"), "1.1", json.dumps(["a.test", member.decode(), -3]))
    await client.zadd(s.leases_key, {"dead": 1})
    result = await s.pop(5, "w", PopReceipts(), lease=30.0)
    assert result.reclaimed == 1
    assert [(w, split_member(m)) for w, _, m in result.items] == [("a.test", (fp, PAYLOAD))]
    assert await client.zscore(s.queue_key("a.test"), member) is None  # popped again, not copied
    assert await s.queued() == 0


@pytest.mark.asyncio
async def test_generations_read_hex_fingerprints_until_they_expire(client: AsyncRedis) -> None:
    config = SeenConfig.from_settings(Settings({"FRONTIER_SEEN_TTL": 3600, "FRONTIER_SEEN_GENERATIONS": 2}))
    s = FrontierStore(client, "{rawfp_gen}", config.spec)
    fp = os.urandom(20).hex()
    assert (await s.push([entry(os.urandom(20).hex())], "w"))[0] == [True]  # makes the current generation
    (gen,) = [k async for k in client.scan_iter(match="{rawfp_gen}:seen:g*")]
    await client.delete(s.seen_key + ":fmt")  # as before the upgrade: no format recorded
    await client.sadd(gen, fp)  # a hex fingerprint of the old scripts
    assert (await s.push([entry(fp)], "w"))[0] == [False]
    assert await s.seen("check", [fp]) == [1]
    assert await client.ttl(s.seen_key + ":fmt") > 0  # nothing stays for ever


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [10, 32])
async def test_a_fingerprint_of_another_length_is_kept_as_its_hex(client: AsyncRedis, size: int) -> None:
    # A custom REQUEST_FINGERPRINTER_CLASS: 10 bytes are 20 hex characters, as long as a raw SHA1.
    s = FrontierStore(client, f"{{rawfp_len{size}}}")
    fp = os.urandom(size).hex()
    assert (await s.push([entry(fp), entry(fp)], "w"))[0] == [True, False]
    assert await client.smembers(s.seen_key) == {fp.encode()}
    popped = await s.pop(1, "w", PopReceipts(), lease=30.0)
    assert [split_member(m) for _, _, m in popped.items] == [(fp, PAYLOAD)]
