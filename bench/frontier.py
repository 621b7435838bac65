"""``python -m bench frontier``: vanilla Scrapy vs scrapy-redis 0.9.1 vs our frontier, on the demo shop.

One worker per contender, same spider logic (``parse`` and
``parse_product`` of ``crawler.spiders.shop_a``), run interleaved
``--repeats`` times in rotating order. What every contender shares:
``CONCURRENT_REQUESTS=32``, ``CONCURRENT_REQUESTS_PER_DOMAIN=16``,
``CONCURRENT_ITEMS=8``, ``LOG_LEVEL`` INFO (``settings.env``), robots.txt
obeyed, telnet console and remote control off, Scrapy's stats collector,
Scrapy's default request fingerprinter, Scrapy's default spider and
downloader middlewares, no item pipeline:

* ``vanilla``: plain Scrapy, in-memory scheduler (no Redis),
  ``bench.vanilla_settings``;
* ``scrapy_redis``: scrapy-redis 0.9.1 as shipped (``RedisSpider``, its
  ``Scheduler``, ``RFPDupeFilter``, ``PriorityQueue``, pickle) on
  ``bench.vanilla_settings``;
* ``ours``: ``scrapy crawl shop_a`` with the project's settings
  (``crawler.frontier.scheduler.FrontierScheduler``), items not stored
  (``ITEM_PIPELINES={}``, so also ``ITEM_CONTEXT_ENABLED=False``: that spider
  middleware only carries responses to the pipelines). The stack's own
  downloader middlewares stay on (politeness, byte budget with no budget set,
  robots.txt for offsite hosts, the failed list), as do its downloader
  (``crawler.scrapy_internals.Downloader``) and its GC tuning;
* ``ours_gc_off``: the same with ``GC_TUNING_ENABLED=False``, to show what the
  stack's GC tuning (``crawler/extensions/gc_tuning.py``) contributes: neither vanilla
  Scrapy nor scrapy-redis tunes the collector;
* ``ours_no_leases``: ``ours`` with ``FRONTIER_LEASE_SECONDS=0`` (a pop is
  acknowledged on receipt): what leased delivery costs (``leases_vs_no_leases``).

Redis figures per crawled page: commands from ``INFO commandstats`` (this
includes the commands our Lua scripts run inside Redis), and round trips
counted by a TCP proxy (``bench/redis_proxy.py``) in a separate pass with no
added delay, also for ``ours`` with ``FRONTIER_PARTITIONS=3``
(``round_trips_per_request_partitions3``: the demo shop is one website, so one
partition holds its queue; the others cost the heartbeat's status calls).
Both Redis contenders also run through the proxy with
``--latency-ms`` added in each direction (like ``netem delay`` on loopback),
as two more contenders of the same repeats (``--latency-repeats`` of them);
"kept" is their throughput over the direct run of the same repeat.

Also the CPU time of each worker process per page, less sensitive to other
load on a shared machine than pages/s.

Last line: ``{"ours_vs_vanilla", "ours_vs_scrapy_redis", "round_trips_per_request",
"ours_kept_at_2ms", "scrapy_redis_kept_at_2ms", "leases_vs_no_leases", ...}``.
Every ratio (``ours_vs_*``, ``leases_vs_no_leases``, ``ours_gc_off_vs_*``,
``*_kept_at_2ms``) is the median over repeats of the ratio within each repeat
(contenders interleaved, :class:`bench.harness.Paired`), with the ratio of
the medians next to it (``..._of_medians``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.harness import (
    SCRAPY,
    BenchServers,
    Paired,
    RunResult,
    bench_site,
    emit,
    median,
    stack_cmd,
    table,
    vanilla_cmd,
    vanilla_env,
)
from bench.redis_proxy import RedisProxy
from bench.scrapy_redis_spider import SCRAPY_REDIS_SETTINGS, ScrapyRedisShopSpider

_OWN_COMMANDS = {"flushall", "config|resetstat", "config", "info", "ping", "client|setinfo", "hello"}


def _redis(servers: BenchServers) -> Any:
    import redis

    assert servers.redis is not None
    return redis.Redis.from_url(servers.redis.url)


def _prepare(servers: BenchServers, seed_key: str) -> None:
    with _redis(servers) as r:
        r.flushall()
        r.lpush(seed_key, json.dumps({"url": servers.start_url}))
        r.config_resetstat()


def _commands(servers: BenchServers) -> tuple[int, int]:
    """(all commands, EVAL/EVALSHA calls) since the last reset, without the benchmark's own."""
    with _redis(servers) as r:
        stats = r.info("commandstats")
    total = evals = 0
    for name, s in stats.items():
        cmd = name.removeprefix("cmdstat_")
        if cmd in _OWN_COMMANDS:
            continue
        total += int(s["calls"])
        if cmd in ("evalsha", "eval"):
            evals += int(s["calls"])
    return total, evals


def _run(servers: BenchServers, kind: str, label: str, redis_url: str | None) -> RunResult:
    if kind == "vanilla":
        return servers.crawl(label, vanilla_cmd(servers.start_url, {"CONCURRENT_ITEMS": 8}), vanilla_env(servers))
    assert redis_url is not None
    if kind == "scrapy_redis":
        _prepare(servers, "scrapy_redis_shop:start_urls")
        cmd = [SCRAPY, "runspider", str(Path(__file__).with_name("scrapy_redis_spider.py")),
               "-s", "CONCURRENT_ITEMS=8", "-s", f"REDIS_URL={redis_url}"]
        for key, value in SCRAPY_REDIS_SETTINGS.items():
            cmd += ["-s", f"{key}={value}"]
        result = servers.crawl(label, cmd, {**vanilla_env(servers), "REDIS_URL": redis_url})
    else:
        _prepare(servers, "shop_a:start_urls")
        # No pipeline, so nothing reads the item context (pipelines/item_context.py): the same
        # spider middlewares as the other contenders.
        settings = {"ITEM_PIPELINES": "{}", "ITEM_CONTEXT_ENABLED": "False"}
        if kind == "ours_gc_off":
            settings["GC_TUNING_ENABLED"] = "False"
        elif kind == "ours_no_leases":
            settings["FRONTIER_LEASE_SECONDS"] = "0"
        elif kind == "ours_partitions3":
            settings["FRONTIER_PARTITIONS"] = "3"
        result = servers.crawl(label, stack_cmd("shop_a", settings), servers.env(REDIS_URL=redis_url))
    result.stats["_commands"], result.stats["_evals"] = _commands(servers)
    return result


def _ratios(res: dict[str, list[RunResult]]) -> dict[str, Paired]:
    """The paired ratios of the last line, each printed with its per-repeat values."""

    def paired(with_: str, without: str) -> Paired:
        n = min(len(res[with_]), len(res[without]))  # repeats where both ran
        return Paired.of({"with": res[with_][:n], "without": res[without][:n]})

    ratios = {
        "ours_vs_vanilla": paired("ours", "vanilla"),
        "ours_vs_scrapy_redis": paired("ours", "scrapy_redis"),
        "leases_vs_no_leases": paired("ours", "ours_no_leases"),
        "ours_gc_off_vs_vanilla": paired("ours_gc_off", "vanilla"),
        "ours_gc_off_vs_scrapy_redis": paired("ours_gc_off", "scrapy_redis"),
        "ours_kept_at_2ms": paired("ours_latency", "ours"),
        "scrapy_redis_kept_at_2ms": paired("scrapy_redis_latency", "scrapy_redis"),
    }
    for key, p in ratios.items():
        print(f"  {key}: per repeat {' '.join(f'{r:.3f}' for r in p.pairs)}, median {p.ratio:.3f} "
              f"(ratio of medians {p.of_medians:.3f})")
    return ratios


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench frontier", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000, help="item pages on the demo shop (default 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="zero-latency runs per contender (default 5)")
    parser.add_argument("--latency-repeats", type=int, default=3, help="runs per contender with added latency")
    parser.add_argument("--latency-ms", type=float, default=2.0, help="added each way in the latency runs")
    args = parser.parse_args(argv)
    assert ScrapyRedisShopSpider.name  # the module is importable before we spend minutes

    site = bench_site(args.items)
    res: dict[str, list[RunResult]] = {}
    trips: dict[str, float] = {}

    def record(name: str, result: RunResult) -> None:
        res.setdefault(name, []).append(result)
        print(f"  {name:18s} {result.pages} pages in {result.seconds:.2f}s = {result.pages_per_s:.0f} pages/s",
              flush=True)

    with BenchServers(site) as servers:
        assert servers.redis is not None
        direct = servers.redis.url
        # The latency runs go through a proxy adding --latency-ms each way; they are interleaved with
        # the direct runs in the same repeats, so "kept" compares runs made under the same machine load.
        kinds = ["vanilla", "scrapy_redis", "ours", "ours_gc_off", "ours_no_leases", "scrapy_redis_latency",
                 "ours_latency"]
        with RedisProxy(servers.redis.port, args.latency_ms / 1000) as slow:
            for i in range(max(args.repeats, args.latency_repeats)):
                todo = [name for name in kinds
                        if i < (args.latency_repeats if name.endswith("_latency") else args.repeats)]
                print(f"repeat {i + 1}: direct, and +{args.latency_ms:g} ms each way (_latency)", flush=True)
                k = i % len(todo)
                for name in todo[k:] + todo[:k]:  # rotate the order: no contender always goes first
                    if name.endswith("_latency"):
                        slow.reset()
                        result = _run(servers, name.removesuffix("_latency"), name, slow.url)
                        result.stats["_trips"] = slow.round_trips
                    else:
                        result = _run(servers, name, name, direct)
                    record(name, result)
        print("round trips: through the proxy, no added delay", flush=True)
        with RedisProxy(servers.redis.port) as proxy:
            for kind in ("scrapy_redis", "ours", "ours_partitions3"):
                proxy.reset()
                result = _run(servers, kind, f"{kind}_proxy", proxy.url)
                record(f"{kind}_proxy", result)
                trips[kind] = proxy.round_trips / result.pages

    med = {name: median([r.pages_per_s for r in rs]) for name, rs in res.items()}

    def per_page(name: str, key: str) -> float:
        return median([r.stats.get(key, 0) / r.pages for r in res.get(name, [])])

    rows = []
    for name in ("vanilla", "scrapy_redis", "ours", "ours_gc_off", "ours_no_leases", "scrapy_redis_latency",
                 "ours_latency"):
        rs = res[name]
        kind = name.removesuffix("_latency")
        base = med.get(kind, 0.0)
        rows.append([name, rs[0].pages, " ".join(str(round(r.pages_per_s)) for r in rs), round(med[name]),
                     f"{med[name] / med['vanilla']:.2f}",
                     f"{med[name] / base:.2f}" if name.endswith("_latency") else "",
                     f"{per_page(name, '_commands'):.2f}" if kind != "vanilla" else "",
                     f"{trips[kind]:.3f}" if kind in trips and not name.endswith("_latency") else
                     (f"{per_page(name, '_trips'):.3f}" if name.endswith("_latency") else ""),
                     f"{1000 * per_page(name, '_cpu'):.2f}"])
    print(f"\nFrontier on the demo shop ({site.items} items, ~{site.page_bytes} B pages), one worker, "
          f"CONCURRENT_ITEMS=8; latency runs add {args.latency_ms:g} ms each way through a proxy")
    print(table(rows, ["contender", "pages", "pages/s per run", "median pages/s", "vs vanilla", "kept",
                       "redis cmds/page", "round trips/page", "cpu ms/page"]))
    print("  redis cmds/page: INFO commandstats, including commands run inside our Lua scripts; "
          f"ours: {per_page('ours', '_evals'):.2f} EVALSHA/page")
    print("  round trips/page: counted by the proxy (direct rows: a separate pass with no added delay)")
    print("  cpu ms/page: user+system CPU of the worker process (start-up included), median; less sensitive "
          "than pages/s to other load on a shared machine")
    ratios = _ratios(res)
    emit({
        **{key: round(p.ratio, 3) for key, p in ratios.items()},
        **{f"{key}_of_medians": round(p.of_medians, 3) for key, p in ratios.items()},
        "round_trips_per_request": round(trips["ours"], 3),
        "round_trips_per_request_partitions3": round(trips["ours_partitions3"], 3),
        "scrapy_redis_round_trips_per_request": round(trips["scrapy_redis"], 3),
        "ours_commands_per_request": round(per_page("ours", "_commands"), 3),
        "scrapy_redis_commands_per_request": round(per_page("scrapy_redis", "_commands"), 3),
        "vanilla_pages_per_s": round(med["vanilla"], 1),
        "scrapy_redis_pages_per_s": round(med["scrapy_redis"], 1),
        "ours_pages_per_s": round(med["ours"], 1),
        "vanilla_cpu_ms_per_page": round(1000 * per_page("vanilla", "_cpu"), 3),
        "scrapy_redis_cpu_ms_per_page": round(1000 * per_page("scrapy_redis", "_cpu"), 3),
        "ours_cpu_ms_per_page": round(1000 * per_page("ours", "_cpu"), 3),
        "ours_no_leases_cpu_ms_per_page": round(1000 * per_page("ours_no_leases", "_cpu"), 3),
        "ours_gc_off_cpu_ms_per_page": round(1000 * per_page("ours_gc_off", "_cpu"), 3),
        "latency_ms_each_way": args.latency_ms,
        "repeats": args.repeats,
        "latency_repeats": args.latency_repeats,
        "pages": res["ours"][0].pages,
    })
    return 0
