"""This worker's grants: leases that serve several downloads, or one reservation each.

``Leases`` owns, per website, the open lease and the reservation in flight
(one at a time: requests that arrive meanwhile wait for it and are served
from the lease it brings). It turns the answers of ``lua/reserve.lua`` into
grants, leases or a time to try again, reserves the next lease in the
background, and settles a lease once it is closed and its downloads are done.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from redis.exceptions import RedisError

from middlewares.byte_budget.store import Reserved

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request
    from scrapy.crawler import Crawler

    from middlewares.byte_budget.config import ByteBudgetConfig
    from middlewares.byte_budget.store import BudgetStore

# The middleware's logger: its lines keep the name they had before the
# byte_budget_*.py split, and logging set-ups aimed at it keep working.
logger = logging.getLogger("middlewares.byte_budget.middleware")

# Requests per website and worker that wait in place for their turn with the
# overdraft token (each holds one of Scrapy's CONCURRENT_REQUESTS meanwhile).
TURN_WAITERS = 16


class Wait(NamedTuple):
    """A denial: try again at ``not_before`` (Redis server time; ``now`` is when it was denied).

    ``timed`` False: ``not_before`` is a guess (``now`` +
    ``BYTE_BUDGET_RETRY_SECONDS``): the overdraft token's holder or downloads
    in flight hold the budget and may free it any moment.
    """

    not_before: float
    now: float
    timed: bool = True


@dataclass(slots=True, eq=False)
class _Lease:
    """Bytes reserved in Redis once for several downloads of this worker.

    With the budget far from binding, one reservation and one settle serve up
    to ``BYTE_BUDGET_LEASE_DOWNLOADS`` downloads (Redis round trips were most
    of the middleware's cost). For the sliding-window proof a lease is one
    reservation: all its downloads happen between its grant and its settle,
    and each stays within its share of it.

    A lease reserves a quarter more estimates than it serves downloads: the
    spare room covers downloads that run past their estimate before they draw
    from Redis (``Leases.take_spare``). The next lease is
    reserved in the background once three quarters of this one are handed out
    (or of its time has passed), so downloads do not wait for Redis.
    """

    website: str
    member: str
    amount: int  # reserved in Redis
    estimate: int  # bytes per download, from Redis at grant time
    committed: int = 0  # handed out to downloads
    counted: int = 0  # bytes of finished downloads
    inflight: int = 0
    open: bool = True
    downloads: int = 0  # handed out so far (at most BYTE_BUDGET_LEASE_DOWNLOADS)
    renew_at: float = 0.0  # loop time after which the next lease is reserved in the background
    renewing: bool = False
    learn: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Grant:
    """A granted download in progress (local state read by the byte signals).

    Metered: ``reserved`` is what it may receive, its grant plus what it drew
    since (``draws``); bytes beyond it draw more, and a download whose draw is
    ``denied`` is stopped unless its remaining bytes are already on the wire.
    """

    website: str
    member: str  # "" for a lease's download or a grant from the local fallback budget
    reserved: int  # bytes covered: the grant plus the draws
    budget: int = 0  # b of the website when granted
    base: int = 0  # the grant alone (a lease's download: its share of the lease)
    head: int = 0
    body: int = 0
    expected: int = -1  # total size announced by Content-Length, when known
    chunked: bool = False  # no Content-Length: HTTP/1.1 chunked (or read to close)
    stopped: bool = False
    lease: _Lease | None = None
    local: bool = False  # from the local fallback budget (Redis down): not metered
    holder: str = ""  # id of the download for the overdraft token ("" until needed)
    overdraft: bool = False  # holds the website's overdraft token: never stopped, draws nothing
    draws: list[str] = field(default_factory=list)  # draw.lua members, settled with the download
    drawn_at: list[float] = field(default_factory=list)  # Redis time of each draw
    drawing: asyncio.Task[None] | None = None  # the draw in flight (one at a time)
    denied: bool = False  # a draw was denied: stop unless the rest is already on the wire
    # A download settled on its own (not a lease's): (bytes received, monotonic time) every
    # BYTE_BUDGET_DRAW_BYTES, so its first bytes count from when they arrived (wire.arrived_members).
    marks: list[tuple[int, float]] = field(default_factory=list)
    next_mark: float = math.inf  # bytes received at which the next mark is taken (inf: none)


class Leases:
    """The open lease and the reservation in flight per website, of this worker."""

    def __init__(self, crawler: Crawler, config: ByteBudgetConfig, store: BudgetStore) -> None:
        assert crawler.stats is not None
        self.crawler: Crawler = crawler
        self.config: ByteBudgetConfig = config
        self.stats = crawler.stats
        self.store: BudgetStore = store
        self.open_leases: dict[str, _Lease] = {}  # the open lease per website
        self.pending: dict[str, asyncio.Future[None]] = {}  # reservation in flight per website
        self.tasks: set[asyncio.Task[Any]] = set()  # lease renewals and settles
        self._closing = False  # the spider is closing: no more renewals
        self._worker = uuid.uuid4().hex[:12]
        self._holders = itertools.count()
        self._turns: dict[str, collections.deque[asyncio.Event]] = {}  # website -> requests waiting for a turn

    async def wait_for_turn(self, request: Request, website: str, known: int, overdraft: bool,
                            budget_for: Callable[[str], int | None],
                            denied: Wait) -> Grant | Wait | None:
        """Wait in place for a turn that comes within ``turn_horizon`` seconds.

        Sent back to the frontier, a request comes back far later than its turn
        (the frontier parks the website), so a website whose downloads take
        turns would get a few a second. Up to ``TURN_WAITERS`` requests per
        website and worker wait, first come first served: the first is woken
        when a download of the website is settled here (``turn_done``) and
        every ``BYTE_BUDGET_RETRY_SECONDS`` / 10 for the other workers' (or
        sleeps until enough bytes have left the window); each waits at most
        ``turn_horizon``. Returns the grant, or
        when to try again (``denied`` when the queue is full), or None if the
        website has no budget any more.
        """
        queue = self._turns.setdefault(website, collections.deque())
        if len(queue) >= TURN_WAITERS:
            return denied
        me = asyncio.Event()
        queue.append(me)
        loop = asyncio.get_running_loop()
        grant: Grant | Wait = denied
        deadline = loop.time() + self.turn_horizon
        try:
            while (left := deadline - loop.time()) > 0:
                # The first polls every RETRY / 10 (the token or the downloads in flight may
                # free the budget any moment), or sleeps until enough bytes have left the window.
                ahead = denied.not_before - denied.now if denied.timed else 0.0
                wait = min(left, max(ahead, self.config.retry / 10)) if queue[0] is me else left
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(me.wait(), wait)
                me.clear()
                if queue[0] is not me:
                    continue
                budget = budget_for(website)
                if budget is None:
                    return None
                grant = await self.grant(request, website, budget, known, overdraft)
                if isinstance(grant, Grant):
                    break
                denied = grant
                if denied.not_before - denied.now > deadline - loop.time():
                    break
        finally:
            queue.remove(me)
            if queue:
                queue[0].set()  # the next one tries at once
            else:
                del self._turns[website]
        return grant

    @property
    def turn_horizon(self) -> float:
        """How far ahead a turn may be for a request to wait for it in place (1 s by default)."""
        return min(self.config.park_max, 4 * self.config.retry)

    def turn_done(self, website: str) -> None:
        """A download of ``website`` was settled: the first request waiting for its turn tries again."""
        queue = self._turns.get(website)
        if queue:
            queue[0].set()

    def new_holder(self) -> str:
        """A cluster-unique id of one download (for the overdraft token)."""
        return f"{self._worker}:{next(self._holders)}"

    def stop_renewing(self) -> None:
        """The spider is closing: no more leases are reserved in the background."""
        self._closing = True

    def take_spare(self, grant: Grant, amount: int) -> bool:
        """Cover ``amount`` more bytes of ``grant`` from its lease's spare room, if it has that much."""
        lease = grant.lease
        if lease is None or lease.amount - lease.committed < amount:
            return False
        lease.committed += amount
        grant.reserved += amount
        grant.base += amount
        return True

    async def grant(self, request: Request, website: str, budget: int, known: int,
                    overdraft: bool = False) -> Grant | Wait:
        """A grant for ``request``, or (not before, now): when to try again, by the Redis server's clock.

        ``overdraft``: the download must run as the website's one overdraft
        (a retried page of unknown size that was stopped once).
        """
        if overdraft or (known > budget > 0):
            return await self.reserve(request, website, budget, known, overdraft=True)
        grant = await self._grant_from_lease(website, budget, known)
        # One reservation in flight per website: with leases, the requests
        # that arrive meanwhile are served from the lease it brings.
        while grant is None and (pending := self.pending.get(website)) is not None:
            await asyncio.shield(pending)
            grant = await self._grant_from_lease(website, budget, known)
        if grant is None:
            return await self._reserve_single_flight(request, website, budget, known)
        return grant

    async def _reserve_single_flight(
        self, request: Request, website: str, budget: int, known: int
    ) -> Grant | Wait:
        if self.config.lease_downloads == 1:
            return await self.reserve(request, website, budget, known)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending[website] = done
        try:
            return await self.reserve(request, website, budget, known)
        finally:
            if self.pending.get(website) is done:
                del self.pending[website]
            done.set_result(None)

    async def reserve(
        self, request: Request | str, website: str, budget: int, known: int, overdraft: bool = False
    ) -> Grant | Wait:
        """A grant, or (not before, now): when to try again, by the Redis server's clock."""
        c = self.config
        holder = self.new_holder()
        try:
            result = await self.store.reserve(website, budget, known, holder, overdraft)
        except RedisError as exc:
            self.store.redis_error(exc)
            local = self.store.reserve_locally(website, budget, known)
            if isinstance(local, tuple):
                return Wait(*local)
            return Grant(website, "", local, budget, local, local=True)
        if isinstance(result, Reserved):
            n, granted = result.n, result.granted
            if result.overdraft:
                self.stats.inc_value("byte_budget/overdrafts")
                return Grant(website, result.member, granted, budget, granted, holder=holder, overdraft=True)
            if granted <= n:
                return Grant(website, result.member, granted, budget, granted, holder=holder)
            loop = asyncio.get_running_loop()
            lease = _Lease(website, result.member, granted, n, committed=n, inflight=1, downloads=1,
                           renew_at=loop.time() + 0.75 * c.lease_seconds)
            old = self.open_leases.get(website)
            if old is not None:
                self.close(old)
            self.open_leases[website] = lease
            loop.call_later(c.lease_seconds, self.close, lease)
            self.stats.inc_value("byte_budget/leases")
            return Grant(website, "", n, budget, n, lease=lease)
        if result.warn:
            self.stats.inc_value("byte_budget/exhausted")
            logger.warning(
                "Byte budget of %(website)s exhausted: %(used)d of %(budget)d bytes per %(window)gs counted "
                "at %(now).3f, a download needs %(n)d; its requests wait until %(nb).3f (in %(wait).1fs)",
                {"website": website, "used": result.used, "budget": budget, "window": c.window,
                 "now": result.now, "n": result.n, "nb": result.not_before, "wait": result.not_before - result.now},
                extra={"spider": self.crawler.spider},
            )
        logger.debug("Byte budget: %(request)s waits until %(nb).3f", {"request": request, "nb": result.not_before},
                     extra={"spider": self.crawler.spider})
        return Wait(result.not_before, result.now, result.timed)

    async def _grant_from_lease(self, website: str, budget: int, known: int) -> Grant | None:
        lease = self.open_leases.get(website)
        if lease is None:
            return None
        n = known or lease.estimate
        if lease.downloads >= self.config.lease_downloads or lease.committed + n > lease.amount:
            # Used up: settle it first when it is idle, so the next
            # reservation does not see its unused bytes as taken.
            if self.close(lease, settle=False):
                await self._settle_lease(lease)
            return None
        lease.committed += n
        lease.inflight += 1
        lease.downloads += 1
        if (not lease.renewing and not self._closing and website not in self.pending
                and (4 * lease.downloads >= 3 * self.config.lease_downloads
                     or asyncio.get_running_loop().time() >= lease.renew_at)):
            lease.renewing = True
            self._renew(website, budget)
        return Grant(website, "", n, budget, n, lease=lease)

    def _renew(self, website: str, budget: int) -> None:
        """Reserve the next lease in the background; it replaces the open one when granted."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending[website] = done  # process_request waits for it rather than reserving again

        async def renew() -> None:
            try:
                grant = await self.reserve("lease renewal", website, budget, 0)
            finally:
                if self.pending.get(website) is done:
                    del self.pending[website]
                done.set_result(None)
            if not isinstance(grant, Grant):
                return  # denied: the next request reserves for itself
            if grant.lease is not None:
                # No download is using it yet: only its timer or the next one closes it.
                grant.lease.committed, grant.lease.inflight, grant.lease.downloads = 0, 0, 0
                return
            # Near the limit the script granted one download's bytes, which no download uses.
            if grant.member:
                await self.store.settle(website, [grant.member], 0, [-1], grant.holder)
            else:
                self.store.settle_locally(website, grant.reserved, 0)

        task = asyncio.get_running_loop().create_task(renew())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close(self, lease: _Lease, settle: bool = True) -> bool:
        """No more downloads from this lease; it is settled when its downloads are done.

        True if it is idle and ``settle`` is False: the caller settles it.
        """
        if not lease.open:
            return False
        lease.open = False
        if self.open_leases.get(lease.website) is lease:
            del self.open_leases[lease.website]
        if lease.inflight:
            return False
        if not settle:
            return True
        task = asyncio.get_running_loop().create_task(self._settle_lease(lease))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return False

    async def _settle_lease(self, lease: _Lease) -> None:
        await self.store.settle(lease.website, [lease.member], lease.counted, lease.learn)

    def close_all(self) -> None:
        for lease in list(self.open_leases.values()):
            self.close(lease)

    async def drain(self) -> None:
        """Wait for the lease renewals and settles in flight."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def release(self, lease: _Lease, size: int, learn: int) -> None:
        """A download of ``lease`` is done: count it; settle the lease if it was its last."""
        lease.counted += size
        if learn >= 0:
            lease.learn.append(learn)
        lease.inflight -= 1
        if not lease.open and lease.inflight == 0:
            await self._settle_lease(lease)
