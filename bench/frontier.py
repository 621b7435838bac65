"""``python -m bench frontier``: vanilla Scrapy vs scrapy-redis 0.9.1 vs our frontier, on the demo shop.

Two one-worker crawls run side by side (at the same time) per pair, each
with its own Redis and demo server; the servers swap arms every pair, and
the pairs run ``--repeats`` times in rotating order. Each arm's speed is the
pages its server logged while both arms were crawling, over that time
(:func:`bench.harness.side_by_side` with ``overlap``): both arms meet the
same machine load, which run one after the other they do not (single
sequential pairs here ranged 0.84-1.23, and one worker alone read 201-312
pages/s in four identical runs). Each arm (worker, Redis, demo server) runs
on a CPU core of its own, and the arms trade cores every 0.5 s
(``one_core_each``): sharing both cores, an arm that waits on Redis lent its
CPU to the other (ours through the 2 ms proxy read 0.76 of ours direct
beside it), and the two virtual CPUs' speeds differ from moment to moment
(ours beside ours, sharing both cores, read 0.68-1.25 per pair; trading
cores, 0.98-1.05). ``--aa`` adds that control pair (``aa_ours_vs_ours``). Same spider logic for every
contender (``parse`` and ``parse_product`` of ``crawler.spiders.shop_a``);
what every contender shares: ``CONCURRENT_REQUESTS=32``,
``CONCURRENT_REQUESTS_PER_DOMAIN=16``, ``CONCURRENT_ITEMS=8``, ``LOG_LEVEL``
INFO (``settings.env``), robots.txt obeyed, telnet console and remote
control off, Scrapy's stats collector, Scrapy's default request
fingerprinter, Scrapy's default spider and downloader middlewares, no item
pipeline:

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

The pairs: ``ours_vs_vanilla``, ``ours_vs_scrapy_redis``,
``leases_vs_no_leases`` (ours / ours_no_leases), ``ours_gc_off_vs_vanilla``;
and, ``--latency-repeats`` times, ``ours_kept_at_2ms`` and
``scrapy_redis_kept_at_2ms``: the contender through a TCP proxy adding
``--latency-ms`` in each direction (like ``netem delay`` on loopback;
``bench/redis_proxy.py``) beside the same contender direct. scrapy-redis
through the proxy is several times slower, so a latency pair ends when its
first arm ends (the other gets SIGTERM).

Redis figures per crawled page: commands from ``INFO commandstats`` (this
includes the commands our Lua scripts run inside Redis), and round trips
counted by the proxy with no added delay, each Redis contender alone, also
``ours`` with ``FRONTIER_PARTITIONS=3`` (``round_trips_per_request_partitions3``:
the demo shop is one website, so one partition holds its queue; the others
cost the heartbeat's status calls).

Also the CPU time of each worker process per page (start-up included), less
sensitive than pages/s to other load.

Last line: ``{"ours_vs_vanilla", "ours_vs_scrapy_redis", "round_trips_per_request",
"ours_kept_at_2ms", "scrapy_redis_kept_at_2ms", "leases_vs_no_leases", ...}``.
Every ratio is the median over the pair's runs of with / without
(:class:`bench.harness.Paired`), with the ratio of the medians next to it
(``..._of_medians``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import (
    SCRAPY,
    Arm,
    BenchServers,
    Paired,
    RunResult,
    bench_site,
    emit,
    median,
    side_by_side,
    stack_cmd,
    table,
    vanilla_cmd,
    vanilla_env,
)
from bench.redis_proxy import RedisProxy
from bench.scrapy_redis_spider import SCRAPY_REDIS_SETTINGS, ScrapyRedisShopSpider

if TYPE_CHECKING:
    from demosite.sites import SiteConfig

_OWN_COMMANDS = {"flushall", "config|resetstat", "config", "info", "ping", "client|setinfo", "hello"}


def _port(servers: BenchServers) -> int:
    assert servers.redis is not None
    return servers.redis.port


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def _commands(url: str) -> tuple[int, int]:
    """(all commands, EVAL/EVALSHA calls) since the last reset, without the benchmark's own."""
    with _redis(url) as r:
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


def _arm(servers: BenchServers, kind: str, label: str, redis_url: str) -> Arm:
    """One contender's crawl against ``servers``; the Redis ones talk to ``redis_url`` (direct or a proxy)."""
    if kind == "vanilla":
        return Arm(label, servers, vanilla_cmd(servers.start_url, {"CONCURRENT_ITEMS": 8}), vanilla_env(servers),
                   seed_key=None)
    if kind == "scrapy_redis":
        cmd = [SCRAPY, "runspider", str(Path(__file__).with_name("scrapy_redis_spider.py")),
               "-s", "CONCURRENT_ITEMS=8", "-s", f"REDIS_URL={redis_url}"]
        for key, value in SCRAPY_REDIS_SETTINGS.items():
            cmd += ["-s", f"{key}={value}"]
        return Arm(label, servers, cmd, {**vanilla_env(servers), "REDIS_URL": redis_url},
                   seed_key="scrapy_redis_shop:start_urls")
    # No pipeline, so nothing reads the item context (pipelines/item_context.py): the same
    # spider middlewares as the other contenders.
    settings = {"ITEM_PIPELINES": "{}", "ITEM_CONTEXT_ENABLED": "False"}
    if kind == "ours_gc_off":
        settings["GC_TUNING_ENABLED"] = "False"
    elif kind == "ours_no_leases":
        settings["FRONTIER_LEASE_SECONDS"] = "0"
    elif kind == "ours_partitions3":
        settings["FRONTIER_PARTITIONS"] = "3"
    return Arm(label, servers, stack_cmd("shop_a", settings), servers.env(REDIS_URL=redis_url))


# (key, with, without): each pair crawls side by side; "_latency" goes through a proxy adding delay.
_PAIRS = [
    ("ours_vs_vanilla", "ours", "vanilla"),
    ("ours_vs_scrapy_redis", "ours", "scrapy_redis"),
    ("leases_vs_no_leases", "ours", "ours_no_leases"),
    ("ours_gc_off_vs_vanilla", "ours_gc_off", "vanilla"),
]
_AA_PAIR = ("aa_ours_vs_ours", "ours", "ours_again")  # --aa: the same contender in both arms
_LATENCY_PAIRS = [
    ("ours_kept_at_2ms", "ours_latency", "ours"),
    ("scrapy_redis_kept_at_2ms", "scrapy_redis_latency", "scrapy_redis"),
]


def _round_trips(site: SiteConfig) -> dict[str, float]:
    """Redis round trips per crawled page, each contender alone through a counting proxy with no delay."""
    trips = {}
    with BenchServers(site) as servers:
        assert servers.redis is not None
        with RedisProxy(servers.redis.port) as proxy:
            for kind in ("scrapy_redis", "ours", "ours_partitions3"):
                arm = _arm(servers, kind, f"{kind}_proxy", proxy.url)
                servers.flush_redis()
                proxy.reset()
                (result,) = side_by_side([arm])
                trips[kind] = proxy.round_trips / result.pages
                print(f"  {kind:18s} {result.pages} pages, {trips[kind]:.3f} round trips per page", flush=True)
    return trips


def _url(servers: BenchServers) -> str:
    assert servers.redis is not None
    return servers.redis.url


def _pair(key: str, names: tuple[str, str], servers: tuple[BenchServers, BenchServers],
          slow: dict[int, RedisProxy]) -> list[RunResult]:
    """One side-by-side run of a pair: the "with" arm on ``servers[0]``, the "without" arm on ``servers[1]``."""
    arms = []
    for name, s in zip(names, servers, strict=True):
        slow[id(s)].reset()
        arms.append(_arm(s, name.removesuffix("_latency").removesuffix("_again"), name,
                         slow[id(s)].url if name.endswith("_latency") else _url(s)))
        with _redis(_url(s)) as r:
            r.config_resetstat()
    # scrapy-redis with latency is ~5x slower than without: that pair ends when its first arm ends.
    results = side_by_side(arms, overlap=True, stop_at_first=key.endswith("_kept_at_2ms"), one_core_each=True)
    for arm, result in zip(arms, results, strict=True):
        if arm.seed_key is not None:
            result.stats["_commands"], result.stats["_evals"] = _commands(_url(arm.servers))
        if result.label.endswith("_latency"):
            result.stats["_trips"] = slow[id(arm.servers)].round_trips
    return results


def _side_by_side_pairs(site: SiteConfig, args: argparse.Namespace) -> dict[str, dict[str, list[RunResult]]]:
    """Every pair's runs, side by side: {key: {"with": [...], "without": [...]}}."""
    pairs = [*_PAIRS, _AA_PAIR] if args.aa else _PAIRS
    runs: dict[str, dict[str, list[RunResult]]] = {key: {"with": [], "without": []}
                                                   for key, _, _ in pairs + _LATENCY_PAIRS}
    delay = args.latency_ms / 1000
    with BenchServers(site) as one, BenchServers(site) as two, \
            RedisProxy(_port(one), delay) as slow_one, RedisProxy(_port(two), delay) as slow_two:
        slow = {id(one): slow_one, id(two): slow_two}
        turn = 0
        for i in range(max(args.repeats, args.latency_repeats)):
            todo = ([p for p in pairs if i < args.repeats]
                    + [p for p in _LATENCY_PAIRS if i < args.latency_repeats])
            print(f"repeat {i + 1}: pairs side by side; _latency adds {args.latency_ms:g} ms each way", flush=True)
            k = i % len(todo)
            for key, with_, without in todo[k:] + todo[:k]:  # rotate the order
                servers = (one, two) if turn % 2 == 0 else (two, one)  # each arm meets both servers
                turn += 1
                a, b = _pair(key, (with_, without), servers, slow)
                runs[key]["with"].append(a)
                runs[key]["without"].append(b)
                print(f"  {key:26s} {a.label} {a.pages_per_s:.0f} / {b.label} {b.pages_per_s:.0f} pages/s "
                      f"= {a.pages_per_s / b.pages_per_s:.3f}", flush=True)
    return runs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench frontier", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000, help="item pages on the demo shop (default 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="side-by-side runs of each pair (default 5)")
    parser.add_argument("--latency-repeats", type=int, default=3, help="runs of each pair with added latency")
    parser.add_argument("--latency-ms", type=float, default=2.0, help="added each way in the latency runs")
    parser.add_argument("--aa", action="store_true",
                        help="also an A/A control pair, ours beside ours (key aa_ours_vs_ours): the method's noise")
    args = parser.parse_args(argv)
    assert ScrapyRedisShopSpider.name  # the module is importable before we spend minutes

    site = bench_site(args.items)
    runs = _side_by_side_pairs(site, args)
    print("round trips: each Redis contender alone through the proxy, no added delay", flush=True)
    trips = _round_trips(site)

    paired = {key: Paired.of(rs) for key, rs in runs.items()}
    by_name: dict[str, list[RunResult]] = {}
    for rs in runs.values():
        for r in rs["with"] + rs["without"]:
            by_name.setdefault(r.label, []).append(r)

    def per_page(name: str, key: str) -> float:
        return median([r.stats.get(key, 0) / r.pages for r in by_name.get(name, [])])

    rows = []
    for key, with_, without in [*_PAIRS, _AA_PAIR, *_LATENCY_PAIRS]:
        if key not in paired:
            continue
        p = paired[key]
        rows.append([key, f"{with_} / {without}", " ".join(f"{r:.3f}" for r in p.pairs), f"{p.ratio:.3f}",
                     f"{p.of_medians:.3f}", f"{1000 * p.cpu['with']:.2f} / {1000 * p.cpu['without']:.2f}"])
    print(f"\nFrontier on the demo shop ({site.items} items, ~{site.page_bytes} B pages), two one-worker crawls side "
          f"by side per pair (each with its own Redis and demo server, swapped every pair), CONCURRENT_ITEMS=8; "
          f"pages/s while both crawled")
    print(table(rows, ["key", "with / without", "per pair", "median", "of medians", "cpu ms/page"]))
    print(f"  redis cmds/page (INFO commandstats, including commands run inside our Lua scripts): ours "
          f"{per_page('ours', '_commands'):.2f} ({per_page('ours', '_evals'):.2f} EVALSHA), scrapy-redis "
          f"{per_page('scrapy_redis', '_commands'):.2f}")
    print(f"  round trips/page (alone through the proxy): ours {trips['ours']:.3f}, 3 partitions "
          f"{trips['ours_partitions3']:.3f}, scrapy-redis {trips['scrapy_redis']:.3f}")
    print("  cpu ms/page: user+system CPU of the worker process (start-up included), median")
    emit({
        **{key: round(p.ratio, 3) for key, p in paired.items()},
        **{f"{key}_of_medians": round(p.of_medians, 3) for key, p in paired.items()},
        "round_trips_per_request": round(trips["ours"], 3),
        "round_trips_per_request_partitions3": round(trips["ours_partitions3"], 3),
        "scrapy_redis_round_trips_per_request": round(trips["scrapy_redis"], 3),
        "ours_commands_per_request": round(per_page("ours", "_commands"), 3),
        "scrapy_redis_commands_per_request": round(per_page("scrapy_redis", "_commands"), 3),
        "vanilla_cpu_ms_per_page": round(1000 * per_page("vanilla", "_cpu"), 3),
        "scrapy_redis_cpu_ms_per_page": round(1000 * per_page("scrapy_redis", "_cpu"), 3),
        "ours_cpu_ms_per_page": round(1000 * per_page("ours", "_cpu"), 3),
        "ours_no_leases_cpu_ms_per_page": round(1000 * per_page("ours_no_leases", "_cpu"), 3),
        "ours_gc_off_cpu_ms_per_page": round(1000 * per_page("ours_gc_off", "_cpu"), 3),
        "latency_ms_each_way": args.latency_ms,
        "repeats": args.repeats,
        "latency_repeats": args.latency_repeats,
        "side_by_side": True,
        "pages": by_name["ours"][0].pages,
    })
    return 0
