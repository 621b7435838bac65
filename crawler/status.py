"""``python -m crawler status [SPIDER]``: the whole cluster at a glance, read from Redis.

Per spider (every spider of the project when none is named):

* workers: every worker id the frontier has seen, and how long ago it was last busy;
* queued: requests per website (the deepest ``--top`` websites) and the total;
* parked: websites no worker may serve before a time (a not-before mark: the
  byte budget or a downloader middleware parked it), and until when;
* byte budget: each budgeted website's bytes counted in the current window
  against its budget *b* (run-time override, ``BYTE_BUDGET_PER_WEBSITE``, or
  ``BYTE_BUDGET_DEFAULT`` for the websites shown);
* seeds waiting, rejected seeds, undecodable requests, fingerprints seen.

Cost: a fixed number of Redis commands, plus one O(1) ``ZCARD`` per website
with queued requests (pipelined, 1,000 per round trip) and one ``HGET`` per
budgeted website shown. Never anything per queued request: no queue is read.
``--json`` prints one JSON object; ``--watch [SECONDS]`` redraws in place.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from crawler.redis_client import RedisClientConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from scrapy.settings import Settings

_CHUNK = 1000  # commands per pipelined round trip


@dataclass(slots=True)
class SpiderStatus:
    """One spider's frontier and budgets, as :func:`read_status` found them."""

    spider: str
    now: float
    workers: list[dict[str, Any]] = field(default_factory=list)  # {"id", "last_busy_ago"}
    websites_queued: int = 0
    queued_total: int = 0
    top: list[dict[str, Any]] = field(default_factory=list)  # {"website", "queued", "ready_in"}
    parked: list[dict[str, Any]] = field(default_factory=list)  # {"website", "until", "in", "reason"}
    parked_total: int = 0
    budgets: list[dict[str, Any]] = field(default_factory=list)  # {"website", "used", "budget", "source"}
    seeds_waiting: int = 0
    seeds_rejected: int = 0
    undecodable: int = 0
    seen: int = 0


@dataclass(frozen=True, slots=True)
class StatusKeys:
    """The Redis keys one spider's status reads (names as in crawler/frontier/store.py)."""

    prefix: str
    seeds: str
    budget_prefix: str

    def frontier(self, field_name: str) -> str:
        return f"{self.prefix}:{field_name}"

    def queue(self, website: str) -> str:
        return f"{self.prefix}:q:{website}"

    def budget_state(self, website: str) -> str:
        return f"{self.budget_prefix}:bb:{{{website}}}:state"

    @property
    def budget_overrides(self) -> str:
        return f"{self.budget_prefix}:bb:overrides"


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


async def read_status(redis: Redis, spider: str, keys: StatusKeys, *, top: int,
                      per_website: dict[str, Any], default_budget: Any) -> SpiderStatus:
    """Read one spider's status: a fixed number of commands plus one per website (see module docstring)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zrange(keys.frontier("sites"), 0, -1, withscores=True)
        pipe.zrange(keys.frontier("not_before"), 0, -1, withscores=True)
        pipe.zrange(keys.frontier("workers"), 0, -1, withscores=True)
        pipe.scard(keys.frontier("seen"))
        pipe.llen(keys.seeds)
        pipe.llen(keys.seeds + ":dead")
        pipe.llen(keys.frontier("dead"))
        pipe.hgetall(keys.budget_overrides)
        (secs, micros), sites, marks, workers, seen, seeds, rejected, dead, overrides = await pipe.execute()
    now = secs + micros / 1e6
    status = SpiderStatus(spider, now, seen=int(seen), seeds_waiting=int(seeds), seeds_rejected=int(rejected),
                          undecodable=int(dead))
    status.workers = [{"id": w.decode(), "last_busy_ago": round(now - t, 1)}
                      for w, t in sorted(workers, key=lambda wt: -wt[1])]
    websites = [(s.decode(), float(score)) for s, score in sites]
    depths: list[int] = []
    for i in range(0, len(websites), _CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for website, _ in websites[i:i + _CHUNK]:
                pipe.zcard(keys.queue(website))
            depths += [int(d) for d in await pipe.execute()]
    ranked = sorted(zip(websites, depths, strict=True), key=lambda x: (-x[1], x[0][0]))
    status.websites_queued = sum(1 for d in depths if d)
    status.queued_total = sum(depths)
    status.top = [{"website": w, "queued": d, "ready_in": round(max(0.0, score - now), 1)}
                  for (w, score), d in ranked[:top]]
    parked = sorted(((s.decode(), float(t)) for s, t in marks if float(t) > now), key=lambda x: x[1])
    status.parked_total = len(parked)
    status.parked = [{"website": w, "until": t, "in": round(t - now, 1), "reason": "not-before mark"}
                     for w, t in parked[:top]]
    status.budgets = await _budgets(redis, keys, status, overrides, per_website, default_budget)
    return status


async def _budgets(redis: Redis, keys: StatusKeys, status: SpiderStatus, overrides: dict[bytes, bytes],
                   per_website: dict[str, Any], default_budget: Any) -> list[dict[str, Any]]:
    """Budgeted websites shown: overridden or configured ones, and (with a default budget) those in the top."""
    budgets: dict[str, tuple[int | None, str]] = {}
    if _budget(default_budget) is not None:
        for row in status.top + status.parked:
            budgets[row["website"]] = (_budget(default_budget), "BYTE_BUDGET_DEFAULT")
    for site, value in per_website.items():
        budgets[str(site).lower()] = (_budget(value), "BYTE_BUDGET_PER_WEBSITE")
    for name, raw in overrides.items():
        budgets[name.decode()] = (_budget(raw), "run-time override")
    shown = sorted(budgets.items())  # as many as operators configured, plus the websites shown above
    async with redis.pipeline(transaction=False) as pipe:
        for website, _ in shown:
            pipe.hget(keys.budget_state(website), "used")
        used = await pipe.execute() if shown else []
    return [{"website": w, "used": int(float(u or 0)), "budget": b, "source": source}
            for (w, (b, source)), u in zip(shown, used, strict=True)]


def render(statuses: list[SpiderStatus]) -> str:
    """The status as text for people."""
    lines: list[str] = []
    for s in statuses:
        lines.append(f"== {s.spider}  ({time.strftime('%H:%M:%S', time.gmtime(s.now))} UTC, Redis clock)")
        lines.append(f"workers: {len(s.workers)}" + "".join(
            f"\n  {w['id']}  last busy {w['last_busy_ago']:.0f}s ago" for w in s.workers[:20]))
        lines.append(f"queued: {s.queued_total} requests in {s.websites_queued} websites")
        lines += [f"  {r['website']:<40} {r['queued']:>9}  " + ("ready" if r["ready_in"] <= 0
                                                                 else f"ready in {r['ready_in']:.1f}s")
                  for r in s.top]
        if s.websites_queued > len(s.top):
            lines.append(f"  ... {s.websites_queued - len(s.top)} more websites")
        lines.append(f"parked: {s.parked_total} websites")
        lines += [f"  {p['website']:<40} until {time.strftime('%H:%M:%S', time.gmtime(p['until']))} UTC "
                  f"(in {p['in']:.1f}s; {p['reason']})" for p in s.parked]
        if s.budgets:
            lines.append("byte budget (bytes counted in the current window / b):")
            lines += [f"  {b['website']:<40} {b['used']:>12} / "
                      f"{'unlimited' if b['budget'] is None else b['budget']}  ({b['source']})" for b in s.budgets]
        lines.append(f"seeds waiting {s.seeds_waiting}, rejected {s.seeds_rejected}; undecodable requests "
                     f"{s.undecodable}; fingerprints seen {s.seen}")
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
    return StatusKeys(prefix, str(seeds) % {"name": spider}, budget_prefix)


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
            out.append(await read_status(redis, spider, _keys(settings, spider), top=args.top,
                                         per_website=dict(per_website),
                                         default_budget=spider_settings.get("BYTE_BUDGET_DEFAULT")))
        return out
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawler status", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="overrides the REDIS_URL setting")
    parser.add_argument("spider", nargs="?", help="one spider (default: every spider of the project)")
    parser.add_argument("--top", type=int, default=20, help="websites shown per list (default 20)")
    parser.add_argument("--json", action="store_true", help="one JSON object, for programs")
    parser.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    from scrapy.utils.project import get_project_settings

    settings = get_project_settings()
    try:
        while True:
            statuses = asyncio.run(_read_all(settings, args))
            text = json.dumps({s.spider: asdict(s) for s in statuses}, indent=1) if args.json else render(statuses)
            if args.watch:
                sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")  # home, clear: redraw in place like top
                sys.stdout.flush()
                time.sleep(args.watch)
                continue
            print(text)
            return 0
    except KeyboardInterrupt:
        return 0
