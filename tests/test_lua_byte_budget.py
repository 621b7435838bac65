"""The byte budget's Lua scripts against a real redis-server: grants, settles, draws and the overdraft."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from middlewares.byte_budget.store import load_script, website_keys
from tests.lua_budget_helpers import LEASE, PREFIX, RETRY, SITE, Budget, server_time, wait_until_server_time
from tests.redis_clients import async_redis

if TYPE_CHECKING:
    import redis

pytestmark = pytest.mark.cluster  # also run against a Redis Cluster (tests/conftest.py --redis-cluster)


def test_zero_budget_grants_nothing(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=0, window=60)
    res = b.reserve(1)
    assert not res["granted"]
    assert res["not_before"] == pytest.approx(res["now"] + 60, abs=0.01)
    assert res["warn"] == 1
    assert not b.reserve(1)["granted"]
    assert b.reserve(1)["warn"] == 0  # the exhaustion is reported once per window
    assert sync_client.zcard(b.keys[1]) == 0
    assert b.used() == 0


def test_a_denial_that_changes_nothing_writes_nothing(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=3000, window=60)
    b.settle(b.reserve(3000)["member"], 3000)
    assert b.reserve(1000)["warn"] == 1  # the first denial writes (the warning) and renews the keys
    full = (2 * 60 + LEASE) * 1000
    live = [b.keys[0], b.keys[2]]  # the log and the state (nothing in flight)
    assert all(0 < sync_client.pttl(k) <= full for k in live)
    for k in live:
        sync_client.pexpire(k, 100_000)  # as if written a while ago
    denied = b.reserve(1000)
    assert not denied["granted"] and denied["warn"] == 0
    # Read only: the TTLs the last write set run on (a denial renews nothing, replicates nothing).
    assert all(0 < sync_client.pttl(k) <= 100_000 for k in live)
    assert b.used() == 3000


def test_exact_limit(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=3000, window=60)
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


def test_settle_down_frees_at_once(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=3000, window=60)
    g = b.reserve(3000)
    assert g["granted"]
    assert not b.reserve(2000)["granted"]
    b.settle(g["member"], 1000)
    assert b.used() == 1000
    assert b.reserve(2000)["granted"]


def test_settle_up_is_debt_until_it_leaves_the_window(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=3000, window=0.5)
    g = b.reserve(1000)
    settled_at = b.settle(g["member"], 5000)  # the page was 5x the estimate
    assert b.used() == 5000
    denied = b.reserve(100)
    assert not denied["granted"]
    # Free exactly when the 5000 bytes leave the window, by the server's clock.
    assert denied["not_before"] == pytest.approx(settled_at + 0.5, abs=0.001)
    assert denied["timed"] == 1
    wait_until_server_time(sync_client, denied["not_before"])
    assert b.reserve(3000)["granted"]


def test_not_before_is_the_earliest_sufficient_expiry(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=3000, window=0.5)
    ends = []
    for _ in range(3):
        g = b.reserve(1000)
        ends.append(b.settle(g["member"], 1000))
    denied = b.reserve(2000)  # needs the first two entries gone
    assert not denied["granted"]
    assert denied["not_before"] == pytest.approx(ends[1] + 0.5, abs=0.001)
    wait_until_server_time(sync_client, denied["not_before"])
    assert b.reserve(2000)["granted"]
    assert not b.reserve(1001)["granted"]


def test_times_are_the_servers(sync_client: redis.Redis) -> None:
    """The scripts take no client time: grants, settles and not-before use Redis TIME."""
    b = Budget(sync_client, budget=1000, window=60)
    before = server_time(sync_client)
    g = b.reserve(1000)
    settled = b.settle(g["member"], 1000)
    after = server_time(sync_client)
    assert before <= g["now"] <= settled <= after
    denied = b.reserve(1)
    assert denied["not_before"] == pytest.approx(settled + 60, abs=0.001)
    assert sync_client.zscore(b.keys[0], sync_client.zrange(b.keys[0], 0, 0)[0]) == pytest.approx(settled, abs=0.001)


def test_a_page_larger_than_the_budget_is_the_one_overdraft(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=1000, window=0.3)
    g = b.reserve(500)
    big = b.reserve(50_000, holder="w:1")
    assert big["granted"] and big["overdraft"] == 1
    assert big["amount"] == 50_000  # reserved in full: later grants wait until it leaves the window
    other = b.reserve(50_000, holder="w:2")
    assert not other["granted"]  # one overdraft at a time
    b.settle(g["member"], 500)
    end = b.settle(big["member"], 50_000, holder="w:1")
    assert not b.reserve(50_000, holder="w:2")["granted"]  # the first is counted for a window
    wait_until_server_time(sync_client, end + 0.3)
    assert b.reserve(50_000, holder="w:2")["granted"]


def test_draws_cover_a_download_past_its_grant_then_one_overdraft(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=10_000, window=60)
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


def test_bytes_that_arrived_early_count_from_then(sync_client: redis.Redis) -> None:
    """A long download's reservation and first draws had arrived before its end: they leave the window earlier."""
    b = Budget(sync_client, budget=10_000, window=0.5)
    g = b.reserve(1000)
    d1 = b.draw(2000, "a")
    d2 = b.draw(2000, "a")
    wait_until_server_time(sync_client, d2["now"] + 0.3)
    end = b.settle([f"{g['member']}@{d1['now']!r}", f"{d1['member']}@{d2['now']!r}", d2["member"]],
                   4500)
    log = [(m.decode().split(":")[1], score) for m, score in sync_client.zrange(b.keys[0], 0, -1, withscores=True)]
    assert log == [("1000", pytest.approx(d1["now"])), ("2000", pytest.approx(d2["now"])),
                   ("1500", pytest.approx(end))]
    assert b.used() == 4500
    wait_until_server_time(sync_client, d2["now"] + 0.5)
    assert b.reserve(8500)["granted"]  # the first 3000 bytes have left the window, the last 1500 not
    assert not b.reserve(1)["granted"]


def test_arrival_marks_date_the_first_bytes_of_a_download_of_known_size(sync_client: redis.Redis) -> None:
    """A download that reserved its whole size up front: its marks ("~<bytes>@<time>") date its first bytes."""
    b = Budget(sync_client, budget=10_000, window=0.5)
    g = b.reserve(4500)
    first = server_time(sync_client)
    second = first + 0.1
    wait_until_server_time(sync_client, second + 0.2)
    # "~500" has no time: it dates nothing.
    end = b.settle([g["member"], "~500", f"~1000@{first!r}", f"~2000@{second!r}", f"~9000@{second!r}"],
                   4500)
    log = [(m.decode().split(":")[1], score) for m, score in sync_client.zrange(b.keys[0], 0, -1, withscores=True)]
    # A mark larger than what is left is not taken: those bytes count from the settle.
    assert log == [("1000", pytest.approx(first)), ("2000", pytest.approx(second)), ("1500", pytest.approx(end))]
    assert b.used() == 4500
    wait_until_server_time(sync_client, second + 0.5)
    assert b.reserve(8500)["granted"]  # the marked 3000 bytes have left the window, the last 1500 not
    assert not b.reserve(1)["granted"]


def test_token_needs_the_budget_not_overdrawn(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=1000, window=60)
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


def test_unsettled_reservation_counts_until_lease_end_plus_window(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=1000, window=0.3)
    g = b.reserve(1000, lease=0.2)  # the worker "crashes": never settles
    assert g["granted"]
    denied = b.reserve(1)
    assert not denied["granted"]
    wait_until_server_time(sync_client, g["now"] + 0.25)
    denied = b.reserve(1)  # lease over: counted as ended at grant + lease
    assert not denied["granted"]
    assert denied["not_before"] == pytest.approx(g["now"] + 0.2 + 0.3, abs=0.001)
    wait_until_server_time(sync_client, denied["not_before"])
    assert b.reserve(1000)["granted"]
    assert b.used() == 1000


def test_late_settle_after_lease_replaces_the_reservation(sync_client: redis.Redis) -> None:
    b = Budget(sync_client, budget=1000, window=60)
    g = b.reserve(1000, lease=0.05)
    wait_until_server_time(sync_client, g["now"] + 0.1)
    assert not b.reserve(1)["granted"]  # moves the lapsed reservation into the log
    b.settle(g["member"], 400)
    assert b.used() == 400
    assert b.reserve(600)["granted"]
