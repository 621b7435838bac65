"""Credentials never printed or written; wrong credentials stop a worker at start-up.

Real servers that require a password: a private redis-server with
``requirepass`` and SecantusDB restarted with ``--auth`` (SCRAM-SHA-256), both
from devtools/services.py.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import redis

from crawler.redact import redact_uri
from devtools.services import ROOT, start_redis, start_secantus
from tests.conftest import start_crawl, wait_crawl

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.conftest import DemoSite

ENV = {"RESOLVE_HOSTS": "*.test:127.0.0.1"}


@dataclass
class Secured:
    redis_url: str
    mongo_uri: str
    redis_password: str
    mongo_password: str

    def wrong(self, url: str) -> str:
        return url.replace(self.redis_password, "wrong-redis-pw").replace(self.mongo_password, "wrong-mongo-pw")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    state = tmp_path_factory.mktemp("secured-servers")  # their own files: not searched below
    redis_pw, mongo_pw = f"rpw{secrets.token_hex(8)}", f"mpw{secrets.token_hex(8)}"
    r = start_redis(state, password=redis_pw)
    m = start_secantus(state, user=("crawler", mongo_pw))
    yield Secured(r.url, m.url, redis_pw, mongo_pw)
    m.stop()
    r.stop()


@pytest.fixture
def flushed(secured: Secured) -> Secured:
    with redis.Redis.from_url(secured.redis_url) as r:
        r.flushall()
    return secured


def _run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run([sys.executable, *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                         capture_output=True, text=True, timeout=300, check=False)
    # The command line itself is ours (the test's), not the tool's output: shown redacted.
    return f"$ {redact_uri(' '.join(args))} -> {out.returncode}\n{out.stdout}{out.stderr}"


def _files_with(directory: Path, needles: tuple[str, ...]) -> list[str]:
    found = []
    for path in directory.rglob("*"):
        if path.is_file() and any(n.encode() in path.read_bytes() for n in needles):
            found.append(str(path))
    return found


@pytest.mark.e2e
def test_no_password_in_anything_printed_or_written(flushed: Secured, demo_site: DemoSite, tmp_path: Path) -> None:
    s = flushed
    env = {**ENV, "REDIS_URL": s.redis_url, "MONGO_URI": s.mongo_uri, "SCRAPY_LOG_LEVEL": "DEBUG"}
    printed = [
        # The demo, against the password-protected servers (local, so no --allow-remote needed).
        _run(["-m", "devtools.demo", "--workers", "1", "--spiders", "news", "--state", str(tmp_path / "demo")],
             env, ROOT),
        # The CLIs: URL from the environment, from --redis-url, and wrong passwords (their errors).
        _run(["-m", "crawler", "seed", "shop_a", demo_site.url("shop-a.test", "/item/1")], env, ROOT),
        _run(["-m", "crawler", "queues", "shop_a"], env, ROOT),
        _run(["-m", "crawler", "release", "shop_a", "shop-a.test"], env, ROOT),
        _run(["-m", "crawler", "status", "shop_a"], env, ROOT),
        _run(["-m", "crawler", "status", "shop_a", "--json"], {**env, "REDIS_URL": s.wrong(s.redis_url)}, ROOT),
        _run(["-m", "crawler", "--redis-url", s.redis_url, "queues", "shop_a"], {}, ROOT),
        _run(["-m", "crawler", "queues", "shop_a"], {**env, "REDIS_URL": s.wrong(s.redis_url)}, ROOT),
        _run(["-m", "middlewares.byte_budget", "set", "shop-b.test", "100000"], env, ROOT),
        _run(["-m", "middlewares.byte_budget", "show", "shop-b.test"], env, ROOT),
        _run(["-m", "middlewares.byte_budget", "--redis-url", s.wrong(s.redis_url), "list"], env, ROOT),
    ]
    # A worker, at DEBUG, writing its journal, log and stats under tmp_path.
    crawl = start_crawl(tmp_path, "shop_a", {"FRONTIER_IDLE_CLOSE_SECONDS": "1", "DEPTH_LIMIT": "1",
                                             "MONGO_WRITER_JOURNAL_DIR": str(tmp_path / "journal")}, env)
    result = wait_crawl(crawl)
    assert result.returncode == 0, result.log[-3000:]
    assert result.stats["item_scraped_count"] >= 1
    printed.append(result.log)
    # Workers that fail on wrong credentials print their errors too.
    for wrong in ({"REDIS_URL": s.wrong(s.redis_url)}, {"MONGO_URI": s.wrong(s.mongo_uri)}):
        failed = wait_crawl(start_crawl(tmp_path, "shop_a", {"MONGO_WRITER_JOURNAL_DIR": str(tmp_path / "journal")},
                                        {**env, **wrong}))
        assert failed.returncode != 0
        printed.append(failed.log)

    text = "\n".join(printed)
    assert "OK: every page fetched once" in text, text[-3000:]
    assert "pushed 1 seeds" in text and "shop-b.test: 100000" in text
    passwords = (s.redis_password, s.mongo_password, "wrong-redis-pw", "wrong-mongo-pw")
    leaks = [line for line in text.splitlines() if any(p in line for p in passwords)]
    assert not leaks, "\n".join(leaks[:10])
    assert "redis://***@127.0.0.1" in text and "mongodb://***@127.0.0.1" in text  # the URLs are shown, redacted
    assert not _files_with(tmp_path, passwords)
    assert not _files_with(ROOT / "mongo-journal", passwords) if (ROOT / "mongo-journal").exists() else True
    assert stat.S_IMODE(crawl.stats_path.stat().st_mode) == 0o600
    journal = [tmp_path / "journal", *(tmp_path / "journal").rglob("*")]
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in journal)  # 0700, files 0600 (if any left)


@pytest.mark.e2e
@pytest.mark.parametrize("credentials", ["wrong password", "no credentials"])
def test_wrong_mongodb_credentials_stop_the_worker_at_start_up(flushed: Secured, demo_site: DemoSite,
                                                              tmp_path: Path, credentials: str) -> None:
    s = flushed
    uri = s.wrong(s.mongo_uri) if credentials == "wrong password" else s.mongo_uri.replace(
        f"crawler:{s.mongo_password}@", "")
    with redis.Redis.from_url(s.redis_url) as r:
        r.rpush("shop_a:start_urls", demo_site.url("shop-a.test", "/item/1"), demo_site.url("shop-a.test", "/item/2"))
        before = {k: r.dump(k) for k in r.keys("*")}
    mark = demo_site.mark()
    result = wait_crawl(start_crawl(tmp_path, "shop_a", {"MONGO_WRITER_JOURNAL_DIR": str(tmp_path / "journal")},
                                    {**ENV, "REDIS_URL": s.redis_url, "MONGO_URI": uri}))
    assert result.returncode != 0
    reason = "AuthenticationFailed" if credentials == "wrong password" else "Unauthorized"
    lines = [line for line in result.log.splitlines() if "MONGO_URI" in line and "] ERROR:" in line]
    assert len(lines) == 1, result.log[-3000:]  # one line, naming the setting
    assert "ERROR: The crawl could not start: MONGO_URI mongodb://" in lines[0]
    assert reason in lines[0] and "check the user, password and authSource in MONGO_URI" in lines[0]
    assert "MongoDB unreachable" not in result.log
    with redis.Redis.from_url(s.redis_url) as r:  # nothing consumed: the seeds are where they were
        assert r.lrange("shop_a:start_urls", 0, -1) == [demo_site.url("shop-a.test", p).encode()
                                                       for p in ("/item/1", "/item/2")]
        assert {k for k in r.keys("*") if k not in before} <= {b"{shop_a}:workers"}
    assert demo_site.log(mark) == []


@pytest.mark.e2e
def test_wrong_redis_password_stops_the_worker_naming_redis_url(flushed: Secured, tmp_path: Path) -> None:
    result = wait_crawl(start_crawl(tmp_path, "shop_a", {"ITEM_PIPELINES": "{}"},
                                    {**ENV, "REDIS_URL": flushed.wrong(flushed.redis_url)}))
    assert result.returncode != 0
    lines = [line for line in result.log.splitlines() if "REDIS_URL" in line and "] ERROR:" in line]
    assert len(lines) == 1, result.log[-3000:]  # one line, naming the setting
    assert "Frontier cannot start: cannot use Redis at REDIS_URL=redis://" in lines[0]
    assert "***@127.0.0.1:" in lines[0]
    assert "check the user and password in REDIS_URL" in lines[0]


@pytest.mark.parametrize("env", [{"REDIS_URL": "redis://:pw@redis.example.net:6379/0"},
                                 {"MONGO_URI": "mongodb://u:pw@127.0.0.1:27017,db2.example.net:27017/"}])
def test_the_demo_refuses_servers_on_other_machines(env: dict[str, str], tmp_path: Path) -> None:
    out = _run(["-m", "devtools.demo", "--state", str(tmp_path)], env, ROOT)
    assert "-> 2\n" in out and "name another machine" in out and "add --allow-remote" in out
    assert "{shop_a}:*" in out and "the MongoDB database crawler_demo" in out  # what it would delete
    assert "Starting services" not in out and "pw@" not in out


@pytest.mark.e2e
def test_a_user_who_may_not_write_closes_the_worker_at_the_first_write(flushed: Secured, demo_site: DemoSite,
                                                                        tmp_path: Path) -> None:
    """Read-only credentials pass the start-up check; the first write is refused: no waiting, no 'finished'."""
    from pymongo import MongoClient

    s = flushed
    with MongoClient(s.mongo_uri) as client:
        if not client.admin.command("usersInfo", "reader")["users"]:
            client.admin.command("createUser", "reader", pwd=s.mongo_password[::-1],
                                 roles=[{"role": "read", "db": "crawler"}])
    reader = s.mongo_uri.replace(f"crawler:{s.mongo_password}@", f"reader:{s.mongo_password[::-1]}@")
    with redis.Redis.from_url(s.redis_url) as r:
        r.rpush("shop_a:start_urls", demo_site.url("shop-a.test", "/item/1"))
    # A close that waited for MongoDB would outlast the 120 s this test waits.
    result = wait_crawl(start_crawl(tmp_path, "shop_a", {
        "DEPTH_LIMIT": "1", "MONGO_WRITER_BATCH_SIZE": "1", "MONGO_WRITER_CLOSE_TIMEOUT": "600",
        "MONGO_WRITER_RETRY_TIMES": "100", "MONGO_WRITER_JOURNAL_DIR": str(tmp_path / "journal")},
        {**ENV, "REDIS_URL": s.redis_url, "MONGO_URI": reader}), timeout=120)
    assert result.stats["finish_reason"] == "mongo_auth_failed", result.log[-3000:]
    assert result.returncode != 0  # scrapyd, systemd or a shell loop sees the failure
    assert result.stats["mongo_writer/auth_failed"] == 1
    assert result.stats["mongo_writer/left_in_journal"] >= 1  # kept for a worker with the right credentials
    lines = [line for line in result.log.splitlines() if "MONGO_URI" in line and "] ERROR:" in line]
    assert len(lines) == 1 and "MONGO_URI mongodb://***@127.0.0.1:" in lines[0] and "not authorized" in lines[0]
    assert "MongoDB unreachable" not in result.log and s.mongo_password[::-1] not in result.log
