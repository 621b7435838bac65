"""Seeds and frontier entries are untrusted input: each attack refused or neutralised, good seeds crawled.

One real worker (spider ``frontier_gate``: fetches its seeds, follows nothing)
is given good seeds, hostile seeds and hostile raw frontier entries; what it
fetched is read from the demo server's own log.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from scrapy import Request

from crawler.frontier.codec import encode_request
from crawler.frontier.store import MODE_DONT_FILTER, FrontierStore, PushEntry

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import CrawlResult, DemoSite

ENV = {"RESOLVE_HOSTS": "*.test:127.0.0.1"}
SPIDER = "frontier_gate"
REFUSED_CALLBACKS = ["__init__", "_set_crawler", "from_crawler", "setup_redis", "spider_idle", "start",
                     "_private_helper"]
REFUSED_URLS = ["file:///etc/passwd", "ftp://shop-a.test/x", "data:text/plain,hi"]


def _entry(url: str, **fields: Any) -> bytes:
    d = json.loads(encode_request(Request(url), None))
    d.update(fields)
    return json.dumps(d).encode()


async def _push_entries(redis_url: str, payloads: list[bytes]) -> None:
    client = AsyncRedis.from_url(redis_url)
    store = FrontierStore(client, f"{{{SPIDER}}}")
    await store.push([PushEntry("shop-a.test", f"forged{i}", MODE_DONT_FILTER, 0, 0, p)
                      for i, p in enumerate(payloads)], "someone")
    await client.aclose()


@pytest.mark.e2e
def test_hostile_seeds_and_entries(demo_site: DemoSite, redis_url: str,
                                   run_crawl: Callable[..., CrawlResult]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # a "proxy" that must never be contacted
    listener.setblocking(False)
    try:
        _attack(demo_site, redis_url, run_crawl, listener)
    finally:
        listener.close()


def _attack(demo_site: DemoSite, redis_url: str, run_crawl: Callable[..., CrawlResult],
            listener: socket.socket) -> None:
    a = lambda path: demo_site.url("shop-a.test", path)  # noqa: E731
    proxy = f"http://127.0.0.1:{listener.getsockname()[1]}"
    good = [a("/item/10").encode(), json.dumps({"url": a("/item/11"), "callback": "parse_other"}).encode()]
    refused = [json.dumps({"url": a(f"/item/{i}"), "callback": cb}).encode()
               for i, cb in enumerate(REFUSED_CALLBACKS, 1)]
    refused += [json.dumps({"url": u}).encode() for u in REFUSED_URLS]
    refused.append((a("/item/8?") + "a" * 60_000_000).encode())  # a 60 MB seed
    neutralised = [json.dumps(s).encode() for s in (
        {"url": a("/private/1"), "meta": {"dont_obey_robotstxt": True}},
        {"url": a("/item/20"), "meta": {"frontier_requeue": True, "frontier_not_before": 99999999999}},
        {"url": a("/item/21"), "meta": {"proxy": proxy}},
        {"url": a("/item/22"), "meta": {"byte_budget_dont_count": True, "ipv6_bind_pin": "2001:db8::1",
                                        "download_slot": "elsewhere", "bindaddress": ["127.0.0.2", 0],
                                        "_private": 1}},
        {"url": demo_site.url("shop-b.test", "/item/1"), "dont_filter": False, "meta": {"allow_offsite": True}},
        {"url": demo_site.url("shop-b.test", "/private/1")},  # offsite seed: shop-b's robots.txt applies
    )]
    entries = [
        _entry("file:///etc/passwd", meta={"allow_offsite": True}, callback="parse"),
        _entry(a("/item/30"), callback="__init__"),
        _entry(a("/item/32"), meta={"pad": "x" * 1_100_000}),
        _entry(a("/private/2"), meta={"dont_obey_robotstxt": True, "proxy": proxy}),
        _entry(a("/item/31"), callback="parse_other"),  # a good one
    ]
    with redis.Redis.from_url(redis_url) as r:
        r.rpush(f"{SPIDER}:start_urls", good[0], *refused, *neutralised, good[1])
    asyncio.run(_push_entries(redis_url, entries))
    mark = demo_site.mark()
    result = run_crawl(SPIDER, {"SPIDER_MODULES": "tests.frontier_spiders", "FRONTIER_IDLE_CLOSE_SECONDS": "1",
                                "ITEM_PIPELINES": "{}"}, env={**ENV, "REDIS_URL": redis_url})
    assert result.returncode == 0, result.log[-3000:]
    assert result.stats["finish_reason"] == "finished"

    # Nothing but the good seeds, the neutralised ones and robots.txt was fetched.
    fetched = sorted((rec["host"], rec["path"]) for rec in demo_site.log(mark))
    assert fetched == sorted([
        ("shop-a.test", "/robots.txt"), ("shop-a.test", "/item/10"), ("shop-a.test", "/item/11"),
        ("shop-a.test", "/item/20"), ("shop-a.test", "/item/21"), ("shop-a.test", "/item/22"),
        ("shop-a.test", "/item/31"), ("shop-b.test", "/robots.txt")])
    assert {rec["client"] for rec in demo_site.log(mark)} == {"127.0.0.1"}
    with pytest.raises(BlockingIOError):
        listener.accept()  # the proxy was never contacted
    assert "Parsed other " + a("/item/11") in result.log and "Parsed other " + a("/item/31") in result.log

    # One clear line and a stat for each.
    lines = result.log.splitlines()
    rejected = [line for line in lines if "Rejected seed" in line]
    assert len(rejected) == len(refused)
    for cb in REFUSED_CALLBACKS:
        assert sum(f"callback '{cb}' of spider GateProbeSpider" in line for line in rejected) == 1
    for url in REFUSED_URLS:
        assert sum(f"must be an absolute http(s) URL, got '{url}'" in line for line in rejected) == 1
    assert sum("over FRONTIER_MAX_SEED_BYTES" in line and "dropped" in line for line in rejected) == 1
    undecodable = [line for line in lines if "Undecodable request in the frontier" in line]
    assert len(undecodable) == 3
    assert any("'file:///etc/passwd'" in line for line in undecodable)
    assert any("callback '__init__'" in line for line in undecodable)
    assert any("over FRONTIER_MAX_ENTRY_BYTES" in line for line in undecodable)
    stats = result.stats
    assert stats["frontier/gate/refused/callback"] == len(REFUSED_CALLBACKS) + 1
    assert stats["frontier/gate/refused/scheme"] == len(REFUSED_URLS) + 1
    assert stats["frontier/gate/refused/size"] == 2
    assert stats["frontier/seeds/rejected"] == len(refused)
    assert stats["robotstxt/forbidden"] == 3  # /private/1 of both websites, /private/2 of shop-a
    dropped_seed = {"dont_obey_robotstxt", "frontier_requeue", "frontier_not_before", "proxy",
                    "byte_budget_dont_count", "ipv6_bind_pin", "download_slot", "bindaddress", "_private",
                    "allow_offsite"}
    warnings = [line for line in lines if "] WARNING:" in line and "dropped (not in" in line]
    for key in dropped_seed:
        assert sum(f"Meta key '{key}' of a seed dropped" in line for line in warnings) == 1, key
    for key in ("dont_obey_robotstxt", "proxy"):
        assert sum(f"Meta key '{key}' of a frontier entry dropped" in line for line in warnings) == 1, key
    assert stats["frontier/gate/meta_dropped"] == len(dropped_seed) + 2
    with redis.Redis.from_url(redis_url) as r:
        assert r.zcard(f"{{{SPIDER}}}:not_before") == 0  # no website parked
        assert r.llen(f"{SPIDER}:start_urls:dead") == len(refused) - 1  # the 60 MB seed is not kept
        assert r.llen(f"{{{SPIDER}}}:dead") == 3
