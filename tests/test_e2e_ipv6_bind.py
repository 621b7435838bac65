"""IPv6BindMiddleware in real crawls inside a network namespace.

The tests make a network namespace of their own (root, Linux), route a
documentation prefix to its loopback exactly as a crawler host would
(``ip -6 route add local PREFIX dev lo``, ``net.ipv6.ip_nonlocal_bind=1``), run
the demo site, redis-server and real ``scrapy crawl`` workers inside it, and
check the client addresses and connections the *server* saw.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import math
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from demosite.sites import SiteConfig
from devtools import netns as netns_tools
from devtools.services import start_demosite
from tests.conftest import assert_clean_log, start_crawl, wait_crawl

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


PREFIX = "2001:db8:6b1d::/64"
NET = ipaddress.IPv6Network(PREFIX)

# Big enough for 1,000+ requests from one website.
SITES: tuple[SiteConfig, ...] = (
    SiteConfig(host="shop-a.test", kind="shop", items=1000, page_bytes=1500, per_page=50),
    SiteConfig(host="shop-b.test", kind="shop", items=60, page_bytes=2000, per_page=30),
    SiteConfig(host="news.test", kind="news", items=40, page_bytes=2000, per_page=10),
)
# shop-a.test: IPv6 only; shop-b.test: IPv4 only; news.test: both.
RESOLVE = "shop-a.test:::1,shop-b.test:127.0.0.1,news.test:::1,news.test:127.0.0.1"
REDIS_PORT = 6379
SEED_KEYS = {"shop_a": "shop-a.test", "shop_b": "shop-b.test", "news": "news.test"}


class Namespace:
    """Our namespace with the demo site and redis-server inside it."""

    def __init__(self, ns: netns_tools.NetNS, port: int) -> None:
        self.ns, self.port = ns, port

    def seed(self, *spiders: str) -> None:
        self.ns.redis(REDIS_PORT, "flushall")
        for spider in spiders:
            url = f"http://{SEED_KEYS[spider]}:{self.port}/"
            self.ns.redis(REDIS_PORT, "lpush", f"{spider}:start_urls", json.dumps({"url": url}))

    def mark(self) -> int:
        return int(json.loads(self.ns.http_get(f"http://127.0.0.1:{self.port}/_demo/health"))["requests"])

    def log(self, since: int, *hosts: str) -> list[dict[str, Any]]:
        body = self.ns.http_get(f"http://127.0.0.1:{self.port}/_demo/log?since={since}")
        return [r for r in map(json.loads, body.splitlines()) if r["host"] in hosts]

    def crawl(self, tmp_path: Path, *spiders: str, **settings: Any) -> list[Any]:
        """One worker per spider, all at once."""
        base = {"IPV6_BIND_ENABLED": "True", "IPV6_BIND_PREFIXES": PREFIX, "MONGO_WRITER_ENABLED": "False",
                "FRONTIER_IDLE_CLOSE_SECONDS": "1", "RESOLVE_HOSTS": RESOLVE, "LOG_LEVEL": "INFO",
                # IPv6 binding alone: politeness parks a website at every 429 of its /busy
                # pages and requeues them, which the request counts here do not model.
                "POLITENESS_ENABLED": "False"}
        env = {"REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0"}
        crawls = [start_crawl(tmp_path, spider, {**base, **settings}, env, netns=self.ns.name) for spider in spiders]
        return [wait_crawl(c, timeout=240) for c in crawls]


@pytest.fixture(scope="session")
def namespace(state_dir: Path) -> Iterator[Namespace]:
    reason = netns_tools.unavailable_reason()
    if reason:
        pytest.skip(reason)
    netns_tools.remove_stale()
    with netns_tools.netns(routed=(PREFIX,), tag="ipv6") as ns:
        server = start_demosite(state_dir, SITES, port=8080, binds=("127.0.0.1", "::1"), netns=ns.name)
        ns.servers.append(server)
        ns.start_redis(state_dir, REDIS_PORT)
        yield Namespace(ns, server.port)


def _check_workers(results: list[Any]) -> None:
    for result in results:
        assert result.returncode == 0, result.log[-3000:]
        assert result.stats["finish_reason"] == "finished"
        assert_clean_log(result.log)


def _connections(records: list[dict[str, Any]]) -> dict[int, set[str]]:
    conns: dict[int, set[str]] = collections.defaultdict(set)
    for r in records:
        conns[r["conn"]].add(r["client"])
    return conns


@pytest.mark.e2e
def test_per_request_policy_server_sees_distinct_addresses(namespace: Namespace, tmp_path: Path) -> None:
    # Two workers at once (two spiders: scrapy-redis 0.9.1's scheduler calls the
    # deprecated Spider.log() when a second worker of one spider opens on a
    # non-empty queue, which PYTHONWARNINGS=error turns into a crash).
    namespace.seed("shop_a", "news")
    mark = namespace.mark()
    results = namespace.crawl(tmp_path, "shop_a", "news", IPV6_BIND_POLICY="per_request")
    _check_workers(results)
    records = namespace.log(mark, "shop-a.test", "news.test")
    assert len(records) >= 1000
    clients = [r["client"] for r in records]
    assert all(ipaddress.IPv6Address(c) in NET for c in clients), collections.Counter(clients).most_common(3)
    assert len(set(clients)) / len(clients) >= 0.99
    assert len(_connections(records)) == len(records)  # one connection per request, never reused
    bound = sum(r.stats.get("ipv6_bind/bound", 0) for r in results)
    assert bound == sum(r.stats["downloader/request_count"] for r in results) == len(records)
    assert results[0].stats["item_scraped_count"] == 1000


@pytest.mark.e2e
def test_sticky_policy_reuses_connections(namespace: Namespace, tmp_path: Path) -> None:
    k, n, per_domain = 2, 200, 8
    namespace.seed("shop_a")
    mark = namespace.mark()
    [result] = namespace.crawl(tmp_path, "shop_a", IPV6_BIND_POLICY="sticky", IPV6_BIND_STICKY_ADDRESSES=str(k),
                               IPV6_BIND_STICKY_REQUESTS=str(n), IPV6_BIND_STICKY_SECONDS="0",
                               CONCURRENT_REQUESTS_PER_DOMAIN=str(per_domain))
    _check_workers([result])
    records = namespace.log(mark, "shop-a.test")
    total = len(records)
    assert total == result.stats["downloader/request_count"] >= 1000
    clients = collections.Counter(r["client"] for r in records)
    assert all(ipaddress.IPv6Address(c) in NET for c in clients)
    # K slots used in turn, each address retired after N requests.
    expected = math.ceil(math.ceil(total / k) / n) + math.ceil((total // k) / n)
    assert len(clients) == expected == result.stats["ipv6_bind/addresses"]
    assert sorted(clients.values(), reverse=True)[: expected - k] == [n] * (expected - k)
    # Connection reuse: a connection keeps its address, and most requests ride
    # on an open connection (per_request opens one per request; ~0.08 here).
    conns = _connections(records)
    assert all(len(c) == 1 for c in conns.values())
    assert len(conns) < total / 4, f"{len(conns)} connections for {total} requests"
    # Every retirement was by request count (STICKY_SECONDS is 0).
    assert result.stats["ipv6_bind/rotated/requests"] == expected - k


@pytest.mark.e2e
def test_ipv4_only_website_is_fetched_normally(namespace: Namespace, tmp_path: Path) -> None:
    namespace.seed("shop_b")
    mark = namespace.mark()
    [result] = namespace.crawl(tmp_path, "shop_b")
    _check_workers([result])
    records = namespace.log(mark, "shop-b.test")
    assert {r["client"] for r in records} == {"127.0.0.1"}
    assert result.stats["ipv6_bind/ipv4_only/fetched"] == len(records) == result.stats["downloader/request_count"]
    assert "ipv6_bind/bound" not in result.stats
    assert result.stats["item_scraped_count"] == 60


@pytest.mark.e2e
def test_ipv4_only_website_refused_by_option(namespace: Namespace, tmp_path: Path) -> None:
    namespace.seed("shop_b")
    mark = namespace.mark()
    [result] = namespace.crawl(tmp_path, "shop_b", IPV6_BIND_IPV4_TARGETS="refuse")
    assert result.returncode == 0, result.log[-3000:]
    assert namespace.log(mark, "shop-b.test") == []
    assert result.stats["ipv6_bind/ipv4_only/refused"] >= 2  # robots.txt and the seed
    assert "has no IPv6 address: refusing its requests" in result.log


@pytest.mark.e2e
def test_dual_stack_website_is_reached_over_ipv6(namespace: Namespace, tmp_path: Path) -> None:
    namespace.seed("news")
    mark = namespace.mark()
    [result] = namespace.crawl(tmp_path, "news", IPV6_BIND_POLICY="sticky")
    _check_workers([result])
    records = namespace.log(mark, "news.test")
    assert records and all(ipaddress.IPv6Address(r["client"]) in NET for r in records)
    assert result.stats["ipv6_bind/bound"] == len(records)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("routed", "nonlocal_bind", "command"),
    [
        ((), True, f"ip -6 route add local {PREFIX} dev lo"),
        ((PREFIX,), False, "sysctl -w net.ipv6.ip_nonlocal_bind=1"),
    ],
)
def test_host_not_set_up_stops_with_the_command_to_run(
    tmp_path: Path, routed: tuple[str, ...], nonlocal_bind: bool, command: str
) -> None:
    reason = netns_tools.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with netns_tools.netns(routed=routed, nonlocal_bind=nonlocal_bind, tag="bare") as ns:
        crawl = start_crawl(tmp_path, "shop_a", {"IPV6_BIND_ENABLED": "True", "IPV6_BIND_PREFIXES": PREFIX,
                                                 "MONGO_WRITER_ENABLED": "False"},
                            {"REDIS_URL": "redis://127.0.0.1:6379/0"}, netns=ns.name)
        result = wait_crawl(crawl, timeout=120)
    assert result.returncode != 0
    # One ERROR line naming the setting and the command, not an unretrieved task's traceback.
    assert "ERROR: The crawl could not start: IPV6_BIND_PREFIXES: this host is not set up" in result.log
    assert "Task exception was never retrieved" not in result.log
    assert f"`{command}`" in result.log


def test_namespaces_of_killed_runs_are_removed() -> None:
    reason = netns_tools.unavailable_reason()
    if reason:
        pytest.skip(reason)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer exists, as after a killed test run
    stale = f"crawlertest-{gone.pid}-stale"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    with netns_tools.netns(tag="alive") as alive:
        netns_tools.remove_stale()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert stale not in names
        assert alive.name in names  # ours: this process is alive
