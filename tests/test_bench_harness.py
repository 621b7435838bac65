"""The benchmark harness runs end to end and keeps its output contract.

Figures are not asserted (speed is the benchmarks' business, not the tests'):
only that a run completes, crawls every page, and ends with the JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.harness import bench_site
from devtools.services import ROOT


def run_bench(*args: str) -> tuple[str, dict[str, object]]:
    out = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    return out.stdout, json.loads(lines[-1])


def test_throughput_table_and_json_line() -> None:
    stdout, result = run_bench("throughput", "--items", "150", "--repeats", "1")
    assert "contender" in stdout and "vanilla_ci8" in stdout
    assert {"vanilla_pages_per_s", "stack_pages_per_s", "ratio"} <= result.keys()
    # every distinct page once, plus robots.txt
    assert result["pages"] == sum(bench_site(150).expected_pages().values()) + 1
    assert abs(result["ratio"] - result["stack_pages_per_s"] / result["vanilla_pages_per_s"]) < 0.01


def test_unknown_benchmark_is_refused() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "nope"], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 2
    assert "usage: python -m bench" in out.stderr


def test_paired_runs_give_the_median_of_per_pair_ratios() -> None:
    from bench.harness import Paired, RunResult

    def run(label: str, pages_per_s: float, cpu: float) -> RunResult:
        return RunResult(label, 100, 100 / pages_per_s, {"_cpu": cpu})

    runs = {"without": [run("without", 100, 1.0), run("without", 50, 1.0), run("without", 200, 1.0)],
            "with": [run("with", 90, 2.0), run("with", 50, 2.0), run("with", 220, 2.0)]}
    paired = Paired.of(runs)
    assert [round(p, 3) for p in paired.pairs] == [0.9, 1.0, 1.1]
    assert round(paired.ratio, 3) == 1.0 and round(paired.of_medians, 3) == 0.9  # medians 90 / 100
    assert paired.cpu == {"without": 0.01, "with": 0.02}
    assert "with / without" in paired.table(runs, "arm", "pair")
