"""Spider for the demo shop ``shop-b.test`` (larger pages)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawler.frontier.spider import FrontierSpider
from crawler.spiders.shop_a import parse_product

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy import Request
    from scrapy.http import TextResponse

    from crawler.items import Product


class ShopBSpider(FrontierSpider):
    """Follows listing pages and yields a Product per item page."""

    name = "shop_b"
    allowed_domains = ["shop-b.test"]

    def parse(self, response: TextResponse) -> Iterator[Request | Product]:
        """A page of the shop: a Product on an item page, and links to follow.

        @site_path /item/7
        @returns items 1 1
        @returns requests 0 0
        @scrapes url title sku price currency in_stock
        """
        if response.css("[itemtype$=Product]"):
            yield parse_product(response)
        # shop-b's related-product links are ads for other listings: skip them.
        yield from response.follow_all(css="a.listing, a.next, a.item")
