"""Adaptive slow-down: a website whose responses get much slower (or fail more) than its own
recent baseline gets a lower request rate, cluster-wide, raised back slowly when it recovers.

Off by default; on for the websites in ``POLITENESS_ADAPTIVE_WEBSITES`` (``"*"``: all).
Each worker adds up its responses per website (count, latency to the response head,
errors) and, at each refresh (``POLITENESS_REFRESH_SECONDS``), adds them to the
website's window in Redis with ``lua/adapt.lua``, which judges each closed window
against the baseline (the rule is in that script and in docs/politeness.md). The
worker whose call changed the rate logs it once and publishes it in
``<p>:pol:adaptive``; every worker reads that at its next refresh and applies it as a
request rate (``lua/admit.lua``), the lowest of it and any configured rate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector

    from middlewares.politeness.config import AdaptiveConfig
    from middlewares.politeness.store import Adaptation, PolitenessStore
    from middlewares.politeness.view import PolitenessView

logger = logging.getLogger(__name__)


class AdaptiveSlowdown:
    """This worker's samples per website, flushed to Redis at each refresh."""

    def __init__(self, config: AdaptiveConfig, view: PolitenessView, crawler: Crawler,
                 on_error: Callable[[Exception], None]) -> None:
        assert crawler.stats is not None
        self.config = config
        self._view = view
        self._crawler = crawler
        self._stats: StatsCollector = crawler.stats
        self._on_error = on_error
        self._samples: dict[str, list[float]] = {}  # website -> [responses, summed latency, errors]
        self._flushing = False

    def applies(self, website: str) -> bool:
        return self.config.applies(website)

    def sample(self, website: str, latency: float, error: bool) -> None:
        s = self._samples.get(website)
        if s is None:
            s = self._samples[website] = [0, 0.0, 0]
        s[0] += 1
        s[1] += max(latency, 0.0)
        s[2] += 1 if error else 0

    async def flush(self, store: PolitenessStore) -> None:
        """One ``adapt.lua`` call per website with new samples (skipped while one flush runs)."""
        if self._flushing or not self._samples:
            return
        self._flushing = True
        samples, self._samples = self._samples, {}
        try:
            for website, (n, latency, errors) in samples.items():
                try:
                    result = await store.adapt(website, int(n), latency, int(errors))
                    if result.change:
                        await store.publish_adaptive(website, result.rate)
                except RedisError as exc:
                    self._on_error(exc)
                    return  # these samples are lost; the next window gets new ones
                if result.change:
                    self._changed(website, result)
        finally:
            self._flushing = False

    def _changed(self, website: str, a: Adaptation) -> None:
        self._view.set_adaptive(website, a.rate)
        self._stats.inc_value(f"politeness/adaptive/{a.change}")
        extra = {"spider": self._crawler.spider}
        args = {"website": website, "rate": a.rate, "lat": a.latency, "base": a.base_latency,
                "err": a.error_rate, "base_err": a.base_error_rate}
        if a.change == "slowed":
            logger.warning("Politeness: %(website)s slowed down to %(rate).2f requests/s: mean latency "
                           "%(lat).3fs (baseline %(base).3fs), error rate %(err).2f (baseline %(base_err).2f)",
                           args, extra=extra)
        elif a.change == "raised":
            logger.info("Politeness: %(website)s recovering, rate raised to %(rate).2f requests/s "
                        "(latency %(lat).3fs, baseline %(base).3fs)", args, extra=extra)
        else:
            logger.info("Politeness: %(website)s recovered (latency %(lat).3fs, baseline %(base).3fs); "
                        "adaptive rate limit lifted", args, extra=extra)
