"""Politeness's Lua scripts (through their typed wrappers) against a real redis-server.

Parks and cooling periods here are a few hundred milliseconds; a test that
needs one to end waits until the Redis clock has passed it (an event), it
never asserts how long anything took.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis import asyncio as aioredis
from scrapy.settings import Settings

from middlewares.politeness.config import PolitenessConfig
from middlewares.politeness.signals import FAIL, OK, RATE
from middlewares.politeness.store import PolitenessStore, active_key, website_keys

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

SITE = "shop-a.test"
BASE, FACTOR, JITTER = 0.2, 2.0, 0.1


def config(redis_url: str, **extra: Any) -> PolitenessConfig:
    return PolitenessConfig.from_settings(Settings({
        "REDIS_URL": redis_url, "POLITENESS_KEY_PREFIX": "t",
        "POLITENESS_BACKOFF_BASE_SECONDS": BASE, "POLITENESS_BACKOFF_FACTOR": FACTOR,
        "POLITENESS_BACKOFF_JITTER": JITTER, "POLITENESS_BREAKER_FAILURES": 3,
        "POLITENESS_BREAKER_COOL_SECONDS": 0.3, "POLITENESS_BREAKER_COOL_FACTOR": 2,
        "POLITENESS_BREAKER_COOL_MAX_SECONDS": 1.0, "POLITENESS_PROBE_TIMEOUT_SECONDS": 5, **extra,
    }))


def run(redis_url: str, body: Callable[[PolitenessStore], Awaitable[Any]], **extra: Any) -> Any:
    async def main() -> Any:
        client = aioredis.Redis.from_url(redis_url, max_connections=64)
        try:
            return await body(PolitenessStore(client, config(redis_url, **extra)))
        finally:
            await client.aclose()

    return asyncio.run(main())


async def until_server_time(store: PolitenessStore, t: float) -> None:
    """Wait for the event "the Redis clock has passed t"."""
    while True:
        sec, usec = await store.redis.time()
        if sec + usec / 1e6 > t:
            return
        await asyncio.sleep(max(0.005, t - (sec + usec / 1e6)))


async def admit(store: PolitenessStore, token: str = "x", delay: float = 0, rate: tuple[int, float] = (0, 0),
                want: int = 1) -> Any:
    return await store.admit(SITE, token, delay, rate[0], rate[1], want)


def test_a_quiet_website_is_granted_and_clean(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> None:
        adm = await admit(store)
        assert (adm.permits, adm.reason, adm.clean, adm.probe) == (1, "", True, False)
        rep = await store.report(SITE, OK, "", None, 1.0)
        assert (rep.transition, rep.clean) == ("", True)

    run(redis_url, body)


def test_retry_after_parks_and_answers_in_flight_do_not_raise_the_level(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> None:
        rep = await store.report(SITE, RATE, "", 0.4, 1.0)
        assert rep.transition == "parked"
        assert rep.until == pytest.approx(rep.now + 0.4, abs=1e-3)
        assert rep.count == 0  # Retry-After given: no backoff level spent
        adm = await admit(store)
        assert (adm.permits, adm.reason, adm.not_before) == (0, "parked", rep.until)
        # Requests sent before the park: same incident; a longer Retry-After lengthens it.
        again = await store.report(SITE, RATE, "", None, 1.0)
        assert (again.transition, again.until) == ("", rep.until)
        longer = await store.report(SITE, RATE, "", 0.6, 1.0)
        assert longer.transition == "parked" and longer.until > rep.until
        await until_server_time(store, longer.until)
        # The website said when to come back: after a Retry-After park, no probe.
        assert (await admit(store, "p0")).probe is False
        # After a backoff park: exactly one probe, then the others wait for it.
        backoff = await store.report(SITE, RATE, "", None, 1.0)
        await until_server_time(store, backoff.until)
        probe = await admit(store, "p1")
        assert (probe.permits, probe.probe) == (1, True)
        other = await admit(store, "p2")
        assert (other.permits, other.reason) == (0, "probe")
        assert (await admit(store, "p1")).probe  # the probe itself, requeued, may go again
        ok = await store.report(SITE, OK, "p1", None, 1.0)
        assert (ok.transition, ok.clean) == ("recovered", True)
        assert (await admit(store, "p2")).permits == 1

    run(redis_url, body)


def test_backoff_without_retry_after_grows_by_the_factor_and_is_forgiven(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> list[float]:
        waits = []
        for i in range(3):
            token = f"probe{i}"
            if i:
                assert (await admit(store, token)).probe
            rep = await store.report(SITE, RATE, token, None, 1.0 + JITTER * (-1) ** i)
            assert (rep.transition, rep.count) == ("parked", i + 1)
            waits.append(rep.until - rep.now)
            await until_server_time(store, rep.until)
        return waits

    waits = run(redis_url, body)
    for i, wait in enumerate(waits):
        assert wait == pytest.approx(BASE * FACTOR**i * (1 + JITTER * (-1) ** i), abs=1e-3)
    # Forgiveness: after a quiet period, the next incident starts again at the base.
    def forgiven(store: PolitenessStore) -> Awaitable[Any]:
        return store.report(SITE, RATE, "", None, 1.0)

    assert run(redis_url, forgiven, POLITENESS_BACKOFF_FORGIVE_SECONDS=0).count == 1


def test_breaker_opens_after_k_failures_one_probe_reopens_longer_and_closes(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> None:
        first = await store.report(SITE, FAIL, "", None, 1.0)
        assert first.transition == "failed"
        # A success sent before that failure says nothing about now; one sent after it resets the count.
        assert not (await store.report(SITE, OK, "", None, 1.0, first.now - 0.1)).clean
        assert (await store.report(SITE, OK, "", None, 1.0, first.now)).clean
        for n in (1, 2):
            rep = await store.report(SITE, FAIL, "", None, 1.0)
            assert (rep.transition, rep.count) == ("failed", n)
        opened = await store.report(SITE, FAIL, "", None, 1.0)
        assert opened.transition == "opened"
        assert opened.until == pytest.approx(opened.now + 0.3, abs=1e-3)
        assert (await store.report(SITE, FAIL, "", None, 1.0)).transition == ""  # in flight: same incident
        assert (await admit(store)).reason == "parked"
        await until_server_time(store, opened.until)
        assert (await admit(store, "a")).probe
        assert (await admit(store, "b")).reason == "probe"
        reopened = await store.report(SITE, FAIL, "a", None, 1.0)
        assert reopened.transition == "reopened"
        assert reopened.until - reopened.now == pytest.approx(0.6, abs=1e-3)  # cool * factor
        await until_server_time(store, reopened.until)
        assert (await admit(store, "b")).probe
        closed = await store.report(SITE, OK, "b", None, 1.0)
        assert (closed.transition, closed.clean) == ("closed", True)
        assert (await admit(store, "c")).permits == 1

    run(redis_url, body)


def test_the_failure_streak_counts_distinct_urls(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> None:
        first = await store.report(SITE, FAIL, "", None, 1.0, url="u1")
        assert (first.transition, first.count) == ("failed", 1)
        for _ in range(3):  # retries and requeued copies of u1
            again = await store.report(SITE, FAIL, "", None, 1.0, url="u1")
            assert (again.transition, again.count) == ("", 1)
        assert (await store.report(SITE, FAIL, "", None, 1.0, url="u2")).count == 2
        # A success sent after the streak began ends it: u1 counts again in the next one.
        assert (await store.report(SITE, OK, "", None, 1.0, first.now + 1)).clean
        assert (await store.report(SITE, FAIL, "", None, 1.0, url="u1")).count == 1

    run(redis_url, body)


def test_a_probe_on_a_url_known_to_fail_is_inconclusive(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> None:
        for url in ("u1", "u2"):
            await store.report(SITE, FAIL, "", None, 1.0, url=url)
        opened = await store.report(SITE, FAIL, "", None, 1.0, url="u3")
        assert opened.transition == "opened"
        await until_server_time(store, opened.until)
        # For the grace period (probe wait, cool / 2 here) a known-failing URL leaves the probe to others.
        held = await store.admit(SITE, "a", 0, 0, 0, 1, url="u1")
        grace = store.config.probe_wait
        if held.now < opened.until + grace:
            assert (held.permits, held.reason) == (0, "probe")
            assert held.not_before == pytest.approx(opened.until + grace, abs=1e-3)
        await until_server_time(store, opened.until + grace)
        probe = await store.admit(SITE, "a", 0, 0, 0, 1, url="u1")
        assert probe.probe
        inconclusive = await store.report(SITE, FAIL, "a", None, 1.0, url="u1")
        assert (inconclusive.transition, inconclusive.until) == ("inconclusive", opened.until)
        # Not parked again: another URL is the next probe, at once; a new failing URL reopens.
        assert (await store.admit(SITE, "b", 0, 0, 0, 1, url="u9")).probe
        reopened = await store.report(SITE, FAIL, "b", None, 1.0, url="u9")
        assert reopened.transition == "reopened"
        await until_server_time(store, reopened.until)
        assert (await store.admit(SITE, "c", 0, 0, 0, 1, url="u8")).probe
        closed = await store.report(SITE, OK, "c", None, 1.0)
        assert closed.transition == "closed"
        assert not await store.redis.exists(website_keys("t", SITE)[3])  # the failing URLs are forgotten

    run(redis_url, body)


def test_probe_timeout_lets_another_probe_go(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> None:
        rep = await store.report(SITE, RATE, "", None, 1.0)
        await until_server_time(store, rep.until)
        first = await admit(store, "lost")
        assert first.probe
        await until_server_time(store, first.now + 0.2)
        assert (await admit(store, "next")).probe

    run(redis_url, body, POLITENESS_PROBE_TIMEOUT_SECONDS=0.2)


@pytest.mark.parametrize(("delay", "rate", "allowed"), [(5.0, (0, 0), 1), (0, (7, 5.0), 7), (5.0, (7, 5.0), 1)])
def test_concurrent_callers_get_exactly_what_the_gate_allows(redis_url: str, delay: float,
                                                             rate: tuple[int, float], allowed: int) -> None:
    async def body(store: PolitenessStore) -> list[Any]:
        return await asyncio.gather(*[admit(store, f"t{i}", delay, rate) for i in range(40)])

    answers = run(redis_url, body)
    assert sum(a.permits for a in answers) == allowed
    denied = [a for a in answers if not a.permits]
    assert {a.reason for a in denied} == {"delay" if delay else "rate"}
    assert all(a.not_before > a.now for a in denied)


def test_crawl_delay_gate_opens_after_d(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> None:
        first = await admit(store, delay=0.2)
        denied = await admit(store, delay=0.2)
        assert denied.not_before == pytest.approx(first.now + 0.2, abs=1e-3)
        await until_server_time(store, denied.not_before)
        assert (await admit(store, delay=0.2)).permits == 1

    run(redis_url, body)


def test_leases_are_logged_at_their_latest_use_and_count_against_the_rate(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> None:
        lease = await admit(store, "l", rate=(10, 1.0), want=8)
        assert lease.permits == 8
        scores = [s for _, s in await store.redis.zrange(website_keys("t", SITE)[2], 0, -1, withscores=True)]
        assert scores == [pytest.approx(lease.now + store.config.lease_seconds, abs=1e-3)] * 8
        assert (await admit(store, "m", rate=(10, 1.0), want=8)).permits == 2  # what is left
        assert (await admit(store, "n", rate=(10, 1.0))).reason == "rate"

    run(redis_url, body)


def test_forget_keeps_a_newer_mark(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> None:
        key = active_key("t")
        await store.redis.zadd(key, {SITE: 100.0})
        assert not await store.forget(SITE, 99.0)
        assert await store.forget(SITE, 100.0)
        assert await store.redis.zcard(key) == 0

    run(redis_url, body)


def test_keys_are_hash_tagged_per_website() -> None:
    assert all(k.startswith("t:pol:{shop-a.test}:") for k in website_keys("t", SITE))


def test_script_flush_recovery(redis_url: str) -> None:
    async def body(store: PolitenessStore) -> None:
        await admit(store)
        await store.redis.script_flush()
        assert (await admit(store)).permits == 1  # NOSCRIPT -> EVALSHA falls back and reloads
        assert (await store.report(SITE, OK, "", None, 1.0)).clean

    run(redis_url, body)
    with redis.Redis.from_url(redis_url) as r:
        assert r.exists(website_keys("t", SITE)[0]) == 0  # a clean website leaves no state behind


def test_adaptive_rule_slows_down_against_the_baseline_and_recovers_slowly(redis_url: str) -> None:
    # Windows of 0.2 s, judged when they close with >= 5 responses.
    async def body(store: PolitenessStore) -> None:
        async def window(n: int, latency: float, errors: int = 0) -> Any:
            first = await store.adapt(SITE, n, n * latency, errors)
            assert first.change == ""  # the window is still open
            sec, usec = await store.redis.time()
            await until_server_time(store, sec + usec / 1e6 + 0.21)
            return await store.adapt(SITE, 0, 0.0, 0)

        base = await window(20, 0.01)
        assert (base.change, base.rate) == ("", 0) and base.base_latency == pytest.approx(0.01)
        healthy = await window(20, 0.02)  # below 3 x baseline: healthy, the baseline follows
        assert healthy.change == "" and healthy.base_latency == pytest.approx(0.0125)
        slowed = await window(20, 0.2)
        assert slowed.change == "slowed" and slowed.rate > 0
        assert slowed.base_latency == pytest.approx(0.0125)  # a worse window does not move the baseline
        again = await window(20, 0.2)
        assert again.change == "slowed" and again.rate == pytest.approx(max(0.5, slowed.rate / 2), rel=0.01)
        errors = await window(20, 0.01, errors=10)  # fast, but half of them failed
        assert errors.change in ("slowed", "")  # "" once at the floor
        floor = again
        while floor.rate > 0.5 + 1e-9:
            floor = await window(20, 0.2)
        assert (await window(20, 0.2)).change == ""  # at the floor: no change, nothing to log
        rate, changes = floor.rate, []
        while True:
            up = await window(20, 0.01)
            changes.append(up.change)
            if up.change == "restored":
                assert up.rate == 0
                break
            assert up.change == "raised" and up.rate == pytest.approx(rate * 1.5, rel=0.01)
            rate = up.rate
        assert len(changes) >= 3  # slowly: several healthy windows

    run(redis_url, body, POLITENESS_ADAPTIVE_WEBSITES=[SITE], POLITENESS_ADAPTIVE_WINDOW_SECONDS=0.2,
        POLITENESS_ADAPTIVE_MIN_RATE=0.5, POLITENESS_ADAPTIVE_INCREASE=1.5)
