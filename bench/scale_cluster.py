"""One spider's Redis CPU spread over the masters of a local 3-master Redis Cluster (part of ``python -m bench scale``).

Drives the project's own store (:class:`crawler.frontier.partitions.PartitionedStore`,
through the project's cluster client from ``REDIS_URL=redis+cluster://...``)
for one spider with ``FRONTIER_PARTITIONS`` = 3 and, for comparison, 1: it
loads ``--websites`` websites (pushes of 200, as the outbox flushes), then
crawls in steady state: pops of 32 with leases, each carrying the previous
pop's acknowledgements, and a push of one new link per request popped. Each
master's ``INFO cpu`` (``used_cpu_user + used_cpu_sys`` of the server process)
is read before and after; the cluster's own housekeeping (cluster bus,
cron) is measured on the idle cluster for the same time and subtracted.

Figures: ``cluster_max_master_share`` (N = 3: the busiest master's share of
the spider's Redis CPU; 1/3 is an even spread), ``cluster_max_master_share_n1``
(N = 1: ~1.0, one master does everything), ``cluster_round_trips_per_request``
(``_n1``): store round trips per crawled request.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from scrapy import Request
from scrapy.settings import Settings

from crawler.frontier.codec import encode_request
from crawler.frontier.partitions import PartitionedStore
from crawler.frontier.store import MODE_DEDUPE, PopReceipts, PushEntry
from crawler.redis_client import RedisClientConfig
from devtools.services import start_redis_cluster

if TYPE_CHECKING:
    from pathlib import Path

PUSH_BATCH = 200
POP_BATCH = 32
LEASE = 60.0


def _entry(website: str, i: int) -> PushEntry:
    payload = encode_request(Request(f"http://{website}/catalog/item-{i:07d}?page=3"), None)
    return PushEntry(website, os.urandom(20).hex(), MODE_DEDUPE, 0.0, 0.0, payload)


async def _cpu(nodes: list[Redis]) -> list[float]:
    out = []
    for node in nodes:
        info = await node.info("cpu")
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


async def _crawl(store: PartitionedStore, websites: int, per_site: int, requests: int) -> None:
    sites = [f"site{i:05d}.example" for i in range(websites)]
    batch: list[PushEntry] = []
    for i in range(per_site):
        for site in sites:
            batch.append(_entry(site, i))
            if len(batch) == PUSH_BATCH:
                await store.push(batch, "loader")
                batch = []
    if batch:
        await store.push(batch, "loader")
    receipts, acks, done, n = PopReceipts(), [], 0, per_site
    links: list[PushEntry] = []
    while done < requests:
        result = await store.pop(POP_BATCH, "w", receipts, LEASE, acks)
        acks = [lease for _, lease, _ in result.items]
        done += len(result.items)
        for website, _, _ in result.items:
            n += 1
            links.append(_entry(website, n))
        if len(links) >= PUSH_BATCH:
            await store.push(links, "w")
            links = []
        if not result.items:
            break
    await store.release("w", acks, receipts)


@dataclass(frozen=True, slots=True)
class Load:
    websites: int = 1000
    per_site: int = 20
    requests: int = 20_000


async def _measure(url: str, nodes: list[Redis], partitions: int, args: Load) -> tuple[float, float]:
    """(busiest master's share of the spider's Redis CPU, round trips per crawled request)."""
    redis = RedisClientConfig.from_settings(Settings({"REDIS_URL": url})).async_client()
    try:
        store = PartitionedStore(redis, "{bench_cluster}", "", partitions)
        await store.check_layout()
        idle0 = await _cpu(nodes)
        t0 = time.monotonic()
        await _crawl(store, args.websites, args.per_site, args.requests)
        busy = time.monotonic() - t0
        used = [b - a for a, b in zip(idle0, await _cpu(nodes), strict=True)]
        calls = store.calls
        await store.clear()
    finally:
        await redis.aclose()
    base0 = await _cpu(nodes)
    await asyncio.sleep(min(busy, 10.0))
    idle = [(b - a) * busy / min(busy, 10.0) for a, b in zip(base0, await _cpu(nodes), strict=True)]
    spent = [max(u - i, 0.0) for u, i in zip(used, idle, strict=True)]
    print(f"N={partitions}: {busy:.1f}s, Redis CPU per master (s) {[round(s, 3) for s in spent]} "
          f"(housekeeping subtracted: {[round(i, 3) for i in idle]})", flush=True)
    return max(spent) / sum(spent), calls / args.requests


async def _run(url: str, ports: list[int], args: Load) -> dict[str, Any]:
    nodes = [Redis(host="127.0.0.1", port=p, socket_timeout=30) for p in ports]
    try:
        share3, trips3 = await _measure(url, nodes, 3, args)
        share1, trips1 = await _measure(url, nodes, 1, args)
    finally:
        for node in nodes:
            await node.aclose()
    return {"cluster_max_master_share": round(share3, 3), "cluster_max_master_share_n1": round(share1, 3),
            "cluster_round_trips_per_request": round(trips3, 3),
            "cluster_round_trips_per_request_n1": round(trips1, 3), "cluster_websites": args.websites,
            "cluster_requests": args.requests}


def run(state: Path, args: Load) -> dict[str, Any]:
    """Start a local 3-master cluster in ``state``, measure, stop it."""
    cluster = start_redis_cluster(state / "cluster")
    try:
        return asyncio.run(_run(cluster.url, [n.port for n in cluster.nodes], args))
    finally:
        cluster.stop()
