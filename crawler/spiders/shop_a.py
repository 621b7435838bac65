"""Spider for the demo shop ``shop-a.test``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawler.frontier.spider import FrontierSpider
from crawler.items import Product

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy import Request
    from scrapy.http import TextResponse


class ShopASpider(FrontierSpider):
    """Follows listing pages and yields a Product per item page."""

    name = "shop_a"
    allowed_domains = ["shop-a.test"]

    def parse(self, response: TextResponse) -> Iterator[Request | Product]:
        """A page of the shop: a Product on an item page, and links to follow.

        @site_path /item/7
        @returns items 1 1
        @returns requests 1
        @scrapes url title sku price currency in_stock
        """
        if response.css("[itemtype$=Product]"):
            yield parse_product(response)
        yield from response.follow_all(css="a.listing, a.next, a.item, a.related")


def parse_product(response: TextResponse) -> Product:
    """Extract schema.org Product microdata (shared by the shop spiders)."""
    price = response.css('[itemprop=price]::attr(content)').get()
    availability = response.css('[itemprop=availability]::attr(href)').get()
    return Product(
        url=response.url,
        title=(response.css('[itemprop=name]::text').get() or "").strip(),
        sku=(response.css('[itemprop=sku]::text').get() or "").strip(),
        price=float(price) if price else None,
        currency=response.css('[itemprop=priceCurrency]::text').get(),
        in_stock=availability.endswith("/InStock") if availability else None,
    )
