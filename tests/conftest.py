"""Real servers for the tests: redis-server, the MongoDB stand-in, the demo site.

Session fixtures start each server once as a subprocess (as Scrapy's own
MockServer does); function fixtures hand out a clean state. Nothing here is a
mock: ``make test`` installs redis-server and SecantusDB first.

* ``redis_url``: a flushed database on a private ``redis-server``.
* ``mongo_uri`` / ``mongo_db``: ``MONGO_URI`` when set (each test gets its own
  database, dropped afterwards), else a private SecantusDB.
* ``demo_site``: the demo server with small sites (``TEST_SITES``).
* ``run_crawl``: runs ``scrapy crawl`` as a real worker process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from demosite.sites import SiteConfig
from devtools.services import (
    ROOT,
    RedisCluster,
    Server,
    start_demosite,
    start_redis,
    start_redis_cluster,
    start_secantus,
)
from tests.frontier_helpers import Schedulers
from tests.redis_clients import flush, sync_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    import redis

# Small versions of the demo sites, so an end-to-end crawl takes seconds.
TEST_SITES: tuple[SiteConfig, ...] = (
    SiteConfig(host="shop-a.test", kind="shop", items=300, page_bytes=2000),
    SiteConfig(host="shop-b.test", kind="shop", items=120, page_bytes=8000, per_page=30),
    SiteConfig(host="news.test", kind="news", items=100, page_bytes=4000, per_page=10),
)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--redis-cluster", action="store_true",
                     help="redis_url is a local 3-master Redis Cluster (for the tests marked cluster)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--redis-cluster"):
        skip = pytest.mark.skip(reason="not marked cluster: runs against a single Redis only")
        for item in items:
            if "cluster" not in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server(state_dir: Path, request: pytest.FixtureRequest) -> Iterator[Server | RedisCluster]:
    server: Server | RedisCluster
    if request.config.getoption("--redis-cluster"):
        server = start_redis_cluster(state_dir / "cluster")
    else:
        server = start_redis(state_dir)
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: Server | RedisCluster) -> str:
    """A Redis with no keys: a single server, or with ``--redis-cluster`` a 3-master cluster's URL."""
    flush(redis_server.url)
    return redis_server.url


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    """A blocking client of ``redis_url`` (tests/redis_clients.py), closed after the test."""
    client = sync_redis(redis_url)
    yield client
    client.close()


@pytest_asyncio.fixture
async def schedulers(redis_url: str) -> AsyncIterator[Schedulers]:
    """Real frontier schedulers opened on ``redis_url`` (tests/frontier_helpers.py), all closed after the test."""
    opened = Schedulers(redis_url)
    yield opened
    await opened.close_all()


@pytest.fixture(scope="session")
def mongo_server_uri(state_dir: Path) -> Iterator[str]:
    external = os.environ.get("MONGO_URI")
    if external:
        yield external
        return
    server = start_secantus(state_dir)
    yield server.url
    server.stop()


@pytest.fixture
def mongo_db(mongo_server_uri: str) -> Iterator[str]:
    """A fresh database name on the test MongoDB server, dropped afterwards."""
    from pymongo import MongoClient

    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    with MongoClient(mongo_server_uri) as client:
        client.drop_database(name)


@pytest.fixture(scope="session")
def demo_site(state_dir: Path) -> Iterator[DemoSite]:
    server = start_demosite(state_dir, TEST_SITES)
    yield DemoSite(server)
    server.stop()


@dataclass
class DemoSite:
    """Handle on a running demo server and its request log."""

    server: Server

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"

    def mark(self) -> int:
        """Position in the request log; pass it to ``log(since=...)``."""
        with urllib.request.urlopen(f"{self.server.url}/_demo/health", timeout=10) as r:
            return int(json.loads(r.read())["requests"])

    def log(self, since: int = 0) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.server.url}/_demo/log?since={since}", timeout=10) as r:
            return [json.loads(line) for line in r.read().splitlines() if line]


@dataclass
class CrawlResult:
    returncode: int
    stats: dict[str, Any]
    log: str


@pytest.fixture
def run_crawl(tmp_path: Path) -> Callable[..., CrawlResult]:
    """Run ``scrapy crawl SPIDER`` in a subprocess (a real worker) and collect its stats."""

    def run(
        spider: str,
        settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        name: str | None = None,
    ) -> CrawlResult:
        return wait_crawl(start_crawl(tmp_path, spider, settings, env, name), timeout)

    return run


@dataclass
class RunningCrawl:
    proc: subprocess.Popen[bytes]
    stats_path: Path
    log_path: Path


def start_crawl(
    workdir: Path,
    spider: str,
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    name: str | None = None,
    netns: str | None = None,
) -> RunningCrawl:
    """Start ``scrapy crawl SPIDER``; inside network namespace ``netns`` when given."""
    name = name or f"{spider}-{uuid.uuid4().hex[:6]}"
    stats_path = workdir / f"{name}.stats.json"
    log_path = workdir / f"{name}.log"
    cmd = [str(Path(sys.executable).parent / "scrapy"), "crawl", spider,
           "-s", f"STATS_FILE_PATH={stats_path}", "-s", f"LOG_FILE={log_path}"]
    for key, value in (settings or {}).items():
        cmd += ["-s", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    full_env = {**os.environ, "PYTHONWARNINGS": "error", **(env or {})}
    with open(log_path.with_suffix(".stderr"), "wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=stderr, stderr=stderr)
    _STARTED.append(proc)
    return RunningCrawl(proc, stats_path, log_path)


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    """A test that failed half-way leaves no worker running into the next test (nor its ResourceWarning)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def wait_crawl(crawl: RunningCrawl, timeout: float = 120) -> CrawlResult:
    try:
        crawl.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        crawl.proc.kill()
        crawl.proc.wait()
        raise
    # LOG_FILE holds what Scrapy logged; errors before logging starts go to stderr.
    log = "".join(p.read_text(errors="replace") for p in (crawl.log_path, crawl.log_path.with_suffix(".stderr"))
                  if p.exists())
    stats = json.loads(crawl.stats_path.read_text()) if crawl.stats_path.exists() else {}
    return CrawlResult(crawl.proc.returncode, stats, log)


def assert_clean_log(log: str, allowed: tuple[str, ...] = ("Gave up retrying",)) -> None:
    """No warnings, errors or tracebacks in a worker's log but the ``allowed`` ones."""
    bad = [
        line for line in log.splitlines()
        if (re.search(r"\] (WARNING|ERROR|CRITICAL):", line) or "Traceback" in line or "Warning:" in line)
        and not any(a in line for a in allowed)
    ]
    assert not bad, "unexpected lines in the worker log:\n" + "\n".join(bad[:20])
