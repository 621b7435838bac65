"""``python -m bench throughput``: our stack vs vanilla Scrapy on the demo site.

Contenders, run interleaved ``--repeats`` times on the same demo site:

* ``vanilla``: plain ``scrapy.Spider`` with Scrapy's defaults (in-memory
  scheduler, ``CONCURRENT_ITEMS=100``), same concurrency and same parsing;
* ``vanilla_ci8``: the same with ``CONCURRENT_ITEMS=8`` (our default);
* ``stack``: ``scrapy crawl shop_a`` with the project's settings (shared Redis
  frontier, resolver, ...), items not stored (``ITEM_PIPELINES={}``);
* ``stack_mongo`` (with ``--mongo``): the stack storing items in the local
  MongoDB stand-in.

Last line: ``{"vanilla_pages_per_s", "stack_pages_per_s", "ratio", ...}`` with
``ratio`` = stack / vanilla (medians).
"""

from __future__ import annotations

import argparse

from bench.harness import (
    BenchServers,
    RunResult,
    bench_site,
    emit,
    median,
    seed,
    stack_cmd,
    table,
    vanilla_cmd,
    vanilla_env,
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000, help="item pages on the demo shop (default 2000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mongo", action="store_true", help="also run the stack storing items in MongoDB")
    args = parser.parse_args(argv)

    site = bench_site(args.items)
    results: dict[str, list[RunResult]] = {}
    with BenchServers(site, need_mongo=args.mongo) as servers:
        contenders = {
            "vanilla": lambda: servers.crawl("vanilla", vanilla_cmd(servers.start_url), vanilla_env(servers)),
            "vanilla_ci8": lambda: servers.crawl(
                "vanilla_ci8", vanilla_cmd(servers.start_url, {"CONCURRENT_ITEMS": 8}), vanilla_env(servers)
            ),
            "stack": lambda: _stack(servers, "stack", {"ITEM_PIPELINES": "{}"}),
        }
        if args.mongo:
            contenders["stack_mongo"] = lambda: _stack(servers, "stack_mongo", {"MONGO_DATABASE": "bench"})
        for i in range(args.repeats):
            for name, run in contenders.items():
                result = run()
                results.setdefault(name, []).append(result)
                print(f"  repeat {i + 1}/{args.repeats} {name:12s} {result.pages} pages in "
                      f"{result.seconds:.2f}s = {result.pages_per_s:.0f} pages/s", flush=True)

    med = {name: median([r.pages_per_s for r in rs]) for name, rs in results.items()}
    rows = [[name, rs[0].pages, *(round(r.pages_per_s) for r in rs), round(med[name]), med[name] / med["vanilla"]]
            for name, rs in results.items()]
    print(f"\nThroughput on the demo shop ({site.items} items, ~{site.page_bytes} B pages), pages/s")
    print(table(rows, ["contender", "pages", *(f"run {i + 1}" for i in range(args.repeats)), "median",
                       "vs vanilla"]))
    out = {
        "vanilla_pages_per_s": round(med["vanilla"], 1),
        "vanilla_ci8_pages_per_s": round(med["vanilla_ci8"], 1),
        "stack_pages_per_s": round(med["stack"], 1),
        "ratio": round(med["stack"] / med["vanilla"], 3),
        "ratio_vs_vanilla_ci8": round(med["stack"] / med["vanilla_ci8"], 3),
        "repeats": args.repeats,
        "pages": results["stack"][0].pages,
    }
    if "stack_mongo" in med:
        out["stack_mongo_pages_per_s"] = round(med["stack_mongo"], 1)
    emit(out)
    return 0


def _stack(servers: BenchServers, label: str, settings: dict[str, str]) -> RunResult:
    servers.flush_redis()
    seed(servers)
    return servers.crawl(label, stack_cmd("shop_a", settings), servers.env())
