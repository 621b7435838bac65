"""The decoding gate (crawler/frontier/gate.py): rules for seeds and stored entries, one case per attack."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest
from scrapy import Request
from scrapy.utils.test import get_crawler

from crawler.frontier.codec import UndecodableRequestError, UnencodableRequestError, decode_request, encode_request
from crawler.frontier.gate import GateConfig, GateError, check_callback, filter_entry_meta, parse_seed
from crawler.frontier.store import MODE_DONT_FILTER, PushEntry
from tests.frontier_helpers import drain, open_scheduler, settle
from tests.frontier_spiders import GateProbeSpider

if TYPE_CHECKING:
    from crawler.frontier.spider import FrontierSpider

# Every meta key the issue found trusted wholesale, and the rest of the internal ones.
INTERNAL_META = ["byte_budget_dont_count", "byte_budget_size", "dont_obey_robotstxt", "proxy", "frontier_requeue",
                 "frontier_not_before", "ipv6_bind_pin", "ipv6_bind_dont_bind", "allow_offsite", "download_slot",
                 "bindaddress", "depth", "cookiejar", "download_timeout", "max_retry_times", "_auth_proxy"]
BASE_CALLBACKS = ["__init__", "__class__", "_set_crawler", "from_crawler", "setup_redis", "spider_idle", "start",
                  "make_request_from_data", "start_requests", "closed", "log", "update_settings", "handles_request",
                  "frontier_seeds_waiting", "_private_helper", "name", "no_such_method", "parse.__func__"]


@pytest.fixture
def spider() -> FrontierSpider:
    crawler = get_crawler(GateProbeSpider, {"REDIS_URL": "redis://127.0.0.1:1"})
    spider = GateProbeSpider.from_crawler(crawler)
    return spider


@pytest.mark.parametrize("name", BASE_CALLBACKS)
def test_callbacks_only_the_spiders_own_public_methods(name: str) -> None:
    with pytest.raises(GateError) as err:
        check_callback(GateProbeSpider, name)
    assert err.value.reason == "callback"
    seed = json.dumps({"url": "http://shop-a.test/", "callback": name}).encode()
    with pytest.raises(GateError):
        parse_seed(seed, GateProbeSpider, GateConfig())
    payload = json.loads(encode_request(Request("http://shop-a.test/"), None))
    with pytest.raises(UndecodableRequestError) as dec:
        decode_request(json.dumps({**payload, "errback": name}), GateProbeSpider(), GateConfig())
    assert dec.value.reason == "callback"


def test_allowed_callbacks() -> None:
    assert check_callback(GateProbeSpider, "parse") == "parse"
    assert check_callback(GateProbeSpider, "parse_other") == "parse_other"
    assert check_callback(GateProbeSpider, "log", frozenset({"log"})) == "log"  # FRONTIER_CALLBACK_ALLOW
    spider = GateProbeSpider()
    with pytest.raises(UnencodableRequestError, match="_private_helper"):  # refused when stored, not later
        encode_request(Request("http://x.test/", callback=spider._private_helper), spider)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x.test/a", "data:text/plain,hi", "s3://b/k",
                                 "gopher://x.test/", "http:///nohost", "//x.test/a", "javascript:alert(1)"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(GateError) as err:
        parse_seed(url.encode(), GateProbeSpider, GateConfig())
    assert err.value.reason in ("scheme", "format")
    payload = json.loads(encode_request(Request("http://x.test/"), None))
    with pytest.raises(UndecodableRequestError):
        decode_request(json.dumps({**payload, "url": url}), GateProbeSpider(), GateConfig())


def test_size_limits() -> None:
    config = GateConfig.from_settings(get_crawler(settings_dict={"FRONTIER_MAX_SEED_BYTES": 100,
                                                                 "FRONTIER_MAX_ENTRY_BYTES": 300}).settings)
    parse_seed(b"http://x.test/" + b"a" * 86, GateProbeSpider, config)
    with pytest.raises(GateError, match="seed of 101 bytes is over FRONTIER_MAX_SEED_BYTES"):
        parse_seed(b"http://x.test/" + b"a" * 87, GateProbeSpider, config)
    payload = encode_request(Request("http://x.test/", meta={"pad": "a" * 300}), None)
    with pytest.raises(UndecodableRequestError, match="over FRONTIER_MAX_ENTRY_BYTES") as err:
        decode_request(payload, GateProbeSpider(), config)
    assert err.value.reason == "size"


@pytest.mark.parametrize("key", INTERNAL_META)
def test_internal_meta_keys_of_a_seed_are_dropped(spider: FrontierSpider, key: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    seed = json.dumps({"url": "http://shop-a.test/", "meta": {key: 1, "dont_retry": True}}).encode()
    for _ in range(3):
        request = spider.make_request_from_data(seed)
        assert key not in request.meta and request.meta == {"dont_retry": True}
    assert [r.levelname for r in caplog.records if "dropped" in r.message] == ["WARNING"]  # once per worker
    assert spider.crawler.stats.get_value("frontier/gate/meta_dropped") == 3


def test_an_operator_may_allow_a_key() -> None:
    crawler = get_crawler(GateProbeSpider, {"REDIS_URL": "redis://127.0.0.1:1",
                                            "FRONTIER_SEED_META_ALLOW": "proxy,site"})
    allowing = GateProbeSpider.from_crawler(crawler)
    seed = b'{"url": "http://shop-a.test/", "meta": {"proxy": "http://p:1", "site": "a"}}'
    assert allowing.make_request_from_data(seed).meta == {"proxy": "http://p:1", "site": "a"}


@pytest.mark.parametrize("key", ["proxy", "dont_obey_robotstxt", "allow_offsite", "bindaddress", "frontier_requeue",
                                 "byte_budget_dont_count", "ipv6_bind_pin", "_auth_proxy"])
def test_capability_keys_of_a_stored_entry_are_dropped(key: str) -> None:
    meta: dict[str, Any] = {key: 1, "depth": 2, "byte_budget_size": 10, "download_slot": "shop-a.test"}
    assert filter_entry_meta(meta, "shop-a.test", GateConfig()) == [key]
    assert meta == {"depth": 2, "byte_budget_size": 10, "download_slot": "shop-a.test"}
    meta = {key: 1}
    assert filter_entry_meta(meta, "shop-a.test", GateConfig(entry_meta_allow=frozenset({key}))) == []
    assert meta[key] == 1


def test_a_stored_copy_of_a_bound_request_loses_its_binding_silently() -> None:
    meta: dict[str, Any] = {"bindaddress": ["2001:db8::5", 0], "ipv6_bind_address": "2001:db8::5",
                            "ipv6_bind_connection_close": True}
    assert filter_entry_meta(meta, "w", GateConfig()) == []  # nothing to warn about
    assert meta == {"download_slot": "w"}


def test_an_entrys_download_slot_is_its_website() -> None:
    meta: dict[str, Any] = {"download_slot": "elsewhere"}
    assert filter_entry_meta(meta, "shop-a.test", GateConfig()) == ["download_slot"]
    assert meta == {"download_slot": "shop-a.test"}


def test_far_future_not_before_is_capped(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> tuple[float, float, Any]:
        s = await open_scheduler(redis_url, FRONTIER_MAX_NOT_BEFORE_SECONDS=60)
        s.enqueue_request(Request("http://shop-a.test/a", meta={"frontier_requeue": True,
                                                                "frontier_not_before": 99999999999}))
        await settle(s)
        mark = await s.mark_not_before("shop-b.test", 99999999999)
        assert s.store is not None
        marks = {q.website: q.not_before for q in await s.store.queues()}
        now = s._server_now()
        await s._close("finished")
        return now, mark, (marks, s.stats.get_value("frontier/not_before_capped"))

    now, mark, (marks, capped) = asyncio.run(run())
    assert now < mark <= now + 60
    assert now < marks["shop-a.test"] <= now + 60 and marks["shop-b.test"] == mark
    assert capped == 2
    assert sum("capped" in r.message for r in caplog.records) == 2


def test_a_forged_entry_is_refused_by_the_scheduler(redis_url: str) -> None:
    async def run() -> tuple[list[Request], Any, Any]:
        s = await open_scheduler(redis_url)
        assert s.store is not None
        forged = json.loads(encode_request(Request("http://shop-a.test/ok"), None))
        payloads = [json.dumps({**forged, "url": "file:///etc/passwd"}).encode(),
                    json.dumps({**forged, "meta": {"proxy": "http://evil:1"}}).encode()]
        await s.store.push([PushEntry("shop-a.test", f"f{i}", MODE_DONT_FILTER, 0, 0, p)
                            for i, p in enumerate(payloads)], "someone")
        got = await drain(s)
        stats = (s.stats.get_value("frontier/gate/refused/scheme"), s.stats.get_value("frontier/gate/meta_dropped"))
        dead = await s.store.redis.llen(s.store.dead_key)
        await s._close("finished")
        return got, stats, dead

    got, stats, dead = asyncio.run(run())
    assert [(r.url, r.meta) for r in got] == [("http://shop-a.test/ok", {"download_slot": "shop-a.test"})]
    assert stats == (1, 1) and dead == 1


def test_pop_seeds_never_returns_an_oversized_seed_whole(redis_url: str) -> None:
    from redis.asyncio import Redis as AsyncRedis

    from crawler.frontier.store import FrontierStore

    async def run() -> list[tuple[list[tuple[int, bytes]], int]]:
        client = AsyncRedis.from_url(redis_url)
        await client.rpush("s", b"a" * 10, b"b" * 11, b"c" * 500, b"d", b"e")
        store = FrontierStore(client, "{x}")
        out = [await store.pop_seeds("s", 10, 10) for _ in range(3)]
        await client.aclose()
        return out

    first, second, third = asyncio.run(run())
    assert first == ([(10, b"a" * 10), (11, b"b" * 11)], 3)  # an oversized seed ends the batch
    assert second == ([(500, b"c" * 200)], 2)  # cut to 200 bytes, with its true size
    assert third == ([(1, b"d"), (1, b"e")], 0)
