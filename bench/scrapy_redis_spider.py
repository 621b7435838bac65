"""The demo shop spider as a scrapy-redis 0.9.1 user has it: RedisSpider, its scheduler and dupefilter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy_redis.spiders import RedisSpider

from crawler.spiders.shop_a import parse_product

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy.http import Response

# scrapy-redis as shipped (README "Usage"), on top of bench.vanilla_settings.
SCRAPY_REDIS_SETTINGS = {
    "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
    "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
    "SCHEDULER_QUEUE_CLASS": "scrapy_redis.queue.PriorityQueue",
    # Counted from import time in 0.9.1, so any value closes at the first idle after the crawl.
    "MAX_IDLE_TIME_BEFORE_CLOSE": 1,
}


class ScrapyRedisShopSpider(RedisSpider):  # type: ignore[misc]  # scrapy-redis ships no type hints
    name = "scrapy_redis_shop"
    allowed_domains = ["shop-a.test"]

    def parse(self, response: Response) -> Iterator[Any]:
        # Same extraction and link following as crawler.spiders.shop_a.ShopASpider.
        if response.css("[itemtype$=Product]"):
            yield parse_product(response)
        yield from response.follow_all(css="a.listing, a.next, a.item, a.related")
