"""The frontier scheduler against a real Redis: order, fairness, not-before, requeue, dedupe, safety."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from scrapy import Request
from scrapy.core.downloader import Slot
from scrapy.core.engine import ExecutionEngine

from bench.redis_proxy import RedisProxy
from crawler.frontier.config import FrontierConfig
from crawler.frontier.store import MODE_DEDUPE, FrontierStore, PushEntry
from tests.frontier_helpers import CodecSpider, drain, open_scheduler, settle

if TYPE_CHECKING:
    from devtools.services import Server


def req(host: str, path: str, **kwargs: object) -> Request:
    return Request(f"http://{host}/{path}", **kwargs)  # type: ignore[arg-type]


def test_priority_then_fifo_within_a_website(redis_url: str) -> None:
    async def run() -> list[str]:
        s = await open_scheduler(redis_url, FRONTIER_PREFETCH=100)
        for i in range(5):
            s.enqueue_request(req("a.test", f"low{i}", priority=0))
        s.enqueue_request(req("a.test", "high", priority=10))
        s.enqueue_request(req("a.test", "neg", priority=-3))
        await settle(s)
        out = [r.url.rsplit("/", 1)[1] for r in await drain(s)]
        await s._close("finished")
        return out

    assert asyncio.run(run()) == ["high", "low0", "low1", "low2", "low3", "low4", "neg"]


def test_fair_across_websites(redis_url: str) -> None:
    """One huge website does not starve small ones: each pop shares out across ready websites."""
    async def run() -> list[list[str]]:
        client = AsyncRedis.from_url(redis_url)
        store = FrontierStore(client, "{fair}")
        entries = [PushEntry("huge.test", f"h{i:039x}", MODE_DEDUPE, 0, 0, b"{}") for i in range(200)]
        entries += [PushEntry(site, f"{site}{i}", MODE_DEDUPE, 0, 0, b"{}")
                    for site in ("small1.test", "small2.test", "small3.test") for i in range(4)]
        await store.push(entries, "w")
        batches = []
        for _ in range(3):
            res = await store.pop(8, "w")
            batches.append([site for site, _ in res.items])
        await client.aclose()
        return batches

    batches = asyncio.run(run())
    first = Counter(batches[0])
    assert first == {"huge.test": 2, "small1.test": 2, "small2.test": 2, "small3.test": 2}
    # The small websites are done after two pops; the huge one never took more than its share.
    assert Counter(batches[0] + batches[1])["huge.test"] == 4
    assert set(batches[2]) == {"huge.test"} and len(batches[2]) == 8


def test_local_buffer_is_served_round_robin(redis_url: str) -> None:
    async def run() -> list[str]:
        s = await open_scheduler(redis_url, FRONTIER_PREFETCH=6)
        for i in range(3):
            s.enqueue_request(req("a.test", f"{i}"))
            s.enqueue_request(req("b.test", f"{i}"))
        await settle(s)
        out = [r.meta["download_slot"] for r in await drain(s)]
        await s._close("finished")
        return out

    order = asyncio.run(run())
    assert sorted(order) == ["a.test"] * 3 + ["b.test"] * 3
    assert all(order[i] != order[i + 1] for i in range(len(order) - 1)), order


def test_not_before_holds_one_website_while_others_flow(redis_url: str) -> None:
    async def run() -> None:
        s = await open_scheduler(redis_url, FRONTIER_PREFETCH=4)
        assert s.store is not None
        for i in range(6):
            s.enqueue_request(req("held.test", f"{i}"))
            s.enqueue_request(req("free.test", f"{i}"))
        await settle(s)
        server_now = (await s.store.pop(0, s.worker_id)).now
        until = server_now + 0.6
        assert await s.mark_not_before("held.test", until) == pytest.approx(until)
        # An earlier mark does not shorten the hold.
        assert await s.mark_not_before("held.test", server_now + 0.1) == pytest.approx(until)
        got = await drain(s)
        assert [r.meta["download_slot"] for r in got] == ["free.test"] * 6
        assert not s._prefetch
        while (await s.store.pop(0, s.worker_id)).now <= until:
            await asyncio.sleep(0.05)
        later = await drain(s)
        assert [r.meta["download_slot"] for r in later] == ["held.test"] * 6
        await s._close("finished")

    asyncio.run(run())


def test_requeue_contract(redis_url: str) -> None:
    """A downloader middleware postpones a request: stored again without the dupefilter, website held."""
    async def run() -> None:
        s = await open_scheduler(redis_url, FRONTIER_PREFETCH=10)
        assert s.store is not None
        for i in range(3):
            s.enqueue_request(req("budget.test", f"{i}"))
        s.enqueue_request(req("other.test", "x"))
        await settle(s)
        got = await drain(s, limit=1)
        first = got[0]
        # 2 budget.test requests stay in the local prefetch buffer
        now = (await s.store.pop(0, s.worker_id)).now
        until = now + 0.5
        postponed = first.replace(meta={**first.meta, "frontier_requeue": True, "frontier_not_before": until})
        assert s.enqueue_request(postponed) is True
        assert "frontier_requeue" not in postponed.meta and "frontier_not_before" not in postponed.meta
        await settle(s)
        rest = await drain(s)
        assert {r.meta["download_slot"] for r in rest} <= {"other.test"}
        queues = {q.website: q for q in await s.store.queues()}
        assert queues["budget.test"].depth == 3  # the postponed one and the two prefetched ones
        assert queues["budget.test"].ready_at == pytest.approx(until)
        assert s.crawler.stats.get_value("frontier/requeued") == 1
        assert s.crawler.stats.get_value("dupefilter/filtered") is None
        while (await s.store.pop(0, s.worker_id)).now <= until:
            await asyncio.sleep(0.05)
        later = await drain(s)
        assert sorted(r.url for r in later) == sorted(f"http://budget.test/{i}" for i in range(3))
        assert "frontier_requeue" not in later[0].meta
        await s._close("finished")

    asyncio.run(run())


def test_duplicates_are_filtered_cluster_wide(redis_url: str) -> None:
    async def run() -> tuple[int, int, list[str]]:
        a = await open_scheduler(redis_url)
        b = await open_scheduler(redis_url)
        for s in (a, b, a):
            s.enqueue_request(req("a.test", "same"))
            s.enqueue_request(req("a.test", "forced", dont_filter=True))
            await settle(s)
        got = [r.url for r in await drain(a) + await drain(b)]  # each prefetches after its push
        stats = (a.crawler.stats.get_value("dupefilter/filtered", 0) + b.crawler.stats.get_value(
            "dupefilter/filtered", 0), a.crawler.stats.get_value("scheduler/enqueued/redis", 0)
            + b.crawler.stats.get_value("scheduler/enqueued/redis", 0))
        await a._close("finished")
        await b._close("finished")
        return stats[0], stats[1], got

    filtered, enqueued, got = asyncio.run(run())
    assert filtered == 2 and enqueued == 4
    assert sorted(got) == ["http://a.test/forced"] * 3 + ["http://a.test/same"]


def test_unencodable_request_leaves_no_fingerprint(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> tuple[bool, list[str]]:
        s = await open_scheduler(redis_url)
        ok = s.enqueue_request(req("a.test", "bad", callback=lambda r: None))
        s.enqueue_request(req("a.test", "bad2", meta={"x": object()}))
        s.enqueue_request(req("a.test", "good"))
        await settle(s)
        got = [r.url for r in await drain(s)]
        await s._close("finished")
        return ok, got

    with caplog.at_level(logging.ERROR):
        ok, got = asyncio.run(run())
    assert ok is False
    assert got == ["http://a.test/good"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("Cannot store <GET http://a.test/bad" in e for e in errors)
    assert "callback" in errors[0] and "meta['x']" in errors[1]
    with redis.Redis.from_url(redis_url) as r:
        assert r.scard("{frontier_test}:seen") == 1  # only the good request's fingerprint


def test_unencodable_request_stat(redis_url: str) -> None:
    async def run() -> int:
        s = await open_scheduler(redis_url)
        s.enqueue_request(req("a.test", "bad", meta={"x": {1, 2}}))
        await settle(s)
        await s._close("finished")
        return int(s.crawler.stats.get_value("frontier/unserializable"))

    assert asyncio.run(run()) == 1


def test_prefetched_requests_go_back_on_close(redis_url: str) -> None:
    async def run() -> list[str]:
        a = await open_scheduler(redis_url, FRONTIER_PREFETCH=10)
        for i in range(5):
            a.enqueue_request(req("a.test", f"{i}"))
        await settle(a)
        first = await drain(a, limit=1)
        assert len(a._prefetch) == 4
        await a._close("shutdown")
        b = await open_scheduler(redis_url)
        rest = [r.url for r in await drain(b)]
        await b._close("finished")
        return [first[0].url, *rest]

    urls = asyncio.run(run())
    assert sorted(urls) == [f"http://a.test/{i}" for i in range(5)]


def test_undecodable_payload_goes_to_dead_list(redis_url: str) -> None:
    async def run() -> list[str]:
        s = await open_scheduler(redis_url)
        assert s.store is not None
        await s.store.push([PushEntry("a.test", "f" * 40, MODE_DEDUPE, 0, 0, b'{"v": 1, "url": "http://a.test/x"}')],
                           "test")
        s.enqueue_request(req("a.test", "good"))
        await settle(s)
        got = [r.url for r in await drain(s)]
        await s._close("finished")
        return got

    assert asyncio.run(run()) == ["http://a.test/good"]
    with redis.Redis.from_url(redis_url) as r:
        dead = r.lrange("{frontier_test}:dead", 0, -1)
    assert len(dead) == 1 and dead[0].endswith(b'{"v": 1, "url": "http://a.test/x"}')


def test_push_survives_script_flush(redis_url: str) -> None:
    """EVALSHA falls back to loading the script after SCRIPT FLUSH (NOSCRIPT)."""
    async def run() -> list[str]:
        s = await open_scheduler(redis_url)
        s.enqueue_request(req("a.test", "1"))
        await settle(s)
        assert s.redis is not None
        await s.redis.script_flush()
        s.enqueue_request(req("a.test", "2"))
        await settle(s)
        got = sorted(r.url for r in await drain(s))
        await s._close("finished")
        return got

    assert asyncio.run(run()) == ["http://a.test/1", "http://a.test/2"]


def test_concurrent_pushers_store_each_fingerprint_once(redis_url: str) -> None:
    async def run() -> tuple[int, int]:
        client = AsyncRedis.from_url(redis_url)
        store = FrontierStore(client, "{conc}")
        entries = [PushEntry("a.test", f"{i:040x}", MODE_DEDUPE, 0, 0, b"{}") for i in range(100)]
        results = await asyncio.gather(*(store.push(entries, f"w{n}") for n in range(8)))
        stored = sum(sum(flags) for flags, _ in results)
        popped = len((await store.pop(1000, "w")).items)
        await client.aclose()
        return stored, popped

    assert asyncio.run(run()) == (100, 100)


def test_two_schedulers_never_get_the_same_request(redis_url: str) -> None:
    async def run() -> tuple[list[str], list[str]]:
        a = await open_scheduler(redis_url, FRONTIER_PREFETCH=4)
        b = await open_scheduler(redis_url, FRONTIER_PREFETCH=4)
        for i in range(40):
            a.enqueue_request(req(f"s{i % 3}.test", f"{i}"))
        await settle(a)
        got_a: list[str] = []
        got_b: list[str] = []
        for _ in range(20):
            got_a += [r.url for r in await drain(a, limit=2)]
            got_b += [r.url for r in await drain(b, limit=2)]
        await a._close("finished")
        await b._close("finished")
        return got_a, got_b

    got_a, got_b = asyncio.run(run())
    assert got_a and got_b
    assert not set(got_a) & set(got_b)
    assert len(got_a) + len(got_b) == 40


def test_website_key_and_download_slot(redis_url: str) -> None:
    async def run() -> list[tuple[str, str]]:
        # A slot of the spider's own choosing survives Redis only when the operator allows it.
        s = await open_scheduler(redis_url, FRONTIER_ENTRY_META_ALLOW=["download_slot"])
        s.enqueue_request(req("www.shop.example.co.uk", "1"))
        s.enqueue_request(req("img.shop.example.co.uk", "2", meta={"download_slot": "mine"}))
        await settle(s)
        out = [(r.url, r.meta["download_slot"]) for r in await drain(s)]
        assert s.store is not None
        assert [q.website for q in await s.store.queues()] == []
        await s._close("finished")
        return sorted(out)

    assert asyncio.run(run()) == [("http://img.shop.example.co.uk/2", "mine"),
                                  ("http://www.shop.example.co.uk/1", "example.co.uk")]


def test_cluster_idle_needs_every_worker_idle(redis_url: str) -> None:
    async def run() -> None:
        a = await open_scheduler(redis_url, FRONTIER_IDLE_CLOSE_SECONDS=1, FRONTIER_IDLE_POLL_SECONDS=0.05)
        b = await open_scheduler(redis_url, FRONTIER_IDLE_CLOSE_SECONDS=1, FRONTIER_IDLE_POLL_SECONDS=0.05)
        a.enqueue_request(req("a.test", "1"))
        await settle(a)
        got = await drain(a)
        a._in_flight = {got[0]: "fp"}  # a is downloading it (no engine here: no sweep)
        a._sweep_in_flight = lambda: None  # type: ignore[method-assign]
        start = time.monotonic()
        while time.monotonic() - start < 1.6:  # b keeps seeing a busy worker
            await asyncio.sleep(0.1)
            assert b.cluster_idle_seconds() < 1
        a._in_flight = {}
        while b.cluster_idle_seconds() < 1:
            await asyncio.sleep(0.05)
        assert a.cluster_idle_seconds() >= 0.9
        await a._close("finished")
        await b._close("finished")

    asyncio.run(run())


@pytest.mark.parametrize(("name", "value"), [
    ("FRONTIER_PREFETCH", "0"), ("FRONTIER_PREFETCH", "many"), ("FRONTIER_FLUSH_DELAY", "-1"),
    ("FRONTIER_FLUSH_MAX", "0"), ("FRONTIER_KEY_PREFIX", "%(nope)s"), ("FRONTIER_SEEN_CACHE", "-5"),
    ("FRONTIER_IDLE_POLL_SECONDS", "0"), ("WEBSITE_KEY", "path"),
])
def test_invalid_settings_raise(name: str, value: str) -> None:
    from scrapy.settings import Settings

    with pytest.raises(ValueError, match=name):
        FrontierConfig.from_settings(Settings({"REDIS_URL": "redis://x", name: value}))


def test_config_defaults() -> None:
    from scrapy.settings import Settings

    c = FrontierConfig.from_settings(Settings({"REDIS_URL": "redis://x"}))
    assert (c.key_prefix, c.prefetch, c.flush_max, c.website_mode) == ("{%(spider)s}", 32, 200, "domain")


def test_spider_is_not_needed_for_the_codec_spider() -> None:
    assert CodecSpider.name == "frontier_test"


def test_busy_worker_is_told_about_seeds(redis_url: str) -> None:
    """A service worker that never goes idle still takes new seeds (scrapy-redis reads them only when idle)."""
    calls: list[int] = []

    async def run() -> None:
        s = await open_scheduler(redis_url, FRONTIER_IDLE_CLOSE_SECONDS=0.4)
        assert s.spider is not None and s.redis is not None
        s.seeds_key = "frontier_test:start_urls"
        s.spider.frontier_seeds_waiting = calls.append  # type: ignore[attr-defined]
        s._sweep_in_flight = lambda: None  # type: ignore[method-assign]
        s._in_flight = {Request("http://a.test/"): "fp"}  # busy: a download in progress
        await s.redis.rpush("frontier_test:start_urls", "http://a.test/1", "http://a.test/2")
        while not calls:
            await asyncio.sleep(0.05)
        assert s._locally_busy()
        await s._close("finished")

    asyncio.run(run())
    assert calls[0] == 2


def test_local_duplicate_cache_only_drops_true_duplicates(redis_url: str) -> None:
    async def run() -> tuple[list[str], int]:
        s = await open_scheduler(redis_url)
        s.enqueue_request(req("a.test", "x"))
        await settle(s)
        assert s._seen_urls == {"http://a.test/x"}
        assert s.enqueue_request(req("a.test", "x")) is False  # known URL: no fingerprinting, no Redis
        s.enqueue_request(req("a.test", "x", method="POST", body=b"q=1"))  # same URL, another fingerprint
        s.enqueue_request(req("a.test", "x#part"))  # another URL string, same fingerprint
        await settle(s)
        got = sorted(f"{r.method} {r.url}" for r in await drain(s))
        await s._close("finished")
        return got, int(s.crawler.stats.get_value("dupefilter/filtered"))

    got, filtered = asyncio.run(run())
    assert got == ["GET http://a.test/x", "POST http://a.test/x"]
    assert filtered == 2


def test_redis_outage_loses_nothing(redis_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """Redis goes away mid-crawl: pushes are kept and retried, pops resume; nothing lost, nothing twice."""
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()

    async def run() -> list[str]:
        proxy = RedisProxy(redis_server.port).__enter__()
        s = await open_scheduler(proxy.url, FRONTIER_PREFETCH=4)
        for i in range(3):
            s.enqueue_request(req("a.test", f"before{i}"))
        await settle(s)
        got = [r.url for r in await drain(s, limit=2)]
        proxy.__exit__(None, None, None)  # Redis unreachable
        for i in range(3):
            s.enqueue_request(req("a.test", f"during{i}"))
        while not s.crawler.stats.get_value("frontier/redis_error/ConnectionError"):
            await asyncio.sleep(0.05)
        assert len(s._outbox) >= 3  # kept for a retry
        got += [r.url for r in await drain(s)]  # what was prefetched is still served
        proxy = RedisProxy(redis_server.port, port=proxy.port).__enter__()  # Redis is back
        await settle(s)
        got += [r.url for r in await drain(s)]
        await s._close("finished")
        proxy.__exit__(None, None, None)
        return got

    with caplog.at_level(logging.ERROR):
        got = asyncio.run(run())
    assert sorted(got) == sorted([f"http://a.test/before{i}" for i in range(3)]
                                 + [f"http://a.test/during{i}" for i in range(3)])
    assert any("Frontier Redis call failed" in r.getMessage() for r in caplog.records)


def test_one_turn_hands_out_no_more_than_the_download_slots_take(redis_url: str) -> None:
    """The engine asks for many requests in one event-loop turn, and a request reaches its download slot
    (``slot.active``) only on a later turn: requests handed out in the turn count against their slot, so
    one website's backlog does not fill the engine while other websites' requests wait in the buffer."""
    async def run() -> tuple[Counter[str], Counter[str], Counter[str]]:
        # Nothing is downloaded here: no HTTP handler (no connection pool left open).
        s = await open_scheduler(redis_url, FRONTIER_PREFETCH=40, CONCURRENT_REQUESTS_PER_DOMAIN=2,
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
        await settle(s)
        while s._refill.task is not None:
            await s._refill.task
        assert len(s._prefetch) == 16

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
        await s._close("finished")
        engine.downloader.close()
        return first, second, third

    first, second, third = asyncio.run(run())
    # Each website's slot gets its concurrency, then one more slot's worth may queue (2 x concurrency).
    assert first == {"big.test": 3, "small.test": 2, "slow.test": 2, "mine": 3}
    assert second == {"big.test": 3, "slow.test": 1}
    assert third == {"big.test": 2}
