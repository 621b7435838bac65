"""A request given to the frontier, made into an outbox entry: its meta contract, local dedupe, encoding.

Part of :mod:`crawler.frontier.scheduler` (``enqueue_request``). Reads the
frontier's meta keys (``frontier_requeue``, ``frontier_not_before``, capped
at ``FRONTIER_MAX_NOT_BEFORE_SECONDS`` ahead), drops known duplicates found
in the outbox's caches of what Redis has seen, maps the request to its
website (cached per netloc) and encodes it (:mod:`.codec`). No I/O here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy.utils.request import RequestFingerprinter

from crawler.frontier.codec import UnencodableRequestError, encode_request
from crawler.frontier.store import MODE_DEDUPE, MODE_DONT_FILTER, MODE_REQUEUE, PushEntry
from crawler.website import WebsiteKeys

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request, Spider
    from scrapy.crawler import Crawler

    from crawler.frontier.config import FrontierConfig
    from crawler.frontier.gate import GateConfig
    from crawler.frontier.outbox import Outbox

logger = logging.getLogger(__name__)

META_REQUEUE = "frontier_requeue"
META_NOT_BEFORE = "frontier_not_before"


class Intake:
    """Builds the outbox entry of each request enqueued (None: a duplicate, or not storable)."""

    def __init__(self, crawler: Crawler, config: FrontierConfig, outbox: Outbox, gate: GateConfig,
                 server_now: Callable[[], float]) -> None:
        assert crawler.stats is not None
        self._crawler = crawler
        self._stats = crawler.stats
        self._config = config
        self._outbox = outbox
        self._gate = gate
        self._server_now = server_now
        self.spider: Spider | None = None
        # The outbox's caches of what Redis has seen, read on enqueue_request's hot path.
        self._seen = outbox.seen
        self._seen_urls = outbox.seen_urls
        self._url_cache = type(crawler.request_fingerprinter) is RequestFingerprinter and bool(config.seen_cache)
        self.website = WebsiteKeys(config.website_mode)

    def entry(self, request: Request) -> PushEntry | None:
        meta = request.meta
        requeue = bool(meta.pop(META_REQUEUE, False))
        raw_until = meta.pop(META_NOT_BEFORE, 0)
        try:
            not_before = float(raw_until or 0)
        except (TypeError, ValueError):
            logger.error("meta %(key)s of %(request)s must be a Unix time in seconds, got %(value)r; ignored",
                         {"key": META_NOT_BEFORE, "request": request, "value": raw_until},
                         extra={"spider": self.spider})
            not_before = 0.0
        if not_before:
            not_before = self.cap_not_before(request, not_before)
        url_key = (request.url if self._url_cache and request.method == "GET" and not request.body
                   and not requeue else None)
        if url_key is not None and not request.dont_filter and url_key in self._seen_urls:
            self._outbox.filtered(request)
            return None
        fp = self._crawler.request_fingerprinter.fingerprint(request).hex()
        if requeue:
            mode = MODE_REQUEUE
        elif request.dont_filter:
            mode = MODE_DONT_FILTER
        else:
            mode = MODE_DEDUPE
            if fp in self._seen:
                self._outbox.filtered(request)
                return None
        website = self.website(request)
        meta.setdefault("download_slot", website)
        try:
            payload = encode_request(request, self.spider, self._gate)
        except UnencodableRequestError as exc:
            logger.error("Cannot store %(request)s in the frontier, dropped (no fingerprint kept): %(reason)s",
                         {"request": request, "reason": exc}, extra={"spider": self.spider})
            self._stats.inc_value("frontier/unserializable")
            return None
        return PushEntry(website, fp, mode, -request.priority, not_before, payload, url_key)

    def describe(self, request: Request) -> tuple[str, str, bytes]:
        """(website, fingerprint, encoded request; ``{}`` if it cannot be encoded), for the failed list."""
        try:
            payload = encode_request(request, self.spider, self._gate)
        except UnencodableRequestError:
            payload = b"{}"
        return self.website(request), self._crawler.request_fingerprinter.fingerprint(request).hex(), payload

    def cap_not_before(self, what: object, until: float) -> float:
        """A not-before mark at most FRONTIER_MAX_NOT_BEFORE_SECONDS ahead (a far-future mark parks a website)."""
        capped = self._gate.cap_not_before(until, self._server_now())
        if capped < until:
            logger.warning("Not-before mark for %(what)s capped: %(until).0f is more than "
                           "FRONTIER_MAX_NOT_BEFORE_SECONDS (%(max).0f s) ahead",
                           {"what": what, "until": until, "max": self._gate.max_not_before},
                           extra={"spider": self.spider})
            self._stats.inc_value("frontier/not_before_capped")
        return capped

