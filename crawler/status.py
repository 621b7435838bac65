"""``python -m crawler status [SPIDER]``: the whole cluster at a glance, read from Redis.

Per spider (every spider of the project when none is named):

* workers: the worker ids the frontier has seen most recently, and how long
  ago each was last busy;
* queued: the deepest ``--top`` websites and the total: the frontier's depth
  index (``<p>:depths``, kept by its Lua scripts, a few seconds behind) says
  which websites, and each one's depth is read from its queue; the total
  (``<p>:queued``) is exact;
* parked: websites no worker may serve before a time (a frontier not-before
  mark), until when, and why: ``byte_budget`` (the website's window is spent),
  ``retry_after``, ``backoff``, ``breaker_open``, ``breaker_half_open``,
  ``crawl_delay``, ``request_rate`` (politeness), or ``not_before`` (none of
  these explains the mark: another downloader middleware set it);
* politeness: the websites most recently given cluster-wide politeness state
  (parks, breakers, failures counted) and what holds each back;
* byte budget: each budgeted website's bytes counted in the current window
  against its budget *b* (run-time override, ``BYTE_BUDGET_PER_WEBSITE``, or
  ``BYTE_BUDGET_DEFAULT`` for the websites shown);
* seeds waiting, rejected seeds, undecodable requests, fingerprints seen.

With ``FRONTIER_PARTITIONS`` > 1, every partition is read as above and the
results merged (counts added, lists merged and cut to ``--top``).

* leases: the workers holding leased requests (popped, not yet acknowledged),
  how many each holds and when its lease ends (a worker past its deadline is
  dead: its requests go back to their queues at the next pop or heartbeat of
  any worker); requests that finally failed (``python -m crawler failed``).

Cost: three pipelined round trips of a fixed number of commands plus a few per
website *shown* (``--top`` per list, and the budgeted websites); never
anything per website with queued requests, nor per queued request.
``--json`` prints one JSON object; ``--watch [SECONDS]`` redraws in place.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from crawler.frontier.config import partitions_setting
from crawler.frontier.partitions import partition_prefixes
from crawler.frontier.seen import SeenConfig
from crawler.frontier.store import FrontierStore
from crawler.redis_client import RedisClientConfig
from middlewares.byte_budget.store import overrides_key
from middlewares.byte_budget.store import website_keys as budget_keys
from middlewares.politeness.store import active_websites, read_park_states

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from redis.asyncio import Redis
    from scrapy.settings import Settings

    from middlewares.politeness.store import ParkState


@dataclass(slots=True)
class SpiderStatus:
    """One spider's frontier and budgets, as :func:`read_status` found them."""

    spider: str
    now: float
    workers: list[dict[str, Any]] = field(default_factory=list)  # {"id", "last_busy_ago"}
    workers_total: int = 0
    websites_queued: int = 0
    queued_total: int = 0
    top: list[dict[str, Any]] = field(default_factory=list)  # {"website", "queued", "ready_in"}
    parked: list[dict[str, Any]] = field(default_factory=list)  # {"website", "until", "in", "reasons", "reason"}
    parked_total: int = 0
    politeness: list[dict[str, Any]] = field(default_factory=list)  # {"website", "reason", "until", "in", ...}
    politeness_total: int = 0
    budgets: list[dict[str, Any]] = field(default_factory=list)  # {"website", "used", "budget", "source"}
    seeds_waiting: int = 0
    seeds_rejected: int = 0
    undecodable: int = 0
    seen: int = 0
    index_missing: int = 0  # websites with queued requests while the depth index is missing (`crawler reindex`)
    leases: list[dict[str, Any]] = field(default_factory=list)  # {"worker", "held", "deadline_in"}
    lease_workers: int = 0  # workers holding leases
    failed: int = 0  # requests in the failed list


@dataclass(frozen=True, slots=True)
class StatusKeys:
    """The Redis keys one spider's status reads (names as in crawler/frontier/store.py)."""

    prefix: str
    seeds: str
    budget_prefix: str
    politeness_prefix: str = "crawler"
    seen_spec: str = ""  # crawler.frontier.seen.SeenConfig.spec: "" for the exact set kept for ever
    partitions: int = 1  # FRONTIER_PARTITIONS: each partition is read as a frontier, then merged

    def frontier(self, field_name: str) -> str:
        return f"{self.prefix}:{field_name}"


def _budget(raw: Any) -> int | None:
    """A budget value as the byte budget stores it: bytes, or None for unlimited."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    if text.strip().lower() in ("", "none", "unlimited"):
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Budgets:
    """Budgets in force: run-time overrides, then the spider's settings, then the default."""

    overrides: dict[str, int | None]
    per_website: dict[str, int | None]
    default: int | None

    def of(self, website: str) -> tuple[int | None, str]:
        if website in self.overrides:
            return self.overrides[website], "run-time override"
        if website in self.per_website:
            return self.per_website[website], "BYTE_BUDGET_PER_WEBSITE"
        return self.default, "BYTE_BUDGET_DEFAULT"


async def read_status(redis: Redis, spider: str, keys: StatusKeys, *, top: int,
                      per_website: dict[str, Any], default_budget: Any) -> SpiderStatus:
    """Read one spider's status: three round trips per partition, their commands bounded by ``top``
    (module docstring)."""
    if keys.partitions == 1:
        return await _read_partition(redis, spider, keys, top, per_website, default_budget)
    parts = [await _read_partition(redis, spider, replace(keys, prefix=p, partitions=1), top, per_website,
                                   default_budget) for p in partition_prefixes(keys.prefix, keys.partitions)]
    return _merged(parts, top)


def _merged(parts: list[SpiderStatus], top: int) -> SpiderStatus:
    """The partitions' statuses as one: counts added, lists merged and cut to ``top``."""
    out = replace(parts[0], now=max(p.now for p in parts))
    for name in ("websites_queued", "queued_total", "parked_total", "undecodable", "seen", "index_missing",
                 "lease_workers", "failed"):
        setattr(out, name, sum(getattr(p, name) for p in parts))
    workers: dict[str, float] = {}
    for w in (w for p in parts for w in p.workers):
        workers[w["id"]] = min(workers.get(w["id"], w["last_busy_ago"]), w["last_busy_ago"])
    out.workers = [{"id": w, "last_busy_ago": t} for w, t in sorted(workers.items(), key=lambda x: x[1])][:top]
    out.workers_total = max(*(p.workers_total for p in parts), len(workers))
    out.top = sorted((r for p in parts for r in p.top), key=lambda r: (-r["queued"], r["website"]))[:top]
    out.parked = sorted((r for p in parts for r in p.parked), key=lambda r: r["until"])[:top]
    out.leases = sorted((r for p in parts for r in p.leases), key=lambda r: r["deadline_in"])[:top]
    budgets = {b["website"]: b for p in parts for b in p.budgets}
    out.budgets = [budgets[w] for w in sorted(budgets)]
    return out


async def _read_partition(redis: Redis, spider: str, keys: StatusKeys, top: int, per_website: dict[str, Any],
                          default_budget: Any) -> SpiderStatus:
    f = keys.frontier
    secs, micros = await redis.time()  # apart: a Redis Cluster client refuses a pipelined TIME
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrange(f("leases"), 0, top - 1, withscores=True)  # soonest deadline first
        pipe.zcard(f("leases"))
        pipe.llen(f("failed"))
        pipe.zrange(f("depths"), 0, top - 1, desc=True)  # the order; each depth is read from its queue below
        pipe.exists(f("depths"))
        pipe.zcard(f("sites"))
        pipe.zrange(f("workers"), 0, top - 1, desc=True, withscores=True)
        pipe.zcard(f("workers"))
        pipe.scard(f("seen"))  # the exact set kept for ever; other dedupe modes are counted below
        pipe.llen(keys.seeds)
        pipe.llen(keys.seeds + ":dead")
        pipe.llen(f("dead"))
        pipe.hgetall(overrides_key(keys.budget_prefix))
        (leases, lease_workers, failed, deepest, indexed, sites, workers, workers_total, seen, seeds,
         rejected, dead, overrides) = await pipe.execute()
    now = secs + micros / 1e6
    if keys.seen_spec:  # generations or a Bloom filter: lua/seen.lua counts them (one call)
        seen = await FrontierStore(redis, keys.prefix, keys.seen_spec).seen_count()
    status = SpiderStatus(spider, now, workers_total=int(workers_total), websites_queued=int(sites),
                          seen=int(seen), seeds_waiting=int(seeds), seeds_rejected=int(rejected),
                          undecodable=int(dead), index_missing=0 if indexed else int(sites))
    status.workers = [{"id": w.decode(), "last_busy_ago": round(now - t, 1)} for w, t in workers]
    status.lease_workers, status.failed = int(lease_workers), int(failed)
    leases = [(w.decode(), float(t)) for w, t in leases]
    names = [w.decode() for w in deepest]
    recent, status.politeness_total = await active_websites(redis, keys.politeness_prefix, top)
    depths, queued, ready_at, held, marks, parked_total = await _queues_now(redis, f, names, leases, now, top)
    status.queued_total = queued
    status.leases = [{"worker": w, "held": h, "deadline_in": round(t - now, 1)}
                     for (w, t), h in zip(leases, held, strict=True)]
    rows = sorted(zip(names, depths, ready_at, strict=True), key=lambda row: -row[1])
    status.top = [{"website": w, "queued": d, "ready_in": round(max(0.0, (r or now) - now), 1)}
                  for w, d, r in rows if d]
    status.parked_total = int(parked_total)
    parked = [(w.decode(), float(t)) for w, t in marks]
    budgets = _Budgets({k.decode(): _budget(v) for k, v in overrides.items()},
                       {str(k).lower(): _budget(v) for k, v in per_website.items()}, _budget(default_budget))
    shown = set(names) | {w for w, _ in parked}
    budgeted = sorted(set(budgets.overrides) | set(budgets.per_website)
                      | ({w for w in shown if budgets.default is not None}))
    states = await read_park_states(redis, keys.politeness_prefix, sorted({w for w, _ in parked} | set(recent)),
                                    now)
    spent = await _budget_use(redis, keys, sorted(set(budgeted) | {w for w, _ in parked}))
    status.budgets = [{"website": w, "used": spent[w][0], "budget": budgets.of(w)[0], "source": budgets.of(w)[1]}
                      for w in budgeted]
    status.parked = [_parked_row(w, t, now, states[w], spent[w], budgets.of(w)[0]) for w, t in parked]
    status.politeness = [_politeness_row(states[w], now) for w in recent]
    return status


async def _queues_now(redis: Redis, f: Callable[[str], str], names: list[str], leases: list[tuple[str, float]],
                      now: float, top: int) -> tuple[list[int], int, list[Any], list[int], list[Any], int]:
    """In one transaction (one moment): the depth of each website in ``names``, read from its queue, the
    total queued, when each may next be served, the requests each lease holder holds, and the ``top``
    not-before marks still ahead with their count."""
    async with redis.pipeline(transaction=True) as pipe:
        for website in names:
            pipe.zcard(f(f"q:{website}"))
        pipe.get(f("queued"))
        if names:  # ZMSCORE needs a member
            pipe.zmscore(f("sites"), names)
        for worker, _ in leases:
            pipe.hlen(f(f"pops:{worker}"))
        pipe.zrange(f("not_before"), f"({now!r}", "+inf", byscore=True, offset=0, num=top, withscores=True)
        pipe.zcount(f("not_before"), f"({now!r}", "+inf")
        replies = await pipe.execute()
    k = len(names)
    depths, queued = replies[:k], replies[k]
    ready = replies[k + 1] if names else []
    held, marks, parked_total = replies[k + 1 + bool(names):-2], replies[-2], replies[-1]
    return [int(d) for d in depths], int(queued or 0), ready, [int(h) for h in held], marks, int(parked_total)


async def _budget_use(redis: Redis, keys: StatusKeys, websites: list[str]) -> dict[str, tuple[int, float]]:
    """(bytes counted in the current window, exhausted until) per website: one round trip."""
    if not websites:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for website in websites:
            pipe.hmget(budget_keys(keys.budget_prefix, website)[2], "used", "warned_until")
        replies = await pipe.execute()
    return {w: (int(float(used or 0)), float(warned or 0)) for w, (used, warned) in zip(websites, replies,
                                                                                         strict=True)}


_WHY = {"byte_budget": "byte budget spent this window", "retry_after": "Retry-After", "backoff": "backoff",
        "breaker_open": "breaker open", "breaker_half_open": "breaker half-open, waiting for its probe",
        "crawl_delay": "Crawl-delay", "request_rate": "request rate", "failures": "failures counted",
        "not_before": "not-before mark (no politeness or budget state explains it)"}


def _parked_row(website: str, until: float, now: float, state: ParkState, use: tuple[int, float],
                budget: int | None) -> dict[str, Any]:
    reasons = []
    if use[1] > now:  # reserve.lua marks a window in which the budget denied a download
        reasons.append("byte_budget")
    if state.reason:
        reasons.append(state.reason)
    reasons = reasons or ["not_before"]
    text = "; ".join(_WHY[r] + (f" (level {state.level})" if r == "backoff" else "")
                     + (f" ({use[0]} of {budget} bytes)" if r == "byte_budget" and budget is not None else "")
                     for r in reasons)
    return {"website": website, "until": until, "in": round(until - now, 1), "reasons": reasons, "reason": text}


def _politeness_row(state: ParkState, now: float) -> dict[str, Any]:
    reason = state.reason if state.reason in ("retry_after", "backoff", "breaker_open", "breaker_half_open") \
        else ("failures" if state.failures else "")
    return {"website": state.website, "reason": reason, "until": state.until,
            "in": round(max(state.until - now, 0.0), 1), "level": state.level, "failures": state.failures}


def render(statuses: list[SpiderStatus]) -> str:
    """The status as text for people."""
    lines: list[str] = []
    for s in statuses:
        lines.append(f"== {s.spider}  ({time.strftime('%H:%M:%S', time.gmtime(s.now))} UTC, Redis clock)")
        lines.append(f"workers: {s.workers_total}" + "".join(
            f"\n  {w['id']}  last busy {w['last_busy_ago']:.0f}s ago" for w in s.workers))
        lines.append(f"queued: {s.queued_total} requests in {s.websites_queued} websites")
        lines += [f"  {r['website']:<40} {r['queued']:>9}  " + ("ready" if r["ready_in"] <= 0
                                                                 else f"ready in {r['ready_in']:.1f}s")
                  for r in s.top]
        if s.websites_queued > len(s.top):
            lines.append(f"  ... {s.websites_queued - len(s.top)} more websites")
        if s.index_missing:
            lines.append(f"  ({s.index_missing} websites with requests are missing from the depth index: "
                         f"python -m crawler reindex {s.spider})")
        lines.append(f"parked: {s.parked_total} websites")
        lines += [f"  {p['website']:<40} until {time.strftime('%H:%M:%S', time.gmtime(p['until']))} UTC "
                  f"(in {p['in']:.1f}s; {p['reason']})" for p in s.parked]
        if s.politeness_total:
            lines.append(f"politeness state: {s.politeness_total} websites (latest first)")
            lines += [f"  {p['website']:<40} " + (_WHY.get(p["reason"], p["reason"]) or "clean")
                      + (f" for {p['in']:.1f}s more" if p["in"] > 0 else "")
                      + (f"; backoff level {p['level']}" if p["level"] else "")
                      + (f"; {p['failures']} failures counted" if p["failures"] else "") for p in s.politeness]
        if s.budgets:
            lines.append("byte budget (bytes counted in the current window / b):")
            lines += [f"  {b['website']:<40} {b['used']:>12} / "
                      f"{'unlimited' if b['budget'] is None else b['budget']}  ({b['source']})" for b in s.budgets]
        lines.append(f"leases: {sum(x['held'] for x in s.leases)} requests held by {s.lease_workers} workers"
                     + "".join(f"\n  {x['worker']}  {x['held']} held, lease "
                               + (f"ends in {x['deadline_in']:.0f}s" if x["deadline_in"] >= 0
                                  else f"expired {-x['deadline_in']:.0f}s ago (dead: reclaimed at the next pop)")
                               for x in s.leases))
        lines.append(f"seeds waiting {s.seeds_waiting}, rejected {s.seeds_rejected}; undecodable requests "
                     f"{s.undecodable}; fingerprints seen {s.seen}; failed requests {s.failed}"
                     + (f" (python -m crawler failed {s.spider})" if s.failed else ""))
        lines.append("")
    return "\n".join(lines)


def _keys(settings: Settings, spider: str) -> StatusKeys:
    from scrapy.spiderloader import get_spider_loader

    try:
        cls = get_spider_loader(settings).load(spider)
    except KeyError:
        raise SystemExit(f"unknown spider {spider!r}; known: "
                         f"{', '.join(sorted(get_spider_loader(settings).list()))}") from None
    seeds = getattr(cls, "redis_key", None) or settings.get("REDIS_START_URLS_KEY", "%(name)s:start_urls")
    prefix = str(settings.get("FRONTIER_KEY_PREFIX", "{%(spider)s}")) % {"spider": spider}
    budget_prefix = str(settings.get("BYTE_BUDGET_KEY_PREFIX") or settings.get("BOT_NAME") or "crawler")
    politeness_prefix = str(settings.get("POLITENESS_KEY_PREFIX") or settings.get("BOT_NAME") or "crawler")
    return StatusKeys(prefix, str(seeds) % {"name": spider}, budget_prefix, politeness_prefix,
                      SeenConfig.from_settings(settings).spec, partitions_setting(settings))


async def _read_all(settings: Settings, args: argparse.Namespace) -> list[SpiderStatus]:
    from scrapy.spiderloader import get_spider_loader

    spiders = [args.spider] if args.spider else sorted(get_spider_loader(settings).list())
    redis = RedisClientConfig.from_settings(settings, args.redis_url).async_client()
    try:
        out = []
        for spider in spiders:
            spider_settings = settings.copy()
            cls = get_spider_loader(settings).load(spider)
            cls.update_settings(spider_settings)  # per-site budgets live in custom_settings
            per_website = spider_settings.get("BYTE_BUDGET_PER_WEBSITE") or {}
            if isinstance(per_website, str):
                per_website = json.loads(per_website)
            if args.partitions:
                spider_settings.set("FRONTIER_PARTITIONS", args.partitions, priority="cmdline")
            out.append(await read_status(redis, spider, _keys(spider_settings, spider), top=args.top,
                                         per_website=dict(per_website),
                                         default_budget=spider_settings.get("BYTE_BUDGET_DEFAULT")))
        return out
    finally:
        await redis.aclose()


def _text(statuses: list[SpiderStatus], as_json: bool) -> str:
    return json.dumps({s.spider: asdict(s) for s in statuses}, indent=1) if as_json else render(statuses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawler status", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="overrides the REDIS_URL setting")
    parser.add_argument("spider", nargs="?", help="one spider (default: every spider of the project)")
    parser.add_argument("--top", type=int, default=20, help="websites shown per list (default 20)")
    parser.add_argument("--partitions", type=int, help="overrides the FRONTIER_PARTITIONS setting")
    parser.add_argument("--json", action="store_true", help="one JSON object, for programs")
    parser.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    if args.partitions is not None and args.partitions < 1:
        parser.error(f"--partitions must be >= 1, got {args.partitions}")
    from scrapy.utils.project import get_project_settings

    settings = get_project_settings()
    if args.watch:
        return _watch(settings, args)
    try:
        statuses = asyncio.run(_read_all(settings, args))
    except KeyboardInterrupt:
        return 0
    print(_text(statuses, args.json))
    return 0


def _watch(settings: Settings, args: argparse.Namespace) -> int:
    """Redraw every ``args.watch`` seconds until SIGINT (Ctrl-C).

    SIGINT only sets a flag, looked at between reads and while waiting: left to ``asyncio.run``, it cancels
    the read, and a cancellation that arrives as redis-py's ``wait_for`` completes is lost on Python 3.11
    (CPython gh-86296, crawler/stopping.py), so a Ctrl-C was now and then ignored. A read still under way
    ends within the Redis socket timeout."""
    interrupted = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, interrupt)  # asyncio.run leaves a handler that is not Python's default alone
    while not interrupted:
        statuses = asyncio.run(_read_all(settings, args))
        text = _text(statuses, args.json)
        sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")  # home, clear: redraw in place like top
        sys.stdout.flush()
        until = time.monotonic() + args.watch
        while not interrupted and (left := until - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
    return 0
