"""What a worker was given by the frontier, from its pop to its acknowledgement: leased delivery.

Part of :mod:`crawler.frontier.scheduler`. Every Redis call that hands out
or settles requests goes through :class:`Delivery`: pops (``lua/pop.lua``),
the heartbeat's cluster view (``lua/status.lua``) and the close
(``lua/release.lua``) each carry the acknowledgements that are due
(:mod:`.leases`) and renew this worker's lease; replies lost to a timeout
are asked for again (:class:`crawler.frontier.store.PopReceipts`). Popped
entries pass the decoding gate here (an undecodable one goes to the dead
list), requests in flight are tracked (:mod:`.in_flight`), and requests that
finally fail go to the failed list (:mod:`.failures`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from crawler.frontier.codec import UndecodableRequestError, decode_request
from crawler.frontier.failures import FailedLog
from crawler.frontier.gate import GateConfig, MetaWarnings, filter_entry_meta
from crawler.frontier.in_flight import InFlight
from crawler.frontier.leases import Leases
from crawler.frontier.prefetch import Buffered
from crawler.frontier.store import PopReceipts, split_member

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from scrapy import Request, Spider
    from scrapy.crawler import Crawler

    from crawler.frontier.config import FrontierConfig
    from crawler.frontier.failures import StartTask
    from crawler.frontier.outbox import Outbox
    from crawler.frontier.partitions import PartitionedStore
    from crawler.frontier.store import PopResult, Status

    HealthCall = Callable[[Awaitable[Any]], Awaitable[Any]]

logger = logging.getLogger(__name__)


class Delivery:
    """This worker's leased requests and the Redis calls that settle them."""

    def __init__(self, crawler: Crawler, config: FrontierConfig, worker: str, outbox: Outbox,
                 health: HealthCall, start: StartTask) -> None:
        """``health`` wraps every Redis call (:class:`crawler.frontier.redis_health.RedisHealth`);
        ``start`` runs a background task."""
        assert crawler.stats is not None
        self._stats = crawler.stats
        self._config = config
        self._worker = worker
        self._health = health
        self._start = start
        self.store: PartitionedStore | None = None
        self.spider: Spider | None = None
        self._receipts = PopReceipts()
        self.failed = FailedLog(self._write_failed, start, self._stats)
        self.leases = Leases(config.lease, [outbox, self.failed], config.prefetch)
        self.in_flight = InFlight(crawler, self.leases.done)
        # Requests downloading plus as many responses waiting to be parsed: what a crash can make
        # fetched twice stays bounded (docs/frontier.md, "Leased delivery").
        self._max_in_flight = 2 * crawler.settings.getint("CONCURRENT_REQUESTS")
        # Entries read from Redis are untrusted input (crawler/frontier/gate.py).
        self.gate = GateConfig.from_settings(crawler.settings)
        self._meta_warnings = MetaWarnings(crawler, None)

    def open(self, store: PartitionedStore, spider: Spider) -> None:
        self.store = store
        self.spider = self._meta_warnings.spider = spider

    # -- calls that carry acknowledgements ---------------------------------

    async def _settling(self, call: Callable[[list[str]], Coroutine[Any, Any, Any]]) -> Any:
        self.in_flight.sweep()
        acks = self.leases.take()
        try:
            result = await self._health(call(acks))
        except BaseException:
            self.leases.unsent(acks)
            raise
        self.leases.sent(acks)
        self._stats.inc_value("frontier/leases_acknowledged", len(acks))
        reclaimed = getattr(result, "reclaimed", 0)
        if reclaimed:
            self._stats.inc_value("frontier/leases_reclaimed", reclaimed)
            logger.info("Frontier: %(n)d requests of expired leases (workers gone) back in their queues",
                        {"n": reclaimed}, extra={"spider": self.spider})
        return result

    async def pop(self, n: int) -> PopResult:
        store = self.store
        assert store is not None
        result: PopResult = await self._settling(
            lambda acks: store.pop(n, self._worker, self._receipts, self._config.lease, acks))
        self.leases.received([lease for _, lease, _ in result.items])
        return result

    async def status(self, busy: bool, seeds_key: str | None) -> Status:
        store = self.store
        assert store is not None
        status: Status = await self._settling(
            lambda acks: store.status(self._worker, busy, seeds_key, self._config.lease, acks))
        return status

    async def release(self) -> int:
        """Closing: acknowledge what is done, return the rest to the queues; how many requests went back."""
        store = self.store
        assert store is not None
        returned: int = await self._settling(lambda acks: store.release(self._worker, acks, self._receipts))
        return returned

    # -- requests ------------------------------------------------------------

    def decode(self, website: str, lease: str, member: bytes) -> Buffered | None:
        """The popped entry as a request for the prefetch buffer; None if it fails the decoding gate."""
        fp, payload = split_member(member)
        try:
            request = decode_request(payload, self.spider, self.gate)
        except UndecodableRequestError as exc:
            self._stats.inc_value(f"frontier/gate/refused/{exc.reason}")
            logger.error("Undecodable request in the frontier (%(website)s), moved to %(key)s: %(reason)s",
                         {"website": website, "key": self.store.dead_key if self.store else "?", "reason": exc},
                         extra={"spider": self.spider})
            self._stats.inc_value("frontier/undecodable")
            if self.store is not None:
                self._start("dead letter", self._dead_letter(member, lease))
            return None
        dropped = filter_entry_meta(request.meta, website, self.gate)
        self._meta_warnings.dropped("frontier entry", dropped, "FRONTIER_ENTRY_META_ALLOW")
        return Buffered(request, fp, -request.priority, payload, lease)

    async def _dead_letter(self, member: bytes, lease: str) -> None:
        assert self.store is not None
        await self._health(self.store.dead_letter(self.store.dead_key, [member]))
        self.leases.done(lease)

    def may_hand_out(self) -> bool:
        """Fewer than 2 x CONCURRENT_REQUESTS requests of this worker are unfinished (leases only)."""
        if not self._config.lease or len(self.in_flight) < self._max_in_flight:
            return True
        self.in_flight.sweep()
        return len(self.in_flight) < self._max_in_flight

    def handed_out(self, item: Buffered) -> None:
        self.in_flight.add(item.request, item.lease)

    def record_failure(self, request: Request, reason: str,
                       describe: Callable[[Request], tuple[str, str, bytes]]) -> None:
        """``request`` finally failed: to the failed list, if it is the frontier's (not robots.txt, say);
        ``describe`` gives its website, fingerprint and encoded form."""
        if request not in self.in_flight:
            return
        website, fingerprint, payload = describe(request)
        logger.debug("Request %(request)s finally failed (%(reason)s): recorded in the failed list",
                       {"request": request, "reason": reason}, extra={"spider": self.spider})
        self.failed.add({"reason": reason, "url": request.url, "website": website, "fingerprint": fingerprint,
                         "score": -request.priority, "time": time.time(), "worker": self._worker,
                         "payload": payload.decode("utf-8")})

    async def _write_failed(self, records: list[dict[str, Any]]) -> None:
        assert self.store is not None
        await self._health(self.store.record_failed(records))
