"""Politeness's log lines for state changes: Redis unavailable and back, and each park or breaker transition.

One line per change, never per request (the stats count the requests).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class RedisHealth:
    """Whether politeness's Redis answers: failures counted, logged once per outage."""

    def __init__(self, crawler: Crawler, fail_wait_max: float) -> None:
        assert crawler.stats is not None
        self._crawler = crawler
        self._fail_wait_max = fail_wait_max
        self.down = False
        self._fail_wait = 0.0  # fail-closed backoff while Redis is down

    def error(self, exc: Exception) -> None:
        assert self._crawler.stats is not None
        self._crawler.stats.inc_value(f"politeness/redis_error/{type(exc).__name__}")
        if not self.down:
            self.down = True
            logger.error("Politeness: Redis unavailable (%(exc)s); gated and watched websites wait until it "
                         "is back, signals park websites on this worker only", {"exc": exc},
                         extra={"spider": self._crawler.spider})

    def failed_closed(self, exc: Exception) -> float:
        """A gate could not ask Redis: how long its request waits (doubling, up to the cap)."""
        self.error(exc)
        self._fail_wait = min(max(self._fail_wait * 2, 0.25), self._fail_wait_max)
        return self._fail_wait

    def back(self) -> None:
        if self.down:
            self.down = False
            self._fail_wait = 0.0
            logger.info("Politeness: Redis is back", extra={"spider": self._crawler.spider})


def log_transition(crawler: Crawler, website: str, transition: str, wait: float, count: int,
                   retry_after: float | None, breaker_failures: int) -> None:
    """The one line for a transition ``lua/report.lua`` returned (by the worker that caused it)."""
    spider = {"spider": crawler.spider}
    args = {"website": website, "wait": wait, "count": count}
    if transition == "parked":
        how = "Retry-After" if retry_after is not None else f"backoff level {count}"
        logger.info("Politeness: %(website)s parked for %(wait).1fs (%(how)s)", {**args, "how": how}, extra=spider)
    elif transition == "opened":
        logger.warning("Politeness: circuit breaker of %(website)s opened after %(k)d failures (distinct URLs); "
                       "cooling %(wait).1fs", {**args, "k": breaker_failures}, extra=spider)
    elif transition == "reopened":
        logger.warning("Politeness: probe of %(website)s failed; breaker open again for %(wait).1fs",
                       args, extra=spider)
    elif transition == "closed":
        logger.info("Politeness: probe of %(website)s succeeded; circuit breaker closed", args, extra=spider)
    elif transition == "recovered":
        logger.info("Politeness: probe of %(website)s succeeded; no longer rate limited", args, extra=spider)
    elif transition == "inconclusive":  # DEBUG: per request (counted in the stats)
        logger.debug("Politeness: probe of %(website)s failed on a URL known to fail: inconclusive, "
                     "the next request may be the probe", args, extra=spider)
