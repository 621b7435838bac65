"""``python -m crawler``: seed, queues, clear against a real Redis."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from scrapy.spiderloader import get_spider_loader
from scrapy.utils.project import get_project_settings

from crawler.frontier.store import MODE_DEDUPE, FrontierStore, PushEntry
from devtools.services import ROOT

if TYPE_CHECKING:
    from pathlib import Path


def cli(redis_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crawler", "--redis-url", redis_url, *args], cwd=ROOT,
                          capture_output=True, text=True, input=stdin, timeout=60, check=False)


def test_seed_from_arguments_and_file(redis_url: str, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text('# comment\nhttp://shop-a.test/a\n\n{"url": "https://shop-a.test/b", "priority": 4}\n')
    out = cli(redis_url, "seed", "shop_a", "http://shop-a.test/c", "--file", str(seeds))
    assert out.returncode == 0, out.stderr
    assert "pushed 3 seeds to shop_a:start_urls" in out.stdout
    with redis.Redis.from_url(redis_url) as r:
        assert r.lrange("shop_a:start_urls", 0, -1) == [
            b"http://shop-a.test/c", b"http://shop-a.test/a", b'{"url": "https://shop-a.test/b", "priority": 4}']


def test_redis_url_after_the_command(redis_url: str) -> None:
    out = subprocess.run([sys.executable, "-m", "crawler", "seed", "shop_a", "http://shop-a.test/after",
                          "--redis-url", redis_url], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    with redis.Redis.from_url(redis_url) as r:
        assert r.lrange("shop_a:start_urls", 0, -1) == [b"http://shop-a.test/after"]
    out = subprocess.run([sys.executable, "-m", "crawler", "queues", "shop_a", "--redis-url", redis_url],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def test_bad_seeds_push_nothing(redis_url: str) -> None:
    out = cli(redis_url, "seed", "shop_a", "http://ok.test/", "ftp://x/", '{"url": "http://x/", "meta": 3}', "{bad")
    assert out.returncode == 2
    assert "seed 2: url must be an absolute http(s) URL" in out.stderr
    assert "seed 3: meta must be an object" in out.stderr
    assert "seed 4: invalid JSON" in out.stderr
    assert "3 bad seeds: nothing pushed" in out.stderr
    with redis.Redis.from_url(redis_url) as r:
        assert r.llen("shop_a:start_urls") == 0


# Each of these used to be pushed by the CLI and then refused by the workers.
WORKER_ONLY_REFUSALS = [
    ('{"url": "http://shop-a.test/", "method": "GE T"}', "method must be an HTTP method name"),
    ('{"url": "http://shop-a.test/", "headers": {"X": 1}}', "headers must be an object of strings"),
    ('{"url": "http://shop-a.test/", "body": 5}', "body must be a string"),
    ('{"url": "http://shop-a.test/", "dont_filter": "yes"}', "dont_filter must be true or false"),
    ('{"url": "http://shop-a.test/", "callback": "no_such_method"}',
     "callback 'no_such_method' of spider ShopASpider is not a method"),
    ('{"url": "http://shop-a.test/", "callback": "__init__"}', "callback '__init__' of spider ShopASpider is private"),
    ('{"url": "http://shop-a.test/", "callback": "spider_idle"}',
     "callback 'spider_idle' of spider ShopASpider belongs to a base class"),
    ('{"url": "http://shop-a.test/", "q": 3}', "form fields must be strings"),
    ('{"url": "file:///etc/passwd"}', "url must be an absolute http(s) URL"),
]


@pytest.mark.parametrize(("seed", "why"), WORKER_ONLY_REFUSALS)
def test_cli_refuses_what_workers_refuse(redis_url: str, seed: str, why: str) -> None:
    from scrapy.utils.project import get_project_settings

    from crawler.frontier.gate import GateConfig, GateError, parse_seed
    from crawler.spiders.shop_a import ShopASpider

    with pytest.raises(GateError, match=re.escape(why)):  # what a worker does with it
        parse_seed(seed.encode(), ShopASpider, GateConfig.from_settings(get_project_settings()))
    out = cli(redis_url, "seed", "shop_a", "http://shop-a.test/ok", seed)
    assert out.returncode == 2 and f"seed 2: {why}" in out.stderr and "1 bad seeds: nothing pushed" in out.stderr
    with redis.Redis.from_url(redis_url) as r:
        assert r.llen("shop_a:start_urls") == 0


def test_cli_warns_about_meta_keys_workers_drop(redis_url: str) -> None:
    seed = '{"url": "http://shop-a.test/", "meta": {"proxy": "http://evil:1", "dont_retry": true}}'
    out = cli(redis_url, "seed", "shop_a", seed)
    assert out.returncode == 0, out.stderr
    assert "seed 1: warning: meta keys proxy will be dropped by the workers" in out.stderr


def test_cli_refuses_an_oversized_seed(redis_url: str) -> None:
    seed = "http://shop-a.test/" + "a" * 70_000
    out = cli(redis_url, "seed", "shop_a", seed)
    assert out.returncode == 2 and "over FRONTIER_MAX_SEED_BYTES (65536)" in out.stderr


def test_release_removes_a_not_before_mark(redis_url: str) -> None:
    async def mark() -> None:
        client = AsyncRedis.from_url(redis_url)
        store = FrontierStore(client, "{shop_a}")
        await store.push([PushEntry("shop-a.test", "a", MODE_DEDUPE, 0, 0, b"{}")], "worker-1")
        await store.mark_not_before("shop-a.test", 99999999999)
        await client.aclose()

    asyncio.run(mark())
    out = cli(redis_url, "release", "shop_a", "shop-a.test")
    assert out.returncode == 0 and "released shop-a.test" in out.stdout, out.stderr
    with redis.Redis.from_url(redis_url) as r:
        assert r.zscore("{shop_a}:not_before", "shop-a.test") is None
        score = r.zscore("{shop_a}:sites", "shop-a.test")
        assert score is not None and score <= r.time()[0] + 1  # servable now
    out = cli(redis_url, "release", "shop_a", "shop-a.test")
    assert "shop-a.test had no not-before mark" in out.stdout


def test_unknown_spider(redis_url: str) -> None:
    out = cli(redis_url, "queues", "nope")
    known = ", ".join(sorted(get_spider_loader(get_project_settings()).list()))
    assert out.returncode != 0 and f"unknown spider 'nope'; known: {known}" in out.stderr


@pytest.mark.asyncio
async def test_queues_and_clear(redis_url: str) -> None:
    client = AsyncRedis.from_url(redis_url)
    store = FrontierStore(client, "{shop_a}")
    entries = [PushEntry("shop-a.test", f"a{i}", MODE_DEDUPE, 0, 0, b"{}") for i in range(5)]
    entries += [PushEntry("slow.test", f"s{i}", MODE_DEDUPE, 0, 0, b"{}") for i in range(2)]
    await store.push(entries, "worker-1")
    now = float((await client.time())[0])
    await store.mark_not_before("slow.test", now + 600)
    await store.mark_not_before("empty.test", now + 300)
    await client.aclose()
    out = cli(redis_url, "queues", "shop_a")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split()[:3] == ["shop-a.test", "5", "now"]
    assert lines[2].split()[:3] == ["slow.test", "2", "in"] and "UTC" in lines[2]
    assert lines[3].split()[:2] == ["empty.test", "0"]
    assert "total queued 7 in 2 websites; seen fingerprints 7" in out.stdout
    assert "worker-1" in out.stdout

    out = cli(redis_url, "clear", "shop_a")
    assert out.returncode == 2 and "add --yes" in out.stderr
    with redis.Redis.from_url(redis_url) as r:
        r.rpush("shop_a:start_urls", "http://x.test/")
        r.set("{shop_b}:seen", "other spider")
        out = cli(redis_url, "clear", "shop_a", "--yes")
        assert out.returncode == 0, out.stderr
        assert sorted(r.keys("*")) == [b"shop_a:start_urls", b"{shop_b}:seen"]
        cli(redis_url, "clear", "shop_a", "--seeds", "--yes")
        assert r.keys("*") == [b"{shop_b}:seen"]


def test_seen_check_and_forget_a_url(redis_url: str) -> None:
    from scrapy import Request
    from scrapy.utils.request import RequestFingerprinter

    fp = RequestFingerprinter().fingerprint(Request("http://shop-a.test/gone")).hex()

    async def push() -> bool:
        client = AsyncRedis.from_url(redis_url)
        store = FrontierStore(client, "{shop_a}")
        stored = (await store.push([PushEntry("shop-a.test", fp, MODE_DEDUPE, 0, 0, b"{}")], "w"))[0][0]
        await client.aclose()
        return stored

    assert asyncio.run(push())
    out = cli(redis_url, "seen", "shop_a", "check", "http://shop-a.test/gone", "http://shop-a.test/new")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["seen  http://shop-a.test/gone", "not seen  http://shop-a.test/new"]
    assert not asyncio.run(push())  # a duplicate
    out = cli(redis_url, "seen", "shop_a", "forget", "http://shop-a.test/gone")
    assert out.returncode == 0 and "forgot 1" in out.stdout, out.stderr
    assert asyncio.run(push())  # stored again: a later run crawls it
@pytest.mark.asyncio
async def test_failed_lists_and_requeues(redis_url: str) -> None:
    client = AsyncRedis.from_url(redis_url)
    store = FrontierStore(client, "{shop_a}")
    payload = '{"v":1,"url":"http://shop-a.test/x","meta":{"retry_times":2,"keep":1}}'
    await store.record_failed([{"reason": "HTTP 500 after 2 retries", "url": "http://shop-a.test/x",
                                "website": "shop-a.test", "fingerprint": "f1", "score": -3, "time": 0,
                                "payload": payload}])
    out = cli(redis_url, "failed", "shop_a")
    assert out.returncode == 0, out.stderr
    assert "http://shop-a.test/x  HTTP 500 after 2 retries" in out.stdout and "1 failed requests" in out.stdout
    assert cli(redis_url, "failed", "shop_a", "--requeue").returncode == 2  # --yes needed
    out = cli(redis_url, "failed", "shop_a", "--requeue", "--yes")
    assert out.returncode == 0 and "re-queued 1 of 1" in out.stdout, out.stderr
    queued = await client.zrange(store.queue_key("shop-a.test"), 0, -1, withscores=True)
    assert len(queued) == 1 and queued[0][1] == -3  # its priority kept
    assert queued[0][0].endswith(b':{"v":1,"url":"http://shop-a.test/x","meta":{"keep":1}}')  # retries reset
    assert await client.llen(store.failed_key) == 0
    await client.aclose()
