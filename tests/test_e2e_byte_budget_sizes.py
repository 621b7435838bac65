"""Byte budgets against pages of mixed and surprising sizes: 3 real workers, the server's log as the judge.

Sites from :mod:`demosite.profiles`, on a private demo server:

* ``mixed.test`` (``mixed_sizes``): item pages of 2-20 KB (Content-Length,
  gzip, every 7th chunked) and every 10th of 1-5 MB, streamed chunked without
  Content-Length. Scaled down from the issue's 200-page site to 60 pages and a
  2 s window, so a crawl takes seconds; nothing in the algorithm depends on
  the window's length but the window itself.
* ``tiny.test`` (``small_with_one_big``): pages of ~800 B and one of 24 KB
  with b = 20 KB per 10 s window, measured over the two minutes (12 windows)
  after the big page: the issue's figures (the only long test here, ~2.5 min).

Every figure comes from the demo server's log of bytes handed to the kernel
(headers and chunk framing included), spread along each big response's
timeline by :mod:`demosite.analysis`.
"""

from __future__ import annotations

import json
import re
import signal
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from demosite import analysis, profiles
from devtools.services import start_demosite
from tests.conftest import DemoSite, assert_clean_log, start_crawl, wait_crawl

# Judged on rates and time gaps from the server's log: run alone (`make test`, pyproject.toml).
pytestmark = pytest.mark.timing

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.conftest import CrawlResult

MIXED = profiles.mixed_sizes("mixed.test", items=60, huge_every=10, huge_bytes=(1_000_000, 5_000_000))
TINY = profiles.small_with_one_big("tiny.test", items=600, page_bytes=800, big_bytes=24_000)
EXHAUSTED = re.compile(r"Byte budget of (\S+) exhausted: (\d+) of (\d+) bytes per ([\d.]+)s counted at ([\d.]+)")


@pytest.fixture(scope="module")
def sized_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSite]:
    server = start_demosite(tmp_path_factory.mktemp("sized"), (MIXED, TINY))
    yield DemoSite(server)
    server.stop()


def crawl(site: DemoSite, redis_url: str, tmp_path: Path, host: str, budget: int, window: float,
          seeds: list[str], stop_when: Callable[[], bool] | None = None, **extra: Any) -> list[CrawlResult]:
    """Three workers crawl ``host`` under ``budget`` bytes per ``window``, until done (or ``stop_when()``)."""
    settings: dict[str, Any] = {
        "SPIDER_MODULES": "crawler.spiders,tests.spiders",
        "ITEM_PIPELINES": {},
        "BYTE_BUDGET_ENABLED": "True",
        "BYTE_BUDGET_PER_WEBSITE": {host: budget},
        "BYTE_BUDGET_WINDOW_SECONDS": str(window),
        "CONCURRENT_REQUESTS_PER_DOMAIN": "8",
        "FRONTIER_IDLE_CLOSE_SECONDS": "1",
        # The byte budget alone: politeness parks a website for a second at every
        # 429 of its /busy pages, which the utilization and counts here do not model.
        "POLITENESS_ENABLED": "False",
        **extra,
    }
    env = {"REDIS_URL": redis_url, "RESOLVE_HOSTS": "*.test:127.0.0.1"}
    with redis.Redis.from_url(redis_url) as r:
        for path in seeds:
            r.lpush("budget_probe:start_urls", json.dumps({"url": site.url(host, path)}))
    crawls = [start_crawl(tmp_path, "budget_probe", settings, env, name=f"w{i}") for i in range(3)]
    if stop_when is not None:
        deadline = time.monotonic() + 240
        while not stop_when() and time.monotonic() < deadline:
            time.sleep(0.2)
        for c in crawls:
            c.proc.send_signal(signal.SIGINT)
    results = [wait_crawl(c, timeout=240) for c in crawls]
    for result in results:
        assert result.returncode == 0, result.log[-3000:]
        assert_clean_log(result.log, allowed=("Gave up retrying", f"Byte budget of {host} exhausted"))
    return results


def total(results: list[CrawlResult], key: str) -> int:
    return sum(int(res.stats.get(key, 0)) for res in results)


@pytest.mark.e2e
@pytest.mark.parametrize("budget", [8_000_000, 2_000_000])
def test_mixed_sizes_hold_b_plus_one_response(sized_site: DemoSite, redis_url: str, tmp_path: Path,
                                              budget: int) -> None:
    window = 2.0
    mark = sized_site.mark()
    results = crawl(sized_site, redis_url, tmp_path, MIXED.host, budget, window, ["/"])
    log = sized_site.log(mark)
    (tmp_path / "server_log.json").write_text(json.dumps(log))  # for a post-mortem
    host = MIXED.host
    largest = analysis.largest_response(log, host)
    assert largest is not None
    worst = analysis.max_bytes_in_any_window(log, host, window)
    served = analysis.total_bytes(log, host)
    counted = total(results, "byte_budget/bytes_settled")
    # Fetched twice for other reasons than the budget: robots.txt (once per
    # worker) and redirect targets (/go/<n> -> /item/<n>, also linked directly).
    redirected = {f"/item/{n}" for n in range(0, MIXED.items, MIXED.redirect_every)}
    refetched = sorted(set(analysis.refetched_after_complete(log, host)) - {"/robots.txt"} - redirected)
    truncated = [r for r in log if r["host"] == host and r.get("truncated")]
    summary = (f"b={budget}: worst window {worst:.0f} B = {worst / (budget + int(largest['bytes'])):.3f} "
               f"(b + largest {largest['bytes']} B); served {served}, counted {counted}; "
               f"{len(truncated)} stopped ({sum(int(r['bytes']) for r in truncated)} B); refetched {refetched}; "
               f"overdrafts {total(results, 'byte_budget/overdrafts')}, draws {total(results, 'byte_budget/draws')}")
    print("\n" + summary)
    # The whole site was fetched: every huge page, whole, exactly once.
    whole = {r["path"] for r in log if r["host"] == host and r["status"] == 200 and not r.get("truncated")}
    assert {f"/item/{n}" for n in MIXED.huge_items()} <= whole, summary
    # The contract, from the server's side: b plus the largest single response.
    assert worst <= budget + int(largest["bytes"]), summary
    # Counted at least what the server sent (1%: chunk framing is estimated).
    assert counted >= 0.99 * served, summary
    # Never thrown away after it all arrived.
    assert refetched == [], summary


@pytest.mark.e2e
def test_one_big_page_does_not_starve_a_small_site(sized_site: DemoSite, redis_url: str, tmp_path: Path) -> None:
    # The case: b = 20 KB per 10 s window, over the two minutes after the big page.
    window, budget, windows = 10.0, 20_000, 12
    host = TINY.host
    big = f"/item/{TINY.items - 1}"
    mark = sized_site.mark()

    def measured() -> bool:
        """The windows to measure have passed, by the server's log (its clock is this machine's)."""
        starts = [float(r["t"]) for r in sized_site.log(mark) if r["host"] == host and r["path"] == big]
        return bool(starts) and time.time() > starts[0] + (windows + 0.5) * window

    # The big page first, so the windows after it are many.
    results = crawl(sized_site, redis_url, tmp_path, host, budget, window, [big, "/"], stop_when=measured)
    log = sized_site.log(mark)
    (tmp_path / "server_log.json").write_text(json.dumps(log))
    records = analysis.host_records(log, host)
    big_record = next(r for r in records if r["path"] == big)
    start = float(big_record["t"])
    per_window = analysis.bytes_per_window(log, host, window, start=start)[:windows]
    utilization = sum(per_window) / (windows * budget)
    warnings = [m for res in results for m in EXHAUSTED.finditer(res.log)]
    print(f"\nutilization {utilization:.3f} over {windows} windows after the big page: "
          f"{[round(b) for b in per_window]}; {len(warnings)} warnings")
    assert len(per_window) == windows
    assert utilization >= 0.9, per_window
    # The big page was fetched once, whole.
    assert [r.get("truncated") for r in records if r["path"] == big] == [False]
    # "Exhausted" only when it was: the server sent nearly b in the window
    # before the warning and the second after it (reservations counted at the
    # warning reach the server right after it); two small pages of slack.
    for m in warnings:
        now = float(m.group(5))
        sent = analysis.bytes_per_window(log, host, window + 1.0, start=now - window)[0]
        assert sent >= budget - 2 * 1000, (m.group(0), sent)
    # A request sent back to the frontier is not a downloader request: the
    # workers' count is what the server saw (robots.txt included).
    requests = total(results, "downloader/request_count")
    assert requests <= len(records), (requests, len(records), total(results, "byte_budget/denied"))
