"""Command line for run-time byte budgets: ``python -m middlewares.byte_budget``.

::

    python -m middlewares.byte_budget set shop-a.test 200000   # bytes per window
    python -m middlewares.byte_budget set shop-b.test unlimited
    python -m middlewares.byte_budget unset shop-a.test        # back to the settings
    python -m middlewares.byte_budget list
    python -m middlewares.byte_budget show shop-a.test         # the window right now

Overrides live in the Redis hash ``<prefix>:bb:overrides``; every worker reads
it every ``BYTE_BUDGET_REFRESH_SECONDS`` (2 s), so a change applies within that
time plus one reservation. Redis URL and prefix come from the project settings
(``REDIS_URL`` / ``BYTE_BUDGET_REDIS_URL``, ``BYTE_BUDGET_KEY_PREFIX``) unless
given with ``--redis-url`` / ``--prefix``.
"""

from __future__ import annotations

import argparse

from crawler.redis_client import RedisClientConfig
from crawler.website import registrable_domain
from middlewares.byte_budget.config import UNLIMITED, parse_budget
from middlewares.byte_budget.store import overrides_key, website_keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m middlewares.byte_budget",
                                     description="Run-time per-website byte budgets, shared by all workers.")
    parser.add_argument("--redis-url", help="default: the project's BYTE_BUDGET_REDIS_URL or REDIS_URL")
    parser.add_argument("--prefix", help="Redis key prefix; default: BYTE_BUDGET_KEY_PREFIX or BOT_NAME")
    sub = parser.add_subparsers(dest="command", required=True)
    p_set = sub.add_parser("set", help="set a website's budget (bytes per window, or 'unlimited')")
    p_set.add_argument("website")
    p_set.add_argument("budget")
    sub.add_parser("unset", help="drop a website's run-time override").add_argument("website")
    sub.add_parser("list", help="list run-time overrides")
    sub.add_parser("show", help="bytes counted in the current window").add_argument("website")
    args = parser.parse_args(argv)

    from scrapy.utils.project import get_project_settings

    settings = get_project_settings()
    prefix = args.prefix or settings.get("BYTE_BUDGET_KEY_PREFIX") or settings.get("BOT_NAME") or "crawler"
    key = overrides_key(prefix)
    website = getattr(args, "website", "").lower().rstrip(".")
    if website and website != registrable_domain(website) and settings.get("WEBSITE_KEY", "domain") == "domain":
        parser.error(f"{website!r} is not a website key: with WEBSITE_KEY='domain' use "
                     f"{registrable_domain(website)!r}")
    client = RedisClientConfig.from_settings(settings, args.redis_url or settings.get("BYTE_BUDGET_REDIS_URL"))
    with client.sync_client() as r:
        if args.command == "set":
            try:
                budget = parse_budget("budget", args.budget)
            except ValueError as exc:
                parser.error(str(exc))
            r.hset(key, website, UNLIMITED if budget is None else str(budget))
            print(f"{website}: {args.budget} (workers apply it within BYTE_BUDGET_REFRESH_SECONDS)")
        elif args.command == "unset":
            removed = r.hdel(key, website)
            print(f"{website}: override removed" if removed else f"{website}: had no override")
        elif args.command == "list":
            for site, value in sorted(r.hgetall(key).items()):
                print(f"{site.decode()}\t{value.decode()}")
        else:
            log, inflight, state = website_keys(prefix, website)
            used = r.hget(state, "used")
            mean = r.hget(state, "mean")
            print(f"{website}: counted {int(float(used or 0))} bytes in the window "
                  f"({r.zcard(log)} settled, {r.zcard(inflight)} in flight), "
                  f"learned mean size {float(mean or 0):.0f}")
    return 0


