"""The frontier's cluster view: this worker's heartbeat, and what it knows of the other workers.

Part of :mod:`crawler.frontier.scheduler`. A heartbeat task records this worker as busy
(at least every ``min(1, FRONTIER_IDLE_CLOSE_SECONDS / 4)`` seconds; pushes and
pops report it too) and, while it is idle, polls the cluster (queued websites,
seeds, last busy worker, workers holding leases) every
``FRONTIER_IDLE_POLL_SECONDS`` for
:class:`crawler.frontier.spider.FrontierSpider`'s cluster-wide idle close,
which waits while any lease is outstanding. Its calls carry the worker's
acknowledgements and renew its lease (:mod:`.leases`). A busy
worker takes new seeds too (scrapy-redis reads them only when idle). What the
heartbeat learns goes to its :class:`HeartbeatHost` (the scheduler).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from crawler.frontier.config import FrontierConfig
    from crawler.frontier.store import PopResult, Status


class HeartbeatHost(Protocol):
    """What the heartbeat needs from the worker it beats for."""

    def locally_busy(self) -> bool:
        """This worker holds or handles requests (checked once per tick)."""

    def renew_due(self) -> bool:
        """This worker's lease wants renewing (no call renewed it lately)."""

    async def cluster_status(self, busy: bool, with_seeds: bool) -> Status:
        """The cluster view from Redis; records this worker as busy when ``busy``."""

    def seeds_waiting(self, count: int) -> None:
        """Seeds wait in the spider's seed list."""

    def work_ready(self) -> None:
        """Some website may be served now."""

    def idle_tick(self) -> None:
        """This worker is idle and the cluster view is fresh (time to look at the idle close)."""


class ClusterView:
    """The cluster as this worker last saw it, kept fresh by a heartbeat task."""

    def __init__(self, config: FrontierConfig) -> None:
        self.sites_with_work = 0  # websites with queued requests, cluster-wide
        self.clock_offset = 0.0  # Redis clock - local clock
        self._status: Status | None = None
        self._status_at = 0.0
        self.last_busy_report = time.monotonic()
        self._last_seed_check = 0.0
        self._interval = min(1.0, config.idle_close / 4) if config.idle_close else 1.0
        self.tick = min(self._interval, config.idle_poll)

    def apply(self, status: Status) -> None:
        self._status = status
        self._status_at = time.monotonic()
        self.sites_with_work = status.sites_with_work
        self.clock_offset = status.now - time.time()

    def popped(self, result: PopResult) -> None:
        self.clock_offset = result.now - time.time()
        self.sites_with_work = result.sites_with_work
        if result.items:
            self.last_busy_report = time.monotonic()

    def pushed(self, sites_with_work: int) -> None:
        self.last_busy_report = time.monotonic()
        self.sites_with_work = sites_with_work

    def server_now(self) -> float:
        return time.time() + self.clock_offset

    def idle_seconds(self, locally_busy: bool) -> float:
        """How long the whole cluster has had nothing queued, no seeds and no busy worker (0: busy now)."""
        st = self._status
        if st is None or locally_busy or st.sites_with_work or st.seeds or st.leased:
            return 0.0  # a lease outstanding: its requests may come back (a crashed worker's, after its lease)
        last = st.last_busy if st.last_busy is not None else st.now
        return max(0.0, st.now - last) + (time.monotonic() - self._status_at)

    async def heartbeat(self, host: HeartbeatHost) -> None:
        """Beat for ``host`` until cancelled; a failed Redis call is retried at the next tick."""
        was_busy = True
        while True:
            await asyncio.sleep(self.tick)
            busy = host.locally_busy()
            try:
                now = time.monotonic()
                if busy and now - self._last_seed_check >= self._interval:
                    # A busy worker takes new seeds too (scrapy-redis reads them only when idle).
                    self._last_seed_check = self.last_busy_report = now
                    status = await host.cluster_status(True, True)
                    self.apply(status)
                    if status.seeds:
                        host.seeds_waiting(status.seeds)
                    if status.sites_ready:
                        host.work_ready()
                elif busy and (now - self.last_busy_report >= self._interval or host.renew_due()):
                    status = await host.cluster_status(True, False)
                    self.apply(status)
                    self.last_busy_report = now
                    if status.sites_ready:
                        host.work_ready()
                elif not busy:
                    # was_busy: record the end of this worker's busy spell exactly.
                    status = await host.cluster_status(was_busy, True)
                    self.apply(status)
                    if status.sites_ready:
                        host.work_ready()
                    if status.seeds:
                        host.seeds_waiting(status.seeds)
                    host.idle_tick()
            except RedisError:
                pass  # counted and logged by the caller's RedisHealth; the next tick retries
            was_busy = busy
