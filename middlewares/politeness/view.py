"""This worker's view of politeness: which websites need a look at Redis before a request, and which are parked.

A website costs a Redis round trip per request only if it is *watched*
(it has cluster-wide state: a park, a breaker, a probe or failures) or
*gated* (a Crawl-delay or a request rate applies). Everything else passes with
two dictionary lookups. The view is kept fresh by:

* events (``<p>:pol:events`` pub/sub): a park or breaker transition
  announced by any worker reaches every worker within milliseconds;
* a refresh every ``POLITENESS_REFRESH_SECONDS``: the active list (websites
  with state; events can be lost while a connection is down) and the
  run-time rate overrides, in one round trip.

Times are Unix times on the Redis server's clock: ``server_now()`` adds
the offset measured on each reply to the local clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from crawler.stopping import stop_task
from middlewares.politeness.config import Rate, parse_rate
from middlewares.politeness.signals import OK, RATE
from middlewares.politeness.store import Event, events_channel

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis import asyncio as aioredis

    from middlewares.politeness.config import PolitenessConfig
    from middlewares.politeness.store import PolitenessStore

logger = logging.getLogger(__name__)

_POLL = 0.25  # seconds a listen poll waits for an event
HOLDING = frozenset({"parked", "opened", "reopened"})
RELEASING = frozenset({"closed", "recovered"})


class PolitenessView:
    """Watched, parked and gated websites, as this worker knows them."""

    def __init__(self, config: PolitenessConfig) -> None:
        self.config = config
        self.parked: dict[str, float] = {}  # website -> until (server time)
        self.watched: set[str] = set()  # websites with cluster-wide state
        self.delays: dict[str, float] = {}  # website -> robots.txt Crawl-delay (capped), > 0
        self.overrides: dict[str, Rate | None] = {}  # run-time rates (CLI)
        self.adaptive: dict[str, Rate] = {}  # rates lowered by the adaptive slow-down
        self.permits: dict[str, tuple[int, float]] = {}  # website -> (leased permits left, monotonic expiry)
        self.offset = 0.0  # Redis clock - local clock
        self._local_failures: dict[str, int] = {}  # breaker failures counted here while Redis is down
        self.rates_everywhere = config.rate_default is not None

    # -- questions on the hot path ------------------------------------------

    def needs_check(self, website: str) -> bool:
        return (self.rates_everywhere or website in self.watched or website in self.delays
                or website in self.overrides or website in self.config.rate_per_website
                or website in self.adaptive)

    def rate_for(self, website: str) -> Rate | None:
        """The configured (or run-time) rate, or the adaptive one if it is lower."""
        if website in self.overrides:
            rate = self.overrides[website]
        elif website in self.config.rate_per_website:
            rate = self.config.rate_per_website[website]
        else:
            rate = self.config.rate_default
        adaptive = self.adaptive.get(website)
        if adaptive is not None and (rate is None or adaptive.per_second < rate.per_second):
            return adaptive
        return rate

    def set_adaptive(self, website: str, rps: float) -> None:
        rate = Rate.from_per_second(rps) if rps > 0 else None
        if rate != self.adaptive.get(website):
            self.permits.pop(website, None)  # a lease under the old rate ends now
        if rate is None:
            self.adaptive.pop(website, None)
        else:
            self.adaptive[website] = rate

    def server_now(self) -> float:
        return time.time() + self.offset

    def clock(self, server_now: float) -> None:
        """A reply carried the Redis time: keep the offset (to within half a round trip)."""
        self.offset = server_now - time.time()

    def park(self, website: str, until: float) -> None:
        self.watched.add(website)
        if until > self.parked.get(website, 0.0):
            self.parked[website] = until

    def parked_until(self, website: str) -> float | None:
        until = self.parked.get(website)
        if until is None:
            return None
        if until > self.server_now():
            return until
        del self.parked[website]
        return None

    def take_permit(self, website: str) -> bool:
        """Use a leased request-rate permit, if one is left and still valid."""
        lease = self.permits.get(website)
        if lease is None:
            return False
        left, expires = lease
        if left <= 0 or time.monotonic() >= expires:
            del self.permits[website]
            return False
        self.permits[website] = (left - 1, expires)
        return True

    def apply(self, event: Event) -> None:
        if event.transition in HOLDING:
            self.park(event.website, event.until)
        else:  # released, or failures counted: successes must be reported until the state is clean
            if event.transition in RELEASING:
                self.parked.pop(event.website, None)
            self.watched.add(event.website)

    def report_locally(self, website: str, kind: str, retry_after: float | None,
                       jitter: float) -> tuple[float, bool]:
        """Redis is down: this worker still holds the website back on its own; (until, parked now)."""
        c = self.config
        now = self.server_now()
        if kind == OK:
            self._local_failures.pop(website, None)
            return 0.0, False
        if kind == RATE:
            # jitter is the multiplier 1 + POLITENESS_BACKOFF_JITTER * u, as lua/report.lua takes it
            until = now + (retry_after if retry_after is not None else min(c.backoff_base, c.backoff_max) * jitter)
        else:
            failures = self._local_failures[website] = self._local_failures.get(website, 0) + 1
            if failures < c.breaker_failures:
                return 0.0, False
            self._local_failures.pop(website, None)
            until = now + c.breaker_cool
        self.park(website, until)
        return until, True

    def set_delay(self, website: str, delay: float | None) -> None:
        if not self.config.crawl_delay or not delay or delay <= 0:
            return
        delay = min(delay, self.config.crawl_delay_max)
        if delay > 0 and delay > self.delays.get(website, 0.0):
            # Hosts of one website with different delays: the longest holds.
            self.delays[website] = delay

    def snapshot(self, active: list[str], raw_overrides: dict[str, str], adaptive: dict[str, float],
                 server_now: float) -> dict[str, str]:
        """Apply a refresh; returns the overrides that changed (website -> new value), for the log."""
        self.clock(server_now)
        for website in set(self.adaptive) | set(adaptive):
            self.set_adaptive(website, adaptive.get(website, 0.0))
        for website, until in list(self.parked.items()):
            if until <= server_now:
                del self.parked[website]
        self.watched = set(active) | set(self.parked)
        overrides: dict[str, Rate | None] = {}
        for site, value in raw_overrides.items():
            try:
                overrides[site] = parse_rate(f"run-time rate of {site}", value)
            except ValueError:
                logger.error("Ignoring invalid run-time request rate %(site)s=%(value)r", {"site": site,
                             "value": value})
        changed = {site: str(rate) if rate else "none" for site, rate in overrides.items()
                   if site not in self.overrides or self.overrides[site] != rate}
        changed.update({site: "unset" for site in self.overrides if site not in overrides})
        for site in changed:
            self.permits.pop(site, None)  # a lease under the old rate ends now
        self.overrides = overrides
        return changed


class ViewSync:
    """The refresh loop and the event listener of one worker."""

    def __init__(self, view: PolitenessView, store: PolitenessStore, redis: aioredis.Redis,
                 on_error: Callable[[Exception], None], on_refresh: Callable[[dict[str, str]], None]) -> None:
        self._view = view
        self._store = store
        self._redis = redis
        self._on_error = on_error
        self._on_refresh = on_refresh
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [asyncio.create_task(self._refresh_loop()), asyncio.create_task(self._listen())]

    async def stop(self) -> None:
        """Ask the loops to stop and wait for them: no Redis call is cancelled half-way."""
        self._stop.set()
        if not self._tasks:
            return
        config = self._view.config
        _, pending = await asyncio.wait(self._tasks, timeout=config.refresh + config.redis.longest_call)
        for task in pending:  # a Redis call that did not answer in time
            await stop_task(task)

    async def refresh(self) -> None:
        try:
            active, overrides, adaptive, now = await self._store.snapshot()
        except RedisError as exc:
            self._on_error(exc)
            return
        self._on_refresh(self._view.snapshot(active, overrides, adaptive, now))

    async def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._view.config.refresh)
                return
            try:
                await self.refresh()
            except Exception:  # never die silently: log, go on
                logger.exception("Politeness: refresh failed")

    async def _listen(self) -> None:
        channel = events_channel(self._view.config.prefix)
        while not self._stop.is_set():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                self.subscribed.set()
                while not self._stop.is_set():
                    # Short polls, so stop() never has to cancel a read.
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL)
                    if message is not None and message.get("type") == "message":
                        event = Event.decode(message["data"])
                        if event is not None:
                            self._view.apply(event)
            except RedisError as exc:
                self._on_error(exc)
                await self._pause()
            except Exception:
                logger.exception("Politeness: event listener failed; restarting it")
                await self._pause()
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self._view.config.refresh)
