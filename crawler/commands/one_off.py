"""Scrapy's one-off development commands, run without the shared services.

``scrapy fetch``, ``view``, ``shell``, ``parse`` and ``check`` crawl one page
(or a few contract pages) with callbacks and meta the frontier cannot store
(bound methods of the command, ``SequenceExclude`` status lists), and they
must end when that page is done, whereas a frontier worker waits for the
cluster. So these commands run with:

* ``SCHEDULER = "scrapy.core.scheduler.Scheduler"``: Scrapy's in-memory
  scheduler; :class:`crawler.frontier.spider.FrontierSpider` then behaves as a
  plain spider (no seeds read, closes when idle);
* ``BYTE_BUDGET_ENABLED = False``: a budget lives in Redis, and a page looked
  at by hand is not part of a crawl;
* ``MONGO_WRITER_ENABLED = False``: nothing is written to MongoDB, except by
  ``scrapy parse --pipelines``, which asks for the item pipelines.

Each is set just below the command line: ``-s NAME=VALUE`` still wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy.settings import SETTINGS_PRIORITIES

if TYPE_CHECKING:
    import argparse

    from scrapy.settings import Settings

ONE_OFF_SETTINGS: dict[str, Any] = {
    "SCHEDULER": "scrapy.core.scheduler.Scheduler",
    "BYTE_BUDGET_ENABLED": False,
    "MONGO_WRITER_ENABLED": False,
}


def apply_one_off_settings(settings: Settings, keep: tuple[str, ...] = ()) -> None:
    """Set :data:`ONE_OFF_SETTINGS` (but ``keep``) above the project's settings, below the command line."""
    for name, value in ONE_OFF_SETTINGS.items():
        if name not in keep and (settings.getpriority(name) or 0) < SETTINGS_PRIORITIES["cmdline"]:
            settings.set(name, value, priority=SETTINGS_PRIORITIES["cmdline"] - 1)


class OneOffMixin:
    """Mixed into a Scrapy command, before its Scrapy base class."""

    settings: Settings | None

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)  # type: ignore[misc]  # the Scrapy command's
        assert self.settings is not None
        keep = ("MONGO_WRITER_ENABLED",) if getattr(opts, "pipelines", False) else ()
        apply_one_off_settings(self.settings, keep)
