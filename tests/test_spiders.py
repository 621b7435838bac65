"""The demo spiders extract exactly what the demo pages hold."""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING

import pytest
from scrapy import Request
from scrapy.http import HtmlResponse

from crawler.items import Article, Product
from crawler.spiders.news import NewsSpider
from crawler.spiders.shop_a import ShopASpider
from demosite.sites import item_data
from tests.conftest import TEST_SITES

if TYPE_CHECKING:
    from tests.conftest import DemoSite


def fetch(demo_site: DemoSite, host: str, path: str) -> HtmlResponse:
    url = demo_site.url(host, path)
    req = urllib.request.Request(f"http://127.0.0.1:{demo_site.port}{path}", headers={"Host": host})
    with urllib.request.urlopen(req, timeout=10) as r:
        return HtmlResponse(url=url, body=r.read(), encoding="utf-8", request=Request(url))


@pytest.mark.parametrize("n", [0, 7, 123])
def test_shop_item_page(demo_site: DemoSite, n: int) -> None:
    site = TEST_SITES[0]
    out = list(ShopASpider().parse(fetch(demo_site, site.host, f"/item/{n}")))
    products = [o for o in out if isinstance(o, Product)]
    want = item_data(site, n)
    assert products == [Product(url=demo_site.url(site.host, f"/item/{n}"), title=want["title"], sku=want["sku"],
                                price=want["price"], currency="EUR", in_stock=want["in_stock"])]
    links = {r.url for r in out if isinstance(r, Request)}
    assert demo_site.url(site.host, f"/item/{(n + 1) % site.items}") in links  # related products


def test_shop_listing_page_follows_items_and_pages(demo_site: DemoSite) -> None:
    site = TEST_SITES[0]
    out = list(ShopASpider().parse(fetch(demo_site, site.host, "/list/1")))
    assert not [o for o in out if isinstance(o, Product)]
    paths = {r.url.split(str(demo_site.port), 1)[1] for r in out}
    assert {"/go/0", "/item/1", "/list/2", "/missing/1", "/broken/1", "/busy/1"} <= paths


def test_news_article(demo_site: DemoSite) -> None:
    site = TEST_SITES[2]
    out = list(NewsSpider().parse_article(fetch(demo_site, site.host, "/item/4")))
    want = item_data(site, 4)
    assert out[0] == Article(url=demo_site.url(site.host, "/item/4"), headline=want["headline"],
                             author=want["author"], published=want["published"], section=want["section"])
    assert out[1:] and all(isinstance(o, Request) and o.callback.__name__ == "parse_article" for o in out[1:])


def test_news_skips_non_articles(demo_site: DemoSite) -> None:
    assert list(NewsSpider().parse_article(fetch(demo_site, "news.test", "/list/1"))) == []
