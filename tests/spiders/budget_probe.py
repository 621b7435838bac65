"""A spider that crawls every demo website it is seeded with, items or not."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawler.frontier.spider import FrontierSpider

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy import Request
    from scrapy.http import Response


class BudgetProbeSpider(FrontierSpider):
    """Follows listings, items and related links on the demo websites it is seeded with."""

    name = "budget_probe"
    allowed_domains = ["shop-a.test", "shop-b.test", "news.test", "mixed.test", "tiny.test"]

    def parse(self, response: Response) -> Iterator[Request]:
        yield from response.follow_all(css="a.listing, a.next, a.item, a.related")
