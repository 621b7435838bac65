"""scrapy-redis's scheduler, kept quiet under Scrapy 2.19.

scrapy-redis 0.9.1 passes ``spider=`` to ``StatsCollector.inc_value()``, which
Scrapy 2.14+ deprecates: a warning on every request, and an error under
``-W error``. This subclass counts the same stats without it, and also counts
filtered duplicates (``dupefilter/filtered``), which scrapy-redis does not.
The domain-aware frontier replaces it later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy_redis.scheduler import Scheduler

if TYPE_CHECKING:
    from scrapy import Request


class RedisScheduler(Scheduler):  # type: ignore[misc]
    """The scrapy-redis scheduler with Scrapy 2.19-clean stats calls."""

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
