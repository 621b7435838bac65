"""``scrapy crawl``, with a crawl that cannot start reported as one clear ERROR.

Scrapy 2.19's ``AsyncCrawlerProcess`` re-raises a start-up exception (a
``ValueError`` naming a bad setting, a host not set up for IPv6 binding) in a
task nobody awaits, so asyncio prints it as "Task exception was never
retrieved" with the whole traceback: the one line a user needs is buried. Here
the exception is retrieved and logged once: a configuration error (the project's
checked settings raise ``ValueError``; :class:`StartupError` subclasses for the
rest) as its message alone, with the traceback at DEBUG; anything else with its
traceback. The exit code stays 1, as Scrapy sets it.

A worker whose frontier cannot start (an invalid setting, Redis unreachable
or refusing its credentials) logs the cause once itself and closes cleanly
with reason ``frontier_startup_failed`` (:mod:`crawler.frontier.startup`);
likewise ``frontier_task_failed`` (a background task kept failing) and
``mongo_auth_failed`` (MongoDB refused the credentials at the first write).
Scrapy would exit with status 0 then; this command exits with 1.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError
from twisted.internet.defer import Deferred

from crawler.frontier.startup import STARTUP_FAILED
from crawler.startup import StartupError

if TYPE_CHECKING:
    import argparse

    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)


def report_start_failure(exc: BaseException) -> None:
    """Log why a crawl could not start: one line for a configuration error."""
    if isinstance(exc, (ValueError, StartupError)):
        logger.error("The crawl could not start: %(reason)s", {"reason": exc})
        logger.debug("Where the start-up failed", exc_info=exc)
    else:
        logger.error("The crawl could not start: %(exc)r", {"exc": exc}, exc_info=exc)


def _retrieve(task: asyncio.Task[None]) -> None:
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        report_start_failure(exc)


# Finish reasons of a worker that stopped because something must be fixed: the
# frontier could not start or lost a background task, MongoDB refused the
# credentials (pipelines/mongo_writer.py). Scrapy would exit 0 for them.
_FAILED = frozenset({STARTUP_FAILED, "frontier_task_failed", "mongo_auth_failed"})


def _report_failure(failure: Failure) -> None:
    if failure.value is not None:
        report_start_failure(failure.value)


class Command(ScrapyCrawlCommand):
    """Scrapy's ``crawl``; see the module docstring."""

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("running 'scrapy crawl' needs exactly one spider" if args else None)
        assert self.crawler_process
        crawler = self._create_crawler(args[0])
        started = self.crawler_process.crawl(crawler, **opts.spargs)
        if isinstance(started, asyncio.Task):
            started.add_done_callback(_retrieve)
        elif isinstance(started, Deferred):  # CrawlerProcess rather than AsyncCrawlerProcess
            started.addErrback(_report_failure)
        self.crawler_process.start()
        reason = crawler.stats.get_value("finish_reason") if crawler.stats is not None else None
        if self.crawler_process.bootstrap_failed or reason in _FAILED:
            self.exitcode = 1
