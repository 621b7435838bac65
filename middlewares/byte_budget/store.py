"""Where the byte budget's reservations are kept: Redis, or memory while it is down.

Redis: the keys (``website_keys``, ``overrides_key``), the Lua scripts
(``lua/reserve.lua``, ``lua/draw.lua``, ``lua/settle.lua``, loaded by ``load_script``) and the
calls to them. Settles that fail are kept and sent again once Redis answers.
While Redis is down a worker fails closed (requests wait with a back-off) or,
with ``BYTE_BUDGET_FALLBACK_WORKERS``, keeps the same reservation log in
memory with its share of the budget (``_LocalBudget``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis import asyncio as aioredis
    from redis.commands.core import AsyncScript
    from scrapy.crawler import Crawler

    from middlewares.byte_budget.config import ByteBudgetConfig

# The middleware's logger: its lines keep the name they had before the
# byte_budget_*.py split, and logging set-ups aimed at it keep working.
logger = logging.getLogger("middlewares.byte_budget.middleware")


def overrides_key(prefix: str) -> str:
    """Hash of run-time overrides: website -> bytes per window or ``"unlimited"``."""
    return f"{prefix}:bb:overrides"


def overrides_version_key(prefix: str) -> str:
    """Counter of changes to the overrides: a worker reads the hash again only when it moved."""
    return f"{prefix}:bb:overrides:version"


def website_keys(prefix: str, website: str) -> list[str]:
    """KEYS of the scripts (log, in flight, state, log by bytes settled); the hash tag puts them in one slot."""
    base = f"{prefix}:bb:{{{website}}}"
    return [f"{base}:log", f"{base}:inflight", f"{base}:state", f"{base}:cum"]


_INCLUDE = "-- @include "
# An arrival time read off the monotonic clock (redis_time_by) is moved this much later, for the two
# clocks' drift since the last reading (NTP slews a clock by at most 0.05%: 5 ms in 10 s).
_CLOCK_MARGIN = 0.02
# A reading of the Redis clock older than this is replaced by the next one, even if less tight.
_CLOCK_FRESH = 10.0


def script_source(name: str) -> str:
    """``lua/<name>.lua`` with each ``-- @include <file>.lua`` line replaced by that file (and its includes)."""
    lua = files("middlewares.byte_budget").joinpath("lua")
    lines = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(script_source(line[len(_INCLUDE):].strip().removesuffix(".lua"))
                   if line.startswith(_INCLUDE) else line for line in lines)


def load_script(client: aioredis.Redis | Any, name: str) -> AsyncScript:
    return client.register_script(script_source(name))


@dataclass(frozen=True, slots=True)
class Reserved:
    """``lua/reserve.lua`` granted ``granted`` >= ``n`` bytes (more: a lease)."""

    member: str  # for settle.lua
    now: float  # Redis server time
    n: int  # bytes per download
    granted: int
    overdraft: bool  # the download holds the website's overdraft token


@dataclass(frozen=True, slots=True)
class Denied:
    """``lua/reserve.lua`` denied: try again at ``not_before`` (Redis server time)."""

    not_before: float
    now: float
    n: int
    warn: bool  # first denial of a window by the budget: log "exhausted" once
    used: int  # bytes counted in the window
    timed: bool = True  # not_before is when room frees; False: a guess (the token or downloads in flight hold it)


@dataclass(frozen=True, slots=True)
class Drawn:
    """``lua/draw.lua`` added ``amount`` bytes to a download's reservation."""

    member: str
    amount: int
    overdraft: bool
    now: float  # Redis server time of the draw


@dataclass(frozen=True, slots=True)
class Settle:
    """One call of ``lua/settle.lua``, kept while Redis is down."""

    website: str
    members: list[str]
    size: int
    learn: list[int]
    holder: str = ""


@dataclass(slots=True)
class _LocalBudget:
    """The same reservation log, in memory, for one worker while Redis is down."""

    entries: deque[tuple[float, int]] = field(default_factory=deque)  # (end time, bytes), settled
    inflight: int = 0

    def reserve(self, budget: int, window: float, n: int, retry: float) -> tuple[bool, float]:
        now = time.time()
        while self.entries and self.entries[0][0] <= now - window:
            self.entries.popleft()
        used = self.inflight + sum(size for _, size in self.entries)
        n = max(min(n, budget), 1)
        if budget > 0 and used + n <= budget:
            self.inflight += n
            return True, now
        freed, need = 0, used + n - budget
        for end, size in self.entries:
            freed += size
            if freed >= need:
                return False, end + window
        return False, now + (window if budget <= 0 else retry)

    def settle(self, reserved: int, size: int) -> None:
        self.inflight = max(self.inflight - reserved, 0)
        if size > 0:
            self.entries.append((time.time(), size))


class BudgetStore:
    """Reservations in Redis; in memory, or refused, while Redis is down."""

    def __init__(self, crawler: Crawler, config: ByteBudgetConfig) -> None:
        assert crawler.stats is not None
        self.crawler: Crawler = crawler
        self.config: ByteBudgetConfig = config
        self.stats = crawler.stats
        self.redis: aioredis.Redis | None = None
        self._reserve: AsyncScript | None = None
        self._draw: AsyncScript | None = None
        self._settle: AsyncScript | None = None
        self._unsettled: list[Settle] = []  # settles that failed: retried later
        self._redis_down_since: float | None = None
        self._backoff = config.retry
        self._local: dict[str, _LocalBudget] = {}
        # An upper bound on (Redis server time - time.monotonic()), and when it was read.
        self._clock_ahead: float | None = None
        self._clock_read = 0.0

    def open(self) -> None:
        self.redis = self.config.redis.async_client()
        self._reserve = load_script(self.redis, "reserve")
        self._draw = load_script(self.redis, "draw")
        self._settle = load_script(self.redis, "settle")

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def reserve(self, website: str, budget: int, known: int, holder: str = "",
                      overdraft: bool = False) -> Reserved | Denied:
        """The answer of ``lua/reserve.lua`` (raises ``RedisError``)."""
        c = self.config
        assert self._reserve is not None
        sent = time.monotonic()
        result: list[Any] = await self._reserve(
            keys=website_keys(c.prefix, website),
            args=[budget, c.window, known, c.default_estimate, c.reservation_expiry, c.retry,
                  c.lease_downloads + c.lease_downloads // 4, holder, 1 if overdraft else 0, c.stop_slack],
        )
        self._answered()
        self._read_clock(sent, float(result[2]))
        if int(result[0]) == 1:
            return Reserved(result[1].decode(), float(result[2]), int(result[3]), int(result[4]),
                            bool(int(result[5])))
        return Denied(float(result[1]), float(result[2]), int(result[3]), bool(int(result[4])),
                      int(float(result[5])), bool(int(result[6])))

    async def draw(self, website: str, budget: int, amount: int, holder: str, covered: int) -> Drawn | None:
        """More bytes for a download past its grant (``lua/draw.lua``); None: denied. Raises ``RedisError``."""
        c = self.config
        assert self._draw is not None
        sent = time.monotonic()
        result: list[Any] = await self._draw(keys=website_keys(c.prefix, website),
                                             args=[budget, c.window, amount, c.reservation_expiry, holder, covered])
        self._answered()
        self._read_clock(sent, float(result[2]))
        if int(result[0]) == 1:
            return Drawn(result[1].decode(), amount, bool(int(result[3])), float(result[2]))
        return None

    def _read_clock(self, sent: float, redis_now: float) -> None:
        """A script that read the Redis clock at ``redis_now`` ran after its call was sent (monotonic ``sent``):
        Redis time is at most ``redis_now - sent`` ahead of the monotonic clock. The tightest recent bound is kept."""
        ahead = redis_now - sent
        if self._clock_ahead is None or ahead < self._clock_ahead or sent - self._clock_read > _CLOCK_FRESH:
            self._clock_ahead, self._clock_read = ahead, sent

    def redis_time_by(self, instant: float) -> float | None:
        """A Redis server time no earlier than the monotonic ``instant`` (None before Redis has answered):
        what happened by ``instant`` had happened by then on the Redis clock."""
        if self._clock_ahead is None:
            return None
        return instant + self._clock_ahead + _CLOCK_MARGIN

    def _answered(self) -> None:
        if self._redis_down_since is not None:
            logger.info("Byte budget: Redis is back", extra={"spider": self.crawler.spider})
            self._redis_down_since = None
            self._backoff = self.config.retry

    def reserve_locally(self, website: str, budget: int, known: int) -> int | tuple[float, float]:
        """Bytes granted while Redis is down, or (not before, now): when to try again."""
        c = self.config
        now = time.time()
        if not c.fallback_workers:
            # Fail closed: no download without a grant; try again with backoff.
            self._backoff = min(self._backoff * 2, c.park_max)
            return now + self._backoff, now
        local = self._local.setdefault(website, _LocalBudget())
        n = known or c.default_estimate
        ok, when = local.reserve(budget // c.fallback_workers, c.window, n, c.retry)
        if ok:
            self.stats.inc_value("byte_budget/fallback_granted")
            return max(min(n, budget // c.fallback_workers), 1)
        return when, now

    async def settle(self, website: str, members: list[str], size: int, learn: list[int],
                     holder: str = "") -> float | None:
        """Settle reservations in Redis; the server time, or None if Redis failed (kept, sent later)."""
        entry = Settle(website, members, size, learn, holder)
        try:
            return await self._settle_in_redis(entry)
        except RedisError as exc:
            self.redis_error(exc)
            self._unsettled.append(entry)
            return None

    def settle_locally(self, website: str, reserved: int, size: int) -> None:
        """Settle a grant of the local budget."""
        self._local.setdefault(website, _LocalBudget()).settle(reserved, size)

    async def _settle_in_redis(self, e: Settle) -> float:
        c = self.config
        assert self._settle is not None
        sent = time.monotonic()
        result = await self._settle(keys=website_keys(c.prefix, e.website),
                                    args=[",".join(e.members), e.size, c.window, c.reservation_expiry, e.holder,
                                          c.estimate_quantile, *e.learn])
        self._read_clock(sent, float(result[0]))
        return float(result[0])

    async def flush_unsettled(self) -> None:
        """Send the settles kept while Redis was down, oldest first, until one fails."""
        while self._unsettled:
            try:
                await self._settle_in_redis(self._unsettled[0])
            except RedisError:
                return
            self._unsettled.pop(0)

    def redis_error(self, exc: Exception) -> None:
        """Count a failed Redis call; log once per outage."""
        self.stats.inc_value(f"byte_budget/redis_error/{type(exc).__name__}")
        if self._redis_down_since is None:
            self._redis_down_since = time.monotonic()
            logger.error(
                "Byte budget: Redis unavailable (%(exc)s); %(mode)s",
                {"exc": exc, "mode": f"local budget b/{self.config.fallback_workers}"
                 if self.config.fallback_workers else "no downloads from budgeted websites until it is back"},
                extra={"spider": self.crawler.spider},
            )
