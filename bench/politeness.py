"""``python -m bench politeness``: what politeness costs when it does not bind.

Two workers crawl the whole demo shop (robots.txt without Crawl-delay, no
429/503, no failures) **at the same time, side by side**, each with its own
Redis and its own demo server, ``--repeats`` times:

* ``with``: politeness on with every part configured: Retry-After and backoff
  on 429/503, the circuit breaker, robots.txt Crawl-delay and Request-rate
  honoured (the shop's robots.txt has neither), and a request rate for every
  website (``POLITENESS_RATE_DEFAULT``, far above what one worker does: leased
  permits, one Redis round trip per ``POLITENESS_RATE_LEASE_PERMITS``
  requests);
* ``without``: ``POLITENESS_ENABLED=False``.

Why side by side: run one after the other (as this benchmark used to, in
ABBA pairs), the two crawls met different loads on a shared machine, and the
run's position mattered more than politeness (pairs of 0.79 to 1.38 with
politeness on and nothing configured; "with" came out 1.18 to 1.28 faster,
which no code path explains). Run at once, both meet the same load at the
same moment; the servers swap arms every repeat. Each arm (worker, Redis,
demo server) runs on a CPU core of its own, the arms trading cores every
0.5 s, and its speed is counted while both crawled (``bench.frontier``
explains why: the two virtual CPUs' speeds differ). ``--aa`` runs both arms
without politeness (an A/A control: its ratio shows what is left of the
benchmark's own bias and noise).

``politeness_non_binding_ratio`` = the median over repeats of pages/s with /
without (goal >= 0.97). Also reported: the ratio of the labels' medians, the
CPU time per page (each worker's own, from ``wait4``) and the Redis calls per
page of the ``with`` runs.

Last line: ``{"politeness_non_binding_ratio": .., ...}``.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.harness import BenchServers, Paired, RunResult, bench_site, emit, median, side_by_side, stack_arm


def _settings(label: str, rate: str, aa: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {"ITEM_PIPELINES": "{}"}
    if label == "with" and not aa:
        settings["POLITENESS_ENABLED"] = "True"
        settings["POLITENESS_RATE_DEFAULT"] = rate
        settings["POLITENESS_CRAWL_DELAY_ENABLED"] = "True"
    else:
        settings["POLITENESS_ENABLED"] = "False"
    return settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench politeness", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000, help="item pages on the demo shop (default 3000)")
    parser.add_argument("--repeats", type=int, default=4, help="side-by-side runs (default 4)")
    parser.add_argument("--rate", default="1000000/60", help="POLITENESS_RATE_DEFAULT of the with runs")
    parser.add_argument("--aa", action="store_true", help="A/A control: both arms without politeness")
    args = parser.parse_args(argv)

    site = bench_site(args.items)
    runs: dict[str, list[RunResult]] = {"without": [], "with": []}
    with BenchServers(site) as one, BenchServers(site) as two:
        for i in range(args.repeats):
            servers = (one, two) if i % 2 == 0 else (two, one)
            arms = [stack_arm(label, s, _settings(label, args.rate, args.aa))
                    for label, s in zip(("without", "with"), servers, strict=True)]
            for result in side_by_side(arms, overlap=True, one_core_each=True):
                runs[result.label].append(result)
                print(f"  run {i + 1}/{args.repeats} {result.label:7s} {result.pages} pages in "
                      f"{result.seconds:.2f}s = {result.pages_per_s:.0f} pages/s", flush=True)

    paired = Paired.of(runs)
    ratio, of_medians, cpu = paired.ratio, paired.of_medians, paired.cpu
    calls = median([float(r.stats.get("politeness/redis_calls", 0)) / r.pages for r in runs["with"]])
    what = "A/A control (no politeness in either arm)" if args.aa else "politeness configured, not binding"
    print(f"\n{what}: 2 workers side by side, {site.items} items each, pages/s")
    print(paired.table(runs, "politeness", "run"))
    print(f"with / without: median of runs {ratio:.3f}; ratio of medians {of_medians:.3f}; CPU per page "
          f"{1000 * cpu['with']:.3f} vs {1000 * cpu['without']:.3f} ms; politeness Redis calls per page "
          f"{calls:.4f}")
    emit({
        "politeness_non_binding_ratio": round(ratio, 4),
        "politeness_non_binding_ratio_of_medians": round(of_medians, 4),
        "politeness_non_binding_cpu_ratio": round(cpu["without"] / cpu["with"], 4),
        "politeness_redis_calls_per_page": round(calls, 4),
        "rate": args.rate,
        "repeats": args.repeats,
        "side_by_side": True,
        "aa_control": args.aa,
    })
    return 0
