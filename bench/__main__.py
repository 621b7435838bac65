"""Run a benchmark: ``python -m bench <name> [options]``.

Every benchmark prints a table for people and, as its last line, one JSON
object with its figures for machines. Ratios are measured side by side in one
run (interleaved repeats, medians), because the machines are shared and noisy.
"""

from __future__ import annotations

import importlib
import sys

# name -> module in this package exposing main(argv) -> int
BENCHMARKS = {
    "throughput": "bench.throughput",
    "concurrent_items": "bench.concurrent_items",
    "demosite": "bench.demosite",
    "mongo": "bench.mongo",
    "ipv6": "bench.ipv6",
    "frontier": "bench.frontier",
    "budget": "bench.budget",
    "politeness": "bench.politeness",
    "scale": "bench.scale",
    "instructions": "bench.instructions",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m bench {{{'|'.join(BENCHMARKS)}}} [--help]", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return int(module.main(argv[1:]) or 0)


sys.exit(main(sys.argv[1:]))
