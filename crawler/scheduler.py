"""scrapy-redis's scheduler, kept quiet under Scrapy 2.19.

scrapy-redis 0.9.1 passes ``spider=`` to ``StatsCollector.inc_value()``, which
Scrapy 2.14+ deprecates: a warning on every request, and an error under
``-W error``. This subclass counts the same stats without it, and also counts
filtered duplicates (``dupefilter/filtered``), which scrapy-redis does not.
Its ``open()`` also calls the deprecated ``Spider.log()`` when a worker joins
a non-empty queue (so a second worker crashed under ``-W error``); ``open()``
here logs through the module logger instead. The domain-aware frontier
replaces this module later.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy.utils.misc import load_object
from scrapy_redis.scheduler import Scheduler

if TYPE_CHECKING:
    from scrapy import Request, Spider

logger = logging.getLogger(__name__)


class RedisScheduler(Scheduler):  # type: ignore[misc]
    """The scrapy-redis scheduler with Scrapy 2.19-clean stats calls."""

    def open(self, spider: Spider) -> None:
        self.spider = spider
        try:
            self.queue = load_object(self.queue_cls)(
                server=self.server,
                spider=spider,
                key=self.queue_key % {"spider": spider.name},
                serializer=self.serializer,
            )
        except TypeError as e:
            raise ValueError(f"Failed to instantiate queue class {self.queue_cls!r}: {e}") from e
        if not getattr(self, "df", None):  # scrapy-redis sets it in __init__ when given
            self.df = load_object(self.dupefilter_cls).from_spider(spider)
        if self.flush_on_start:
            self.flush()
        if pending := len(self.queue):
            logger.info("Resuming crawl (%(pending)d requests scheduled)", {"pending": pending},
                        extra={"spider": spider})

    def enqueue_request(self, request: Request) -> bool:
        if not request.dont_filter and self.df.request_seen(request):
            self.df.log(request, self.spider)
            if self.stats:
                self.stats.inc_value("dupefilter/filtered")
            return False
        if self.stats:
            self.stats.inc_value("scheduler/enqueued/redis")
        self.queue.push(request)
        return True

    def next_request(self) -> Request | None:
        request: Request | None = self.queue.pop(self.idle_before_close)
        if request is not None and self.stats:
            self.stats.inc_value("scheduler/dequeued/redis")
        return request
