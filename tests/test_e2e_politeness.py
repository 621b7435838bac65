"""Politeness end to end: 3 real workers, the demo server's own request log as the judge.

A private demo server serves small sites; rate limits and outages are started
with its admin calls (``/_demo/throttle``, ``/_demo/fail``) once the crawl of
the site has begun. Parks are seconds long so each test takes well under a
minute. robots.txt requests are left out of the gap analyses: each worker
fetches robots.txt once, outside the frontier, before its first request to a
host (it is exempt from politeness; docs/politeness.md).

Tolerances, stated once:

* ``CLOCK``: the server's log times are rounded to the microsecond, and
  Redis's clock and the server's are the same machine's: 1 ms.
* ``NEWS``: a request that arrives within this long after a 429 / failure was
  *answered* was already on its way (sent, or past the politeness check)
  before any worker could know: the answer has to reach a worker, Redis and
  the other workers (pub/sub). Only such requests may follow the answer.
* Transport resends: when a server drops a *reused* keep-alive connection
  before answering, Twisted's connection pool (under Scrapy's HTTP/1.1
  handler) sends the same GET once more on a new connection, at once. The
  server logs two requests for one attempt; :func:`attempts` counts them as
  one (same path, new connection, within ``RESEND`` of the drop). See
  docs/politeness.md, "Limits".
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import redis

from demosite import analysis, profiles
from demosite.sites import SiteConfig
from devtools.services import ROOT, start_demosite
from middlewares.politeness.config import Rate
from tests.conftest import DemoSite, assert_clean_log, start_crawl, wait_crawl

# Judged on rates and time gaps from the server's log: run alone (`make test`, pyproject.toml).
pytestmark = pytest.mark.timing

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.conftest import CrawlResult, RunningCrawl

CLOCK = 0.001
NEWS = 0.25
RESEND = 0.05


def _site(host: str, items: int, **extra: Any) -> SiteConfig:
    return SiteConfig(**{"host": host, "items": items, "per_page": 10, "errors": 0, "redirect_every": 10**9,
                         "related": 1, **extra})


SITES = (
    _site("ra.test", 30),
    _site("bo.test", 30),
    _site("fl.test", 90, slow_ms=200),
    _site("free.test", 60, slow_ms=50),
    profiles.crawl_delay("cd.test", 0.5, items=10, per_page=10, errors=0, redirect_every=10**9, related=1),
    _site("rt.test", 60, per_page=20),
    _site("ad.test", 1500, per_page=50, slow_ms=20),
    profiles.crawl_delay("rr.test", 0, items=10, per_page=10, errors=0, redirect_every=10**9, related=1,
                         request_rate="2/1"),
)
SPIDER = "politeness_probe"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSite]:
    server = start_demosite(tmp_path_factory.mktemp("pol-demosite"), SITES)
    yield DemoSite(server)
    server.stop()


def admin(site: DemoSite, call: str) -> None:
    with urllib.request.urlopen(f"{site.server.url}/_demo/{call}", timeout=10) as r:
        assert r.status == 200


def expected_pages(config: SiteConfig) -> set[str]:
    return {"/", *(f"/list/{k}" for k in range(1, config.pages + 1)), *(f"/item/{n}" for n in range(config.items))}


def fetched(log: list[dict[str, Any]], host: str) -> set[str]:
    return {r["path"] for r in log if r["host"] == host and r["status"] == 200 and r["path"] != "/robots.txt"}


def pages(log: list[dict[str, Any]], host: str) -> list[dict[str, Any]]:
    """The host's requests but robots.txt, in time order."""
    return analysis.host_records([r for r in log if r["path"] != "/robots.txt"], host)


def attempts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests, with Twisted's transport resend after a dropped connection folded into its attempt."""
    out: list[dict[str, Any]] = []
    for r in records:
        p = out[-1] if out else None
        if (p is not None and p["status"] == 0 and r["path"] == p["path"] and r["conn"] != p["conn"]
                and r["t"] - p["t_end"] < RESEND):
            continue
        out.append(r)
    return out


def wait_for(what: str, check: Callable[[], Any], timeout: float, crawls: list[RunningCrawl] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy (the event), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if crawls and any(c.proc.poll() is not None for c in crawls):
            raise AssertionError(f"a worker exited while waiting for {what}")
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout}s")


class Cluster:
    """Three workers of the politeness probe spider on one fresh frontier."""

    def __init__(self, site: DemoSite, redis_url: str, tmp_path: Path, settings: dict[str, Any]) -> None:
        self.site = site
        self.redis_url = redis_url
        self.mark = site.mark()
        env = {"REDIS_URL": redis_url, "RESOLVE_HOSTS": "*.test:127.0.0.1"}
        all_settings = {
            "SPIDER_MODULES": "crawler.spiders,tests.spiders",
            "ITEM_PIPELINES": {},
            "FRONTIER_IDLE_CLOSE_SECONDS": "2",
            "CONCURRENT_REQUESTS_PER_DOMAIN": "4",
            **settings,
        }
        self.crawls = [start_crawl(tmp_path, SPIDER, all_settings, env, name=f"w{i}") for i in range(3)]
        wait_for("worker start-up", lambda: all(c.log_path.exists() and "Spider opened" in
                                                c.log_path.read_text(errors="replace") for c in self.crawls),
                 90, self.crawls)

    def seed(self, *hosts: str) -> None:
        with redis.Redis.from_url(self.redis_url) as r:
            for host in hosts:
                r.lpush(f"{SPIDER}:start_urls", json.dumps({"url": self.site.url(host)}))

    def log(self) -> list[dict[str, Any]]:
        return self.site.log(self.mark)

    def save(self, tmp_path: Path) -> list[dict[str, Any]]:
        """The server's log of this run, also written to the test's directory for a post-mortem."""
        log = self.log()
        (tmp_path / "server_log.json").write_text(json.dumps(log))
        return log

    def first(self, host: str, status: int | None = None, after: float = 0.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((r for r in self.log() if r["host"] == host and r["path"] != "/robots.txt"
                         and (status is None or r["status"] == status) and r["t"] >= after
                         and r["t_end"] is not None), None)

        return wait_for(f"request to {host} with status {status}", find, 60, self.crawls)  # type: ignore[no-any-return]

    def finish(self, timeout: float = 90) -> list[CrawlResult]:
        try:
            results = [wait_crawl(c, timeout) for c in self.crawls]
        finally:
            for c in self.crawls:
                if c.proc.poll() is None:
                    c.proc.send_signal(signal.SIGINT)
                    c.proc.wait(30)
        for result in results:
            assert result.returncode == 0, result.log[-3000:]
            assert_clean_log(result.log, allowed=("Gave up retrying", "circuit breaker of", "breaker open again",
                                                  "slowed down to"))
        return results


def stat(results: list[CrawlResult], key: str) -> int:
    return sum(int(r.stats.get(key, 0)) for r in results)


@pytest.mark.e2e
def test_retry_after_parks_the_website_for_every_worker(site: DemoSite, redis_url: str, tmp_path: Path) -> None:
    n, span = 3, 5
    cluster = Cluster(site, redis_url, tmp_path, {})
    cluster.seed("ra.test")
    cluster.first("ra.test", 200)
    admin(site, f"throttle?host=ra.test&seconds={span}&status=429&retry_after={n}")
    first_429 = cluster.first("ra.test", 429)
    cluster.seed("free.test")  # crawled while ra.test is parked
    results = cluster.finish()
    log = cluster.save(tmp_path)

    ra = pages(log, "ra.test")
    answered = [r for r in ra if r["status"] == 429]
    in_flight = 0
    for r in answered:
        # Nothing between this 429 and Retry-After later, but what was on its way when it was answered.
        late = [x for x in ra if r["t_end"] + NEWS < x["t"] < r["t"] + n - CLOCK]
        assert not late, (r, late)
        in_flight = max(in_flight, len(analysis.requests_during(log, "ra.test", r["t"], r["t_end"] + NEWS)))
    # Afterwards it was crawled to the end, without spending a Scrapy retry on a 429.
    assert fetched(log, "ra.test") == expected_pages(SITES[0])
    assert stat(results, "retry/count") == 0
    assert stat(results, "politeness/requeued/rate_limited") >= len(answered)
    # The other website was not held back: it was served during the park, completely, never waiting N s.
    park = (first_429["t"], first_429["t"] + n)
    free = pages(log, "free.test")
    assert analysis.requests_during(log, "free.test", *park)
    assert fetched(log, "free.test") == expected_pages(SITES[3])
    assert max(analysis.gaps(free, "free.test")) < n / 2
    print(f"\n429s: {len(answered)}; most requests already on their way at a 429: {in_flight}; "
          f"free.test requests during the first park: {len(analysis.requests_during(log, 'free.test', *park))}")


@pytest.mark.e2e
def test_backoff_gaps_grow_by_the_factor(site: DemoSite, redis_url: str, tmp_path: Path) -> None:
    base, factor, jitter = 0.5, 2.0, 0.1
    cluster = Cluster(site, redis_url, tmp_path, {
        "POLITENESS_BACKOFF_BASE_SECONDS": str(base), "POLITENESS_BACKOFF_FACTOR": str(factor),
        "POLITENESS_BACKOFF_JITTER": str(jitter)})
    cluster.seed("bo.test")
    cluster.first("bo.test", 200)
    admin(site, "throttle?host=bo.test&seconds=3.2&status=503")
    first = cluster.first("bo.test", 503)
    results = cluster.finish()
    log = cluster.save(tmp_path)

    bo = pages(log, "bo.test")
    recovered = next(r for r in bo if r["status"] == 200 and r["t"] > first["t"])
    # After the requests already on their way, one probe per park until the site answers again.
    probes = [r for r in bo if first["t_end"] + NEWS < r["t"] <= recovered["t"]]
    times = [first["t"]] + [r["t"] for r in probes]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 3, gaps
    for i, gap in enumerate(gaps):
        assert gap >= base * factor**i * (1 - jitter) - CLOCK, (i, gaps)
    assert fetched(log, "bo.test") == expected_pages(SITES[1])
    assert stat(results, "retry/count") == 0
    print(f"\nbackoff gaps {[round(g, 3) for g in gaps]}")


@pytest.mark.e2e
def test_circuit_breaker_lets_one_probe_per_cooling_period(site: DemoSite, redis_url: str, tmp_path: Path) -> None:
    k, cool = 3, 0.5
    cluster = Cluster(site, redis_url, tmp_path, {
        "POLITENESS_BREAKER_FAILURES": str(k), "POLITENESS_BREAKER_COOL_SECONDS": str(cool),
        "POLITENESS_BREAKER_COOL_FACTOR": "2", "POLITENESS_BREAKER_COOL_MAX_SECONDS": "2"})
    cluster.seed("fl.test")
    cluster.first("fl.test", 200)
    # The outage drops robots.txt too: start it once every worker has read it.
    wait_for("robots.txt read by every worker", lambda: len([
        r for r in cluster.log() if r["host"] == "fl.test" and r["path"] == "/robots.txt"]) >= 3, 60, cluster.crawls)
    admin(site, "fail?host=fl.test&seconds=3&status=0")
    failed = cluster.first("fl.test", 0)
    cluster.seed("free.test")
    results = cluster.finish()
    log = cluster.save(tmp_path)

    fl = attempts(pages(log, "fl.test"))
    failures = [r for r in fl if r["status"] == 0]
    assert len(failures) >= k
    opened = failures[k - 1]
    recovered = next(r for r in fl if r["status"] == 200 and r["t"] > failed["t"])
    probes = [r for r in fl if opened["t_end"] + NEWS < r["t"] <= recovered["t"]]
    times = [r["t"] for r in probes]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # At most one request per cooling period, cluster-wide: these are the probes.
    assert probes and all(gap >= cool - CLOCK for gap in gaps), gaps
    assert probes[0]["t"] - opened["t"] >= cool - CLOCK
    assert stat(results, "politeness/transition/opened") == 1
    assert stat(results, "politeness/transition/closed") == 1
    # It recovered with the site and was crawled to the end; the other website was not affected.
    assert fetched(log, "fl.test") == expected_pages(SITES[2])
    assert fetched(log, "free.test") == expected_pages(SITES[3])
    assert analysis.requests_during(log, "free.test", opened["t"], recovered["t"])
    print(f"\nfailures {len(failures)}, probes {len(probes)} with gaps {[round(g, 3) for g in gaps]}; "
          f"probes counted by the workers: {stat(results, 'politeness/probes')}")


def crawl_one(site: DemoSite, redis_url: str, tmp_path: Path, host: str) -> tuple[Any, Any, Any]:
    """3 workers crawl ``host`` with the default settings: (their results, the server's log, its pages)."""
    cluster = Cluster(site, redis_url, tmp_path, {})
    cluster.seed(host)
    results = cluster.finish()
    log = cluster.save(tmp_path)
    return results, log, pages(log, host)


@pytest.mark.e2e
def test_crawl_delay_holds_across_three_workers(site: DemoSite, redis_url: str, tmp_path: Path) -> None:
    delay = 0.5
    results, log, cd = crawl_one(site, redis_url, tmp_path, "cd.test")
    assert fetched(log, "cd.test") == expected_pages(SITES[4])
    smallest = analysis.min_gap(cd, "cd.test")
    assert smallest is not None and smallest >= delay - CLOCK, sorted(analysis.gaps(cd, "cd.test"))[:5]
    assert stat(results, "politeness/denied/delay") > 0  # three workers did compete for it
    print(f"\nCrawl-delay {delay}s: {len(cd)} requests, min gap {smallest:.3f}s, "
          f"median gap {sorted(analysis.gaps(cd, 'cd.test'))[len(cd) // 2]:.3f}s")


@pytest.mark.e2e
def test_robots_request_rate_holds_across_three_workers(site: DemoSite, redis_url: str, tmp_path: Path) -> None:
    # robots.txt "Request-rate: 2/1" (no Crawl-delay): honoured as one request per 0.5 s.
    requests, window = 2, 1.0
    results, log, rr = crawl_one(site, redis_url, tmp_path, "rr.test")
    assert fetched(log, "rr.test") == expected_pages(SITES[7])
    assert analysis.max_requests_in_any_window(rr, "rr.test", window) <= requests
    smallest = analysis.min_gap(rr, "rr.test")
    assert smallest is not None and smallest >= window / requests - CLOCK, sorted(analysis.gaps(rr, "rr.test"))[:5]
    assert stat(results, "politeness/denied/delay") > 0  # three workers did compete for it
    print(f"\nRequest-rate {requests}/{window:g}s: {len(rr)} requests, min gap {smallest:.3f}s")


@pytest.mark.e2e
def test_request_rate_and_a_run_time_change_within_5_s(site: DemoSite, redis_url: str, tmp_path: Path) -> None:
    before, after, window = 10, 4, 1.0
    cluster = Cluster(site, redis_url, tmp_path, {"POLITENESS_RATE_PER_WEBSITE": {"rt.test": f"{before}/{window:g}"}})
    cluster.seed("rt.test")
    start = cluster.first("rt.test", 200)
    wait_for("two windows of crawling", lambda: time.time() > start["t"] + 2 * window, 10)
    subprocess.run([sys.executable, "-m", "middlewares.politeness", "--redis-url", redis_url, "rate", "set",
                    "rt.test", f"{after}/{window:g}"], cwd=ROOT, check=True, capture_output=True, timeout=30)
    changed = time.time()
    # The event: every worker logged the new rate, within 5 s.
    wait_for("the new rate in every worker", lambda: all(
        f"'rt.test': '{after}/1s'" in c.log_path.read_text(errors="replace") for c in cluster.crawls), 5.0)
    applied = time.time() - changed
    results = cluster.finish()
    log = cluster.save(tmp_path)
    rt = pages(log, "rt.test")
    old = [r for r in rt if r["t"] < changed]
    new = [r for r in rt if r["t"] >= changed + 5.0]
    assert analysis.max_requests_in_any_window(old, "rt.test", window) <= before
    assert analysis.max_requests_in_any_window(new, "rt.test", window) <= after
    assert analysis.max_requests_in_any_window(rt, "rt.test", window) <= before
    assert len(new) >= 2 * after  # the new rate was really used, over several windows
    assert fetched(log, "rt.test") == expected_pages(SITES[5])
    assert stat(results, "politeness/denied/rate") > 0
    print(f"\nrate {before}/{window}s -> {after}/{window}s; every worker had it after {applied:.2f}s; "
          f"max per window before {analysis.max_requests_in_any_window(old, 'rt.test', window)}, "
          f"after {analysis.max_requests_in_any_window(new, 'rt.test', window)}")


@pytest.mark.e2e
def test_adaptive_slow_down_lowers_the_rate_cluster_wide_and_recovers(site: DemoSite, redis_url: str,
                                                                      tmp_path: Path) -> None:
    # The site answers in ~20 ms; then for `span` s every answer waits 300 ms more.
    span, refresh = 5.0, 0.5
    cluster = Cluster(site, redis_url, tmp_path, {
        "POLITENESS_ADAPTIVE_WEBSITES": "ad.test", "POLITENESS_ADAPTIVE_WINDOW_SECONDS": "1",
        "POLITENESS_ADAPTIVE_MIN_RATE": "2", "POLITENESS_ADAPTIVE_INCREASE": "1.5",
        "POLITENESS_REFRESH_SECONDS": str(refresh)})
    cluster.seed("ad.test")
    start = cluster.first("ad.test", 200)
    # The baseline: a few judged windows of the site's usual answers.
    wait_for("three windows of crawling", lambda: time.time() > start["t"] + 3, 10)
    admin(site, f"slow?host=ad.test&seconds={span}&ms=300")
    slow_from = time.time()

    def slowed() -> list[float]:
        return [float(x) for c in cluster.crawls
                for x in re.findall(r"ad\.test slowed down to ([0-9.]+) requests/s", c.log_path.read_text())]

    first_rates = wait_for("a worker's slow-down decision", slowed, span, cluster.crawls)
    seen = time.time()
    results = cluster.finish(timeout=180)
    log = cluster.save(tmp_path)

    ad = pages(log, "ad.test")
    rates = slowed()
    # Each change logged once, by the worker whose report made it: one line per rate, all different.
    assert len(rates) == stat(results, "politeness/adaptive/slowed") == len(set(rates)) >= 1
    # While the site stays slow every window is worse, so the rate only goes down: from (every
    # worker has it: one refresh, plus NEWS for what was on its way) to the end of the span, no
    # window of the server's log holds more than the first lowered rate allows.
    first = max(first_rates)
    limit = Rate.from_per_second(first)
    held = [r for r in ad if seen + refresh + NEWS <= r["t"] < slow_from + span]
    assert held, "the span ended before the decision reached every worker"
    assert analysis.max_requests_in_any_window(held, "ad.test", limit.window) <= limit.requests
    # Lower than before by a clear factor: at most half the rate of the 2 s before the span.
    before = analysis.requests_during(log, "ad.test", slow_from - 2, slow_from)
    during = len(held) / (slow_from + span - seen - refresh - NEWS)
    assert during <= 0.5 * len(before) / 2, (during, len(before) / 2)
    # It recovered: raised step by step (or lifted), and the site was crawled to the end.
    assert stat(results, "politeness/adaptive/raised") + stat(results, "politeness/adaptive/restored") >= 1
    assert fetched(log, "ad.test") == expected_pages(SITES[6])
    print(f"\nrequests/s before {len(before) / 2:.1f}, while slowed {during:.1f}; rates {sorted(rates, reverse=True)}; "
          f"raised {stat(results, 'politeness/adaptive/raised')}, "
          f"restored {stat(results, 'politeness/adaptive/restored')}")
