"""``python -m bench mongo``: the item chain (validate + enrich + journal + bulk upsert) vs raw pymongo.

Both sides write the same upserts (``UpdateOne(filter, {"$set": doc},
upsert=True)``, the filters and documents our writer builds), with the same
batch size and write concern, through ``AsyncMongoClient`` to the same
SecantusDB server, into fresh collections with the same unique index. The
chain's time runs from its first item to the end of ``close_spider`` (every
item in MongoDB); the raw side's from its first ``bulk_write`` to its last.
Runs alternate, medians over repeats. Validation alone (``ValidatePipeline``
on valid items, one core, no I/O) is measured separately.

Last line: ``{"pipeline_vs_raw": median ratio, "validate_items_per_s": median,
...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import emit, median, table
from devtools.services import DEFAULT_STATE, start_secantus


def _pairs(n: int) -> list[tuple[Any, Any]]:
    from tests.pipeline_chain import product, response_for

    body = b"<html><body>" + b"x" * 2000 + b"</body></html>"
    return [(response_for(p, body=body + str(i).encode()), p) for i, p in enumerate(product(i) for i in range(n))]


async def _pipeline_run(uri: str, db: str, n: int, batch: int, journal: Path) -> tuple[float, list[Any]]:
    """Items/s through the chain, and the upserts it sent (for the raw side)."""
    from tests.pipeline_chain import Chain, chain_crawler

    pairs = _pairs(n)
    crawler = chain_crawler(uri, db, journal, MONGO_WRITER_BATCH_SIZE=batch, LOG_LEVEL="WARNING")
    chain = Chain(crawler)
    await chain.open()
    start = time.perf_counter()
    await chain.feed(pairs, concurrency=8)
    await chain.close()
    elapsed = time.perf_counter() - start
    stats = chain.stats
    assert stats["mongo_writer/written"] == n and stats["mongo_writer/left_in_journal"] == 0, stats
    return n / elapsed, chain.scraped


async def _build_ops(uri: str, db: str, n: int, batch: int, journal: Path) -> tuple[list[Any], dict[str, Any]]:
    from tests.pipeline_chain import Chain, chain_crawler

    crawler = chain_crawler(uri, db, journal, MONGO_WRITER_BATCH_SIZE=batch)
    chain = Chain(crawler)
    chain.validate.open_spider()
    chain.enrich.open_spider()
    ops = []
    for seq, (response, original) in enumerate(_pairs(n)):
        (item,) = list(chain.middleware.process_spider_output(response, [original]))
        enriched = chain.enrich.process_item(chain.validate.process_item(item))
        ops.append(chain.writer._update(chain.writer._decode(seq, chain.writer._encode(enriched))))
    return ops, chain.writer.config.write_concern


async def _raw_run(uri: str, db: str, ops: list[Any], batch: int, write_concern: dict[str, Any]) -> float:
    from pymongo import AsyncMongoClient
    from pymongo.write_concern import WriteConcern

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        coll = client[db].get_collection("product", write_concern=WriteConcern(**write_concern))
        await coll.create_index([("canonical_url", 1)], unique=True, name="canonical_url_unique")
        start = time.perf_counter()
        for i in range(0, len(ops), batch):
            await coll.bulk_write(ops[i:i + batch], ordered=False)
        elapsed = time.perf_counter() - start
        assert await coll.count_documents({}) == len(ops)
    finally:
        await client.close()
    return len(ops) / elapsed


def _validate_rate(n: int) -> float:
    from scrapy import Spider
    from scrapy.utils.misc import build_from_crawler
    from scrapy.utils.test import get_crawler

    from pipelines.validate import ValidatePipeline
    from settings import VALIDATE_SCHEMAS
    from tests.pipeline_chain import article, product

    crawler = get_crawler(Spider, settings_dict={"VALIDATE_SCHEMAS": VALIDATE_SCHEMAS})
    crawler.stats.open_spider()  # type: ignore[union-attr]
    pipe = build_from_crawler(ValidatePipeline, crawler)
    items = [product(i) if i % 4 else article(i) for i in range(1000)]
    process = pipe.process_item
    start = time.perf_counter()
    for _ in range(n // len(items)):
        for item in items:
            process(item)
    elapsed = time.perf_counter() - start
    assert crawler.stats.get_value("validate/valid") == n // len(items) * len(items)  # type: ignore[union-attr]
    return n // len(items) * len(items) / elapsed


def _drop(uri: str, db: str) -> None:
    from pymongo import MongoClient

    with MongoClient(uri) as client:
        client.drop_database(db)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench mongo", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--validate-items", type=int, default=200_000)
    args = parser.parse_args(argv)

    state = DEFAULT_STATE / "bench"
    work = Path(tempfile.mkdtemp(prefix="bench-mongo-"))
    server = start_secantus(state)
    chain_rates: list[float] = []
    raw_rates: list[float] = []
    ratios: list[float] = []
    try:
        ops, write_concern = asyncio.run(_build_ops(server.url, "unused", args.items, args.batch, work / "j0"))
        for i in range(args.repeats):
            order = ("pipeline", "raw") if i % 2 == 0 else ("raw", "pipeline")
            got: dict[str, float] = {}
            for side in order:
                db = f"bench_{side}_{uuid.uuid4().hex[:8]}"
                if side == "pipeline":
                    got[side] = asyncio.run(_pipeline_run(server.url, db, args.items, args.batch, work / "j"))[0]
                else:
                    got[side] = asyncio.run(_raw_run(server.url, db, ops, args.batch, write_concern))
                _drop(server.url, db)
            chain_rates.append(got["pipeline"])
            raw_rates.append(got["raw"])
            ratios.append(got["pipeline"] / got["raw"])
            print(f"  repeat {i + 1}/{args.repeats}: pipeline {got['pipeline']:.0f} items/s, raw bulk_write "
                  f"{got['raw']:.0f} ops/s, ratio {ratios[-1]:.3f}", flush=True)
        validate = [_validate_rate(args.validate_items) for _ in range(args.repeats)]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nMongoDB writes, {args.items} upserts per run, batch {args.batch}, write concern {write_concern}, "
          f"SecantusDB on loopback (shared, loaded 2-core machine)")
    print(table([
        ["pipeline (validate+enrich+journal+bulk upsert)", *(round(r) for r in chain_rates),
         round(median(chain_rates))],
        ["raw pymongo bulk_write (same upserts)", *(round(r) for r in raw_rates), round(median(raw_rates))],
        ["ratio", *ratios, median(ratios)],
    ], ["items/s", *(f"run {i + 1}" for i in range(args.repeats)), "median"]))
    print(f"\nValidation alone (ValidatePipeline.process_item, one core): median {median(validate):,.0f} items/s "
          f"(runs: {', '.join(f'{v:,.0f}' for v in validate)}); goal >= 50,000")
    emit({
        "pipeline_vs_raw": round(median(ratios), 3),
        "validate_items_per_s": round(median(validate)),
        "pipeline_items_per_s": round(median(chain_rates), 1),
        "raw_items_per_s": round(median(raw_rates), 1),
        "items": args.items,
        "batch_size": args.batch,
        "repeats": args.repeats,
    })
    return 0
