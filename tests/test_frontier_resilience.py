"""The frontier when Redis fails: nothing lost, one WARNING and one INFO per outage, no task dies silently."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import TimeoutError as RedisTimeoutError
from scrapy import Request
from scrapy.utils.test import get_crawler

from bench.redis_proxy import RedisProxy
from crawler.frontier import tasks as frontier_tasks
from crawler.frontier.store import MODE_DEDUPE, FrontierStore, PopReceipts, PushEntry, split_member
from crawler.frontier.tasks import Tasks
from devtools.services import start_redis
from tests.frontier_helpers import Schedulers, drain

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from crawler.frontier.scheduler import FrontierScheduler
    from devtools.services import Server


def req(path: str) -> Request:
    return Request(f"http://a.test/{path}")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Server]:
    """A redis-server of this test's own, to stop (SIGSTOP) without disturbing other tests."""
    server = start_redis(tmp_path)
    yield server
    os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def failed_calls(s: FrontierScheduler) -> int:
    stats = s.crawler.stats.get_stats()
    return sum(v for k, v in stats.items() if k.startswith("frontier/redis_error/"))


def frontier_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("crawler.frontier") and r.levelno == level]


@pytest.mark.asyncio
async def test_redis_outage_loses_nothing_and_logs_once(redis_server: Server, schedulers: Schedulers,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Redis goes away mid-crawl: pushes are kept and retried, pops resume; nothing lost, nothing twice;
    one WARNING when it goes and one INFO when it is back, however many calls failed."""
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    proxy = RedisProxy(redis_server.port).__enter__()
    s = await schedulers.open(proxy.url, FRONTIER_PREFETCH=4, REDIS_SOCKET_TIMEOUT=0.5, REDIS_CONNECT_TIMEOUT=0.5)
    for i in range(3):
        s.enqueue_request(req(f"before{i}"))
    got = [r.url for r in await drain(s, limit=2)]
    caplog.set_level(logging.INFO)
    proxy.__exit__(None, None, None)  # Redis unreachable
    for i in range(3):
        s.enqueue_request(req(f"during{i}"))
    while failed_calls(s) < 3:
        await asyncio.sleep(0.05)  # the flush and the heartbeat keep failing
    got += [r.url for r in await drain(s)]  # what was prefetched is still served
    proxy = RedisProxy(redis_server.port, port=proxy.port).__enter__()  # Redis is back
    try:
        while len(got) < 6:
            got += [r.url for r in await drain(s)]
            await asyncio.sleep(0.05)
        await schedulers.close(s)
    finally:
        proxy.__exit__(None, None, None)
    assert sorted(got) == sorted([f"http://a.test/before{i}" for i in range(3)]
                                 + [f"http://a.test/during{i}" for i in range(3)])
    warnings = frontier_records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "Frontier lost Redis" in warnings[0], warnings
    back = [m for m in frontier_records(caplog, logging.INFO) if "Redis is back" in m]
    assert len(back) == 1, back
    assert not frontier_records(caplog, logging.ERROR)
    assert s.crawler.stats.get_value("frontier/redis_outages") == 1



async def pop_while_stopped(server: Server, store: FrontierStore, n: int, receipts: PopReceipts) -> None:
    """A pop sent to a SIGSTOPped Redis: it times out (the command stays in the socket and runs at SIGCONT)."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(RedisTimeoutError):
            await store.pop(n, "w", receipts)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)

@pytest.mark.asyncio
async def test_a_pop_whose_reply_times_out_is_delivered_again(private_redis: Server) -> None:
    """Redis stops answering (SIGSTOP) while a pop is sent: the pop runs when Redis resumes, and its
    requests reach the worker with its next pop instead of being lost."""
    client = AsyncRedis.from_url(private_redis.url, socket_timeout=0.3)
    store = FrontierStore(client, "{lost}")
    await store.push([PushEntry("a.test", f"{i:040x}", MODE_DEDUPE, 0, 0, b"{}") for i in range(5)], "w")
    await store.pop(0, "w")  # the script is loaded (a NOSCRIPT reply would be no pop at all)
    receipts = PopReceipts()
    await pop_while_stopped(private_redis, store, 3, receipts)
    assert receipts.lost == [("1", 3)]
    with redis.Redis.from_url(private_redis.url) as r:
        while not r.hlen(store.pops_key("w")):  # the pop sent before SIGCONT has run by now, or soon
            await asyncio.sleep(0.01)
    again = await store.pop(3, "w", receipts)
    assert again.found == ["1"] and receipts.lost == []
    assert len(again.items) == 5  # the 3 of the lost pop, and the 2 left
    await client.aclose()


@pytest.mark.asyncio
async def test_closing_worker_returns_pops_it_never_received(private_redis: Server) -> None:
    client = AsyncRedis.from_url(private_redis.url, socket_timeout=0.3)
    store = FrontierStore(client, "{release}")
    await store.push([PushEntry("a.test", f"{i:040x}", MODE_DEDUPE, -i, 0, b"{}") for i in range(4)], "w")
    receipts = PopReceipts()
    got = await store.pop(1, "w", receipts)  # received: handled by this worker, never returned
    await pop_while_stopped(private_redis, store, 2, receipts)
    with redis.Redis.from_url(private_redis.url) as r:
        while not r.hexists(store.pops_key("w"), "2.1"):  # the lost pop has run
            await asyncio.sleep(0.01)
    assert await store.release("w", [lease for _, lease, _ in got.items], receipts) == 2
    rest = await store.pop(10, "other")
    assert len(got.items) == 1 and len(rest.items) == 3
    assert {m for _, _, m in rest.items}.isdisjoint({m for _, _, m in got.items})
    # Their priority is kept: the highest (score -3) first.
    assert [split_member(m)[0] for _, _, m in rest.items] == [f"{i:040x}" for i in (2, 1, 0)]
    await client.aclose()


@pytest.mark.asyncio
async def test_a_crashing_heartbeat_is_logged_once_and_restarted(schedulers: Schedulers,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected exception in the heartbeat (here from the spider's seed hook) is logged with its
    traceback and the heartbeat goes on: the hook is called again."""
    s = await schedulers.open(FRONTIER_IDLE_POLL_SECONDS=0.05)
    assert s.redis is not None and s.spider is not None
    told: list[int] = []

    def broken_hook(count: int) -> None:
        told.append(count)
        if len(told) == 1:
            raise RuntimeError("bug in a seed hook")

    s.spider.frontier_seeds_waiting = broken_hook  # type: ignore[attr-defined]
    await s.redis.rpush("frontier_test:start_urls", "http://a.test/1")
    with caplog.at_level(logging.ERROR):
        while len(told) < 2:
            await asyncio.sleep(0.05)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "heartbeat task failed; restarting" in errors[0].getMessage()
    assert errors[0].exc_info is not None and "bug in a seed hook" in str(errors[0].exc_info[1])
    assert s.crawler.stats.get_value("frontier/task_error") == 1


@pytest.mark.asyncio
async def test_a_task_that_keeps_crashing_closes_the_worker(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(frontier_tasks, "_RESTART_PAUSE", 0.01)
    crawler = get_crawler()
    assert crawler.stats is not None
    reasons: list[str] = []
    tasks = Tasks(asyncio.get_running_loop(), crawler.stats, reasons.append)

    async def crash() -> None:
        raise RuntimeError("always")

    with caplog.at_level(logging.ERROR):
        await tasks.start_loop("heartbeat", crash)
    assert reasons == ["frontier_task_failed"]
    assert crawler.stats.get_value("frontier/task_error") == 4
    assert "closing the worker" in caplog.records[-1].getMessage()


@pytest.mark.asyncio
async def test_a_one_shot_task_crash_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    crawler = get_crawler()
    assert crawler.stats is not None
    tasks = Tasks(asyncio.get_running_loop(), crawler.stats, lambda reason: None)

    async def crash() -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR):
        await asyncio.gather(tasks.start("flush", crash()), return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
    assert "frontier-flush" in caplog.records[0].getMessage()
