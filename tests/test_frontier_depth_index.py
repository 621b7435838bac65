"""The depth index (``lua/depth.lua``): a pop leaves it to the worker, which sends its counts with its
next push, heartbeat or release; the total stays exact; an emptied queue resets its entry."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from crawler.frontier.store import MODE_DEDUPE, FrontierStore, PopReceipts, PushEntry
from crawler.redis_client import AsyncRedisCluster
from tests.redis_clients import async_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis as AsyncRedis

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)

PREFIX = "{depths}"


@pytest_asyncio.fixture
async def client(redis_url: str) -> AsyncIterator[AsyncRedis]:
    r = async_redis(redis_url, socket_timeout=5)
    yield r
    await r.aclose()


def entries(website: str, *names: str) -> list[PushEntry]:
    return [PushEntry(website, f"{website}/{name}", MODE_DEDUPE, 0, 0, b"{}") for name in names]


async def calls(client: AsyncRedis, command: str) -> int:
    """How many times the server (every master of a cluster) has run ``command``."""
    if isinstance(client, AsyncRedisCluster):
        stats = [await client.info("commandstats", target_nodes=node) for node in client.get_primaries()]
    else:
        stats = [await client.info("commandstats")]
    return sum(int(s.get(f"cmdstat_{command}", {}).get("calls", 0)) for s in stats)


async def index(store: FrontierStore) -> dict[str, int]:
    return {w.decode(): int(d) for w, d in await store.redis.zrange(store.depths_key, 0, -1, withscores=True)}


@pytest.mark.asyncio
async def test_a_pop_leaves_its_counts_to_the_next_push_where_they_net_out(client: AsyncRedis) -> None:
    store = FrontierStore(client, PREFIX)
    await store.push(entries("a.test", *"12345") + entries("b.test", *"123"), "w1")
    popped = await store.pop(4, "w1", PopReceipts())  # two of each
    assert len(popped.items) == 4
    assert await index(store) == {"a.test": 5, "b.test": 3}  # the pop did not write the index
    assert await store.queued() == 4  # the total did change
    assert await store.deepest(10) == ([("a.test", 3), ("b.test", 1)], 2, 4)  # depths read from the queues
    # The push of a's links carries what was popped: a nets out to one ZINCRBY, b rides along.
    before = await calls(client, "zincrby")
    await store.push(entries("a.test", "6"), "w1")
    assert await index(store) == {"a.test": 4, "b.test": 1}
    assert await calls(client, "zincrby") - before == 2  # one per website, none per request


@pytest.mark.asyncio
async def test_a_heartbeat_and_a_release_carry_the_counts_too(client: AsyncRedis) -> None:
    store = FrontierStore(client, PREFIX)
    await store.push(entries("a.test", *"1234"), "w1")
    receipts = PopReceipts()
    first = await store.pop(1, "w1", receipts, lease=600.0)
    await store.status("w1", True, None, lease=600.0, acks=[first.items[0][1]])
    assert await index(store) == {"a.test": 3}
    second = await store.pop(2, "w1", receipts, lease=600.0)
    assert len(second.items) == 2
    assert await store.release("w1", [], receipts) == 2  # back in the queue, and the pop's counts sent
    assert await index(store) == {"a.test": 3} and await store.queued() == 3


@pytest.mark.asyncio
async def test_an_emptied_queue_resets_its_entry_and_the_workers_count(client: AsyncRedis) -> None:
    store = FrontierStore(client, PREFIX)
    await store.push(entries("a.test", "1", "2") + entries("b.test", "1", "2", "3"), "w1")
    popped = await store.pop(4, "w1", PopReceipts())  # all of a: its queue is empty
    assert len(popped.items) == 4 and popped.sites_with_work == 1
    assert await index(store) == {"b.test": 3}  # b waits for the worker's next call
    await store.push(entries("a.test", "3"), "w1")  # the worker no longer counts a's two pops
    assert await index(store) == {"a.test": 1, "b.test": 1}
    assert await store.queued() == 2


@pytest.mark.asyncio
async def test_websites_that_gave_all_they_were_asked_leave_the_line_only_when_empty(client: AsyncRedis) -> None:
    """One EXISTS tells the usual case (every queue still holds more); when it does not, one per queue."""
    store = FrontierStore(client, PREFIX)
    await store.push(entries("a.test", "1") + entries("b.test", "1", "2") + entries("c.test", "1"), "w1")
    receipts = PopReceipts()
    popped = await store.pop(3, "w1", receipts)  # one of each: a and c are now empty, b is not
    assert sorted(w for w, _, _ in popped.items) == ["a.test", "b.test", "c.test"]
    assert popped.sites_with_work == 1
    assert await client.zrange(store.sites_key, 0, -1) == [b"b.test"]
    assert [w for w, _, _ in (await store.pop(3, "w1", receipts)).items] == ["b.test"]
    await store.push(entries("d.test", "1", "2") + entries("e.test", "1", "2"), "w1")
    before = await calls(client, "exists")
    assert len((await store.pop(2, "w1", receipts)).items) == 2  # neither emptied
    assert await calls(client, "exists") - before == 1


@pytest.mark.asyncio
async def test_a_stale_count_cannot_take_an_entry_below_what_a_push_adds(client: AsyncRedis) -> None:
    """w1 popped from a before w2 emptied it: w1's count is stale when w1 next pushes links of a."""
    w1, w2 = FrontierStore(client, PREFIX), FrontierStore(client, PREFIX)
    await w1.push(entries("a.test", *"1234"), "w1")
    assert len((await w1.pop(1, "w1", PopReceipts())).items) == 1
    assert len((await w2.pop(10, "w2", PopReceipts())).items) == 3  # the rest: a's entry is reset
    await w1.push(entries("a.test", "5", "6"), "w1")  # w1 still counts its one pop of a
    assert await index(w1) == {"a.test": 2} and await w1.queued() == 2


@pytest.mark.asyncio
async def test_requests_reclaimed_and_popped_again_leave_no_entry(client: AsyncRedis) -> None:
    """A dead worker's leased requests go back to their queue and the same pop empties it again: the
    total counts both moves, and the index has no entry for the empty queue."""
    w1, w2 = FrontierStore(client, PREFIX), FrontierStore(client, PREFIX)
    await w1.push(entries("a.test", "1", "2"), "w1")
    assert len((await w1.pop(10, "w1", PopReceipts(), lease=0.2)).items) == 2  # w1 then dies
    receipts = PopReceipts()
    for _ in range(200):  # until w1's lease has expired (Redis clock): w2's pop reclaims and serves them
        again = await w2.pop(10, "w2", receipts, lease=600.0)
        if again.items:
            break
        await asyncio.sleep(0.05)
    assert len(again.items) == 2 and again.reclaimed == 2
    assert await index(w2) == {} and await w2.queued() == 0
