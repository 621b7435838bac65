"""``python -m bench budget``: the byte budget's contract and cost, from the server's log.

1. Binding budget: 1, 2 and 4 ``shop_a`` workers share a budget of ``--budget``
   bytes per ``--window`` seconds on a shop with more pages than they may
   fetch, for ``--windows`` windows. From the demo server's request log:

   * ``max_window_over_b``: the most bytes served in any sliding window of the
     window's length, divided by *b* (goal <= 1.0 plus one page);
   * ``utilization``: the bytes served in the first ``--windows`` whole windows
     from the first request, divided by that many *b* (goal >= 0.95).

2. Non-binding budget: one worker crawls the whole shop with a budget far above
   what it uses (``with``), and with the middleware off (``without``), in
   ``--nb-repeats`` back-to-back pairs; ``non_binding_ratio`` = the median over
   pairs of pages/s with / without (goal >= 0.95, i.e. <= 5% overhead). The
   two runs of a pair share the machine's state of the moment, which on a
   shared machine drifts by more than the effect measured; the order within a
   pair alternates, so neither label always runs first. Also reported: the
   ratio of the two labels' medians, and the CPU time per page, without / with.

Last line: ``{"max_window_over_b": {"1": .., "2": .., "4": ..}, "utilization": {...},
"non_binding_ratio": .., ...}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import time
from typing import Any

from bench.harness import SCRAPY, BenchServers, RunResult, bench_site, emit, median, seed, stack_cmd, table
from devtools.services import ROOT


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench budget", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=150_000, help="b, bytes per window (default 150000)")
    parser.add_argument("--window", type=float, default=4.0, help="window seconds (default 4; production 60)")
    parser.add_argument("--windows", type=int, default=5, help="windows per binding run (default 5)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    parser.add_argument("--items", type=int, default=3000, help="item pages on the demo shop (default 3000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the binding runs (default 3)")
    parser.add_argument("--nb-repeats", type=int, default=10,
                        help="back-to-back pairs of non-binding runs (default 10)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]

    site = bench_site(args.items)
    binding: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    free: dict[str, list[RunResult]] = {"without": [], "with": []}
    with BenchServers(site) as servers:
        for i in range(args.repeats):
            for n in counts:
                res = _binding_run(servers, n, args.budget, args.window, args.windows)
                binding[n].append(res)
                print(f"  repeat {i + 1}/{args.repeats} binding, {n} worker(s): max window {res['max']:.3f} b, "
                      f"utilization {res['util']:.3f}, biggest page {res['page']} B, "
                      f"{res['unseen']} responses no worker saw", flush=True)
        for i in range(args.nb_repeats):
            # Counterbalanced (ABBA...): on a shared machine the position in a
            # pair is worth several percent by itself, so each label goes first
            # in half of the pairs.
            for label in ("without", "with") if i % 2 == 0 else ("with", "without"):
                settings = {"ITEM_PIPELINES": "{}"}
                if label == "with":
                    settings["BYTE_BUDGET_DEFAULT"] = str(10**12)
                else:
                    settings["BYTE_BUDGET_ENABLED"] = "False"
                servers.flush_redis()
                seed(servers)
                result = servers.crawl(label, stack_cmd("shop_a", settings), servers.env())
                free[label].append(result)
                print(f"  repeat {i + 1}/{args.nb_repeats} non-binding {label:7s} {result.pages} pages in "
                      f"{result.seconds:.2f}s = {result.pages_per_s:.0f} pages/s", flush=True)

    max_over = {str(n): round(max(r["max"] for r in rs), 4) for n, rs in binding.items()}
    max_med = {str(n): round(median([r["max"] for r in rs]), 4) for n, rs in binding.items()}
    util = {str(n): round(median([r["util"] for r in rs]), 4) for n, rs in binding.items()}
    page = max(r["page"] for rs in binding.values() for r in rs)
    rows = [[f"{n} worker(s)", max_over[str(n)], max_med[str(n)], util[str(n)],
             round(median([r["denied"] for r in binding[n]]))] for n in counts]
    print(f"\nBinding budget: b = {args.budget} B per {args.window:g} s window, {args.windows} windows, "
          f"{args.repeats} repeats; one page <= {page} B = {page / args.budget:.4f} b")
    print(table(rows, ["workers", "max window / b (worst)", "max window / b (median)", "utilization (median)",
                       "denied (median)"]))
    med = {label: median([r.pages_per_s for r in rs]) for label, rs in free.items()}
    pairs = [w.pages_per_s / wo.pages_per_s for w, wo in zip(free["with"], free["without"], strict=True)]
    ratio = median(pairs)
    of_medians = med["with"] / med["without"] if med["without"] else 0.0
    cpu = {label: median([r.stats["_cpu"] / r.pages for r in rs]) for label, rs in free.items()}
    print(f"\nNon-binding budget, 1 worker, {site.items} items, pages/s")
    print(table([[label, *(round(r.pages_per_s) for r in rs), round(med[label])] for label, rs in free.items()]
                + [["with / without", *(f"{p:.3f}" for p in pairs), f"{ratio:.3f}"]],
                ["middleware", *(f"pair {i + 1}" for i in range(args.nb_repeats)), "median"]))
    print(f"with / without: median of pairs {ratio:.3f}; ratio of medians {of_medians:.3f}; CPU per page "
          f"{1000 * cpu['with']:.3f} vs {1000 * cpu['without']:.3f} ms (without / with "
          f"{cpu['without'] / cpu['with']:.3f}; start-up included)")
    emit({
        "max_window_over_b": max_over,
        "max_window_over_b_median": max_med,
        "utilization": util,
        "non_binding_ratio": round(ratio, 4),
        "non_binding_ratio_of_medians": round(of_medians, 4),
        "non_binding_cpu_ratio": round(cpu["without"] / cpu["with"], 4),
        "one_page_over_b": round(page / args.budget, 4),
        "budget": args.budget,
        "window_s": args.window,
        "repeats": args.repeats,
        "nb_repeats": args.nb_repeats,
    })
    return 0


def _binding_run(servers: BenchServers, workers: int, budget: int, window: float, windows: int) -> dict[str, Any]:
    servers.flush_redis()
    mark = servers.mark()
    settings = {
        "ITEM_PIPELINES": "{}",
        "BYTE_BUDGET_PER_WEBSITE": json.dumps({servers.site.host: budget}),
        "BYTE_BUDGET_WINDOW_SECONDS": str(window),
        "FRONTIER_IDLE_CLOSE_SECONDS": "0",
    }
    procs, paths = [], []
    for w in range(workers):
        stats_path = servers.workdir / f"binding-{workers}-{w}-{time.monotonic_ns()}.json"
        cmd = [SCRAPY, "crawl", "shop_a", "-s", f"STATS_FILE_PATH={stats_path}",
               "-s", f"LOG_FILE={stats_path.with_suffix('.log')}"]
        for key, value in settings.items():
            cmd += ["-s", f"{key}={value}"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=servers.env(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        paths.append(stats_path)
    try:
        time.sleep(3)  # workers start up
        seed(servers)
        deadline = time.monotonic() + 60
        while not servers.log(mark) and time.monotonic() < deadline:
            time.sleep(0.1)
        records = servers.log(mark)
        if not records:
            raise RuntimeError("no request reached the demo site")
        t0 = float(records[0]["t"])
        time.sleep(max(0.0, t0 + windows * window + 0.5 - time.time()))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    records = [(float(r["t"]), int(r["bytes"])) for r in servers.log(mark)]
    denied = settled = 0
    for path in paths:
        if path.exists():
            stats = json.loads(path.read_text())
            denied += int(stats.get("byte_budget/denied", 0))
            settled += int(stats.get("byte_budget/settled", 0))
    worst, start, running = 0, 0, 0
    for t, size in records:
        running += size
        while records[start][0] <= t - window:
            running -= records[start][1]
            start += 1
        worst = max(worst, running)
    used = sum(size for t, size in records if t < t0 + windows * window)
    # Responses the server sent that no worker saw (so could not count).
    unseen = max(0, len(records) - settled)
    return {"max": worst / budget, "util": used / (windows * budget), "page": max(s for _, s in records),
            "denied": denied, "unseen": unseen}
