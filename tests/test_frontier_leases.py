"""Leased delivery (issue 14): a popped request stays leased in Redis until its outcome is processed; a dead
worker's leases go back to their queues after the lease time, keeping priority and not-before; the cluster idle
close waits for every lease. Deadlines are driven by rewriting them in Redis, never by waiting for a clock."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
import pytest_asyncio
from scrapy import Request

from crawler.frontier.codec import encode_request
from crawler.frontier.leases import Leases
from crawler.frontier.store import MODE_DEDUPE, FrontierStore, PopReceipts, PushEntry, split_member
from tests.frontier_helpers import Schedulers, drain
from tests.redis_clients import async_redis

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)

LEASE = 30.0


@pytest_asyncio.fixture
async def store(redis_url: str) -> FrontierStore:
    return FrontierStore(async_redis(redis_url, socket_timeout=5), "{lease}")


def fps(items: list[tuple[str, str, bytes]]) -> list[str]:
    return [split_member(m)[0] for _, _, m in items]


@pytest.mark.asyncio
async def test_an_expired_lease_goes_back_with_its_priority_and_the_websites_not_before(store: FrontierStore) -> None:
    await store.push([PushEntry("a.test", f"{i:040x}", MODE_DEDUPE, -i, 0, b"{}") for i in range(3)], "w")
    dead = await store.pop(3, "dead", PopReceipts(), LEASE)
    assert len(dead.items) == 3 and await store.redis.zscore(store.leases_key, "dead") == pytest.approx(
        dead.now + LEASE, abs=0.01)
    live = PopReceipts()
    assert (await store.pop(10, "live", live, LEASE)).items == []  # leased: nobody else gets them
    until = dead.now + 100
    await store.mark_not_before("a.test", until)
    await store.redis.zadd(store.leases_key, {"dead": 0})  # its deadline has passed
    status = await store.status("live", False, None, LEASE)
    assert status.reclaimed == 3 and status.leased == 0
    assert not await store.redis.exists(store.pops_key("dead"))
    assert await store.redis.zscore(store.sites_key, "a.test") == pytest.approx(until)  # not-before kept
    assert (await store.pop(10, "live", live, LEASE)).items == []
    await store.release_not_before("a.test")
    again = await store.pop(10, "live", live, LEASE)
    assert fps(again.items) == [f"{i:040x}" for i in (2, 1, 0)]  # priority kept
    await store.redis.aclose()


@pytest.mark.asyncio
async def test_acknowledgements_and_renewals_ride_on_pops_and_heartbeats(store: FrontierStore) -> None:
    await store.push([PushEntry("a.test", f"{i:040x}", MODE_DEDUPE, 0, 0, b"{}") for i in range(2)], "w")
    receipts = PopReceipts()
    got = await store.pop(2, "w", receipts, LEASE)
    calls = store.calls
    await store.redis.zadd(store.leases_key, {"w": got.now + 1})  # about to expire
    later = await store.pop(0, "w", receipts, LEASE, [got.items[0][1]])
    assert await store.redis.hlen(store.pops_key("w")) == 1
    assert await store.redis.zscore(store.leases_key, "w") == pytest.approx(later.now + LEASE, abs=0.01)  # renewed
    status = await store.status("w", True, None, LEASE, [got.items[1][1]])
    assert status.leased == 0 and not await store.redis.exists(store.pops_key("w"))
    assert store.calls == calls + 2  # no call of their own
    await store.redis.aclose()


@pytest.mark.asyncio
async def test_a_live_workers_leases_are_not_reclaimed(store: FrontierStore) -> None:
    await store.push([PushEntry("a.test", f"{i:040x}", MODE_DEDUPE, 0, 0, b"{}") for i in range(4)], "w")
    await store.pop(2, "live", PopReceipts(), LEASE)
    await store.pop(2, "dead", PopReceipts(), LEASE)
    await store.redis.zadd(store.leases_key, {"dead": 0})
    status = await store.status("other", False, None, LEASE)
    assert status.reclaimed == 2 and status.leased == 1
    assert await store.redis.hlen(store.pops_key("live")) == 2
    await store.redis.aclose()


@dataclass
class Writes:
    appended: int = 0
    stored: int = 0


def test_a_done_request_is_acknowledged_only_once_what_it_produced_is_stored() -> None:
    outbox, failed = Writes(), Writes()
    leases = Leases(LEASE, [outbox, failed])
    outbox.appended, failed.appended = 5, 1  # its new links and its failure record
    leases.done("1.1")
    assert leases.take() == []
    outbox.stored = 5
    assert leases.take() == []  # the failure record is not stored yet
    failed.stored = 1
    assert leases.take() == ["1.1"]
    leases.unsent(["1.1"])  # the call carrying it failed: sent with the next one
    assert leases.take() == ["1.1"]


def test_without_leases_a_pop_is_acknowledged_on_receipt() -> None:
    leases = Leases(0, [Writes()])
    leases.received(["1.1", "1.2"])
    leases.done("1.1")
    assert leases.take() == ["1.1", "1.2"] and not leases.renew_due()


@pytest.mark.asyncio
async def test_no_cluster_idle_while_a_lease_is_outstanding_and_the_survivor_serves_it(redis_url: str) -> None:
    """A worker dies holding two requests: the survivor never counts the cluster idle meanwhile (idle close 1 s,
    watched for 3 s), and serves them once their lease expires."""
    store = FrontierStore(async_redis(redis_url, socket_timeout=5), "{frontier_test}")
    await store.push([PushEntry("a.test", f"{i:040x}", MODE_DEDUPE, 0, 0,
                                encode_request(Request(f"http://a.test/{i}"), None)) for i in (1, 2)], "w")
    dead = await store.pop(10, "dead", PopReceipts(), LEASE)
    assert len(dead.items) == 2
    await store.redis.aclose()
    schedulers = Schedulers(redis_url)
    s = await schedulers.open(FRONTIER_IDLE_CLOSE_SECONDS=1, FRONTIER_IDLE_POLL_SECONDS=0.05,
                              FRONTIER_LEASE_SECONDS=LEASE)
    try:
        assert s.store is not None
        assert await drain(s) == []
        watch_until = time.monotonic() + 3
        while time.monotonic() < watch_until:
            assert s.cluster_idle_seconds() == 0
            await asyncio.sleep(0.05)
        await s.store.redis.zadd(s.store.partitions[0].leases_key, {"dead": 0})  # its lease expires
        got: list[str] = []
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            got += [r.url for r in await drain(s)]
            await asyncio.sleep(0.05)
        assert sorted(got) == ["http://a.test/1", "http://a.test/2"]
        assert s.crawler.stats.get_value("frontier/leases_reclaimed") == 2
    finally:
        await schedulers.close_all()
