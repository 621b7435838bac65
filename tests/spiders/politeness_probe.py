"""A spider that crawls every demo website it is seeded with, on any host (politeness tests)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawler.frontier.spider import FrontierSpider

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy import Request
    from scrapy.http import Response


class PolitenessProbeSpider(FrontierSpider):
    """Follows listings, items and related links; no items, no offsite filter."""

    name = "politeness_probe"

    def parse(self, response: Response) -> Iterator[Request]:
        yield from response.follow_all(css="a.listing, a.next, a.item, a.related")
