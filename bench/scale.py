"""Redis cost of the frontier at scale: CPU per operation and memory per record.

Drives the project's own scripts (through :class:`crawler.frontier.store.FrontierStore`)
against a private redis-server and reads the server's own accounting, which
other load on the machine barely moves:

* **Redis CPU microseconds** per operation: ``used_cpu_user + used_cpu_sys``
  of ``INFO cpu`` (the server process's getrusage) before and after a loop,
  divided by the operations in it. Client time and the network are left out.
* **Bytes** per record: ``used_memory`` before and after loading.

Figures (``--websites 1000 --queued 1000000`` by default):

* ``redis_us_per_request``: one crawled request in steady state, with 1M
  requests queued over 1,000 websites: its share of a pop of 32 (with the
  acknowledgement the next pop carries) plus the push of one new request
  (batches of 200, as the outbox flushes them); ``redis_us_per_duplicate_link``:
  a link to a page already seen (a crawled page has several).
* ``requests_per_s_per_redis_core``: 1e6 / ``redis_us_per_request``.
* ``bytes_per_queued_request``, ``bytes_per_seen_url_exact``: from the load.
* ``bytes_per_seen_url_bounded``: a Bloom filter for ``--bloom-capacity``
  (100M) URLs at 0.1%, allocated.
* ``bloom_fp_rate`` at ``--fp-count`` (10M) fingerprints in a filter sized for
  them at 0.1%, measured on 1M fresh fingerprints; ``redis_us_per_request_bloom``:
  the steady-state loop with ``FRONTIER_DEDUPE=bloom``.
* The byte budget (:mod:`bench.scale_budget`): ``redis_us_per_request_budgeted``
  (``redis_us_per_request`` plus a reservation and settle on every website,
  leases of 128 downloads; ``_lease1``: leases of 1), ``redis_us_per_denial_L10``,
  ``_L1000``, ``_L100k``, ``redis_us_per_overrides_refresh_100k``. Redis CPU
  time adds up, so the budget's share is measured on its own and added.

* One spider on a local 3-master Redis Cluster (:mod:`bench.scale_cluster`):
  ``cluster_max_master_share``, the busiest master's share of its Redis CPU
  with ``FRONTIER_PARTITIONS=3`` (``_n1``: with one partition).

Usage: ``python -m bench scale [--queued N] [--websites N] [--fp-count N] [--quick]
[--only budget|fp|frontier|cluster]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from scrapy import Request
from scrapy.settings import Settings

from bench import scale_budget, scale_cluster
from bench.harness import emit, table
from crawler.frontier.codec import encode_request
from crawler.frontier.seen import SeenConfig
from crawler.frontier.store import MODE_DEDUPE, FrontierStore, PopReceipts, PushEntry, split_member
from devtools.services import start_redis

if TYPE_CHECKING:
    from collections.abc import Iterator

PUSH_BATCH = 200  # FRONTIER_FLUSH_MAX's default
POP_BATCH = 32  # FRONTIER_PREFETCH's default


async def cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


def entries(website: str, start: int, n: int) -> Iterator[PushEntry]:
    for i in range(start, start + n):
        url = f"http://{website}/catalog/item-{i:07d}?page=3"
        payload = encode_request(Request(url), None)
        yield PushEntry(website, os.urandom(20).hex(), MODE_DEDUPE, 0.0, 0.0, payload)


async def load(store: FrontierStore, websites: int, queued: int) -> None:
    per_site = queued // websites
    batch: list[PushEntry] = []
    for w in range(websites):
        for e in entries(f"shop-{w}.test", 0, per_site):
            batch.append(e)
            if len(batch) == 1000:
                await store.push(batch, "loader")
                batch = []
    if batch:
        await store.push(batch, "loader")


async def crawl(store: FrontierStore, requests: int) -> list[str]:
    """``requests`` crawled requests as a worker's frontier sees them: pops of 32 leased (each acknowledged by
    the next), and for each request popped one new request of its website pushed in batches of 200; returns
    the popped requests' fingerprints."""
    receipts = PopReceipts()
    acks: list[str] = []  # lease fields of the last pop: the next pop acknowledges them
    fresh: list[PushEntry] = []
    known: list[str] = []
    next_id = 10_000_000
    while len(known) < requests:
        result = await store.pop(POP_BATCH, "bench", receipts, lease=600.0, acks=acks)
        if not result.items:
            break
        acks = [lease_field for _, lease_field, _ in result.items]
        for website, _, member in result.items:
            known.append(split_member(member)[0])
            fresh.extend(entries(website, next_id, 1))
            next_id += 1
        if len(fresh) >= PUSH_BATCH:
            await store.push(fresh, "bench")
            fresh = []
    if fresh:
        await store.push(fresh, "bench")
    return known


async def steady_state(redis: Redis, store: FrontierStore, requests: int) -> tuple[float, float]:
    """Redis CPU µs per crawled request (its share of a pop of 32, acknowledged by the next, and the push of
    one new request in batches of 200), and per duplicate link pushed (batches of 200)."""
    before = await cpu(redis)
    known = await crawl(store, requests)
    n = len(known)
    per_request = (await cpu(redis) - before) * 1e6 / max(n, 1)
    dupes = [PushEntry("shop-0.test", fp, MODE_DEDUPE, 0.0, 0.0, b"{}") for fp in known]
    before = await cpu(redis)
    for i in range(0, len(dupes), PUSH_BATCH):
        await store.push(dupes[i:i + PUSH_BATCH], "bench")
    per_duplicate = (await cpu(redis) - before) * 1e6 / max(len(dupes), 1)
    return per_request, per_duplicate


async def bloom_fp(redis: Redis, count: int) -> tuple[float, float]:
    """(measured false-positive rate at ``count`` stored, Redis µs per fingerprint added)."""
    config = SeenConfig.from_settings(Settings({"FRONTIER_DEDUPE": "bloom", "FRONTIER_BLOOM_CAPACITY": count}))
    store = FrontierStore(redis, "{bench_fp}", config.spec)
    chunk = 5000
    before = await cpu(redis)
    for _ in range(0, count, chunk):
        await store.seen("add", [os.urandom(20).hex() for _ in range(chunk)])
    us = (await cpu(redis) - before) * 1e6 / count
    fresh = 1_000_000 if count >= 1_000_000 else count
    false = 0
    for _ in range(0, fresh, chunk):
        false += sum(await store.seen("check", [os.urandom(20).hex() for _ in range(chunk)]))
    await store.clear()
    return false / fresh, us


async def bloom_bytes(redis: Redis, capacity: int) -> int:
    config = SeenConfig.from_settings(Settings({"FRONTIER_DEDUPE": "bloom", "FRONTIER_BLOOM_CAPACITY": capacity}))
    store = FrontierStore(redis, "{bench_bloom}", config.spec)
    before = await memory(redis)
    await store.seen("add", [os.urandom(20).hex()])  # makes the filter
    used = await memory(redis) - before
    await store.clear()
    return used


async def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    redis = Redis.from_url(url, socket_timeout=600)
    out: dict[str, Any] = {}
    try:
        if args.only == "fp":
            return await _fp_figures(redis, args)
        if args.only != "frontier":
            out.update(await scale_budget.run(redis, url, args.quick))
        if args.only == "budget":
            return out
        for mode in ("exact", "bloom"):
            await redis.flushall()
            spec = SeenConfig.from_settings(Settings({"FRONTIER_DEDUPE": mode})).spec
            store = FrontierStore(redis, "{bench}", spec)
            m0 = await memory(redis)
            t0 = time.monotonic()
            await load(store, args.websites, args.queued)
            loaded = await memory(redis) - m0
            print(f"{mode}: loaded {args.queued:,} requests over {args.websites:,} websites in "
                  f"{time.monotonic() - t0:.0f}s", flush=True)
            if mode == "exact":
                seen = int(await redis.memory_usage("{bench}:seen") or 0)
                out["bytes_per_seen_url_exact"] = round(seen / args.queued, 1)
                out["bytes_per_queued_request"] = round((loaded - seen) / args.queued, 1)
            await redis.config_resetstat()
            us, dup = await steady_state(redis, store, args.requests)
            suffix = "" if mode == "exact" else "_bloom"
            out["redis_us_per_request" + suffix] = round(us, 2)
            out["redis_us_per_duplicate_link" + suffix] = round(dup, 2)
            if args.commandstats:
                stats = await redis.info("commandstats")
                top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:8]
                print("\n".join(f"  {k}: {v['calls']} calls, {v['usec_per_call']} us/call, {v['usec']} us"
                                for k, v in top))
        out["requests_per_s_per_redis_core"] = round(1e6 / out["redis_us_per_request"])
        if args.only == "frontier":
            return out
        out["redis_us_per_request_budgeted"] = round(
            out["redis_us_per_request"] + out["redis_us_per_budget_download_lease128"], 2)
        out["redis_us_per_request_budgeted_lease1"] = round(
            out["redis_us_per_request"] + out["redis_us_per_budget_download_lease1"], 2)
        out.update(await _fp_figures(redis, args))
    finally:
        await redis.aclose()
    return out


async def _fp_figures(redis: Redis, args: argparse.Namespace) -> dict[str, Any]:
    """The bounded dedupe's figures: bytes per URL at ``--bloom-capacity``, false positives at ``--fp-count``."""
    await redis.flushall()
    bloom = await bloom_bytes(redis, args.bloom_capacity)
    rate, us_add = await bloom_fp(redis, args.fp_count)
    return {"bytes_per_seen_url_bounded": round(bloom / args.bloom_capacity, 3), "bloom_fp_rate": round(rate, 5),
            "bloom_fp_rate_configured": 0.001, "bloom_fp_count": args.fp_count,
            "redis_us_per_seen_add_bloom": round(us_add, 2)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--websites", type=int, default=1000)
    parser.add_argument("--queued", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200_000, help="crawled requests in the steady-state loop")
    parser.add_argument("--bloom-capacity", type=int, default=100_000_000)
    parser.add_argument("--fp-count", type=int, default=10_000_000)
    parser.add_argument("--commandstats", action="store_true", help="print the costliest Redis commands")
    parser.add_argument("--quick", action="store_true",
                        help="100k queued, 20k requests, 1M fingerprints")
    parser.add_argument("--only", choices=["budget", "fp", "frontier", "cluster"],
                        help="only the byte budget's figures, the Bloom filter's (size, false positives), "
                             "the frontier's (per request, per queued request and seen URL), or the cluster's")
    parser.add_argument("--cluster-requests", type=int, default=20_000,
                        help="crawled requests in each cluster run (FRONTIER_PARTITIONS 3, then 1)")
    parser.add_argument("--cluster-per-site", type=int, default=20, help="requests loaded per website (cluster)")
    args = parser.parse_args(argv)
    if args.quick:
        args.queued, args.requests = 100_000, 20_000
        if "--fp-count" not in " ".join(argv):
            args.fp_count = 1_000_000
    state = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    result: dict[str, Any] = {}
    if args.only != "cluster":
        server = start_redis(state)
        try:
            result = asyncio.run(run(server.url, args))
        finally:
            server.stop()
    if args.only in (None, "cluster"):
        result.update(scale_cluster.run(state, scale_cluster.Load(args.websites, args.cluster_per_site,
                                                                  args.cluster_requests)))
    print(table([[k, v] for k, v in sorted(result.items())], ["figure", "value"]))
    emit(result)
    return 0
