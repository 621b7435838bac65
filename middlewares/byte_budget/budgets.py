"""Each website's budget: a run-time override, else ``BYTE_BUDGET_PER_WEBSITE``, else ``BYTE_BUDGET_DEFAULT``.

The overrides live in one Redis hash that the command line
(:mod:`middlewares.byte_budget.cli`) writes; every worker reads it again every
``BYTE_BUDGET_REFRESH_SECONDS``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from middlewares.byte_budget.config import parse_budget
from middlewares.byte_budget.store import overrides_key

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

    async def refresh(self) -> None:
        """Read the run-time overrides (``python -m middlewares.byte_budget set ...``)."""
        redis = self.store.redis
        assert redis is not None
        try:
            raw = await redis.hgetall(overrides_key(self.config.prefix))
        except RedisError as exc:
            self.store.redis_error(exc)
            return
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
