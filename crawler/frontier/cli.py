"""``python -m crawler``: look after a spider's shared frontier.

Commands::

    python -m crawler seed SPIDER [URL_OR_JSON ...] [--file FILE]   push seeds to the spider's redis_key
    python -m crawler queues SPIDER [--limit N]                     per-website depths and not-before times
    python -m crawler release SPIDER WEBSITE                        remove a website's not-before mark
    python -m crawler clear SPIDER [--seeds] --yes                  delete the spider's frontier
    python -m crawler reindex SPIDER                                rebuild the per-website depth index
    python -m crawler seen SPIDER check|forget URL ... [--fingerprint]
                                                                    was a URL seen; forget it (crawl it again)
    python -m crawler failed SPIDER [--limit N] [--requeue --yes]   requests that finally failed; re-queue them

Redis and key names come from the project settings (``REDIS_URL``,
``FRONTIER_KEY_PREFIX``, ``FRONTIER_PARTITIONS``, ``REDIS_START_URLS_KEY``, a
spider's ``redis_key``); ``--redis-url`` overrides ``REDIS_URL``,
``--partitions`` ``FRONTIER_PARTITIONS``. Every command reads and acts on
every partition; one run with another number of partitions than the frontier
was written with is refused (``clear`` excepted). Seeds are checked before anything is
pushed, by the workers' own check (:func:`crawler.frontier.gate.parse_seed`):
one bad line and nothing is pushed, with every bad line reported; meta keys a
worker would drop are reported as warnings. Redis URLs are printed with their
password redacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from crawler.frontier.config import partitions_setting
from crawler.frontier.gate import GateConfig, GateError, parse_seed
from crawler.frontier.partitions import PartitionedStore, PartitionLayoutError
from crawler.frontier.seen import SeenConfig
from crawler.frontier.store import MODE_REQUEUE, PushEntry
from crawler.redis_client import RedisClientConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from scrapy.settings import Settings

_PUSH_CHUNK = 1000


def _settings() -> Settings:
    from scrapy.utils.project import get_project_settings

    return get_project_settings()


def _spider_class(settings: Settings, name: str) -> type:
    """Spider class ``name``; SystemExit if unknown."""
    from scrapy.spiderloader import SpiderLoader

    loader = SpiderLoader.from_settings(settings)
    try:
        return loader.load(name)
    except KeyError:
        raise SystemExit(f"unknown spider {name!r}; known: {', '.join(sorted(loader.list()))}") from None


def _spider_keys(settings: Settings, name: str, cls: type) -> tuple[str, str]:
    """(frontier key prefix, seed list key) of spider ``name``."""
    seeds = getattr(cls, "redis_key", None) or settings.get("REDIS_START_URLS_KEY", "%(name)s:start_urls")
    prefix = settings.get("FRONTIER_KEY_PREFIX", "{%(spider)s}")
    return str(prefix) % {"spider": name}, str(seeds) % {"name": name}


def check_seed(line: str, spider_cls: type, gate: GateConfig) -> tuple[str | None, list[str]]:
    """(why ``line`` is refused or None, meta keys a worker would drop): the workers' own check."""
    try:
        seed = parse_seed(line.encode("utf-8"), spider_cls, gate)
    except GateError as exc:
        return str(exc), []
    return None, seed.dropped_meta


def _seed_lines(args: argparse.Namespace) -> list[str]:
    lines = [s.strip() for s in args.seeds]
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        lines += [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


async def _seed(redis: Redis, seeds_key: str, lines: list[str]) -> int:
    for i in range(0, len(lines), _PUSH_CHUNK):
        await redis.rpush(seeds_key, *lines[i:i + _PUSH_CHUNK])
    return len(lines)


async def _queues(redis: Redis, store: PartitionedStore, seeds_key: str, limit: int) -> str:
    queues = await store.queues()
    seconds, micros = await redis.time()
    now = seconds + micros / 1e6
    queues.sort(key=lambda q: (-q.depth, q.website))
    rows = [["website", "queued", "ready", "not before"]]
    for q in queues[:limit]:
        ready = "now" if q.ready_at <= now else f"in {q.ready_at - now:.1f}s"
        nb = time.strftime("%H:%M:%S", time.gmtime(q.not_before)) + " UTC" if q.not_before and q.not_before > now \
            else "-"
        rows.append([q.website, str(q.depth), ready, nb])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    if len(queues) > limit:
        lines.append(f"... {len(queues) - limit} more websites")
    workers = sorted((await store.workers()).items(), key=lambda x: x[1])
    lines += [
        "",
        f"total queued {sum(q.depth for q in queues)} in {sum(1 for q in queues if q.depth)} websites; "
        f"seen fingerprints {await store.seen_count()}",
        f"seeds waiting {await redis.llen(seeds_key)} ({seeds_key}); rejected seeds "
        f"{await redis.llen(seeds_key + ':dead')} ({seeds_key}:dead); undecodable requests "
        f"{await redis.llen(store.dead_key)} ({store.dead_key})",
        f"workers seen: {len(workers)}" + "".join(
            f"\n  {w}  last busy {now - t:.0f}s ago" for w, t in workers[-10:]),
    ]
    return "\n".join(lines)


def _fresh_payload(payload: str) -> bytes:
    """The stored request with its retry count reset (a re-queued request gets its retries again)."""
    data = json.loads(payload)
    if isinstance(data.get("meta"), dict):
        data["meta"].pop("retry_times", None)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def _failed(redis: Redis, store: PartitionedStore, args: argparse.Namespace) -> int:
    lists = await store.failed_records()  # one failed list per partition
    records = [json.loads(r) for _, raw in lists for r in raw]
    where = ", ".join(key for key, _ in lists)
    if not args.requeue:
        records.sort(key=lambda rec: rec.get("time", 0))
        for rec in records[-args.limit:]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rec.get("time", 0)))
            print(f"{when} UTC  {rec['url']}  {rec['reason']}")
        print(f"{len(records)} failed requests in {where}")
        return 0
    if not args.yes:
        print(f"this puts the {len(records)} requests of {where} back in their queues; add --yes",
              file=sys.stderr)
        return 2
    entries = [PushEntry(r["website"], r["fingerprint"], MODE_REQUEUE, float(r["score"]), 0,
                         _fresh_payload(r["payload"])) for r in records if r.get("payload", "{}") != "{}"]
    for i in range(0, len(entries), _PUSH_CHUNK):
        await store.push(entries[i:i + _PUSH_CHUNK], "cli")
    # Failures recorded meanwhile were appended after these: only the ones re-queued go.
    for key, raw in lists:
        await redis.ltrim(key, len(raw), -1)
    print(f"re-queued {len(entries)} of {len(records)} failed requests")
    return 0


async def _seed_command(args: argparse.Namespace, settings: Settings, cls: type, redis: Redis,
                        seeds_key: str) -> int:
    lines = _seed_lines(args)
    gate = GateConfig.from_settings(settings)
    checked = [(n, line, *check_seed(line, cls, gate)) for n, line in enumerate(lines, 1)]
    bad = [(n, line, why) for n, line, why, _ in checked if why]
    for n, _, _, dropped in checked:
        if dropped:
            print(f"seed {n}: warning: meta keys {', '.join(dropped)} will be dropped by the workers "
                  "(not in FRONTIER_SEED_META_ALLOW)", file=sys.stderr)
    if bad:
        for n, line, why in bad:
            print(f"seed {n}: {why}: {line[:120]}", file=sys.stderr)
        print(f"{len(bad)} bad seeds: nothing pushed", file=sys.stderr)
        return 2
    if not lines:
        print("no seeds given (arguments or --file)", file=sys.stderr)
        return 2
    print(f"pushed {await _seed(redis, seeds_key, lines)} seeds to {seeds_key}")
    return 0


def _fingerprints(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The fingerprints of ``args.urls`` as the workers compute them (or the values, with --fingerprint)."""
    if args.fingerprint:
        return list(args.urls)
    from scrapy import Request
    from scrapy.utils.request import RequestFingerprinter

    if settings.get("REQUEST_FINGERPRINTER_CLASS") not in (None, RequestFingerprinter,
                                                           "scrapy.utils.request.RequestFingerprinter"):
        raise SystemExit("this project sets REQUEST_FINGERPRINTER_CLASS: give fingerprints with --fingerprint")
    fingerprinter = RequestFingerprinter()
    return [fingerprinter.fingerprint(Request(url)).hex() for url in args.urls]


async def _seen_command(args: argparse.Namespace, settings: Settings, store: PartitionedStore) -> int:
    fps = _fingerprints(args, settings)
    if args.action == "forget":
        await store.seen("forget", fps)
        print(f"forgot {len(fps)}: a new push of each is stored and crawled again")
        return 0
    for url, flag in zip(args.urls, await store.seen("check", fps), strict=True):
        print(f"{'seen' if flag else 'not seen'}  {url}")
    return 0


async def _layout_refused(store: PartitionedStore) -> bool:
    """The frontier was written with another number of partitions: said why (nothing is read or written)."""
    try:
        await store.check_layout(record=False)
    except PartitionLayoutError as exc:
        print(exc, file=sys.stderr)
        return True
    return False


async def _clear(args: argparse.Namespace, redis: Redis, store: PartitionedStore, seeds_key: str) -> int:
    if not args.yes:
        keys = ", ".join(f"{p.prefix}:*" for p in store.partitions)
        print(f"this deletes every {keys} key; add --yes", file=sys.stderr)
        return 2
    deleted = await store.clear()
    if args.seeds:
        deleted += await redis.delete(seeds_key, seeds_key + ":dead")
    print(f"deleted {deleted} keys")
    return 0


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    cls = _spider_class(settings, args.spider)
    prefix, seeds_key = _spider_keys(settings, args.spider, cls)
    partitions = args.partitions or partitions_setting(settings)
    redis = RedisClientConfig.from_settings(settings, args.redis_url).async_client()
    store = PartitionedStore(redis, prefix, SeenConfig.from_settings(settings).spec, partitions)
    try:
        if args.command != "clear" and await _layout_refused(store):
            return 2
        if args.command == "seen":
            return await _seen_command(args, settings, store)
        if args.command == "seed":
            return await _seed_command(args, settings, cls, redis, seeds_key)
        if args.command == "queues":
            print(await _queues(redis, store, seeds_key, args.limit))
        elif args.command == "release":
            if await store.release_not_before(args.website):
                print(f"released {args.website}: its not-before mark is removed")
            else:
                print(f"{args.website} had no not-before mark")
        elif args.command == "reindex":
            print(f"depth index rebuilt: {await store.reindex()} requests queued")
        elif args.command == "clear":
            return await _clear(args, redis, store, seeds_key)
        elif args.command == "failed":
            return await _failed(redis, store, args)
        return 0
    finally:
        await redis.aclose()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawler", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="overrides the REDIS_URL setting")
    parser.add_argument("--partitions", type=_positive, help="overrides the FRONTIER_PARTITIONS setting")
    # --redis-url is accepted after the command too (SUPPRESS: an absent one does not undo the first).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=argparse.SUPPRESS, help="overrides the REDIS_URL setting")
    common.add_argument("--partitions", type=_positive, default=argparse.SUPPRESS,
                        help="overrides the FRONTIER_PARTITIONS setting (to drain or clear an older layout)")
    sub = parser.add_subparsers(dest="command", required=True)
    seed = sub.add_parser("seed", parents=[common],
                          help="push seeds (URLs or JSON objects) to a spider's redis_key")
    seed.add_argument("spider")
    seed.add_argument("seeds", nargs="*", help="URLs or JSON seeds")
    seed.add_argument("--file", help="one seed per line ('-' for stdin; '#' comments)")
    queues = sub.add_parser("queues", parents=[common], help="per-website queue depths and not-before times")
    queues.add_argument("spider")
    queues.add_argument("--limit", type=int, default=50, help="websites to list (deepest first)")
    release = sub.add_parser("release", parents=[common], help="remove a website's not-before mark (serve it now)")
    release.add_argument("spider")
    release.add_argument("website", help="the website key, as `queues` lists it")
    reindex = sub.add_parser("reindex", parents=[common],
                             help="rebuild the per-website depth index (a frontier from before it existed; "
                                  "run it while no worker runs)")
    reindex.add_argument("spider")
    clear = sub.add_parser("clear", parents=[common], help="delete a spider's frontier (queues, seen set, marks)")
    clear.add_argument("spider")
    clear.add_argument("--seeds", action="store_true", help="also delete its seed and dead-letter lists")
    clear.add_argument("--yes", action="store_true", help="really delete")
    seen = sub.add_parser("seen", parents=[common], help="was a URL seen (deduplicated); forget it to crawl it again")
    seen.add_argument("spider")
    seen.add_argument("action", choices=["check", "forget"])
    seen.add_argument("urls", nargs="+", metavar="URL")
    seen.add_argument("--fingerprint", action="store_true", help="the arguments are fingerprints (hex), not URLs")
    failed = sub.add_parser("failed", parents=[common], help="requests that finally failed, with their reason")
    failed.add_argument("spider")
    failed.add_argument("--limit", type=int, default=50, help="how many to list (newest last)")
    failed.add_argument("--requeue", action="store_true", help="put them back in their queues")
    failed.add_argument("--yes", action="store_true", help="really re-queue")
    args = parser.parse_args(argv)
    return asyncio.run(_run(args, _settings()))
