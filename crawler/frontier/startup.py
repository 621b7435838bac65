"""The frontier's start-up check: one ERROR naming the setting, then a clean close (no cascade).

Part of :mod:`crawler.frontier.scheduler`. An invalid ``FRONTIER_*`` /
seed setting or a Redis that cannot be used (unreachable, wrong
credentials) is logged once, as the one ERROR a user reads, naming the
setting. Raising from the scheduler (its ``from_crawler`` or ``open``) would
let Scrapy skip starting its scraper and bury the cause under follow-on
tracebacks ("Engine slot not assigned", "Scraper slot not assigned", "Task
exception was never retrieved"); instead the worker closes at
``spider_opened``, once everything is started, with reason
``frontier_startup_failed``, and ``scrapy crawl`` exits with status 1
(:mod:`crawler.commands.crawl`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.exceptions import CloseSpider

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

STARTUP_FAILED = "frontier_startup_failed"


class StartupCheck:
    """Remembers why the frontier cannot start, and closes the worker when Scrapy has opened it."""

    def __init__(self, crawler: Crawler, problem: str | None = None) -> None:
        self.problem: str | None = None
        self._spider: Spider | None = None
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)
        if problem:
            self.fail(problem)

    def fail(self, problem: str, spider: Spider | None = None) -> None:
        if self.problem is None:
            logger.error("Frontier cannot start: %(problem)s", {"problem": problem}, extra={"spider": spider})
            self.problem = problem

    def _spider_opened(self) -> None:
        if self.problem is not None:
            raise CloseSpider(STARTUP_FAILED)
