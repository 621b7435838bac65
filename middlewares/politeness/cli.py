"""Command line for run-time request rates and a look at a website's state: ``python -m middlewares.politeness``.

::

    python -m middlewares.politeness rate set shop-a.test 10/60   # requests / seconds
    python -m middlewares.politeness rate set shop-b.test none    # no limit, whatever the settings say
    python -m middlewares.politeness rate unset shop-a.test       # back to the settings
    python -m middlewares.politeness rate list
    python -m middlewares.politeness show shop-a.test             # park, backoff level, breaker, gates
    python -m middlewares.politeness reset shop-a.test            # forget its park, backoff and breaker

Overrides live in the Redis hash ``<prefix>:pol:rate``; every worker reads it
every ``POLITENESS_REFRESH_SECONDS`` (1 s), so a change applies within that
time plus at most ``POLITENESS_GATE_PARK_MAX_SECONDS`` for a website parked by
its gate. Redis URL and prefix come from the project settings
(``REDIS_URL`` / ``POLITENESS_REDIS_URL``, ``POLITENESS_KEY_PREFIX``) unless
given with ``--redis-url`` / ``--prefix``.
"""

from __future__ import annotations

import argparse
import time

from crawler.redis_client import RedisClientConfig
from crawler.website import registrable_domain
from middlewares.politeness.config import parse_rate
from middlewares.politeness.store import Event, active_key, events_channel, rate_overrides_key, website_keys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m middlewares.politeness",
                                     description="Run-time request rates and politeness state, shared by all workers.")
    parser.add_argument("--redis-url", help="default: the project's POLITENESS_REDIS_URL or REDIS_URL")
    parser.add_argument("--prefix", help="Redis key prefix; default: POLITENESS_KEY_PREFIX or BOT_NAME")
    sub = parser.add_subparsers(dest="command", required=True)
    rate = sub.add_parser("rate", help="run-time request rates").add_subparsers(dest="action", required=True)
    p_set = rate.add_parser("set", help="set a website's rate: 'requests/seconds', or 'none'")
    p_set.add_argument("website")
    p_set.add_argument("rate")
    rate.add_parser("unset", help="drop a website's run-time rate").add_argument("website")
    rate.add_parser("list", help="list run-time rates")
    sub.add_parser("show", help="a website's park, backoff level, breaker and gates").add_argument("website")
    sub.add_parser("reset", help="forget a website's park, backoff level and breaker").add_argument("website")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    from scrapy.utils.project import get_project_settings

    settings = get_project_settings()
    prefix = args.prefix or settings.get("POLITENESS_KEY_PREFIX") or settings.get("BOT_NAME") or "crawler"
    website = getattr(args, "website", "").lower().rstrip(".")
    if website and website != registrable_domain(website) and settings.get("WEBSITE_KEY", "domain") == "domain":
        parser.error(f"{website!r} is not a website key: with WEBSITE_KEY='domain' use "
                     f"{registrable_domain(website)!r}")
    client = RedisClientConfig.from_settings(settings, args.redis_url or settings.get("POLITENESS_REDIS_URL"))
    key = rate_overrides_key(prefix)
    with client.sync_client() as r:
        if args.command == "rate" and args.action == "set":
            try:
                rate = parse_rate("rate", args.rate)
            except ValueError as exc:
                parser.error(str(exc))
            r.hset(key, website, str(rate) if rate else "none")
            print(f"{website}: {rate or 'no limit'} (workers apply it within POLITENESS_REFRESH_SECONDS)")
        elif args.command == "rate" and args.action == "unset":
            print(f"{website}: run-time rate removed" if r.hdel(key, website) else f"{website}: had none")
        elif args.command == "rate":
            for site, value in sorted(r.hgetall(key).items()):
                print(f"{site.decode()}\t{value.decode()}")
        elif args.command == "show":
            state, nxt, log = website_keys(prefix, website)
            fields = {k.decode(): v.decode() for k, v in r.hgetall(state).items()}
            now = time.time()
            until = float(fields.get("until", 0))
            print(f"{website}: parked {max(until - now, 0):.1f}s more; backoff level {fields.get('level', 0)}; "
                  f"breaker {fields.get('breaker', 'closed')} (failures {fields.get('fails', 0)}, "
                  f"opens {fields.get('opens', 0)}); probe {'wanted' if fields.get('probe') == '1' else 'no'}; "
                  f"Crawl-delay gate next {float(r.get(nxt) or 0) - now:.2f}s; {r.zcard(log)} rate permits logged")
        else:
            r.delete(*website_keys(prefix, website))
            r.zrem(active_key(prefix), website)
            r.publish(events_channel(prefix), Event(website, 0.0, "recovered").encode())
            print(f"{website}: politeness state forgotten")
    return 0
