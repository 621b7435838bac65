"""The byte budget's Lua scripts against a real redis-server."""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

import pytest

from middlewares.byte_budget.store import load_script, website_keys
from tests.redis_clients import async_redis, sync_redis

if TYPE_CHECKING:
    import redis

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)

PREFIX = "t"
SITE = "shop-a.test"
LEASE = 30.0
RETRY = 0.25


class Budget:
    """Thin caller of the two scripts, as the middleware calls them."""

    def __init__(self, r: redis.Redis, budget: int, window: float, site: str = SITE) -> None:
        self.r = r
        self.budget = budget
        self.window = window
        self.keys = website_keys(PREFIX, site)
        self._reserve = load_script(r, "reserve")
        self._draw = load_script(r, "draw")
        self._settle = load_script(r, "settle")

    def reserve(self, n: int = 0, lease: float = LEASE, default_estimate: int = 5000, holder: str = "",
                overdraft: bool = False, stop_slack: int = 0, downloads: int = 1) -> dict[str, Any]:
        res = self._reserve(keys=self.keys, args=[self.budget, self.window, n, default_estimate, lease, RETRY,
                                                  downloads, holder, int(overdraft), stop_slack])
        if int(res[0]):
            return {"granted": True, "member": res[1].decode(), "now": float(res[2]), "n": int(res[3]),
                    "amount": int(res[4]), "overdraft": int(res[5])}
        return {"granted": False, "not_before": float(res[1]), "now": float(res[2]), "n": int(res[3]),
                "warn": int(res[4]), "timed": int(res[6])}

    def draw(self, amount: int, holder: str) -> dict[str, Any]:
        res = self._draw(keys=self.keys, args=[self.budget, self.window, amount, LEASE, holder, 0])
        if int(res[0]):
            return {"granted": True, "member": res[1].decode(), "now": float(res[2]), "overdraft": int(res[3])}
        return {"granted": False, "now": float(res[2])}

    def settle(self, member: str | list[str], size: int, learn: int = -1, holder: str = "") -> float:
        members = ",".join(member) if isinstance(member, list) else member
        res = self._settle(keys=self.keys, args=[members, size, self.window, LEASE, holder, 0.9, learn])
        return float(res[0])

    def used(self) -> float:
        return float(self.r.hget(self.keys[2], "used") or 0)


def server_time(r: redis.Redis) -> float:
    sec, usec = r.time()
    return sec + usec / 1e6


def wait_until_server_time(r: redis.Redis, t: float) -> None:
    while (delta := t - server_time(r)) > 0:
        time.sleep(delta + 0.005)


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    client = sync_redis(redis_url)
    yield client
    client.close()


def test_zero_budget_grants_nothing(r: redis.Redis) -> None:
    b = Budget(r, budget=0, window=60)
    res = b.reserve(1)
    assert not res["granted"]
    assert res["not_before"] == pytest.approx(res["now"] + 60, abs=0.01)
    assert res["warn"] == 1
    assert not b.reserve(1)["granted"]
    assert b.reserve(1)["warn"] == 0  # the exhaustion is reported once per window
    assert r.zcard(b.keys[1]) == 0
    assert b.used() == 0


def test_a_denial_that_changes_nothing_writes_nothing(r: redis.Redis) -> None:
    b = Budget(r, budget=3000, window=60)
    b.settle(b.reserve(3000)["member"], 3000)
    assert b.reserve(1000)["warn"] == 1  # the first denial writes (the warning) and renews the keys
    full = (2 * 60 + LEASE) * 1000
    live = [b.keys[0], b.keys[2]]  # the log and the state (nothing in flight)
    assert all(0 < r.pttl(k) <= full for k in live)
    for k in live:
        r.pexpire(k, 100_000)  # as if written a while ago
    denied = b.reserve(1000)
    assert not denied["granted"] and denied["warn"] == 0
    # Read only: the TTLs the last write set run on (a denial renews nothing, replicates nothing).
    assert all(0 < r.pttl(k) <= 100_000 for k in live)
    assert b.used() == 3000


def test_exact_limit(r: redis.Redis) -> None:
    b = Budget(r, budget=3000, window=60)
    grants = [b.reserve(1000) for _ in range(3)]
    assert all(g["granted"] for g in grants)
    assert b.used() == 3000
    denied = b.reserve(1)
    assert not denied["granted"]
    # Only in-flight downloads hold the budget: try again soon, they may settle small
    # (a guess: a request waiting in place polls rather than sleeping until then).
    assert denied["not_before"] == pytest.approx(denied["now"] + RETRY, abs=0.01)
    assert denied["timed"] == 0
    b.settle(grants[0]["member"], 999)
    assert b.reserve(1)["granted"]  # 999 + 1000 + 1000 + 1 == 3000 exactly
    assert not b.reserve(1)["granted"]


def test_settle_down_frees_at_once(r: redis.Redis) -> None:
    b = Budget(r, budget=3000, window=60)
    g = b.reserve(3000)
    assert g["granted"]
    assert not b.reserve(2000)["granted"]
    b.settle(g["member"], 1000)
    assert b.used() == 1000
    assert b.reserve(2000)["granted"]


def test_settle_up_is_debt_until_it_leaves_the_window(r: redis.Redis) -> None:
    b = Budget(r, budget=3000, window=0.5)
    g = b.reserve(1000)
    settled_at = b.settle(g["member"], 5000)  # the page was 5x the estimate
    assert b.used() == 5000
    denied = b.reserve(100)
    assert not denied["granted"]
    # Free exactly when the 5000 bytes leave the window, by the server's clock.
    assert denied["not_before"] == pytest.approx(settled_at + 0.5, abs=0.001)
    assert denied["timed"] == 1
    wait_until_server_time(r, denied["not_before"])
    assert b.reserve(3000)["granted"]


def test_not_before_is_the_earliest_sufficient_expiry(r: redis.Redis) -> None:
    b = Budget(r, budget=3000, window=0.5)
    ends = []
    for _ in range(3):
        g = b.reserve(1000)
        ends.append(b.settle(g["member"], 1000))
    denied = b.reserve(2000)  # needs the first two entries gone
    assert not denied["granted"]
    assert denied["not_before"] == pytest.approx(ends[1] + 0.5, abs=0.001)
    wait_until_server_time(r, denied["not_before"])
    assert b.reserve(2000)["granted"]
    assert not b.reserve(1001)["granted"]


def test_times_are_the_servers(r: redis.Redis) -> None:
    """The scripts take no client time: grants, settles and not-before use Redis TIME."""
    b = Budget(r, budget=1000, window=60)
    before = server_time(r)
    g = b.reserve(1000)
    settled = b.settle(g["member"], 1000)
    after = server_time(r)
    assert before <= g["now"] <= settled <= after
    denied = b.reserve(1)
    assert denied["not_before"] == pytest.approx(settled + 60, abs=0.001)
    assert r.zscore(b.keys[0], r.zrange(b.keys[0], 0, 0)[0]) == pytest.approx(settled, abs=0.001)


def test_a_page_larger_than_the_budget_is_the_one_overdraft(r: redis.Redis) -> None:
    b = Budget(r, budget=1000, window=0.3)
    g = b.reserve(500)
    big = b.reserve(50_000, holder="w:1")
    assert big["granted"] and big["overdraft"] == 1
    assert big["amount"] == 50_000  # reserved in full: later grants wait until it leaves the window
    other = b.reserve(50_000, holder="w:2")
    assert not other["granted"]  # one overdraft at a time
    b.settle(g["member"], 500)
    end = b.settle(big["member"], 50_000, holder="w:1")
    assert not b.reserve(50_000, holder="w:2")["granted"]  # the first is counted for a window
    wait_until_server_time(r, end + 0.3)
    assert b.reserve(50_000, holder="w:2")["granted"]


def test_draws_cover_a_download_past_its_grant_then_one_overdraft(r: redis.Redis) -> None:
    b = Budget(r, budget=10_000, window=60)
    b.reserve(2000)
    c = b.reserve(2000)
    assert b.draw(4000, "a")["overdraft"] == 0  # room: an ordinary draw
    assert b.used() == 8000
    first = b.draw(4000, "a")
    assert first["granted"] and first["overdraft"] == 1  # no room: a becomes the overdraft
    assert b.draw(4000, "a")["granted"]  # its holder is never denied
    assert not b.draw(4000, "c")["granted"]  # another download is: the worker stops it
    assert not b.draw(1, "c")["granted"]
    b.settle([c["member"]], 2000)
    assert b.used() == 2000 + 4000 + 4000 + 4000 + 2000


def test_bytes_that_arrived_early_count_from_then(r: redis.Redis) -> None:
    """A long download's reservation and first draws had arrived before its end: they leave the window earlier."""
    b = Budget(r, budget=10_000, window=0.5)
    g = b.reserve(1000)
    d1 = b.draw(2000, "a")
    d2 = b.draw(2000, "a")
    wait_until_server_time(r, d2["now"] + 0.3)
    end = b.settle([f"{g['member']}@{d1['now']!r}", f"{d1['member']}@{d2['now']!r}", d2["member"]], 4500)
    log = [(m.decode().split(":")[1], score) for m, score in r.zrange(b.keys[0], 0, -1, withscores=True)]
    assert log == [("1000", pytest.approx(d1["now"])), ("2000", pytest.approx(d2["now"])),
                   ("1500", pytest.approx(end))]
    assert b.used() == 4500
    wait_until_server_time(r, d2["now"] + 0.5)
    assert b.reserve(8500)["granted"]  # the first 3000 bytes have left the window, the last 1500 not
    assert not b.reserve(1)["granted"]


def test_arrival_marks_date_the_first_bytes_of_a_download_of_known_size(r: redis.Redis) -> None:
    """A download that reserved its whole size up front: its marks ("~<bytes>@<time>") date its first bytes."""
    b = Budget(r, budget=10_000, window=0.5)
    g = b.reserve(4500)
    first = server_time(r)
    second = first + 0.1
    wait_until_server_time(r, second + 0.2)
    # "~500" has no time: it dates nothing.
    end = b.settle([g["member"], "~500", f"~1000@{first!r}", f"~2000@{second!r}", f"~9000@{second!r}"], 4500)
    log = [(m.decode().split(":")[1], score) for m, score in r.zrange(b.keys[0], 0, -1, withscores=True)]
    # A mark larger than what is left is not taken: those bytes count from the settle.
    assert log == [("1000", pytest.approx(first)), ("2000", pytest.approx(second)), ("1500", pytest.approx(end))]
    assert b.used() == 4500
    wait_until_server_time(r, second + 0.5)
    assert b.reserve(8500)["granted"]  # the marked 3000 bytes have left the window, the last 1500 not
    assert not b.reserve(1)["granted"]


def test_token_needs_the_budget_not_overdrawn(r: redis.Redis) -> None:
    b = Budget(r, budget=1000, window=60)
    g = b.reserve(1000)
    b.settle(g["member"], 3000)  # debt: 3000 > b counted in the window
    assert not b.draw(10, "x")["granted"]
    assert not b.reserve(5000, holder="y")["granted"]


def test_50_concurrent_drawers_get_one_overdraft(redis_url: str) -> None:
    async def main() -> list[Any]:
        client = async_redis(redis_url, max_connections=60)
        draw = load_script(client, "draw")
        keys = website_keys(PREFIX, SITE)
        results = await asyncio.gather(*[
            draw(keys=keys, args=[5000, 60, 1000, LEASE, f"h{i}", 0]) for i in range(50)
        ])
        await client.aclose()
        return results

    results = asyncio.run(main())
    assert sum(int(x[0]) for x in results) == 6  # five within the budget, then one overdraft
    assert sum(int(x[3]) for x in results if int(x[0])) == 1


def test_unsettled_reservation_counts_until_lease_end_plus_window(r: redis.Redis) -> None:
    b = Budget(r, budget=1000, window=0.3)
    g = b.reserve(1000, lease=0.2)  # the worker "crashes": never settles
    assert g["granted"]
    denied = b.reserve(1)
    assert not denied["granted"]
    wait_until_server_time(r, g["now"] + 0.25)
    denied = b.reserve(1)  # lease over: counted as ended at grant + lease
    assert not denied["granted"]
    assert denied["not_before"] == pytest.approx(g["now"] + 0.2 + 0.3, abs=0.001)
    wait_until_server_time(r, denied["not_before"])
    assert b.reserve(1000)["granted"]
    assert b.used() == 1000


def test_late_settle_after_lease_replaces_the_reservation(r: redis.Redis) -> None:
    b = Budget(r, budget=1000, window=60)
    g = b.reserve(1000, lease=0.05)
    wait_until_server_time(r, g["now"] + 0.1)
    assert not b.reserve(1)["granted"]  # moves the lapsed reservation into the log
    b.settle(g["member"], 400)
    assert b.used() == 400
    assert b.reserve(600)["granted"]


def learned(b: Budget) -> tuple[int, int]:
    """The website's (estimate, exposure)."""
    state = b.r.hgetall(b.keys[2])
    return int(state[b"estimate"]), int(state[b"exposure"])


def test_estimate_is_learned_from_settled_sizes(r: redis.Redis) -> None:
    b = Budget(r, budget=10**9, window=60)
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


def test_without_learned_sizes_a_tight_budget_serves_one_download_at_a_time(r: redis.Redis) -> None:
    b = Budget(r, budget=100_000, window=60)
    first = b.reserve(0, default_estimate=4000, holder="a")
    assert first["overdraft"] == 1  # the token's, with the room there is
    waiting = b.reserve(0, default_estimate=4000, holder="b")
    assert not waiting["granted"]
    # Its turn comes when the token's holder is settled, any moment: not a time to sleep until.
    assert waiting["timed"] == 0
    b.settle(first["member"], 3000, learn=3000, holder="a")  # within what it reserved: the token is free
    assert b.reserve(0, default_estimate=4000, holder="b")["overdraft"] == 1


def test_a_download_of_unknown_size_is_exposed_to_the_stop_slack(r: redis.Redis) -> None:
    """Sizes not known: stopped, it may cost what the server pushed (the slack). Two that do not fit take turns."""
    learning = Budget(r, budget=10**9, window=60)
    for _ in range(20):
        g = learning.reserve(0)
        learning.settle(g["member"], 2000, learn=2000)
    b = Budget(r, budget=10**9, window=60)
    assert b.reserve(0)["amount"] == 32 * 5000  # 32 default estimates while under 32 sizes are known
    assert b.reserve(0, stop_slack=300_000)["amount"] == 300_000
    # Two slacks do not fit in b: one download at a time, with the token.
    first = b.reserve(0, stop_slack=600_000_000, holder="a")
    assert first["overdraft"] == 1
    assert not b.reserve(0, stop_slack=600_000_000, holder="b")["granted"]
    b.settle(first["member"], 2000, learn=2000, holder="a")  # within its reservation: the token is free at once
    assert b.reserve(0, stop_slack=600_000_000, holder="b")["overdraft"] == 1


def test_known_sizes_free_a_small_budget_from_the_stop_slack_until_a_surprise(r: redis.Redis) -> None:
    """After 256 sizes a download reserves twice the largest, not the slack; a page past that starts over."""
    slack = 4 * 1024 * 1024
    learning = Budget(r, budget=10**9, window=60)
    b = Budget(r, budget=150_000, window=60)

    def learn(count: int) -> None:
        for _ in range(count):
            g = learning.reserve(0)
            learning.settle(g["member"], 0, learn=1000)  # learned, not counted: the window stays empty

    learn(255)
    assert b.reserve(0, stop_slack=slack, holder="a")["overdraft"] == 1  # 255 known: turns with the token
    r.delete(*b.keys)
    learn(256)
    first = b.reserve(0, stop_slack=slack, holder="a")
    second = b.reserve(0, stop_slack=slack, holder="b")
    assert (first["amount"], first["overdraft"]) == (2000, 0)  # twice the largest, side by side
    assert (second["amount"], second["overdraft"]) == (2000, 0)
    # A download covered for 50 KB, more than twice the largest page known: a surprise.
    draw = b._draw(keys=b.keys, args=[b.budget, b.window, 48_000, LEASE, "a", 50_000])
    assert int(draw[0]) == 1
    assert int(r.hget(b.keys[2], "learned")) == 0
    # Exposed to the stop slack again (more than b / 2): one download at a time, with the token.
    assert b.reserve(0, stop_slack=slack, holder="c")["overdraft"] == 1
    assert b.reserve(0, stop_slack=slack, holder="d")["granted"] is False


def test_one_big_page_does_not_inflate_the_estimate(r: redis.Redis) -> None:
    """800 B pages and one of 24 KB: the estimate stays at the small pages' size, the exposure at the big one's."""
    b = Budget(r, budget=10**9, window=60)
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


def test_script_flush_recovery(r: redis.Redis) -> None:
    b = Budget(r, budget=3000, window=60)
    g = b.reserve(1000)
    r.script_flush()
    assert r.script_exists(b._reserve.sha, b._settle.sha) == [False, False]
    b.settle(g["member"], 500)  # NOSCRIPT -> reloaded by register_script's EVALSHA fallback
    assert b.reserve(2500)["granted"]
    assert not b.reserve(1)["granted"]
    assert r.script_exists(b._reserve.sha, b._settle.sha) == [True, True]


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


def test_denial_finds_when_room_frees_beyond_1000_entries(r: redis.Redis) -> None:
    """A denial says when enough settled bytes leave the window even when that is past the 1,000th entry
    (the log's index by bytes settled: O(log L), not a copy of the first 1,000 entries)."""
    window = 3600.0
    b = Budget(r, 1_500_000 - 1, window)
    for _ in range(1501):
        b.settle("", 1000)
    assert r.zcard(b.keys[0]) == 1501 and b.used() == 1_501_000
    # need = used + n - b = 1,201,001 bytes: the 1,202nd entry brings them (times come back as 14 digits)
    denied = b.reserve(n=1_200_000)
    assert not denied["granted"]
    (_, at), = r.zrange(b.keys[0], 1201, 1201, withscores=True)
    assert denied["not_before"] == pytest.approx(at + window, abs=1e-3)
    # Entries that left the window leave the index: with half the log gone, the same need is further on.
    r.zremrangebyrank(b.keys[0], 0, 749)  # as if they had left the window, ...
    r.zremrangebyrank(b.keys[3], 0, 749)  # ... which removes them from both
    r.hset(b.keys[2], "used", 751_000)
    denied = b.reserve(n=949_000)  # need = 751,000 + 949,000 - 1,499,999 = 200,001 bytes: the 201st entry left
    (_, at), = r.zrange(b.keys[0], 200, 200, withscores=True)
    assert denied["not_before"] == pytest.approx(at + window, abs=1e-3)


def test_a_lease_is_capped_at_a_quarter_of_the_room_not_refused(r: redis.Redis) -> None:
    # Unknown sizes are exposed to the 4 MiB stop slack: 160 of them (a lease's wish) never fit in
    # 100 MB, but a lease capped at a quarter of the room left does, so downloads share one reservation.
    slack = 4 * 1024 * 1024
    g = Budget(r, budget=100_000_000, window=60).reserve(stop_slack=slack, downloads=160)
    assert g["granted"] and g["n"] == slack
    assert g["amount"] == slack + (100_000_000 - slack) // 4
    # Where the capped lease would not cover two downloads, a single reservation.
    small = Budget(r, budget=10_000_000, window=60, site="small.test").reserve(stop_slack=slack, downloads=160)
    assert small["granted"] and small["amount"] == slack
