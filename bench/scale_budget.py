"""Redis cost of the byte budget at scale: part of ``python -m bench scale``.

Drives the byte budget's own scripts through their wrappers
(:class:`middlewares.byte_budget.store.BudgetStore`,
:class:`middlewares.byte_budget.budgets.Budgets`) against the benchmark's
private redis-server and reads the server's CPU time (``INFO cpu``):

* ``redis_us_per_budget_download_lease<L>``: a reservation and its settle on
  every website (1,000 websites, sizes learned), per download covered, with
  leases of L = 1 and 128 downloads (``BYTE_BUDGET_LEASE_DOWNLOADS``);
  ``python -m bench scale`` adds the frontier's ``redis_us_per_request`` to
  give ``redis_us_per_request_budgeted[_lease1]``.
* ``redis_us_per_denial_L<L>``: a reservation denied by the budget on a website
  whose window log holds L = 10, 1,000, 100,000 settled entries.
* ``redis_us_per_overrides_refresh_100k``: one worker's refresh of the
  run-time overrides with 100,000 of them, none changed since its last refresh.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from scrapy.utils.test import get_crawler

from middlewares.byte_budget.budgets import Budgets
from middlewares.byte_budget.config import ByteBudgetConfig
from middlewares.byte_budget.store import BudgetStore, Denied, Reserved, overrides_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

PAGE = 20_000  # bytes per download
BIG = 10**13  # a budget that never binds
CONCURRENCY = 50  # within the client pool's connections


async def cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def budget_store(url: str, **settings: Any) -> tuple[BudgetStore, ByteBudgetConfig, Any]:
    crawler = get_crawler(settings_dict={"BYTE_BUDGET_REDIS_URL": url, "BYTE_BUDGET_KEY_PREFIX": "bench",
                                         "REDIS_SOCKET_TIMEOUT": 600, **settings})
    config = ByteBudgetConfig.from_settings(crawler.settings)
    store = BudgetStore(crawler, config)
    store.open()
    return store, config, crawler


async def _chunked(calls: list[Any]) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(calls), CONCURRENCY):
        out.extend(await asyncio.gather(*calls[i:i + CONCURRENCY]))
    return out


async def per_download(redis: Redis, url: str, lease: int, websites: int, rounds: int) -> float:
    """Redis CPU µs per download for a reservation (a lease of ``lease``) and its settle on every website."""
    store, _, _ = budget_store(url, BYTE_BUDGET_LEASE_DOWNLOADS=lease)
    sites = [f"shop-{w}.test" for w in range(websites)]

    async def one(site: str) -> int:
        grant = await store.reserve(site, BIG, 0)
        assert isinstance(grant, Reserved), grant
        downloads = max(min(lease, grant.granted // grant.n), 1)
        await store.settle(site, [grant.member], downloads * PAGE, [PAGE] * downloads)
        return downloads

    try:
        for _ in range(2):  # learn the sizes (32 of them) first
            await _chunked([one(s) for s in sites])
        before = await cpu(redis)
        downloads = 0
        for _ in range(rounds):
            downloads += sum(await _chunked([one(s) for s in sites]))
        return (await cpu(redis) - before) * 1e6 / downloads
    finally:
        await store.aclose()


async def per_denial(redis: Redis, url: str, entries: int, denials: int) -> float:
    """Redis CPU µs per denied reservation of a website whose window log holds ``entries`` settled entries."""
    store, _, _ = budget_store(url, BYTE_BUDGET_WINDOW_SECONDS=3600)
    site = f"full-{entries}.test"
    size = 1000
    try:
        await _chunked([store.settle(site, [], size, [-1]) for _ in range(entries)])
        budget = entries * size - 1  # the window is full: every reservation is denied
        before = await cpu(redis)
        answers = await _chunked([store.reserve(site, budget, 0) for _ in range(denials)])
        us = (await cpu(redis) - before) * 1e6 / denials
        assert all(isinstance(a, Denied) for a in answers), answers[:3]
        return us
    finally:
        await store.aclose()


async def per_refresh(redis: Redis, url: str, overrides: int, refreshes: int) -> float:
    """Redis CPU µs per refresh of ``overrides`` run-time overrides, none changed since the last one."""
    store, config, crawler = budget_store(url)
    try:
        key = overrides_key(config.prefix)
        names = [f"site-{i}.test" for i in range(overrides)]
        for i in range(0, overrides, 10_000):
            await redis.hset(key, mapping=dict.fromkeys(names[i:i + 10_000], "100000"))
        await _mark_changed(redis, config.prefix)
        budgets = Budgets(crawler, config, store)
        await budgets.refresh()  # what a worker does at open
        assert budgets.budget_for("site-7.test") == 100_000
        before = await cpu(redis)
        for _ in range(refreshes):
            await budgets.refresh()
        return (await cpu(redis) - before) * 1e6 / refreshes
    finally:
        await store.aclose()


async def _mark_changed(redis: Redis, prefix: str) -> None:
    """What the command line does after it writes an override (nothing before the change counter existed)."""
    from middlewares.byte_budget import store

    key = getattr(store, "overrides_version_key", None)  # absent in the scripts before it: "before" runs
    if key is not None:
        await redis.incr(key(prefix))


async def run(redis: Redis, url: str, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lease in (1, 128):
        await redis.flushall()
        rounds = 2 if lease == 1 else 1
        out[f"redis_us_per_budget_download_lease{lease}"] = round(
            await per_download(redis, url, lease, 1000, rounds), 2)
    for entries, label in ((10, "L10"), (1000, "L1000"), (100_000, "L100k")):
        await redis.flushall()
        out[f"redis_us_per_denial_{label}"] = round(await per_denial(redis, url, entries, 2000), 1)
    await redis.flushall()
    out["redis_us_per_overrides_refresh_100k"] = round(await per_refresh(redis, url, 100_000, 5 if quick else 20), 1)
    await redis.flushall()
    return out
