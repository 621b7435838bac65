"""Per-website series for the metrics endpoint, for a bounded set of websites.

A website gets labelled series only if it is listed in ``METRICS_WEBSITES`` or
is among this worker's ``METRICS_WEBSITES_TOP`` websites by bytes downloaded,
so a scrape has at most ``len(METRICS_WEBSITES) + METRICS_WEBSITES_TOP``
values of the ``website`` label however many websites the worker crawls:

* ``crawler_website_pages_downloaded_total``, ``crawler_website_response_bytes_total``:
  responses and their bytes (status line, headers, body as received, before
  decompression: ``downloader/response_bytes``' measure), counted by this worker;
* ``crawler_website_budget_bytes``: the website's byte budget *b* per window
  (run-time override, ``BYTE_BUDGET_PER_WEBSITE``, ``BYTE_BUDGET_DEFAULT``);
  no sample for an unlimited website;
* ``crawler_website_window_bytes``: bytes the byte budget counts in the current
  window, cluster-wide (the same in every worker: ``max`` them in queries).

The budget gauges are read from Redis at each scrape: one pipelined round trip
of one command per labelled website, plus the overrides.

Counting is exact for every website this worker has seen, up to a bound on
memory: past ``max(10_000, 20 * METRICS_WEBSITES_TOP)`` websites the half
with the fewest bytes is forgotten (listed websites never are), and such a
website counts again from zero if it comes back.

Settings (docs/metrics.md): ``METRICS_WEBSITES`` (list of website keys,
default ``[]``), ``METRICS_WEBSITES_TOP`` (int >= 0, default ``10``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from crawler.setting_values import int_setting

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Self

    from prometheus_client.metrics_core import Metric
    from redis.asyncio import Redis
    from scrapy.settings import BaseSettings

    from middlewares.byte_budget.config import ByteBudgetConfig

FAMILIES = {
    "crawler_website_pages_downloaded": "Responses received from the website by this worker",
    "crawler_website_response_bytes": "Response bytes received from the website by this worker (before decompression)",
    "crawler_website_budget_bytes": "The website's byte budget b per window",
    "crawler_website_window_bytes": "Bytes the byte budget counts in the current window, cluster-wide",
}
COUNTERS = ("crawler_website_pages_downloaded", "crawler_website_response_bytes")


@dataclass(frozen=True, slots=True)
class WebsiteMetricsConfig:
    """Parsed ``METRICS_WEBSITES`` and ``METRICS_WEBSITES_TOP``."""

    listed: frozenset[str]
    top: int

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        raw = settings.get("METRICS_WEBSITES") or []
        if isinstance(raw, str):
            try:
                raw = json.loads(raw) if raw.strip().startswith("[") else raw.split(",")
            except ValueError:
                raise ValueError(f"METRICS_WEBSITES must be a list of website keys, got {raw!r}") from None
        if not isinstance(raw, (list, tuple, set, frozenset)) or not all(isinstance(w, str) for w in raw):
            raise ValueError(f"METRICS_WEBSITES must be a list of website keys, got {raw!r}")
        listed = frozenset(w.strip().lower().rstrip(".") for w in raw if w.strip())
        return cls(listed=listed, top=int_setting(settings, "METRICS_WEBSITES_TOP", 10, minimum=0))


class WebsiteCounts:
    """Pages and bytes per website seen by this worker (bounded memory, see module docstring)."""

    def __init__(self, config: WebsiteMetricsConfig) -> None:
        self.config = config
        self.capacity = max(10_000, 20 * config.top)
        self.counts: dict[str, list[int]] = {w: [0, 0] for w in config.listed}  # website -> [pages, bytes]

    def add(self, website: str, nbytes: int) -> None:
        row = self.counts.get(website)
        if row is None:
            if len(self.counts) >= self.capacity:
                self._forget_half()
            row = self.counts[website] = [0, 0]
        row[0] += 1
        row[1] += nbytes

    def _forget_half(self) -> None:
        others = sorted((w for w in self.counts if w not in self.config.listed), key=lambda w: self.counts[w][1])
        for website in others[:len(others) // 2]:
            del self.counts[website]

    def shown(self) -> list[str]:
        """The listed websites and the top N by bytes (ties: by name), sorted."""
        ranked = sorted((w for w in self.counts if w not in self.config.listed),
                        key=lambda w: (-self.counts[w][1], w))
        return sorted(self.config.listed | set(ranked[:self.config.top]))


@dataclass(frozen=True, slots=True)
class Budgets:
    """Budget and bytes in the current window of the websites shown (None: unlimited or unknown)."""

    budget: Mapping[str, int | None]
    window: Mapping[str, int]


async def read_budgets(redis: Redis, config: ByteBudgetConfig, websites: list[str]) -> Budgets:
    """One pipelined round trip: the run-time overrides and each website's bytes in the window."""
    from middlewares.byte_budget.config import parse_budget
    from middlewares.byte_budget.store import overrides_key, website_keys

    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(overrides_key(config.prefix))
        for website in websites:
            pipe.hget(website_keys(config.prefix, website)[2], "used")
        overrides, *used = await pipe.execute()
    runtime: dict[str, int | None] = {}
    for site, value in overrides.items():
        try:
            runtime[site.decode()] = parse_budget("override", value.decode())
        except ValueError:
            continue  # the byte budget logs it
    budget: dict[str, int | None] = {}
    for website in websites:
        if website in runtime:
            budget[website] = runtime[website]
        else:
            budget[website] = config.per_website.get(website, config.default)
    return Budgets(budget, {w: int(float(u)) for w, u in zip(websites, used, strict=True) if u is not None})


def website_families(counts: WebsiteCounts, spider: str, budgets: Budgets | None) -> Iterator[Metric]:
    """The four per-website families for :meth:`WebsiteCounts.shown` (budget gauges only with ``budgets``)."""
    shown = counts.shown()
    for name in COUNTERS:
        metric = CounterMetricFamily(name, FAMILIES[name], labels=["spider", "website"])
        for website in shown:
            pages, nbytes = counts.counts.get(website, (0, 0))
            metric.add_metric([spider, website], pages if name == "crawler_website_pages_downloaded" else nbytes)
        yield metric
    budget = GaugeMetricFamily("crawler_website_budget_bytes", FAMILIES["crawler_website_budget_bytes"],
                               labels=["spider", "website"])
    window = GaugeMetricFamily("crawler_website_window_bytes", FAMILIES["crawler_website_window_bytes"],
                               labels=["spider", "website"])
    for website in shown if budgets is not None else ():
        assert budgets is not None
        b = budgets.budget.get(website)
        if b is not None:
            budget.add_metric([spider, website], b)
        window.add_metric([spider, website], budgets.window.get(website, 0))
    yield budget
    yield window


def exported_website_names() -> set[str]:
    return {f"{name}_total" if name in COUNTERS else name for name in FAMILIES}


def response_size(response: Any) -> int:
    """``downloader/response_bytes``' measure of one response: status line, headers and body as received."""
    from scrapy.downloadermiddlewares.stats import get_header_size, get_status_size

    return len(response.body) + get_header_size(response.headers) + get_status_size(response.status)
