"""``python -m bench budget``: the byte budget's contract and cost, from the server's log.

1. Binding budget: 1, 2 and 4 ``shop_a`` workers share a budget of ``--budget``
   bytes per ``--window`` seconds on a shop with more pages than they may
   fetch, for ``--windows`` windows. From the demo server's request log:

   * ``max_window_over_b``: the most bytes served in any sliding window of the
     window's length, divided by *b* (goal <= 1.0 plus one page);
   * ``utilization``: the bytes served in the first ``--windows`` whole windows
     from the first request, divided by that many *b* (goal >= 0.95).

2. Mixed sizes (``demosite.profiles.mixed_sizes`` on the shop's host: item
   pages of 2-20 KB, every 25th of 1-5 MB sent chunked without
   Content-Length): 1, 2 and 4 workers crawl the whole site under
   ``--mixed-budget`` bytes per ``--window``, every figure from the server's log:

   * ``max_window_over_b_plus_page``: the most bytes in any sliding window
     (long responses spread along their timeline) divided by *b* plus the
     largest single response (goal <= 1.0);
   * ``utilization_mixed``: how much of the budget the crawl used: all its
     bytes over *b* times the windows it lasted (from the first request to the
     last byte), i.e. its mean rate over *b* per window (goal >= 0.90). Two
     crawls of the site that take the same time score the same. A crawl that
     keeps every window at *b* scores 1.0 when paced evenly, up to
     (k + 1) / k when it sends *b* in bursts at the start of each of k + 1
     windows (the mixed crawl lasts 4-5 windows: up to ~1.25); the run's
     ``utilization_mixed_grid`` keeps the former figure (the whole windows of a
     grid from the first request, the last partial one left out), which moved
     by +-0.1 with where the grid fell;
   * ``wasted_bytes_ratio``: bytes the server sent for downloads that were
     stopped (truncated) or fetched again after they had been sent whole,
     robots.txt and redirect targets apart, over all bytes (goal <= 0.05).

3. Non-binding budget: a worker crawls the whole shop with a budget far above
   what it uses (``with``) while another crawls it with the middleware off
   (``without``), **side by side**: at the same time, each with its own Redis
   and demo server, the servers swapping arms every pair (``--nb-repeats``
   pairs). ``non_binding_ratio`` = the median over pairs of pages/s with /
   without (goal >= 0.95, i.e. <= 5% overhead). Run one after the other (as
   this section used to), the two runs of a pair met different machine loads
   and single pairs ranged 0.71-1.26, more than the effect measured. Also
   reported: the ratio of the two labels' medians, and the CPU time per page
   (each worker's own), without / with.

``--sections`` picks the sections; ``--against DIR`` runs another source tree
(say ``git archive main | tar -x -C DIR``) in turn with this one in every
repeat of the mixed and binding sections, so both meet the same machine load
(its figures under ``before_*`` keys); ``--save-logs DIR`` keeps each run's
server log for ``demosite.analysis``.

Last line: ``{"max_window_over_b": {"1": .., "2": .., "4": ..}, "utilization": {...},
"max_window_over_b_plus_page": {...}, "utilization_mixed": {...}, "wasted_bytes_ratio": ..,
"non_binding_ratio": .., ...}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import time
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
    seed,
    side_by_side,
    stack_arm,
    stack_cmd,
    table,
)
from demosite import analysis, profiles
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
                        help="side-by-side pairs of non-binding runs (default 10)")
    parser.add_argument("--mixed-budget", type=int, default=8_000_000,
                        help="b of the mixed-size runs, bytes per window (default 8000000)")
    parser.add_argument("--mixed-items", type=int, default=200, help="item pages of the mixed site (default 200)")
    parser.add_argument("--mixed-repeats", type=int, default=1, help="repeats of the mixed runs (default 1)")
    parser.add_argument("--mixed-workers", default=None, help="worker counts of the mixed runs (default --workers)")
    parser.add_argument("--sections", default="mixed,binding,nonbinding",
                        help="sections to run, comma-separated (default mixed,binding,nonbinding)")
    parser.add_argument("--against", type=Path, default=None, metavar="DIR",
                        help="another source tree (say `git archive main` unpacked): in every repeat of the "
                             "mixed and binding sections its workers run right before this tree's, and their "
                             "figures are reported under `before_*` keys")
    parser.add_argument("--save-logs", type=Path, default=None, metavar="DIR",
                        help="write the server log of each mixed and binding run there (JSON)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    sections = set(args.sections.split(","))
    trees = {"before": args.against.resolve(), "after": ROOT} if args.against else {"after": ROOT}
    if args.save_logs:
        args.save_logs.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    if "mixed" in sections:
        mixed_counts = [int(n) for n in args.mixed_workers.split(",")] if args.mixed_workers else counts
        for label, figures in _mixed_section(args, mixed_counts, trees).items():
            result.update({(k if label == "after" else f"before_{k}"): v for k, v in figures.items()})
        result.update({"mixed_budget": args.mixed_budget, "mixed_items": args.mixed_items,
                       "mixed_repeats": args.mixed_repeats})
    if "binding" in sections:
        for label, figures in _binding_section(args, counts, trees).items():
            result.update({(k if label == "after" else f"before_{k}"): v for k, v in figures.items()})
        result.update({"budget": args.budget, "window_s": args.window, "repeats": args.repeats})
    if "nonbinding" in sections:
        result.update(_non_binding_section(args))
    emit(result)
    return 0


def _binding_section(args: argparse.Namespace, counts: list[int],
                     trees: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The binding runs, each tree in turn per repeat and worker count: figures per tree."""
    binding: dict[str, dict[int, list[dict[str, Any]]]] = {label: {n: [] for n in counts} for label in trees}
    with BenchServers(bench_site(args.items)) as servers:
        for i in range(args.repeats):
            for n in counts:
                for label, tree in trees.items():
                    res = _binding_run(servers, n, args.budget, args.window, args.windows, tree,
                                       _log_path(args, f"binding-{label}-{n}w-{i + 1}"))
                    binding[label][n].append(res)
                    print(f"  repeat {i + 1}/{args.repeats} binding, {label}, {n} worker(s): max window "
                          f"{res['max']:.3f} b, utilization {res['util']:.3f}, biggest page {res['page']} B, "
                          f"{res['unseen']} responses no worker saw", flush=True)
    out = {}
    for label, runs in binding.items():
        max_over = {str(n): round(max(r["max"] for r in rs), 4) for n, rs in runs.items()}
        max_med = {str(n): round(median([r["max"] for r in rs]), 4) for n, rs in runs.items()}
        util = {str(n): round(median([r["util"] for r in rs]), 4) for n, rs in runs.items()}
        page = max(r["page"] for rs in runs.values() for r in rs)
        rows = [[f"{n} worker(s)", max_over[str(n)], max_med[str(n)], util[str(n)],
                 " ".join(f"{r['util']:.3f}" for r in runs[n]),
                 round(median([r["denied"] for r in runs[n]]))] for n in counts]
        print(f"\nBinding budget ({label}): b = {args.budget} B per {args.window:g} s window, {args.windows} "
              f"windows, {args.repeats} repeats; one page <= {page} B = {page / args.budget:.4f} b")
        print(table(rows, ["workers", "max window / b (worst)", "max window / b (median)", "utilization (median)",
                           "utilization (runs)", "denied (median)"]))
        out[label] = {"max_window_over_b": max_over, "max_window_over_b_median": max_med, "utilization": util,
                      "utilization_runs": {str(n): [round(r["util"], 4) for r in rs] for n, rs in runs.items()},
                      "one_page_over_b": round(page / args.budget, 4)}
    return out


def _non_binding_section(args: argparse.Namespace) -> dict[str, Any]:
    """Pairs of one-worker crawls, with a budget that never binds and without the middleware, run side by side
    (at the same time, each with its own Redis and demo server; the servers swap arms every pair), so both
    arms of a pair meet the same machine load (bench.politeness explains why: run one after the other, single
    pairs ranged 0.71-1.26 here); each arm on a core of its own, trading cores every 0.5 s, and its speed
    counted while both crawled (bench.frontier explains why)."""
    site = bench_site(args.items)
    free: dict[str, list[RunResult]] = {"without": [], "with": []}
    with BenchServers(site) as one, BenchServers(site) as two:
        for i in range(args.nb_repeats):
            servers = (one, two) if i % 2 == 0 else (two, one)
            arms = []
            for label, arm_servers in zip(("without", "with"), servers, strict=True):
                settings = {"ITEM_PIPELINES": "{}"}
                if label == "with":
                    settings["BYTE_BUDGET_DEFAULT"] = str(10**12)
                else:
                    settings["BYTE_BUDGET_ENABLED"] = "False"
                arms.append(stack_arm(label, arm_servers, settings))
            for result in side_by_side(arms, overlap=True, one_core_each=True):
                free[result.label].append(result)
                print(f"  pair {i + 1}/{args.nb_repeats} non-binding {result.label:7s} {result.pages} pages in "
                      f"{result.seconds:.2f}s = {result.pages_per_s:.0f} pages/s", flush=True)
    paired = Paired.of(free)
    ratio, of_medians, cpu = paired.ratio, paired.of_medians, paired.cpu
    print(f"\nNon-binding budget, 2 workers side by side (one per arm), {site.items} items, pages/s")
    print(paired.table(free, "middleware", "pair"))
    print(f"with / without: median of pairs {ratio:.3f}; ratio of medians {of_medians:.3f}; CPU per page "
          f"{1000 * cpu['with']:.3f} vs {1000 * cpu['without']:.3f} ms (without / with "
          f"{cpu['without'] / cpu['with']:.3f}; start-up included)")
    return {
        "non_binding_ratio": round(ratio, 4),
        "non_binding_ratio_of_medians": round(of_medians, 4),
        "non_binding_cpu_ratio": round(cpu["without"] / cpu["with"], 4),
        "nb_repeats": args.nb_repeats,
        "nb_side_by_side": True,
    }


def _log_path(args: argparse.Namespace, name: str) -> Path | None:
    return args.save_logs / f"{name}.json" if args.save_logs else None


def _env(servers: BenchServers, tree: Path) -> dict[str, str]:
    """The workers' environment: ``tree``'s code first on the path (cwd is ``tree`` too, for scrapy.cfg)."""
    return servers.env(PYTHONPATH=str(tree))


def _mixed_section(args: argparse.Namespace, counts: list[int],
                   trees: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The mixed-size runs, each tree in turn per repeat and worker count: printed, figures per tree."""
    mixed: dict[str, dict[int, list[dict[str, Any]]]] = {label: {n: [] for n in counts} for label in trees}
    site = profiles.mixed_sizes("shop-a.test", items=args.mixed_items, errors=0, redirect_every=10**9)
    with BenchServers(site) as servers:
        for i in range(args.mixed_repeats):
            for n in counts:
                for label, tree in trees.items():
                    res = _mixed_run(servers, n, args.mixed_budget, args.window, tree,
                                     _log_path(args, f"mixed-{label}-{n}w-{i + 1}"))
                    mixed[label][n].append(res)
                    print(f"  repeat {i + 1}/{args.mixed_repeats} mixed sizes, {label}, {n} worker(s): max window "
                          f"{res['max']:.3f} (b + largest page), utilization {res['util']:.3f} (grid "
                          f"{res['util_grid']:.3f}, {res['seconds']:.1f} s), wasted "
                          f"{res['wasted']:.4f}, largest page {res['page']} B", flush=True)
    out = {}
    for label, runs in mixed.items():
        mixed_max = {str(n): round(max(r["max"] for r in rs), 4) for n, rs in runs.items()}
        mixed_util = {str(n): round(median([r["util"] for r in rs]), 4) for n, rs in runs.items()}
        wasted = round(max(r["wasted"] for rs in runs.values() for r in rs), 4)
        print(f"\nMixed sizes ({label}): b = {args.mixed_budget} B per {args.window:g} s window, "
              f"{args.mixed_items} items, {args.mixed_repeats} repeat(s)")
        print(table([[f"{n} worker(s)", mixed_max[str(n)], mixed_util[str(n)],
                      " ".join(f"{r['util']:.3f}" for r in runs[n]),
                      round(max(r["wasted"] for r in runs[n]), 4)] for n in counts],
                    ["workers", "max window / (b + largest page)", "utilization (median)", "utilization (runs)",
                     "wasted bytes (worst)"]))
        out[label] = {"max_window_over_b_plus_page": mixed_max, "utilization_mixed": mixed_util,
                      "utilization_mixed_runs": {str(n): [round(r["util"], 4) for r in rs] for n, rs in runs.items()},
                      "utilization_mixed_grid_runs": {str(n): [round(r["util_grid"], 4) for r in rs]
                                                      for n, rs in runs.items()},
                      "mixed_seconds_runs": {str(n): [round(r["seconds"], 2) for r in rs] for n, rs in runs.items()},
                      "wasted_bytes_ratio": wasted}
    return out


def _binding_run(servers: BenchServers, workers: int, budget: int, window: float, windows: int,
                 tree: Path = ROOT, save: Path | None = None) -> dict[str, Any]:
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
        procs.append(subprocess.Popen(cmd, cwd=tree, env=_env(servers, tree), stdin=subprocess.DEVNULL,
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
    log = servers.log(mark)
    if save is not None:
        save.write_text(json.dumps(log))
    entries = [(float(r["t"]), int(r["bytes"])) for r in log]
    denied, settled = _stat(paths, "byte_budget/denied"), _stat(paths, "byte_budget/settled")
    worst, start, running = 0, 0, 0
    for t, size in entries:
        running += size
        while entries[start][0] <= t - window:
            running -= entries[start][1]
            start += 1
        worst = max(worst, running)
    used = sum(size for t, size in entries if t < t0 + windows * window)
    # Responses the server sent that no worker saw (so could not count).
    unseen = max(0, len(entries) - settled)
    return {"max": worst / budget, "util": used / (windows * budget), "page": max(s for _, s in entries),
            "denied": denied, "unseen": unseen}


def _stat(paths: list[Path], key: str) -> int:
    """``key`` summed over the workers' stats files."""
    return sum(int(json.loads(p.read_text()).get(key, 0)) for p in paths if p.exists())


def _mixed_run(servers: BenchServers, workers: int, budget: int, window: float, tree: Path = ROOT,
               save: Path | None = None) -> dict[str, Any]:
    """``workers`` workers crawl the whole mixed-size site under ``budget``; judged by the server's log."""
    servers.flush_redis()
    mark = servers.mark()
    host = servers.site.host
    settings = {
        "ITEM_PIPELINES": "{}",
        "BYTE_BUDGET_PER_WEBSITE": json.dumps({host: budget}),
        "BYTE_BUDGET_WINDOW_SECONDS": str(window),
    }
    # Seeded first: a worker that starts up in under FRONTIER_IDLE_CLOSE_SECONDS
    # would close on an empty frontier before a later seed.
    seed(servers)
    procs = []
    for w in range(workers):
        stats_path = servers.workdir / f"mixed-{workers}-{w}-{time.monotonic_ns()}.json"
        cmd = [*stack_cmd("shop_a", settings), "-s", f"STATS_FILE_PATH={stats_path}",
               "-s", f"LOG_FILE={stats_path.with_suffix('.log')}"]
        procs.append(subprocess.Popen(cmd, cwd=tree, env=_env(servers, tree), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for proc in procs:
            proc.wait(600)  # FRONTIER_IDLE_CLOSE_SECONDS=1: they exit once the site is crawled
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = servers.log(mark)
    if save is not None:
        save.write_text(json.dumps(log))
    largest = analysis.largest_response(log, host)
    if largest is None:
        raise RuntimeError("no request reached the demo site")
    page = int(largest["bytes"])
    worst = analysis.max_bytes_in_any_window(log, host, window)
    # Utilization: the crawl's mean rate over b's, i.e. every byte over b per
    # window times the windows from the first request to the last byte. Not
    # the whole windows of a grid from the first request without the last,
    # partial one: that left out 0.8 MB of one run and 4.2 MB of another
    # that crawled the site in the same 18.1 s (0.945 and 0.839 for equal
    # use of the budget; bench/RESULTS.md).
    util = analysis.budget_use(log, host, budget, window)
    first, last = analysis.crawl_span(log, host) or (0.0, 0.0)
    grid = analysis.bytes_per_window(log, host, window)[:-1]
    util_grid = sum(grid) / (len(grid) * budget) if grid else 0.0
    # Wasted: truncated responses, and whole ones fetched again (robots.txt is
    # fetched once per worker, redirect targets are also linked directly).
    records = analysis.host_records(log, host)
    again = set(analysis.refetched_after_complete(log, host)) - {"/robots.txt"}
    wasted = 0
    seen: set[str] = set()
    for r in reversed(records):  # every fetch of a path but its last
        path = str(r["path"])
        if path in seen and (r.get("truncated") or path in again):
            wasted += int(r["bytes"])
        seen.add(path)
    total = analysis.total_bytes(log, host)
    return {"max": worst / (budget + page), "util": util, "util_grid": util_grid,
            "wasted": wasted / total if total else 0.0, "page": page, "seconds": last - first}
