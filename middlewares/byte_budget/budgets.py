"""Each website's budget: a run-time override, else ``BYTE_BUDGET_PER_WEBSITE``, else ``BYTE_BUDGET_DEFAULT``.

The overrides live in one Redis hash that the command line
(:mod:`middlewares.byte_budget.cli`) writes; it then increments a change
counter (``overrides_version_key``). Every ``BYTE_BUDGET_REFRESH_SECONDS``
every worker reads the counter and reads the hash again only if it moved: a
refresh costs one GET, not a copy of the hash (29 ms of Redis at 100,000
overrides). While no counter exists (overrides written by hand with HSET) the
hash is read at every refresh, as before the counter.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from middlewares.byte_budget.config import parse_budget
from middlewares.byte_budget.store import overrides_key, overrides_version_key

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from middlewares.byte_budget.config import ByteBudgetConfig
    from middlewares.byte_budget.store import BudgetStore

# The middleware's logger, as for the other parts of the package.
logger = logging.getLogger("middlewares.byte_budget.middleware")


class Budgets:
    """Bytes per window of each website, with the run-time overrides read from Redis."""

    def __init__(self, crawler: Crawler, config: ByteBudgetConfig, store: BudgetStore) -> None:
        self.crawler: Crawler = crawler
        self.config: ByteBudgetConfig = config
        self.store: BudgetStore = store
        self._overrides: dict[str, int | None] = {}
        self._version: bytes | str | None = None  # the change counter when the hash was last read


    async def refresh(self) -> None:
        """Read the run-time overrides (``python -m middlewares.byte_budget set ...``)."""
        redis = self.store.redis
        assert redis is not None
        try:
            # The counter first: the command line writes the hash, then moves the counter, so a hash
            # read after the counter holds at least the changes the counter says.
            version = await redis.get(overrides_version_key(self.config.prefix))
            if version is not None and version == self._version:
                return
            raw = await redis.hgetall(overrides_key(self.config.prefix))
        except RedisError as exc:
            self.store.redis_error(exc)
            return
        self._version = version
        overrides = {}
        for site, value in raw.items():
            name = site.decode() if isinstance(site, bytes) else site
            try:
                text = value.decode() if isinstance(value, bytes) else value
                overrides[name] = parse_budget(f"override for {name}", text)
            except ValueError:
                logger.error("Ignoring invalid byte budget override %(site)s=%(value)r",
                             {"site": name, "value": value}, extra={"spider": self.crawler.spider})
        if overrides != self._overrides:
            logger.info("Byte budget run-time overrides: %(o)s", {"o": overrides},
                        extra={"spider": self.crawler.spider})
        self._overrides = overrides

    def budget_for(self, website: str) -> int | None:
        """Bytes per window for ``website``: run-time override, setting, default."""
        if website in self._overrides:
            return self._overrides[website]
        if website in self.config.per_website:
            return self.config.per_website[website]
        return self.config.default
