"""``python -m bench politeness``: what politeness costs when it does not bind.

One worker crawls the whole demo shop (robots.txt without Crawl-delay, no
429/503, no failures) in ``--repeats`` back-to-back pairs:

* ``with``: politeness on with every part configured: Retry-After and backoff
  on 429/503, the circuit breaker, robots.txt Crawl-delay honoured (the
  shop's robots.txt has none), and a request rate for every website
  (``POLITENESS_RATE_DEFAULT``, far above what one worker does: leased
  permits, one Redis round trip per ``POLITENESS_RATE_LEASE_PERMITS``
  requests);
* ``without``: ``POLITENESS_ENABLED=False``.

The order within a pair alternates (ABBA...), as in ``bench budget``: on a
shared machine the position in a pair is worth several percent by itself.
``politeness_non_binding_ratio`` = the median over pairs of pages/s with /
without (goal >= 0.97). Also reported: the ratio of the labels' medians, the
CPU time per page, and the Redis calls per page of the ``with`` runs.

Last line: ``{"politeness_non_binding_ratio": .., ...}``.
"""

from __future__ import annotations

import argparse

from bench.harness import BenchServers, RunResult, bench_site, emit, median, seed, stack_cmd, table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench politeness", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000, help="item pages on the demo shop (default 3000)")
    parser.add_argument("--repeats", type=int, default=10, help="back-to-back pairs (default 10)")
    parser.add_argument("--rate", default="1000000/60", help="POLITENESS_RATE_DEFAULT of the with runs")
    args = parser.parse_args(argv)

    site = bench_site(args.items)
    runs: dict[str, list[RunResult]] = {"without": [], "with": []}
    with BenchServers(site) as servers:
        for i in range(args.repeats):
            for label in ("without", "with") if i % 2 == 0 else ("with", "without"):
                settings = {"ITEM_PIPELINES": "{}"}
                if label == "with":
                    settings["POLITENESS_ENABLED"] = "True"
                    settings["POLITENESS_RATE_DEFAULT"] = args.rate
                    settings["POLITENESS_CRAWL_DELAY_ENABLED"] = "True"
                else:
                    settings["POLITENESS_ENABLED"] = "False"
                servers.flush_redis()
                seed(servers)
                result = servers.crawl(label, stack_cmd("shop_a", settings), servers.env())
                runs[label].append(result)
                print(f"  pair {i + 1}/{args.repeats} {label:7s} {result.pages} pages in {result.seconds:.2f}s = "
                      f"{result.pages_per_s:.0f} pages/s", flush=True)

    med = {label: median([r.pages_per_s for r in rs]) for label, rs in runs.items()}
    pairs = [w.pages_per_s / wo.pages_per_s for w, wo in zip(runs["with"], runs["without"], strict=True)]
    ratio = median(pairs)
    of_medians = med["with"] / med["without"] if med["without"] else 0.0
    cpu = {label: median([r.stats["_cpu"] / r.pages for r in rs]) for label, rs in runs.items()}
    calls = median([float(r.stats.get("politeness/redis_calls", 0)) / r.pages for r in runs["with"]])
    print(f"\nPoliteness configured, not binding: 1 worker, {site.items} items, pages/s")
    print(table([[label, *(round(r.pages_per_s) for r in rs), round(med[label])] for label, rs in runs.items()]
                + [["with / without", *(f"{p:.3f}" for p in pairs), f"{ratio:.3f}"]],
                ["politeness", *(f"pair {i + 1}" for i in range(args.repeats)), "median"]))
    print(f"with / without: median of pairs {ratio:.3f}; ratio of medians {of_medians:.3f}; CPU per page "
          f"{1000 * cpu['with']:.3f} vs {1000 * cpu['without']:.3f} ms; politeness Redis calls per page "
          f"{calls:.4f}")
    emit({
        "politeness_non_binding_ratio": round(ratio, 4),
        "politeness_non_binding_ratio_of_medians": round(of_medians, 4),
        "politeness_non_binding_cpu_ratio": round(cpu["without"] / cpu["with"], 4),
        "politeness_redis_calls_per_page": round(calls, 4),
        "rate": args.rate,
        "repeats": args.repeats,
    })
    return 0
