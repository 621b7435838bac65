"""``python -m bench ipv6``: throughput with no binding, per-request and sticky IPv6 rotation.

Everything runs inside a network namespace of its own (root, Linux) with a
documentation prefix routed to its loopback, as on a crawler host
(``ip -6 route add local PREFIX dev lo``, ``net.ipv6.ip_nonlocal_bind=1``):
the demo shop (reached over ``::1``), a redis-server, and ``scrapy crawl
shop_a`` workers with items not stored. Contenders, interleaved ``--repeats``
times:

* ``none``: ``IPV6_BIND_ENABLED=False``;
* ``per_request``: a fresh address (and connection) per request;
* ``sticky``: the project's sticky defaults (2 addresses per website, rotated
  after 1,000 requests or 300 s).

Speed is pages served divided by the time from first to last request, from
the demo server's log; connections per request is the number of distinct
server-side connections divided by requests; the distinct ratio is distinct
client addresses divided by requests, as the server saw them.

Last line: ``{"per_request_distinct_ratio", "per_request_vs_none",
"sticky_vs_none", "connections_per_request": {policy: ...}, ...}`` (medians).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import RunResult, bench_site, emit, median, stack_cmd, table
from devtools import netns as netns_tools
from devtools.services import DEFAULT_STATE, ROOT, start_demosite

PREFIX = "2001:db8:be:1::/64"
REDIS_PORT = 6379
POLICIES: dict[str, dict[str, str]] = {
    "none": {"IPV6_BIND_ENABLED": "False"},
    "per_request": {"IPV6_BIND_ENABLED": "True", "IPV6_BIND_POLICY": "per_request"},
    "sticky": {"IPV6_BIND_ENABLED": "True", "IPV6_BIND_POLICY": "sticky"},
}


class _Namespace:
    def __init__(self, ns: netns_tools.NetNS, port: int, workdir: Path) -> None:
        self.ns, self.port, self.workdir = ns, port, workdir

    def log(self, since: int) -> list[dict[str, Any]]:
        body = self.ns.http_get(f"http://127.0.0.1:{self.port}/_demo/log?since={since}")
        return [json.loads(line) for line in body.splitlines() if line]

    def mark(self) -> int:
        return int(json.loads(self.ns.http_get(f"http://127.0.0.1:{self.port}/_demo/health"))["requests"])

    def crawl(self, label: str, settings: dict[str, str]) -> tuple[RunResult, list[dict[str, Any]]]:
        self.ns.redis(REDIS_PORT, "flushall")
        url = f"http://shop-a.test:{self.port}/"
        self.ns.redis(REDIS_PORT, "lpush", "shop_a:start_urls", json.dumps({"url": url}))
        stats_path = self.workdir / f"{label}-{time.monotonic_ns()}.json"
        log_path = stats_path.with_suffix(".log")
        all_settings = {"ITEM_PIPELINES": "{}", "IPV6_BIND_PREFIXES": PREFIX, "STATS_FILE_PATH": str(stats_path),
                        "LOG_FILE": str(log_path), **settings}
        cmd = stack_cmd("shop_a", all_settings)
        env = {"REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0", "RESOLVE_HOSTS": "*.test:::1",
               "PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        mark = self.mark()
        proc = subprocess.run(self.ns.command(cmd), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600, check=False)
        records = [r for r in self.log(mark) if r["host"] == "shop-a.test"]
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        if proc.returncode != 0 or not records:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{proc.stderr.decode()[-2000:]}\n{tail}")
        return RunResult(label, len(records), records[-1]["t"] - records[0]["t"], stats), records


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ipv6", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000, help="item pages on the demo shop (default 2000)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    reason = netns_tools.unavailable_reason()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    netns_tools.remove_stale()

    site = bench_site(args.items)
    net = ipaddress.IPv6Network(PREFIX)
    speed: dict[str, list[float]] = {p: [] for p in POLICIES}
    conns: dict[str, list[float]] = {p: [] for p in POLICIES}
    distinct: dict[str, list[float]] = {p: [] for p in POLICIES}
    pages = 0
    state = DEFAULT_STATE / "bench"
    state.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ipv6-"))
    try:
        with netns_tools.netns(routed=(PREFIX,), tag="bench") as ns:
            demo = start_demosite(state, (site,), port=8080, binds=("127.0.0.1", "::1"), netns=ns.name)
            ns.servers.append(demo)
            ns.start_redis(state, REDIS_PORT)
            box = _Namespace(ns, demo.port, workdir)
            for i in range(args.repeats):
                for policy, settings in POLICIES.items():
                    result, records = box.crawl(policy, settings)
                    clients = {r["client"] for r in records}
                    if policy != "none" and not all(ipaddress.IPv6Address(c) in net for c in clients):
                        raise RuntimeError(f"{policy}: a request left from outside {PREFIX}")
                    speed[policy].append(result.pages_per_s)
                    conns[policy].append(len({r["conn"] for r in records}) / len(records))
                    distinct[policy].append(len(clients) / len(records))
                    pages = result.pages
                    print(f"  repeat {i + 1}/{args.repeats} {policy:12s} {result.pages} pages in "
                          f"{result.seconds:.2f}s = {result.pages_per_s:.0f} pages/s, "
                          f"{len(clients)} addresses, {conns[policy][-1]:.3f} connections/request", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    med = {p: median(v) for p, v in speed.items()}
    rows = [[p, pages, *(round(s) for s in speed[p]), round(med[p]), med[p] / med["none"],
             median(conns[p]), median(distinct[p])] for p in POLICIES]
    print(f"\nIPv6 source rotation on the demo shop inside a network namespace ({site.items} items), pages/s")
    print(table(rows, ["policy", "pages", *(f"run {i + 1}" for i in range(args.repeats)), "median", "vs none",
                       "conns/request", "distinct addr/request"]))
    emit({
        "per_request_distinct_ratio": round(median(distinct["per_request"]), 4),
        "per_request_vs_none": round(med["per_request"] / med["none"], 3),
        "sticky_vs_none": round(med["sticky"] / med["none"], 3),
        "connections_per_request": {p: round(median(conns[p]), 4) for p in POLICIES},
        "pages_per_s": {p: round(med[p], 1) for p in POLICIES},
        "repeats": args.repeats,
        "pages": pages,
    })
    return 0
