"""The Prometheus endpoint: settings, families, and real workers scraped over HTTP during a crawl."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scrapy.settings import Settings

from crawler.extensions.metric_families import METRICS, exported_names, families
from crawler.extensions.metrics import MetricsConfig, parse_ports
from crawler.extensions.website_metrics import Budgets, WebsiteCounts, WebsiteMetricsConfig, website_families
from demosite.sites import SiteConfig
from devtools.services import ROOT, free_port, start_demosite
from tests.conftest import assert_clean_log, start_crawl, wait_crawl

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import RunningCrawl

SITE = SiteConfig(host="shop-a.test", kind="shop", items=60, per_page=20, page_bytes=1500, errors=0)
TIMEOUT = 120.0  # overall limit of every wait below; none is a timed assertion


# -- settings and families -------------------------------------------------

@pytest.mark.parametrize(("raw", "ports"), [(0, (0, 0)), ("0", (0, 0)), (9410, (9410, 9410)),
                                             ("9410-9429", (9410, 9429)), (" 8000-8000 ", (8000, 8000))])
def test_ports(raw: Any, ports: tuple[int, int]) -> None:
    assert parse_ports(raw) == ports


@pytest.mark.parametrize("raw", ["", "x", "9429-9410", "0-10", "-1", "70000", True, "1-2-3", None])
def test_bad_ports(raw: Any) -> None:
    with pytest.raises(ValueError, match="METRICS_PORT must be"):
        parse_ports(raw)


def test_config_defaults_to_loopback() -> None:
    assert MetricsConfig.from_settings(Settings()) == MetricsConfig("127.0.0.1", (9410, 9429),
                                                                    WebsiteMetricsConfig(frozenset(), 10))
    with pytest.raises(ValueError, match="METRICS_HOST must be"):
        MetricsConfig.from_settings(Settings({"METRICS_HOST": " "}))


def _samples(stats: dict[str, Any], live: dict[str, float] | None = None) -> dict[tuple[str, tuple[Any, ...]], float]:
    out = {}
    for family in families(stats, "s", live or {}):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_families_from_stats() -> None:
    stats = {"downloader/response_count": 7, "downloader/response_status_count/200": 4,
             "downloader/response_status_count/301": 1, "downloader/response_status_count/503": 2,
             "downloader/exception_type_count/twisted.internet.error.DNSLookupError": 3,
             "validate/invalid": 2, "mongo_writer/write_error/11000": 1, "mongo_writer/write_error/2": 1,
             "log_count/WARNING": 5, "frontier/redis_calls": 9, "start_time": "not a number"}
    got = _samples(stats, {"crawler_frontier_redis_calls": 11.0, "pid": 42.0})
    assert got[("crawler_pages_downloaded_total", (("spider", "s"),))] == 7
    status = {dict(k[1])["status_class"]: v for k, v in got.items() if k[0] == "crawler_responses_total"}
    assert status == {"1xx": 0, "2xx": 4, "3xx": 1, "4xx": 0, "5xx": 2}
    assert got[("crawler_download_errors_total", (("error", "DNSLookupError"), ("spider", "s")))] == 3
    dead = {dict(k[1])["reason"]: v for k, v in got.items() if k[0] == "crawler_items_dead_lettered_total"}
    assert dead == {"invalid": 2, "missing_key": 0, "unencodable": 0, "write_error": 2}
    assert got[("crawler_log_messages_total", (("level", "warning"), ("spider", "s")))] == 5
    assert got[("crawler_frontier_redis_calls_total", (("spider", "s"),))] == 11  # live beats the close-time stat
    assert got[("crawler_worker_info", (("pid", "42"), ("spider", "s")))] == 1
    assert got[("crawler_items_written_total", (("spider", "s"),))] == 0  # every family from the first scrape


@pytest.mark.parametrize(("raw", "listed"), [(None, set()), ([], set()), (["A.test", "b.test."], {"a.test", "b.test"}),
                                              ('["a.test"]', {"a.test"}), ("a.test, b.test", {"a.test", "b.test"})])
def test_website_settings(raw: Any, listed: set[str]) -> None:
    config = WebsiteMetricsConfig.from_settings(Settings({"METRICS_WEBSITES": raw, "METRICS_WEBSITES_TOP": "3"}))
    assert config == WebsiteMetricsConfig(frozenset(listed), 3)


@pytest.mark.parametrize(("name", "raw"), [("METRICS_WEBSITES", 7), ("METRICS_WEBSITES", [1]),
                                           ("METRICS_WEBSITES", "[oops"), ("METRICS_WEBSITES_TOP", -1),
                                           ("METRICS_WEBSITES_TOP", "x")])
def test_bad_website_settings(name: str, raw: Any) -> None:
    with pytest.raises(ValueError, match=name):
        WebsiteMetricsConfig.from_settings(Settings({name: raw}))


def _website_samples(counts: WebsiteCounts, budgets: Budgets | None = None) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for family in website_families(counts, "s", budgets):
        for sample in family.samples:
            out.setdefault(sample.name, {})[sample.labels["website"]] = sample.value
    return out


def test_website_labels_are_the_listed_and_the_top_n_only() -> None:
    counts = WebsiteCounts(WebsiteMetricsConfig(frozenset({"listed.test"}), 2))
    for i in range(50):  # website i: i pages of 100 bytes
        for _ in range(i):
            counts.add(f"w{i:02d}.test", 100)
    got = _website_samples(counts, Budgets({"w49.test": 5000, "w48.test": None}, {"w49.test": 4200}))
    assert got["crawler_website_pages_downloaded_total"] == {"listed.test": 0, "w49.test": 49, "w48.test": 48}
    assert got["crawler_website_response_bytes_total"] == {"listed.test": 0, "w49.test": 4900, "w48.test": 4800}
    assert got["crawler_website_budget_bytes"] == {"w49.test": 5000}  # w48 is unlimited, listed.test unknown
    assert got["crawler_website_window_bytes"] == {"listed.test": 0, "w49.test": 4200, "w48.test": 0}
    assert "crawler_website_budget_bytes" not in _website_samples(counts)  # the byte budget is off


def test_website_counts_use_bounded_memory() -> None:
    counts = WebsiteCounts(WebsiteMetricsConfig(frozenset({"listed.test"}), 1))
    counts.add("big.test", 10**6)
    for i in range(3 * counts.capacity):
        counts.add(f"w{i}.test", 1)
    assert len(counts.counts) <= counts.capacity
    assert counts.shown() == ["big.test", "listed.test"] and counts.counts["big.test"] == [1, 10**6]


def test_politeness_families_have_closed_label_sets() -> None:
    got = _samples({"politeness/denied/parked": 3, "politeness/denied/held": 1, "politeness/denied/weird": 9,
                    "politeness/retry_after": 2, "politeness/backoff": 1, "politeness/transition/opened": 1,
                    "politeness/transition/reopened": 2, "politeness/transition/parked": 3})
    denied = {dict(k[1])["reason"]: v for k, v in got.items() if k[0] == "crawler_politeness_denied_total"}
    assert denied == {"parked": 3, "probe": 0, "delay": 0, "rate": 0, "held": 1, "redis_unavailable": 0}
    parks = {dict(k[1])["reason"]: v for k, v in got.items() if k[0] == "crawler_politeness_park_signals_total"}
    assert parks == {"retry_after": 2, "backoff": 1, "breaker_open": 3}
    moves = {dict(k[1])["transition"]: v for k, v in got.items() if k[0] == "crawler_politeness_transitions_total"}
    assert moves == {"parked": 3, "failed": 0, "opened": 1, "reopened": 2, "closed": 0, "recovered": 0}


def test_the_reference_lists_every_metric() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_]+)`", text, flags=re.MULTILINE))
    assert documented == exported_names()
    for family in METRICS:
        if family.label:
            assert f"`{family.label}`" in text


def test_the_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana" / "crawler.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    used = {name for e in exprs for name in re.findall(r"\b((?:crawler|process)_[a-z0-9_]+)\b", e)}
    process = {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"}
    assert used and used <= exported_names() | process, used - exported_names() - process


# -- real workers ------------------------------------------------------------

def _endpoint(crawl: RunningCrawl) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert crawl.proc.poll() is None, crawl.log_path.read_text()[-3000:] if crawl.log_path.exists() else ""
        log = crawl.log_path.read_text() if crawl.log_path.exists() else ""
        found = re.search(r"Metrics endpoint: (http://\S+)", log)
        if found:
            return found.group(1)
        time.sleep(0.1)
    raise AssertionError("the worker never logged its metrics endpoint")


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> labels -> value, parsed from a real GET of the endpoint."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted((k, v) for k, v in s.labels.items() if k != "spider"))] = s.value
    return out


def _wait(check: Any, what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached within {TIMEOUT:.0f}s")


def _log(server_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{server_url}/_demo/log?since=0", timeout=10) as r:
        return [json.loads(line) for line in r.read().splitlines() if line]


def _env(redis_url: str, mongo_uri: str, mongo_db: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "MONGO_URI": mongo_uri, "MONGO_DATABASE": mongo_db,
            "RESOLVE_HOSTS": "*.test:127.0.0.1"}


@pytest.mark.e2e
def test_a_running_worker_is_scraped_during_its_crawl(
    redis_url: str, mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    import redis

    site = start_demosite(tmp_path / "site", (SITE,))
    try:
        with redis.Redis.from_url(redis_url) as r:
            r.lpush("shop_a:start_urls", f"http://{SITE.host}:{site.port}/")
        # A service worker (no idle close): it is still running when we look.
        crawl = start_crawl(tmp_path, "shop_a", {"METRICS_ENABLED": "1", "METRICS_PORT": "0",
                                                 "BYTE_BUDGET_DEFAULT": str(10**9)},
                            _env(redis_url, mongo_server_uri, mongo_db), name="w")
        try:
            url = _endpoint(crawl)
            assert url.startswith("http://127.0.0.1:")
            total = sum(SITE.expected_pages().values()) + 1  # and robots.txt; errors=0: no retries
            _wait(lambda: len(_log(site.url)) >= total, "the whole site fetched (server log)")

            def settled() -> Any:
                m = scrape(url)
                done = (m["crawler_pages_downloaded_total"][()] == total
                        and m["crawler_items_written_total"][()] == SITE.items
                        and m["crawler_byte_budget_granted_total"][()] > 0)
                return m if done else None

            m = _wait(settled, "the worker's counters caught up with the server's log")
            assert crawl.proc.poll() is None  # scraped while the worker runs
            log = _log(site.url)
            assert m["crawler_pages_downloaded_total"][()] == len(log) == total
            redirects = SITE.expected_pages()["redirects"]
            assert m["crawler_responses_total"] == {(("status_class", "1xx"),): 0, (("status_class", "2xx"),):
                                                    total - redirects, (("status_class", "3xx"),): redirects,
                                                    (("status_class", "4xx"),): 0, (("status_class", "5xx"),): 0}
            assert sum(e["bytes"] for e in log) * 0.9 < m["crawler_response_bytes_total"][()]
            assert m["crawler_items_scraped_total"][()] == m["crawler_items_valid_total"][()] == SITE.items
            assert m["crawler_mongo_batches_total"][()] >= 1
            assert m["crawler_frontier_pushed_total"][()] >= total - 2  # the seed and robots.txt are not pushed
            assert m["crawler_frontier_popped_total"][()] >= total - 2
            assert m["crawler_frontier_redis_calls_total"][()] > 0
            assert m["crawler_frontier_prefetched"][()] == 0
            assert m["crawler_worker_info"] == {(("pid", str(crawl.proc.pid)),): 1}
            assert m["process_resident_memory_bytes"][()] > 0
            # Every family, but those labelled by exception class: no sample until an error happens.
            by_error = {f"{f.name}_total" for f in METRICS if f.label == "error"}
            assert exported_names() - by_error <= set(m)
        finally:
            crawl.proc.terminate()  # SIGTERM: Scrapy closes the spider gracefully
            result = wait_crawl(crawl)
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    assert_clean_log(result.log)


@pytest.mark.e2e
def test_per_website_series_for_the_listed_and_the_top_websites_only(
    redis_url: str, mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    import redis

    sites = tuple(SiteConfig(host=f"{h}.shop-a.test", kind="shop", items=n, per_page=10, page_bytes=1500, errors=0)
                  for h, n in (("a", 40), ("b", 20), ("c", 10)))
    server = start_demosite(tmp_path / "site", sites)
    try:
        with redis.Redis.from_url(redis_url) as r:
            r.lpush("shop_a:start_urls", *(f"http://{s.host}:{server.port}/" for s in sites))
        settings = {"METRICS_ENABLED": "1", "METRICS_PORT": "0", "WEBSITE_KEY": "host",
                    "METRICS_WEBSITES": "c.shop-a.test", "METRICS_WEBSITES_TOP": "1",
                    "BYTE_BUDGET_PER_WEBSITE": json.dumps({"a.shop-a.test": 10**9})}
        crawl = start_crawl(tmp_path, "shop_a", settings, _env(redis_url, mongo_server_uri, mongo_db), name="w")
        try:
            url = _endpoint(crawl)
            total = {s.host: sum(s.expected_pages().values()) + 1 for s in sites}  # and robots.txt
            _wait(lambda: len(_log(server.url)) >= sum(total.values()), "every site fetched (server log)")

            def settled() -> Any:
                m = scrape(url)
                pages = {dict(k)["website"]: v for k, v in m["crawler_website_pages_downloaded_total"].items()}
                return m if pages == {"a.shop-a.test": total["a.shop-a.test"],
                                      "c.shop-a.test": total["c.shop-a.test"]} else None

            m = _wait(settled, "the per-website counters caught up with the server's log")
            log = _log(server.url)
            for host in ("a.shop-a.test", "c.shop-a.test"):  # what the server saw, host by host
                assert sum(1 for e in log if e["host"] == host) == total[host]
                sent = sum(e["bytes"] for e in log if e["host"] == host)
                assert sent * 0.9 < m["crawler_website_response_bytes_total"][(("website", host),)] < sent * 1.5
            # b.shop-a.test was crawled but is neither listed nor the top 1: no series.
            assert {dict(k)["website"] for k in m["crawler_website_response_bytes_total"]} == {
                "a.shop-a.test", "c.shop-a.test"}
            assert m["crawler_website_budget_bytes"] == {(("website", "a.shop-a.test"),): 10**9}
            window = m["crawler_website_window_bytes"]
            assert set(window) == {(("website", "a.shop-a.test"),), (("website", "c.shop-a.test"),)}
            assert window[(("website", "a.shop-a.test"),)] > 0  # a is budgeted: the cluster counts its bytes
        finally:
            crawl.proc.terminate()
            result = wait_crawl(crawl)
    finally:
        server.stop()
    assert result.returncode == 0, result.log[-3000:]
    assert_clean_log(result.log)


@pytest.mark.e2e
def test_two_workers_on_one_host_get_two_endpoints(
    redis_url: str, mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    low = free_port()
    ports = f"{low}-{low + 9}"
    env = _env(redis_url, mongo_server_uri, mongo_db)
    crawls = [start_crawl(tmp_path, "news", {"METRICS_ENABLED": "1", "METRICS_PORT": ports}, env, name=f"w{i}")
              for i in (1, 2)]
    try:
        urls = [_endpoint(c) for c in crawls]
        found = [int(re.search(r":(\d+)/metrics$", u).group(1)) for u in urls]  # type: ignore[union-attr]
        assert len(set(found)) == 2 and all(low <= p <= low + 9 for p in found)
        for crawl, url in zip(crawls, urls, strict=True):
            assert scrape(url)["crawler_worker_info"] == {(("pid", str(crawl.proc.pid)),): 1}
    finally:
        for crawl in crawls:
            crawl.proc.terminate()
        results = [wait_crawl(c) for c in crawls]
    for result in results:
        assert result.returncode == 0, result.log[-3000:]


@pytest.mark.e2e
def test_a_taken_port_stops_the_worker_with_one_error(redis_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        crawl = start_crawl(tmp_path, "news", {"METRICS_ENABLED": "1", "METRICS_PORT": str(port)},
                            {"REDIS_URL": redis_url})
        result = wait_crawl(crawl)
    assert result.returncode == 1
    assert f"The crawl could not start: METRICS_PORT {port}-{port}: no free port on 127.0.0.1" in result.log
