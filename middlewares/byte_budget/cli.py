"""Command line for run-time byte budgets: ``python -m middlewares.byte_budget``.

::

    python -m middlewares.byte_budget set shop-a.test 200000   # bytes per window
    python -m middlewares.byte_budget set shop-b.test unlimited  # no budget (0 would block it)
    python -m middlewares.byte_budget unset shop-a.test        # back to the settings
    python -m middlewares.byte_budget list
    python -m middlewares.byte_budget show shop-a.test         # the window right now

Overrides live in the Redis hash ``<prefix>:bb:overrides``; after writing it
the command increments ``<prefix>:bb:overrides:version``, which every worker
reads every ``BYTE_BUDGET_REFRESH_SECONDS`` (2 s), reading the hash again when
it moved, so a change applies within that time plus one reservation. Redis URL and prefix come from the project settings
(``REDIS_URL`` / ``BYTE_BUDGET_REDIS_URL``, ``BYTE_BUDGET_KEY_PREFIX``) unless
given with ``--redis-url`` / ``--prefix``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from crawler.redis_client import RedisClientConfig
from crawler.website import registrable_domain
from middlewares.byte_budget.config import UNLIMITED, parse_budget
from middlewares.byte_budget.store import overrides_key, overrides_version_key, website_keys

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings


def main(argv: list[str] | None = None) -> int:
    # --redis-url and --prefix go before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=argparse.SUPPRESS,
                        help="default: the project's BYTE_BUDGET_REDIS_URL or REDIS_URL")
    common.add_argument("--prefix", default=argparse.SUPPRESS,
                        help="Redis key prefix; default: BYTE_BUDGET_KEY_PREFIX or BOT_NAME")
    parser = argparse.ArgumentParser(prog="python -m middlewares.byte_budget", parents=[common],
                                     description="Run-time per-website byte budgets, shared by all workers.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_set = sub.add_parser("set", parents=[common],
                           help=f"set a website's budget (bytes per window; 0 blocks it; or {UNLIMITED!r})")
    p_set.add_argument("website")
    p_set.add_argument("budget")
    sub.add_parser("unset", parents=[common], help="drop a website's run-time override").add_argument("website")
    sub.add_parser("list", parents=[common], help="list run-time overrides")
    sub.add_parser("show", parents=[common], help="bytes counted in the current window").add_argument("website")
    args = parser.parse_args(argv)
    redis_url = getattr(args, "redis_url", None)

    from scrapy.utils.project import get_project_settings

    settings = get_project_settings()
    prefix = getattr(args, "prefix", None) or settings.get("BYTE_BUDGET_KEY_PREFIX") or settings.get("BOT_NAME") \
        or "crawler"
    key = overrides_key(prefix)
    website = getattr(args, "website", "").lower().rstrip(".")
    if website and website != registrable_domain(website) and settings.get("WEBSITE_KEY", "domain") == "domain":
        parser.error(f"{website!r} is not a website key: with WEBSITE_KEY='domain' use "
                     f"{registrable_domain(website)!r}")
    client = RedisClientConfig.from_settings(settings, redis_url or settings.get("BYTE_BUDGET_REDIS_URL"))
    with client.sync_client() as r:
        if args.command == "set":
            try:
                budget = parse_budget("budget", args.budget)
            except ValueError as exc:
                parser.error(str(exc))
            r.hset(key, website, UNLIMITED if budget is None else str(budget))
            r.incr(overrides_version_key(prefix))  # after the hash: see budgets.Budgets.refresh
            print(f"{website}: {args.budget} (workers apply it within BYTE_BUDGET_REFRESH_SECONDS)")
        elif args.command == "unset":
            removed = r.hdel(key, website)
            r.incr(overrides_version_key(prefix))
            print(f"{website}: override removed" if removed else f"{website}: had no override")
        elif args.command == "list":
            for site, value in sorted(r.hgetall(key).items()):
                print(f"{site.decode()}\t{value.decode()}")
        else:
            return _show(r, prefix, website, settings)
    return 0


def _show(r: Any, prefix: str, website: str, settings: BaseSettings) -> int:
    log, inflight, state, _ = website_keys(prefix, website)
    override = r.hget(overrides_key(prefix), website)
    per_website = {str(k).lower() for k in (_per_website(settings))}
    if not r.exists(log, inflight, state) and override is None and website not in per_website:
        default = settings.get("BYTE_BUDGET_DEFAULT")
        print(f"{website}: unknown website: no run-time override, not in BYTE_BUDGET_PER_WEBSITE and nothing "
              f"counted in the window (BYTE_BUDGET_DEFAULT applies: "
              f"{UNLIMITED if parse_budget('BYTE_BUDGET_DEFAULT', default) is None else default})")
        return 1
    used = r.hget(state, "used")
    estimate = r.hget(state, "estimate")
    budget = override.decode() if override is not None else "from the settings"
    print(f"{website}: budget {budget}; counted {int(float(used or 0))} bytes in the window "
          f"({r.zcard(log)} settled, {r.zcard(inflight)} in flight), "
          f"learned size estimate {'none yet' if estimate is None else int(float(estimate))}")
    return 0


def _per_website(settings: BaseSettings) -> dict[str, Any]:
    raw = settings.get("BYTE_BUDGET_PER_WEBSITE") or {}
    if isinstance(raw, str):
        raw = json.loads(raw)
    return raw if isinstance(raw, dict) else {}


