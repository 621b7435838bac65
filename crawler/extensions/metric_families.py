"""Prometheus metric families from a worker's Scrapy stats and its components' public state.

Pure: :func:`families` turns a stats snapshot (and a few gauges read from live
objects by :mod:`crawler.extensions.metrics`) into metric families. Every
family in :data:`METRICS` is always exported (0 until its stat appears), so a
dashboard's series exist from the first scrape. Label values come from small
closed sets (status class, log level, politeness reasons) or from exception
class names; never from URLs. Per-website families, for a bounded set of
websites, are in :mod:`crawler.extensions.website_metrics`. The reference is docs/metrics.md
(``tests/test_extension_metrics.py`` checks that it lists every name here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from crawler.extensions.website_metrics import exported_website_names

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from prometheus_client.metrics_core import Metric

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True, slots=True)
class Family:
    """One exported family: ``name`` (counters without ``_total``), its stat keys and labels."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    stats: tuple[str, ...] = ()  # summed; a key ending in "/" is a prefix, its suffix the label value
    label: str | None = None


METRICS: tuple[Family, ...] = (
    # Downloads
    Family("crawler_requests", "counter", "Requests sent by the downloader", ("downloader/request_count",)),
    Family("crawler_pages_downloaded", "counter", "Responses received by the downloader",
           ("downloader/response_count",)),
    Family("crawler_response_bytes", "counter", "Response bytes received (headers and body, before decompression)",
           ("downloader/response_bytes",)),
    Family("crawler_responses", "counter", "Responses by HTTP status class",
           ("downloader/response_status_count/",), "status_class"),
    Family("crawler_download_errors", "counter", "Downloads that failed, by exception class",
           ("downloader/exception_type_count/",), "error"),
    Family("crawler_spider_errors", "counter", "Exceptions raised by spider callbacks, by class",
           ("spider_exceptions/",), "error"),
    Family("crawler_log_messages", "counter", "Log records by level", ("log_count/",), "level"),
    # Items
    Family("crawler_items_scraped", "counter", "Items that left the item pipelines", ("item_scraped_count",)),
    Family("crawler_items_valid", "counter", "Items that passed their schema", ("validate/valid",)),
    Family("crawler_items_dead_lettered", "counter", "Items stored as dead letters, by reason",
           ("validate/invalid", "mongo_writer/missing_key", "mongo_writer/unencodable", "mongo_writer/write_error/"),
           "reason"),
    Family("crawler_items_written", "counter", "Upserts MongoDB acknowledged", ("mongo_writer/written",)),
    Family("crawler_mongo_journaled", "counter", "Upserts fsync'd to the local journal", ("mongo_writer/journaled",)),
    Family("crawler_mongo_batches", "counter", "Bulk writes MongoDB acknowledged", ("mongo_writer/batches",)),
    Family("crawler_mongo_retries", "counter", "Failed MongoDB write attempts (retried)", ("mongo_writer/retries",)),
    # Frontier
    Family("crawler_frontier_pushed", "counter", "Requests stored in the shared frontier",
           ("scheduler/enqueued/redis",)),
    Family("crawler_frontier_popped", "counter", "Requests handed out from the shared frontier",
           ("scheduler/dequeued/redis",)),
    Family("crawler_frontier_duplicates", "counter", "Requests dropped as already seen", ("dupefilter/filtered",)),
    Family("crawler_frontier_seeds_read", "counter", "Seeds turned into requests", ("frontier/seeds/read",)),
    Family("crawler_frontier_seeds_rejected", "counter", "Seeds moved to the dead-letter list",
           ("frontier/seeds/rejected",)),
    Family("crawler_frontier_leases_acknowledged", "counter", "Leased requests acknowledged (outcome processed)",
           ("frontier/leases_acknowledged",)),
    Family("crawler_frontier_leases_reclaimed", "counter",
           "Requests of dead workers' expired leases put back by this worker", ("frontier/leases_reclaimed",)),
    Family("crawler_frontier_failed", "counter", "Requests that finally failed, recorded in the failed list",
           ("frontier/failed",)),
    Family("crawler_frontier_redis_calls", "counter", "Redis round trips made by the frontier"),
    Family("crawler_frontier_redis_errors", "counter", "Failed frontier Redis calls, by exception class",
           ("frontier/redis_error/",), "error"),
    Family("crawler_frontier_prefetched", "gauge", "Requests prefetched from Redis, waiting in this worker"),
    # Byte budget
    Family("crawler_byte_budget_granted", "counter", "Downloads the byte budget allowed", ("byte_budget/granted",)),
    Family("crawler_byte_budget_denied", "counter", "Requests sent back to wait for budget",
           ("byte_budget/denied",)),
    Family("crawler_byte_budget_bytes_reserved", "counter", "Bytes reserved before downloads",
           ("byte_budget/bytes_reserved",)),
    Family("crawler_byte_budget_bytes_settled", "counter", "Bytes counted after downloads",
           ("byte_budget/bytes_settled",)),
    Family("crawler_byte_budget_redis_errors", "counter", "Failed byte-budget Redis calls, by exception class",
           ("byte_budget/redis_error/",), "error"),
    # Politeness
    Family("crawler_politeness_denied", "counter", "Requests sent back to the frontier before download, by reason",
           ("politeness/denied/",), "reason"),
    Family("crawler_politeness_park_signals", "counter",
           "Signals that park a website: 429/503 with Retry-After, without (backoff), breaker opened or reopened",
           ("politeness/retry_after", "politeness/backoff", "politeness/transition/opened",
            "politeness/transition/reopened"), "reason"),
    Family("crawler_politeness_transitions", "counter", "Politeness state changes this worker's reports caused",
           ("politeness/transition/",), "transition"),
    Family("crawler_politeness_probes", "counter", "Half-open probes this worker sent", ("politeness/probes",)),
    Family("crawler_politeness_redis_errors", "counter", "Failed politeness Redis calls, by exception class",
           ("politeness/redis_error/",), "error"),
    # IPv6 bind
    Family("crawler_ipv6_bind_addresses", "counter", "Fresh IPv6 source addresses drawn", ("ipv6_bind/addresses",)),
    Family("crawler_ipv6_bind_bound", "counter", "Requests given an IPv6 source address", ("ipv6_bind/bound",)),
    # The worker
    Family("crawler_worker_info", "gauge", "1 per running worker, with its spider and process id"),
)

# Closed label sets: every value always present, any other stat suffix ignored (bounded labels).
_LABEL_VALUES = {
    "crawler_responses": STATUS_CLASSES,
    "crawler_politeness_denied": ("parked", "probe", "delay", "rate", "held", "redis_unavailable"),
    "crawler_politeness_park_signals": ("retry_after", "backoff", "breaker_open"),
    "crawler_politeness_transitions": ("parked", "failed", "opened", "reopened", "closed", "recovered"),
}
# Families whose label value is named per stat key (a key ending in "/" sums its prefix).
_KEY_LABELS = {
    "crawler_items_dead_lettered": {"validate/invalid": "invalid", "mongo_writer/missing_key": "missing_key",
                                    "mongo_writer/unencodable": "unencodable",
                                    "mongo_writer/write_error/": "write_error"},
    "crawler_politeness_park_signals": {"politeness/retry_after": "retry_after", "politeness/backoff": "backoff",
                                        "politeness/transition/opened": "breaker_open",
                                        "politeness/transition/reopened": "breaker_open"},
}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _labelled(family: Family, stats: Mapping[str, Any]) -> dict[str, float]:
    closed = _LABEL_VALUES.get(family.name)
    values: dict[str, float] = dict.fromkeys(closed or (), 0.0)
    for key in family.stats:
        if family.name in _KEY_LABELS:
            label = _KEY_LABELS[family.name][key]
            total = sum(_number(v) or 0.0 for k, v in stats.items() if k == key or (key.endswith("/")
                                                                                   and k.startswith(key)))
            values[label] = values.get(label, 0.0) + total
            continue
        for k, v in stats.items():
            n = _number(v)
            if n is None or not k.startswith(key):
                continue
            suffix = k[len(key):]
            if family.label == "status_class":
                if not (suffix.isdigit() and len(suffix) == 3 and suffix[0] in "12345"):
                    continue
                suffix = f"{suffix[0]}xx"
            elif family.label == "error":
                suffix = suffix.rsplit(".", 1)[-1]  # "twisted.internet.error.DNSLookupError" -> the class
            elif family.label == "level":
                suffix = suffix.lower()
            if closed is not None and suffix not in closed:
                continue
            values[suffix] = values.get(suffix, 0.0) + n
    return values


def families(stats: Mapping[str, Any], spider: str, live: Mapping[str, float]) -> Iterator[Metric]:
    """Every family of :data:`METRICS` from ``stats``; ``live`` overrides a family's value by name."""
    for family in METRICS:
        cls = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
        metric: CounterMetricFamily | GaugeMetricFamily
        if family.name == "crawler_worker_info":
            info = GaugeMetricFamily(family.name, family.help, labels=["spider", "pid"])
            info.add_metric([spider, str(int(live.get("pid", 0)))], 1.0)
            yield info
            continue
        if family.label is not None:
            metric = cls(family.name, family.help, labels=["spider", family.label])
            for value, n in sorted(_labelled(family, stats).items()):
                metric.add_metric([spider, value], n)
            yield metric
            continue
        metric = cls(family.name, family.help, labels=["spider"])
        if family.name in live:
            total = live[family.name]
        else:
            total = sum(_number(stats.get(key)) or 0.0 for key in family.stats)
        metric.add_metric([spider], total)
        yield metric


def exported_names() -> set[str]:
    """Every sample name the endpoint exports (counters with ``_total``), per-website families included."""
    return {f"{f.name}_total" if f.kind == "counter" else f.name for f in METRICS} | exported_website_names()
