"""The demo shop spider as plain Scrapy would have it: start_urls, in-memory scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import scrapy

from crawler.spiders.shop_a import parse_product

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy.http import Response


class VanillaShopSpider(scrapy.Spider):
    name = "vanilla_shop"
    allowed_domains = ["shop-a.test"]

    def __init__(self, start_url: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls = [start_url]

    def parse(self, response: Response) -> Iterator[Any]:
        # Same extraction and link following as crawler.spiders.shop_a.ShopASpider.
        if response.css("[itemtype$=Product]"):
            yield parse_product(response)
        yield from response.follow_all(css="a.listing, a.next, a.item, a.related")
