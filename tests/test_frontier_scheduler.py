"""The frontier scheduler against a real Redis: order, fairness, not-before, requeue, dedupe, safety."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from scrapy import Request
from scrapy.core.downloader import Slot
from scrapy.core.engine import ExecutionEngine

from crawler.frontier.config import FrontierConfig
from crawler.frontier.store import MODE_DEDUPE, FrontierStore, PushEntry
from tests.frontier_helpers import Schedulers, drain
from tests.redis_clients import async_redis, sync_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from crawler.frontier.scheduler import FrontierScheduler

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)


def req(host: str, path: str, **kwargs: object) -> Request:
    return Request(f"http://{host}/{path}", **kwargs)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[FrontierStore]:
    client = async_redis(redis_url)
    yield FrontierStore(client, "{store_test}")
    await client.aclose()


async def server_now(s: FrontierScheduler) -> float:
    assert s.store is not None
    return (await s.store.pop(0, "clock")).now


@pytest.mark.asyncio
async def test_priority_then_fifo_within_a_website(schedulers: Schedulers) -> None:
    s = await schedulers.open(FRONTIER_PREFETCH=100)
    for i in range(5):
        s.enqueue_request(req("a.test", f"low{i}", priority=0))
    s.enqueue_request(req("a.test", "high", priority=10))
    s.enqueue_request(req("a.test", "neg", priority=-3))
    out = [r.url.rsplit("/", 1)[1] for r in await drain(s)]
    assert out == ["high", "low0", "low1", "low2", "low3", "low4", "neg"]


@pytest.mark.asyncio
async def test_fair_across_websites(store: FrontierStore) -> None:
    """One huge website does not starve small ones: each pop shares out across ready websites."""
    entries = [PushEntry("huge.test", f"h{i:039x}", MODE_DEDUPE, 0, 0, b"{}") for i in range(200)]
    entries += [PushEntry(site, f"{site}{i}", MODE_DEDUPE, 0, 0, b"{}")
                for site in ("small1.test", "small2.test", "small3.test") for i in range(4)]
    await store.push(entries, "w")
    batches = [[site for site, _, _ in (await store.pop(8, "w")).items] for _ in range(3)]
    assert Counter(batches[0]) == {"huge.test": 2, "small1.test": 2, "small2.test": 2, "small3.test": 2}
    # The small websites are done after two pops; the huge one never took more than its share.
    assert Counter(batches[0] + batches[1])["huge.test"] == 4
    assert set(batches[2]) == {"huge.test"} and len(batches[2]) == 8


@pytest.mark.asyncio
@pytest.mark.parametrize(("n", "sites"), [(1, 3), (5, 3), (7, 4), (8, 3), (2, 5)])
async def test_pop_never_returns_more_than_asked(store: FrontierStore, n: int, sites: int) -> None:
    """ceil(n / websites) per website would return up to n + websites - 1 (FRONTIER_PREFETCH exceeded)."""
    await store.push([PushEntry(f"s{k}.test", f"{k}-{i}", MODE_DEDUPE, 0, 0, b"{}")
                      for k in range(sites) for i in range(10)], "w")
    popped = (await store.pop(n, "w")).items
    assert len(popped) == n
    # Still fair: no website got two more than another.
    counts = Counter(site for site, _, _ in popped)
    assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.asyncio
async def test_local_buffer_is_served_round_robin(schedulers: Schedulers) -> None:
    s = await schedulers.open(FRONTIER_PREFETCH=6)
    for i in range(3):
        s.enqueue_request(req("a.test", f"{i}"))
        s.enqueue_request(req("b.test", f"{i}"))
    order = [r.meta["download_slot"] for r in await drain(s)]
    assert sorted(order) == ["a.test"] * 3 + ["b.test"] * 3
    assert all(order[i] != order[i + 1] for i in range(len(order) - 1)), order


@pytest.mark.asyncio
async def test_not_before_holds_one_website_while_others_flow(schedulers: Schedulers) -> None:
    s = await schedulers.open(FRONTIER_PREFETCH=4)
    for i in range(6):
        s.enqueue_request(req("held.test", f"{i}"))
        s.enqueue_request(req("free.test", f"{i}"))
    await s.settled()
    now = await server_now(s)
    until = now + 0.6
    assert await s.mark_not_before("held.test", until) == pytest.approx(until)
    # An earlier mark does not shorten the hold.
    assert await s.mark_not_before("held.test", now + 0.1) == pytest.approx(until)
    got = await drain(s)
    assert [r.meta["download_slot"] for r in got] == ["free.test"] * 6
    assert len(s) == 0
    while await server_now(s) <= until:
        await asyncio.sleep(0.05)
    later = await drain(s)
    assert [r.meta["download_slot"] for r in later] == ["held.test"] * 6


@pytest.mark.asyncio
async def test_requeue_contract(schedulers: Schedulers) -> None:
    """A downloader middleware postpones a request: stored again without the dupefilter, website held."""
    s = await schedulers.open(FRONTIER_PREFETCH=10)
    assert s.store is not None
    for i in range(3):
        s.enqueue_request(req("budget.test", f"{i}"))
    s.enqueue_request(req("other.test", "x"))
    first = (await drain(s, limit=1))[0]
    # 2 budget.test requests stay in the local prefetch buffer
    until = await server_now(s) + 0.5
    postponed = first.replace(meta={**first.meta, "frontier_requeue": True, "frontier_not_before": until})
    assert s.enqueue_request(postponed) is True
    assert "frontier_requeue" not in postponed.meta and "frontier_not_before" not in postponed.meta
    rest = await drain(s)
    assert {r.meta["download_slot"] for r in rest} <= {"other.test"}
    queues = {q.website: q for q in await s.store.queues()}
    assert queues["budget.test"].depth == 3  # the postponed one and the two prefetched ones
    assert queues["budget.test"].ready_at == pytest.approx(until)
    assert s.crawler.stats.get_value("frontier/requeued") == 1
    assert s.crawler.stats.get_value("dupefilter/filtered") is None
    while await server_now(s) <= until:
        await asyncio.sleep(0.05)
    later = await drain(s)
    assert sorted(r.url for r in later) == sorted(f"http://budget.test/{i}" for i in range(3))
    assert "frontier_requeue" not in later[0].meta


@pytest.mark.asyncio
async def test_duplicates_are_filtered_cluster_wide(schedulers: Schedulers) -> None:
    a = await schedulers.open()
    b = await schedulers.open()
    for s in (a, b, a):
        s.enqueue_request(req("a.test", "same"))
        s.enqueue_request(req("a.test", "forced", dont_filter=True))
        await s.settled()
    got = [r.url for r in await drain(a) + await drain(b)]
    filtered = sum(s.crawler.stats.get_value("dupefilter/filtered", 0) for s in (a, b))
    enqueued = sum(s.crawler.stats.get_value("scheduler/enqueued/redis", 0) for s in (a, b))
    assert filtered == 2 and enqueued == 4
    assert sorted(got) == ["http://a.test/forced"] * 3 + ["http://a.test/same"]


@pytest.mark.asyncio
async def test_unencodable_request_leaves_no_fingerprint(schedulers: Schedulers, redis_url: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    s = await schedulers.open()
    with caplog.at_level(logging.ERROR):
        ok = s.enqueue_request(req("a.test", "bad", callback=lambda r: None))
        s.enqueue_request(req("a.test", "bad2", meta={"x": object()}))
        s.enqueue_request(req("a.test", "good"))
        got = [r.url for r in await drain(s)]
    assert ok is False
    assert got == ["http://a.test/good"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("Cannot store <GET http://a.test/bad" in e for e in errors)
    assert "callback" in errors[0] and "meta['x']" in errors[1]
    assert s.crawler.stats.get_value("frontier/unserializable") == 2
    with sync_redis(redis_url) as r:
        assert r.scard("{frontier_test}:seen") == 1  # only the good request's fingerprint


@pytest.mark.asyncio
async def test_prefetched_requests_go_back_on_close(schedulers: Schedulers) -> None:
    a = await schedulers.open(FRONTIER_PREFETCH=10)
    for i in range(5):
        a.enqueue_request(req("a.test", f"{i}"))
    first = await drain(a, limit=1)
    assert len(a) == 4
    await schedulers.close(a, "shutdown")
    assert a.crawler.stats.get_value("frontier/returned_on_close") == 4
    b = await schedulers.open()
    urls = [first[0].url] + [r.url for r in await drain(b)]
    assert sorted(urls) == [f"http://a.test/{i}" for i in range(5)]


@pytest.mark.asyncio
async def test_undecodable_payload_goes_to_dead_list(schedulers: Schedulers, redis_url: str) -> None:
    s = await schedulers.open()
    assert s.store is not None
    await s.store.push([PushEntry("a.test", "f" * 40, MODE_DEDUPE, 0, 0, b'{"v": 1, "url": "http://a.test/x"}')],
                       "test")
    s.enqueue_request(req("a.test", "good"))
    assert [r.url for r in await drain(s)] == ["http://a.test/good"]
    await schedulers.close(s)  # waits for the dead letter to be stored
    with sync_redis(redis_url) as r:
        dead = r.lrange("{frontier_test}:dead", 0, -1)
    assert len(dead) == 1 and dead[0].endswith(b'{"v": 1, "url": "http://a.test/x"}')


@pytest.mark.asyncio
async def test_push_survives_script_flush(schedulers: Schedulers) -> None:
    """EVALSHA falls back to loading the script after SCRIPT FLUSH (NOSCRIPT)."""
    s = await schedulers.open()
    s.enqueue_request(req("a.test", "1"))
    await s.settled()
    assert s.redis is not None
    await s.redis.script_flush()
    s.enqueue_request(req("a.test", "2"))
    assert sorted(r.url for r in await drain(s)) == ["http://a.test/1", "http://a.test/2"]


@pytest.mark.asyncio
async def test_concurrent_pushers_store_each_fingerprint_once(store: FrontierStore) -> None:
    entries = [PushEntry("a.test", f"{i:040x}", MODE_DEDUPE, 0, 0, b"{}") for i in range(100)]
    results = await asyncio.gather(*(store.push(entries, f"w{n}") for n in range(8)))
    assert sum(sum(flags) for flags, _ in results) == 100
    assert len((await store.pop(1000, "w")).items) == 100


@pytest.mark.asyncio
async def test_two_schedulers_never_get_the_same_request(schedulers: Schedulers) -> None:
    a = await schedulers.open(FRONTIER_PREFETCH=4)
    b = await schedulers.open(FRONTIER_PREFETCH=4)
    for i in range(40):
        a.enqueue_request(req(f"s{i % 3}.test", f"{i}"))
    await a.settled()
    got_a: list[str] = []
    got_b: list[str] = []
    for _ in range(20):
        got_a += [r.url for r in await drain(a, limit=2)]
        got_b += [r.url for r in await drain(b, limit=2)]
    assert got_a and got_b
    assert not set(got_a) & set(got_b)
    assert len(got_a) + len(got_b) == 40


@pytest.mark.asyncio
async def test_website_key_and_download_slot(schedulers: Schedulers) -> None:
    # A slot of the spider's own choosing survives Redis only when the operator allows it.
    s = await schedulers.open(FRONTIER_ENTRY_META_ALLOW=["download_slot"])
    s.enqueue_request(req("www.shop.example.co.uk", "1"))
    s.enqueue_request(req("img.shop.example.co.uk", "2", meta={"download_slot": "mine"}))
    out = sorted((r.url, r.meta["download_slot"]) for r in await drain(s))
    assert s.store is not None
    assert [q.website for q in await s.store.queues()] == []
    assert out == [("http://img.shop.example.co.uk/2", "mine"), ("http://www.shop.example.co.uk/1", "example.co.uk")]


@pytest.mark.asyncio
async def test_cluster_idle_needs_every_worker_idle(schedulers: Schedulers) -> None:
    """While worker a holds a request (prefetched, not yet handed out), b never sees the cluster idle.

    a's heartbeat reports it busy every 0.75 s (idle close 3 s / 4); b would see the cluster idle only
    after 3 s without a report: a stall of up to ~2 s on a busy machine does not make this fail."""
    idle_close = 3.0
    settings = {"FRONTIER_IDLE_CLOSE_SECONDS": idle_close, "FRONTIER_IDLE_POLL_SECONDS": 0.05}
    a = await schedulers.open(FRONTIER_PREFETCH=4, **settings)
    b = await schedulers.open(**settings)
    a.enqueue_request(req("a.test", "1"))
    a.enqueue_request(req("a.test", "2"))
    await drain(a, limit=1)
    assert len(a) == 1
    start = time.monotonic()
    while time.monotonic() - start < 1.6:  # b keeps seeing a busy worker (a's heartbeat)
        await asyncio.sleep(0.1)
        assert b.cluster_idle_seconds() < idle_close
    await drain(a)  # a hands out its last request (no engine here: its outcome counts as processed)
    while b.cluster_idle_seconds() < idle_close:
        await asyncio.sleep(0.05)
    while a.cluster_idle_seconds() < idle_close - 0.1:  # a sees it too, from its own heartbeat
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("name", "value"), [
    ("FRONTIER_PREFETCH", "0"), ("FRONTIER_PREFETCH", "many"), ("FRONTIER_FLUSH_DELAY", "-1"),
    ("FRONTIER_FLUSH_MAX", "0"), ("FRONTIER_KEY_PREFIX", "%(nope)s"), ("FRONTIER_SEEN_CACHE", "-5"),
    ("FRONTIER_IDLE_POLL_SECONDS", "0"), ("WEBSITE_KEY", "path"), ("FRONTIER_CLOSE_TIMEOUT", "0"),
])
def test_invalid_settings_raise(name: str, value: str) -> None:
    from scrapy.settings import Settings

    with pytest.raises(ValueError, match=name):
        FrontierConfig.from_settings(Settings({"REDIS_URL": "redis://x", name: value}))


def test_config_defaults() -> None:
    from scrapy.settings import Settings

    c = FrontierConfig.from_settings(Settings({"REDIS_URL": "redis://x"}))
    assert (c.key_prefix, c.prefetch, c.flush_max, c.website_mode, c.close_timeout) == (
        "{%(spider)s}", 32, 200, "domain", 30)


@pytest.mark.asyncio
async def test_busy_worker_is_told_about_seeds(schedulers: Schedulers) -> None:
    """A service worker that never goes idle still takes new seeds (scrapy-redis reads them only when idle)."""
    s = await schedulers.open(FRONTIER_IDLE_CLOSE_SECONDS=0.4, FRONTIER_PREFETCH=4)
    s.enqueue_request(req("a.test", "held"))
    await drain(s, limit=0)
    assert len(s) == 1  # busy: it holds a request
    assert s.redis is not None and s.spider is not None
    await s.redis.rpush("frontier_test:start_urls", "http://a.test/1", "http://a.test/2")
    while not s.spider.seeds_told:  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
    assert s.spider.seeds_told[0] == 2  # type: ignore[attr-defined]
    assert len(s) == 1


@pytest.mark.asyncio
async def test_local_duplicate_cache_only_drops_true_duplicates(schedulers: Schedulers) -> None:
    s = await schedulers.open()
    s.enqueue_request(req("a.test", "x"))
    await s.settled()
    assert s.enqueue_request(req("a.test", "x")) is False  # known URL: dropped at once, no Redis
    s.enqueue_request(req("a.test", "x", method="POST", body=b"q=1"))  # same URL, another fingerprint
    s.enqueue_request(req("a.test", "x#part"))  # another URL string, same fingerprint
    got = sorted(f"{r.method} {r.url}" for r in await drain(s))
    assert got == ["GET http://a.test/x", "POST http://a.test/x"]
    assert s.crawler.stats.get_value("dupefilter/filtered") == 2


@pytest.mark.asyncio
async def test_one_turn_hands_out_no_more_than_the_download_slots_take(schedulers: Schedulers) -> None:
    """The engine asks for many requests in one event-loop turn, and a request reaches its download slot
    (``slot.active``) only on a later turn: requests handed out in the turn count against their slot, so
    one website's backlog does not fill the engine while other websites' requests wait in the buffer."""
    # Nothing is downloaded here: no HTTP handler (no connection pool left open).
    s = await schedulers.open(FRONTIER_PREFETCH=40, CONCURRENT_REQUESTS_PER_DOMAIN=2,
                              DOWNLOAD_SLOTS={"slow.test": {"concurrency": 1}},
                              DOWNLOAD_HANDLERS={"http": None, "https": None},
                              FRONTIER_ENTRY_META_ALLOW=["download_slot"])
    # A real engine and downloader (not started): the scheduler reads its download slots.
    engine = ExecutionEngine(s.crawler, lambda _: None)
    s.crawler.engine = engine
    busy = Slot(2, 0)  # big.test's slot: one download under way
    busy.active.add(req("big.test", "under-way"))
    engine.downloader.slots["big.test"] = busy
    for i in range(8):
        s.enqueue_request(req("big.test", f"{i}"))
    for i in range(2):
        s.enqueue_request(req("small.test", f"{i}"))
    for i in range(3):
        s.enqueue_request(req("slow.test", f"{i}"))
        # A spider's own download slot: not the website's, not limited here (as before).
        s.enqueue_request(req("own.test", f"{i}", meta={"download_slot": "mine"}))
    await s.settled()
    assert len(s) == 16

    def one_turn() -> Counter[str]:  # as ExecutionEngine._start_scheduled_requests
        out: Counter[str] = Counter()
        while (request := s.next_request()) is not None:
            out[request.meta["download_slot"]] += 1
        return out

    first = one_turn()
    await asyncio.sleep(0)  # the next turn: nothing reached a slot (no download here)
    second = one_turn()
    await asyncio.sleep(0)
    third = one_turn()
    await schedulers.close(s)
    engine.downloader.close()
    # Each website's slot gets its concurrency, then one more slot's worth may queue (2 x concurrency).
    assert first == {"big.test": 3, "small.test": 2, "slow.test": 2, "mine": 3}
    assert second == {"big.test": 3, "slow.test": 1}
    assert third == {"big.test": 2}
