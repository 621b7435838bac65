"""The byte budget's Lua scripts against a real redis-server: learned sizes, exposure, concurrency, long logs."""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

import pytest

from middlewares.byte_budget.store import load_script, website_keys
from tests.lua_budget_helpers import LEASE, PREFIX, SITE, Budget
from tests.redis_clients import async_redis

if TYPE_CHECKING:
    import redis

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)


def learned(b: Budget) -> tuple[int, int]:
    """The website's (estimate, exposure)."""
    state = b.r.hgetall(b.keys[2])
    return int(state[b"estimate"]), int(state[b"exposure"])


def test_estimate_is_learned_from_settled_sizes(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=10**9, window=60)
    # Nothing learned yet: the default estimate, 32 of them as the exposure of a large budget.
    assert b.reserve(0, default_estimate=7777)["amount"] == 32 * 7777
    for _ in range(40):
        g = b.reserve(0)
        b.settle(g["member"], 2000, learn=2000)
    assert learned(b) == (2000, 2000)
    assert b.reserve(0)["amount"] == 4000  # twice the largest size learned
    sizes = list(range(1000, 33_000, 1000))  # 32 sizes: the 0.9-quantile is the 29th
    for size in sizes:
        g = b.reserve(0)
        b.settle(g["member"], size, learn=size)
    assert learned(b) == (29_000, 32_000)


def test_without_learned_sizes_a_tight_budget_serves_one_download_at_a_time(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=100_000, window=60)
    first = b.reserve(0, default_estimate=4000, holder="a")
    assert first["overdraft"] == 1  # the token's, with the room there is
    waiting = b.reserve(0, default_estimate=4000, holder="b")
    assert not waiting["granted"]
    # Its turn comes when the token's holder is settled, any moment: not a time to sleep until.
    assert waiting["timed"] == 0
    b.settle(first["member"], 3000, learn=3000, holder="a")  # within what it reserved: the token is free
    assert b.reserve(0, default_estimate=4000, holder="b")["overdraft"] == 1


def test_a_download_of_unknown_size_is_exposed_to_the_stop_slack(sync_client: redis.Redis) -> None:
    """Sizes not known: stopped, it may cost what the server pushed (the slack). Two that do not fit take turns."""
    learning = Budget(sync_client, budget=10**9, window=60)
    for _ in range(20):
        g = learning.reserve(0)
        learning.settle(g["member"], 2000, learn=2000)
    b = Budget(sync_client, budget=10**9, window=60)
    assert b.reserve(0)["amount"] == 32 * 5000  # 32 default estimates while under 32 sizes are known
    assert b.reserve(0, stop_slack=300_000)["amount"] == 300_000
    # Two slacks do not fit in b: one download at a time, with the token.
    first = b.reserve(0, stop_slack=600_000_000, holder="a")
    assert first["overdraft"] == 1
    assert not b.reserve(0, stop_slack=600_000_000, holder="b")["granted"]
    b.settle(first["member"], 2000, learn=2000, holder="a")  # within its reservation: the token is free at once
    assert b.reserve(0, stop_slack=600_000_000, holder="b")["overdraft"] == 1


def test_known_sizes_free_a_small_budget_from_the_stop_slack_until_a_surprise(sync_client: redis.Redis) -> None:
    """After 256 sizes a download reserves twice the largest, not the slack; a page past that starts over."""
    slack = 4 * 1024 * 1024
    learning = Budget(sync_client, budget=10**9, window=60)
    b = Budget(sync_client, budget=150_000, window=60)

    def learn(count: int) -> None:
        for _ in range(count):
            g = learning.reserve(0)
            learning.settle(g["member"], 0, learn=1000)  # learned, not counted: the window stays empty

    learn(255)
    assert b.reserve(0, stop_slack=slack, holder="a")["overdraft"] == 1  # 255 known: turns with the token
    sync_client.delete(*b.keys)
    learn(256)
    first = b.reserve(0, stop_slack=slack, holder="a")
    second = b.reserve(0, stop_slack=slack, holder="b")
    assert (first["amount"], first["overdraft"]) == (2000, 0)  # twice the largest, side by side
    assert (second["amount"], second["overdraft"]) == (2000, 0)
    # A download covered for 50 KB, more than twice the largest page known: a surprise.
    draw = b._draw(keys=b.keys, args=[b.budget, b.window, 48_000, LEASE, "a", 50_000])
    assert int(draw[0]) == 1
    assert int(sync_client.hget(b.keys[2], "learned")) == 0
    # Exposed to the stop slack again (more than b / 2): one download at a time, with the token.
    assert b.reserve(0, stop_slack=slack, holder="c")["overdraft"] == 1
    assert b.reserve(0, stop_slack=slack, holder="d")["granted"] is False


def test_one_big_page_does_not_inflate_the_estimate(sync_client: redis.Redis) -> None:
    """800 B pages and one of 24 KB: the estimate stays at the small pages' size, the exposure at the big one's."""
    b = Budget(sync_client, budget=10**9, window=60)
    for size in [800] * 20 + [24_000] + [800] * 3:
        g = b.reserve(0)
        b.settle(g["member"], size, learn=size)
    assert learned(b) == (800, 24_000)
    g = b.reserve(0)
    b.settle(g["member"], 50, learn=-1)  # robots.txt and stopped downloads teach nothing
    assert learned(b) == (800, 24_000)
    for _ in range(252):  # remembered for 256 downloads (3 + 252 + 1), then forgotten
        g = b.reserve(0)
        b.settle(g["member"], 800, learn=800)
    assert learned(b) == (800, 24_000)
    g = b.reserve(0)
    b.settle(g["member"], 800, learn=800)
    assert learned(b) == (800, 800)


def test_keys_are_hash_tagged_per_website() -> None:
    keys = website_keys(PREFIX, SITE)
    assert {k.split("{")[1].split("}")[0] for k in keys} == {SITE}
    assert all(k.startswith(f"{PREFIX}:bb:{{{SITE}}}:") for k in keys)


def test_script_flush_recovery(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=3000, window=60)
    g = b.reserve(1000)
    sync_client.script_flush()
    assert sync_client.script_exists(b._reserve.sha, b._settle.sha) == [False, False]
    b.settle(g["member"], 500)  # NOSCRIPT -> reloaded by register_script's EVALSHA fallback
    assert b.reserve(2500)["granted"]
    assert not b.reserve(1)["granted"]
    assert sync_client.script_exists(b._reserve.sha, b._settle.sha) == [True, True]


def test_50_concurrent_reservers_never_exceed_the_budget(redis_url: str) -> None:
    budget, window = 20_000, 0.4

    async def main() -> list[tuple[float, int]]:
        client = async_redis(redis_url, max_connections=60)
        reserve, settle = load_script(client, "reserve"), load_script(client, "settle")
        keys = website_keys(PREFIX, SITE)
        log: list[tuple[float, float, int]] = []  # (grant, settle, bytes) by the server's clock
        rng = random.Random(7)
        granted_at_once = 0

        async def worker() -> None:
            nonlocal granted_at_once
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                n = rng.randint(500, 3000)
                res = await reserve(keys=keys, args=[budget, window, n, 1000, LEASE, 0.01, 1, "", 0])
                if not int(res[0]):
                    await asyncio.sleep(0.01)
                    continue
                true = rng.randint(1, n)  # strict mode: never above the grant
                await asyncio.sleep(rng.random() * 0.02)  # the "download"
                done = await settle(keys=keys, args=[res[1], true, window, LEASE, "", 0.9, true])
                log.append((float(res[2]), float(done[0]), true))

        # First round: 50 reservers at once on an empty budget of 10 pages.
        results = await asyncio.gather(*[
            reserve(keys=keys, args=[10 * 1000 + 999, window, 1000, 1000, LEASE, 0.01, 1, "", 0]) for _ in range(50)
        ])
        granted_at_once = sum(int(x[0]) for x in results)
        await client.delete(*keys)
        await asyncio.gather(*[worker() for _ in range(50)])
        await client.aclose()
        assert granted_at_once == 10
        return [(end, size) for _, end, size in log]

    entries = asyncio.run(main())
    assert len(entries) > 50
    total = sum(size for _, size in entries)
    # Every sliding window [s, s + window) of settle times holds <= budget bytes.
    entries.sort()
    worst = 0
    j = 0
    running = 0
    for i, (end, size) in enumerate(entries):
        running += size
        while entries[j][0] <= end - window:
            running -= entries[j][1]
            j += 1
        worst = max(worst, running)
        assert i >= j
    assert worst <= budget
    # And the reservers kept it busy: well over one budget's worth in 1.5 s.
    assert total > 2 * budget


def test_denial_finds_when_room_frees_beyond_1000_entries(sync_client: redis.Redis) -> None:
    """A denial says when enough settled bytes leave the window even when that is past the 1,000th entry
    (the log's index by bytes settled: O(log L), not a copy of the first 1,000 entries)."""
    window = 3600.0
    b = Budget(sync_client, 1_500_000 - 1, window)
    for _ in range(1501):
        b.settle("", 1000)
    assert sync_client.zcard(b.keys[0]) == 1501 and b.used() == 1_501_000
    # need = used + n - b = 1,201,001 bytes: the 1,202nd entry brings them (times come back as 14 digits)
    denied = b.reserve(n=1_200_000)
    assert not denied["granted"]
    (_, at), = sync_client.zrange(b.keys[0], 1201, 1201, withscores=True)
    assert denied["not_before"] == pytest.approx(at + window, abs=1e-3)
    # Entries that left the window leave the index: with half the log gone, the same need is further on.
    sync_client.zremrangebyrank(b.keys[0], 0, 749)  # as if they had left the window, ...
    sync_client.zremrangebyrank(b.keys[3], 0, 749)  # ... which removes them from both
    sync_client.hset(b.keys[2], "used", 751_000)
    denied = b.reserve(n=949_000)  # need = 751,000 + 949,000 - 1,499,999 = 200,001 bytes: the 201st entry left
    (_, at), = sync_client.zrange(b.keys[0], 200, 200, withscores=True)
    assert denied["not_before"] == pytest.approx(at + window, abs=1e-3)


def test_a_lease_is_capped_at_a_quarter_of_the_room_not_refused(sync_client: redis.Redis) -> None:
    # Unknown sizes are exposed to the 4 MiB stop slack: 160 of them (a lease's wish) never fit in
    # 100 MB, but a lease capped at a quarter of the room left does, so downloads share one reservation.
    slack = 4 * 1024 * 1024
    g = Budget(sync_client, budget=100_000_000, window=60).reserve(stop_slack=slack, downloads=160)
    assert g["granted"] and g["n"] == slack
    assert g["amount"] == slack + (100_000_000 - slack) // 4
    # Where the capped lease would not cover two downloads, a single reservation.
    small = Budget(sync_client, budget=10_000_000, window=60, site="small.test").reserve(stop_slack=slack,
                                                                                         downloads=160)
    assert small["granted"] and small["amount"] == slack
