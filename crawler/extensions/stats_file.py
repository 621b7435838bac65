"""Write a crawl's final stats to a JSON file.

Useful wherever logs are not at hand: the demo's summary, benchmarks, scrapyd
jobs watched by another program.

Settings:

``STATS_FILE_PATH`` (str, default unset: extension off)
    Where to write, with ``%(name)s`` (spider name) and ``%(pid)s`` expanded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Spider
    from scrapy.crawler import Crawler


class StatsFileExtension:
    """Dumps ``crawler.stats`` as JSON when the engine has stopped.

    Not at ``spider_closed``: extensions receive signals before the
    downloader's middlewares, which add their last stats in their own
    ``spider_closed`` handlers.
    """

    def __init__(self, crawler: Crawler, path_template: str) -> None:
        self.crawler = crawler
        self.path_template = path_template
        self._closed: tuple[str, str] | None = None  # (spider name, reason)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(self.engine_stopped, signal=signals.engine_stopped)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        path = crawler.settings.get("STATS_FILE_PATH")
        if not path:
            raise NotConfigured
        return cls(crawler, str(path))

    def spider_closed(self, spider: Spider, reason: str) -> None:
        self._closed = (spider.name, reason)

    def engine_stopped(self) -> None:
        if self._closed is None:
            return  # the spider never opened
        name, reason = self._closed
        assert self.crawler.stats is not None
        stats: dict[str, Any] = dict(self.crawler.stats.get_stats())
        stats["finish_reason"] = reason
        path = Path(self.path_template % {"name": name, "pid": os.getpid()})
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        # Readable by the worker's user only (0600), as every state file the project writes.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            f.write(json.dumps(stats, default=str, indent=1, sort_keys=True))
        tmp.replace(path)
