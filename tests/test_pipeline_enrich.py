"""EnrichPipeline and ItemContextMiddleware: the documented fields, never overwriting the spider's."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pytest
from scrapy import Request, Spider
from scrapy.http import HtmlResponse
from scrapy.settings import Settings
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from pipelines.enrich import ENRICH_FIELDS, EnrichConfig, EnrichPipeline
from pipelines.item_context import ItemContextMiddleware
from tests.pipeline_chain import product


@dataclass
class Listing:
    url: str
    spider: str | None = None
    website: str | None = None


def components(**settings: Any) -> tuple[ItemContextMiddleware, EnrichPipeline]:
    crawler = get_crawler(Spider, settings_dict=settings)
    crawler.spider = crawler._create_spider("enricher", _job="scrapyd-job-7")
    crawler.stats.open_spider()  # type: ignore[union-attr]
    pipe = build_from_crawler(EnrichPipeline, crawler)
    pipe.open_spider()
    return build_from_crawler(ItemContextMiddleware, crawler), pipe


async def through(mw: ItemContextMiddleware, response: HtmlResponse, items: list[Any]) -> list[Any]:
    """``items`` (after a request) through the spider middleware's async output path; the items out."""
    async def gen() -> Any:
        for i in [Request("http://x.test/next"), *items]:
            yield i

    out = [o async for o in mw.process_spider_output_async(response, gen())]
    assert isinstance(out[0], Request)
    return out[1:]


@pytest.mark.asyncio
async def test_dict_items_get_every_field() -> None:
    mw, pipe = components()
    body = b"<html>shop</html>"
    # Redirected: the item's own URL differs from the page it was found on.
    response = HtmlResponse("https://WWW.Shop.example.co.uk/p?b=2&a=1", body=body,
                            request=Request("https://www.shop.example.co.uk/go/1",
                                            meta={"bindaddress": ("2001:db8::42", 0)}))
    (item,) = await through(mw, response, [{"url": "https://www.shop.example.co.uk/p?b=2&a=1#x", "title": "t"}])
    out = pipe.process_item(item)
    assert out is item
    assert set(ENRICH_FIELDS) <= set(item)
    assert item["canonical_url"] == "https://www.shop.example.co.uk/p?a=1&b=2"
    assert item["website"] == "example.co.uk"
    assert item["source_url"] == "https://WWW.Shop.example.co.uk/p?b=2&a=1"
    assert item["spider"] == "enricher"
    assert item["job_id"] == "scrapyd-job-7"
    assert item["http_status"] == 200
    assert item["response_bytes"] == len(body)
    assert item["content_fingerprint"] == hashlib.sha256(body).hexdigest()
    assert item["source_address"] == "2001:db8::42"
    assert item["fetched_at"].tzinfo is not None


@pytest.mark.asyncio
async def test_fields_the_spider_set_are_kept() -> None:
    mw, pipe = components(WEBSITE_KEY="host", ENRICH_JOB_ID="fixed")
    response = HtmlResponse("http://a.shop-a.test/item/1", body=b"x", request=Request("http://a.shop-a.test/item/1"))
    spider_set = {"url": "http://a.shop-a.test/item/1", "spider": "mine", "http_status": 299, "canonical_url": "c"}
    listing = Listing(url="http://a.shop-a.test/item/1", spider="theirs")
    dict_item, listing_item, p = await through(mw, response, [dict(spider_set), listing, product(1)])
    for item in (dict_item, listing_item, p):
        pipe.process_item(item)
    assert {k: dict_item[k] for k in spider_set} == spider_set
    assert dict_item["website"] == "a.shop-a.test"
    assert dict_item["job_id"] == "fixed"
    # A dataclass gets the fields it declares (when unset) ...
    assert listing_item.spider == "theirs"
    assert listing_item.website == "a.shop-a.test"
    # ... and the rest is kept in its context for the writer.
    context = mw.contexts.get(p)
    assert context is not None
    assert context.enrichment["canonical_url"] == "http://shop-a.test/item/1"
    assert context.enrichment["spider"] == "enricher"
    assert context.enrichment["source_address"] is None
    assert not hasattr(p, "canonical_url")


def test_item_without_response_is_counted() -> None:
    _, pipe = components()
    item = {"url": "http://x.test/a"}
    pipe.process_item(item)
    assert item["canonical_url"] == "http://x.test/a"
    assert item["http_status"] is None
    assert pipe.stats.get_value("enrich/no_context") == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"ENRICH_URL_FIELD": ""}, "ENRICH_URL_FIELD"), ({"ENRICH_JOB_ID": 5}, "ENRICH_JOB_ID"),
     ({"WEBSITE_KEY": "tld"}, "WEBSITE_KEY")],
)
def test_invalid_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EnrichConfig.from_settings(Settings(settings))
