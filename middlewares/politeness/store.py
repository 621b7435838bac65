"""Politeness state in Redis: keys, the Lua scripts and their typed wrappers, events.

Per website (hash-tagged, so one script touches one cluster slot):
``<p>:pol:{W}:state`` (parks, backoff level, breaker, probe), ``<p>:pol:{W}:next``
(Crawl-delay gate), ``<p>:pol:{W}:log`` (request-rate permits), ``<p>:pol:{W}:fails``
(URLs of the failure streak, and the URLs known to fail while the breaker is open),
``<p>:pol:{W}:adapt`` (adaptive slow-down: the open window, the baseline, the rate). For the whole
cluster: ``<p>:pol:active`` (websites with state, so every worker checks them),
``<p>:pol:rate`` (run-time rate overrides, written by the CLI),
``<p>:pol:adaptive`` (rates lowered by the adaptive slow-down) and the pub/sub
channel ``<p>:pol:events`` (parks and breaker transitions, so other workers hold a
website within milliseconds instead of at their next refresh).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import asyncio as aioredis
    from redis.commands.core import AsyncScript

    from middlewares.politeness.config import PolitenessConfig


_BASELINE_ALPHA = 0.25  # weight of a new healthy window in the adaptive baseline


def website_keys(prefix: str, website: str) -> list[str]:
    """KEYS of ``admit.lua`` (``report.lua`` uses the first and the last)."""
    base = f"{prefix}:pol:{{{website}}}"
    return [f"{base}:state", f"{base}:next", f"{base}:log", f"{base}:fails"]


def url_id(method: str, url: str) -> str:
    """A short id of a request's URL for the failure streak (retries and requeued copies share it)."""
    return hashlib.blake2b(f"{method} {url}".encode(), digest_size=8).hexdigest()


def active_key(prefix: str) -> str:
    return f"{prefix}:pol:active"


def adapt_key(prefix: str, website: str) -> str:
    """KEYS[1] of ``adapt.lua``."""
    return f"{prefix}:pol:{{{website}}}:adapt"


def adaptive_rates_key(prefix: str) -> str:
    """Hash website -> requests per second in force by the adaptive slow-down."""
    return f"{prefix}:pol:adaptive"


def rate_overrides_key(prefix: str) -> str:
    """Hash website -> ``"r/w"`` or ``"none"`` (no limit, whatever the settings say)."""
    return f"{prefix}:pol:rate"


def events_channel(prefix: str) -> str:
    return f"{prefix}:pol:events"


def load_script(client: aioredis.Redis | Any, name: str) -> AsyncScript:
    source = files("middlewares.politeness").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return client.register_script(source)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of ``admit.lua``."""

    permits: int  # 0: denied
    not_before: float
    now: float
    probe: bool
    reason: str  # "" when granted; "parked", "probe", "delay", "rate"
    clean: bool


@dataclass(frozen=True, slots=True)
class Report:
    """The answer of ``report.lua``."""

    transition: str  # "", "parked", "opened", "reopened", "closed", "recovered", "failed", "inconclusive"
    until: float
    now: float
    count: int  # backoff level, opens or failures, per transition
    clean: bool
    breaker_open: bool


@dataclass(frozen=True, slots=True)
class Adaptation:
    """The answer of ``adapt.lua``."""

    change: str  # "", "slowed", "raised", "restored"
    rate: float  # requests per second in force; 0: no adaptive limit
    latency: float  # mean latency of the window just judged
    base_latency: float
    error_rate: float
    base_error_rate: float


@dataclass(frozen=True, slots=True)
class Event:
    """A park or breaker transition announced to every worker."""

    website: str
    until: float
    transition: str

    def encode(self) -> str:
        return f"{self.website}\t{self.until:.6f}\t{self.transition}"

    @classmethod
    def decode(cls, data: Any) -> Event | None:
        parts = _text(data).split("\t")
        if len(parts) != 3:
            return None
        try:
            return cls(parts[0], float(parts[1]), parts[2])
        except ValueError:
            return None


class PolitenessStore:
    """Calls to Redis for one worker (every call may raise ``RedisError``)."""

    def __init__(self, redis: aioredis.Redis, config: PolitenessConfig) -> None:
        self.redis = redis
        self.config = config
        self._admit = load_script(redis, "admit")
        self._report = load_script(redis, "report")
        self._forget = load_script(redis, "forget")
        self._adapt = load_script(redis, "adapt")
        self.calls = 0

    async def admit(self, website: str, token: str, delay: float, rate_n: int, rate_window: float,
                    want: int, url: str = "") -> Admission:
        """``url``: the request's URL id (:func:`url_id`), so a URL known to fail is the probe last."""
        c = self.config
        self.calls += 1
        r = await self._admit(keys=website_keys(c.prefix, website),
                              args=[token, delay, rate_n, rate_window, want, c.lease_seconds, c.probe_timeout,
                                    c.probe_wait, url, c.probe_wait])
        return Admission(int(r[0]), float(r[1]), float(r[2]), bool(int(r[3])), _text(r[4]), bool(int(r[5])))

    async def report(self, website: str, kind: str, token: str, retry_after: float | None,
                     jitter: float, sent_at: float = 0.0, url: str = "") -> Report:
        """``url``: the request's URL id (:func:`url_id`); failures count once per URL."""
        c = self.config
        self.calls += 1
        keys = website_keys(c.prefix, website)
        r = await self._report(
            keys=[keys[0], keys[3]],
            args=[kind, token, -1 if retry_after is None else retry_after, c.backoff_base, c.backoff_factor,
                  c.backoff_max, c.backoff_forgive, jitter, c.breaker_failures, c.breaker_cool,
                  c.breaker_cool_factor, c.breaker_cool_max, sent_at, url],
        )
        return Report(_text(r[0]), float(r[1]), float(r[2]), int(r[3]), bool(int(r[4])), bool(int(r[5])))

    async def adapt(self, website: str, responses: int, latency: float, errors: int) -> Adaptation:
        """Add this worker's responses to the website's window (``lua/adapt.lua``)."""
        a = self.config.adaptive
        self.calls += 1
        r = await self._adapt(keys=[adapt_key(self.config.prefix, website)],
                              args=[responses, latency, errors, a.window, a.min_samples, a.latency_factor,
                                    a.error_margin, a.decrease, a.increase, a.min_rate, _BASELINE_ALPHA])
        return Adaptation(_text(r[0]), *(float(x) for x in r[1:6]))

    async def publish_adaptive(self, website: str, rate: float) -> None:
        """Put the website's adaptive rate (0: none) where every worker's refresh reads it."""
        self.calls += 1
        key = adaptive_rates_key(self.config.prefix)
        if rate > 0:
            await self.redis.hset(key, website, f"{rate:.6f}")
        else:
            await self.redis.hdel(key, website)

    async def announce(self, event: Event, marked_at: float) -> None:
        """Put the website on the active list and tell every worker now.

        Two calls, not one pipeline: a Redis Cluster client refuses a pipelined
        PUBLISH. A park is an event per website state change, not per request.
        """
        self.calls += 2
        await self.redis.zadd(active_key(self.config.prefix), {event.website: marked_at}, gt=True)
        await self.redis.publish(events_channel(self.config.prefix), event.encode())

    async def forget(self, website: str, clean_at: float) -> bool:
        self.calls += 1
        return bool(await self._forget(keys=[active_key(self.config.prefix)], args=[website, clean_at]))

    async def snapshot(self) -> tuple[list[str], dict[str, str], dict[str, float], float]:
        """Active websites, run-time rate overrides, adaptive rates and the Redis time, in two round trips.

        TIME apart: a Redis Cluster client refuses a pipelined TIME (it has no key to route by).
        """
        self.calls += 2
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(active_key(self.config.prefix), 0, -1)
            pipe.hgetall(rate_overrides_key(self.config.prefix))
            pipe.hgetall(adaptive_rates_key(self.config.prefix))
            active, overrides, adaptive = await pipe.execute()
        now = await self.redis.time()
        rates: dict[str, float] = {}
        for k, v in adaptive.items():
            try:
                rates[_text(k)] = float(_text(v))
            except ValueError:
                continue
        return ([_text(w) for w in active], {_text(k): _text(v) for k, v in overrides.items()}, rates,
                float(now[0]) + float(now[1]) / 1e6)


@dataclass(frozen=True, slots=True)
class ParkState:
    """Why and until when politeness holds a website back, as Redis has it (for status views)."""

    website: str
    reason: str  # see PARK_REASONS; "" when nothing holds it back
    until: float  # Redis time; for "breaker half-open", 0 (it waits for its probe)
    level: int  # backoff level
    failures: int  # breaker failures counted (breaker closed)


# Every reason read_park_states gives: a closed set, fit for metric labels.
PARK_REASONS = ("retry_after", "backoff", "breaker_open", "breaker_half_open", "crawl_delay", "request_rate")


def park_state(website: str, state: dict[str, str], next_request: float, permits: int, now: float) -> ParkState:
    """Classify one website's state hash (see ``lua/admit.lua``), Crawl-delay gate and request-rate log."""
    until = float(state.get("until") or 0)
    level = int(float(state.get("level") or 0))
    failures = int(float(state.get("fails") or 0))
    if state.get("breaker") == "open":
        if until > now:
            return ParkState(website, "breaker_open", until, level, failures)
        return ParkState(website, "breaker_half_open", 0.0, level, failures)
    if until > now:
        # report.lua asks for a probe after a backoff park, never after a Retry-After one.
        return ParkState(website, "backoff" if state.get("probe") == "1" else "retry_after", until, level, failures)
    if next_request > now:
        return ParkState(website, "crawl_delay", next_request, level, failures)
    if permits:
        return ParkState(website, "request_rate", 0.0, level, failures)
    return ParkState(website, "", 0.0, level, failures)


async def read_park_states(redis: aioredis.Redis, prefix: str, websites: list[str],
                           now: float) -> dict[str, ParkState]:
    """Politeness state of ``websites`` at Redis time ``now``: one round trip, three commands per website.

    ``crawl_delay`` and ``request_rate`` say that gate applies now; they explain a
    frontier not-before mark (a gate parks a website briefly), not a park of their own.
    """
    if not websites:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for website in websites:
            keys = website_keys(prefix, website)  # state, Crawl-delay gate, request-rate log, ...
            pipe.hgetall(keys[0])
            pipe.get(keys[1])
            pipe.zcard(keys[2])  # permits logged in the last window: a request rate applies
        replies = await pipe.execute()
    out: dict[str, ParkState] = {}
    for i, website in enumerate(websites):
        raw_state, nxt, permits = replies[3 * i:3 * i + 3]
        fields = {_text(k): _text(v) for k, v in raw_state.items()}
        out[website] = park_state(website, fields, float(_text(nxt)) if nxt else 0.0, int(permits), now)
    return out


async def active_websites(redis: aioredis.Redis, prefix: str, n: int) -> tuple[list[str], int]:
    """The ``n`` websites most recently given politeness state, and how many have state: one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrange(active_key(prefix), 0, n - 1, desc=True)
        pipe.zcard(active_key(prefix))
        recent, total = await pipe.execute()
    return [_text(w) for w in recent], int(total)
