"""``scrapy crawl`` that exits with status 1 when the frontier could not start.

A worker whose frontier cannot start (an invalid setting, Redis unreachable
or refusing its credentials) logs the cause once, as an ERROR naming the
setting, and closes cleanly with reason ``frontier_startup_failed``
(:mod:`crawler.frontier.startup`). Scrapy's own command would exit with
status 0 then; this one exits with 1, so scrapyd, systemd or a shell loop
sees the failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError

from crawler.frontier.startup import STARTUP_FAILED

if TYPE_CHECKING:
    import argparse


class Command(ScrapyCrawlCommand):
    """Scrapy's ``crawl``; exit status 1 when the frontier did not start."""

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("running 'scrapy crawl' needs exactly one spider name")
        assert self.crawler_process
        # The public create_crawler (Scrapy's command adds only a warning about unused FEEDS).
        crawler = self.crawler_process.create_crawler(args[0])
        self.crawler_process.crawl(crawler, **opts.spargs)
        self.crawler_process.start()
        startup_failed = crawler.stats is not None and crawler.stats.get_value("finish_reason") == STARTUP_FAILED
        if self.crawler_process.bootstrap_failed or startup_failed:
            self.exitcode = 1
