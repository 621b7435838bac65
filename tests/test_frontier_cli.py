"""``python -m crawler``: seed, queues, clear against a real Redis."""

from __future__ import annotations

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
    assert "seed 2: not an absolute http(s) URL" in out.stderr
    assert "seed 3: meta must be an object" in out.stderr
    assert "seed 4: invalid JSON" in out.stderr
    assert "3 bad seeds: nothing pushed" in out.stderr
    with redis.Redis.from_url(redis_url) as r:
        assert r.llen("shop_a:start_urls") == 0


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
