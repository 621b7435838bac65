"""``python -m bench concurrent_items``: vanilla Scrapy's throughput per CONCURRENT_ITEMS.

Scrapy starts a task per item slot for every response; on 2 cores the default
of 100 costs a lot (scrapy/scrapy#5182). This sweep is how the project's
default was picked. Last line: ``{"pages_per_s": {value: median}, "best": value}``.
"""

from __future__ import annotations

import argparse

from bench.harness import BenchServers, bench_site, emit, median, table, vanilla_cmd, vanilla_env


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench concurrent_items", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--values", default="1,4,8,16,32,100")
    args = parser.parse_args(argv)
    values = [int(v) for v in args.values.split(",")]
    runs: dict[int, list[float]] = {v: [] for v in values}
    with BenchServers(bench_site(args.items)) as servers:
        for i in range(args.repeats):
            for v in values:
                r = servers.crawl(f"ci{v}", vanilla_cmd(servers.start_url, {"CONCURRENT_ITEMS": v}),
                                  vanilla_env(servers))
                runs[v].append(r.pages_per_s)
                print(f"  repeat {i + 1}/{args.repeats} CONCURRENT_ITEMS={v:<4d} {r.pages_per_s:.0f} pages/s",
                      flush=True)
    med = {v: median(rs) for v, rs in runs.items()}
    print("\nVanilla Scrapy pages/s by CONCURRENT_ITEMS")
    print(table([[v, *(round(x) for x in runs[v]), round(med[v]), med[v] / med[max(values)]] for v in values],
                ["CONCURRENT_ITEMS", *(f"run {i + 1}" for i in range(args.repeats)), "median",
                 f"vs {max(values)}"]))
    emit({"pages_per_s": {str(v): round(m, 1) for v, m in med.items()}, "best": max(med, key=lambda v: med[v])})
    return 0
