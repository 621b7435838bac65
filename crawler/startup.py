"""The error a component raises when the crawl cannot start for a reason the user must fix."""

from __future__ import annotations


class StartupError(RuntimeError):
    """The crawl cannot start: the message says what to fix (a setting, a host set-up step).

    ``scrapy crawl`` (:mod:`crawler.commands.crawl`) logs it as one ERROR line,
    without a traceback, as it does a ``ValueError`` from a setting.
    """
