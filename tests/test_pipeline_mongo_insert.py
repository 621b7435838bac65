"""MongoInsertPipeline against the real local MongoDB-compatible server."""

from __future__ import annotations

import asyncio

import pytest
from pymongo import MongoClient
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from crawler.items import Article, Product
from pipelines.mongo_insert import MongoConfig, MongoInsertPipeline, redact_uri


def test_items_go_to_a_collection_per_type(mongo_server_uri: str, mongo_db: str) -> None:
    crawler = get_crawler(settings_dict={"MONGO_URI": mongo_server_uri, "MONGO_DATABASE": mongo_db})
    crawler.stats.open_spider()  # type: ignore[union-attr]
    items = [Product(url=f"http://s.test/item/{i}", title="t", sku=f"S{i}", price=1.5, currency="EUR",
                     in_stock=True) for i in range(3)]
    items.append(Article(url="http://n.test/item/1", headline="h", author=None, published=None, section=None))

    async def run() -> None:
        pipe = build_from_crawler(MongoInsertPipeline, crawler)
        await pipe.open_spider()
        for item in items:
            assert await pipe.process_item(item) is item
        await pipe.close_spider()

    asyncio.run(run())
    assert crawler.stats.get_value("mongo_insert/inserted") == 4  # type: ignore[union-attr]
    with MongoClient(mongo_server_uri) as client:
        db = client[mongo_db]
        assert sorted(d["sku"] for d in db.product.find()) == ["S0", "S1", "S2"]
        assert db.article.find_one({}, {"_id": 0}) == {"url": "http://n.test/item/1", "headline": "h",
                                                       "author": None, "published": None, "section": None}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"MONGO_URI": ""}, "MONGO_URI must be a mongodb:// URI"),
        ({"MONGO_URI": "http://x"}, "MONGO_URI 'http://x' is invalid"),
        ({"MONGO_URI": "mongodb://u:secret@h", "MONGO_DATABASE": "a.b"}, "MONGO_DATABASE 'a.b' is not a valid"),
    ],
)
def test_invalid_settings(settings: dict[str, str], message: str) -> None:
    crawler = get_crawler(settings_dict=settings)
    with pytest.raises(ValueError, match=message):
        MongoConfig.from_settings(crawler.settings)


def test_credentials_are_redacted() -> None:
    assert redact_uri("mongodb://user:s3cret@db1:27017,db2/x?authSource=admin") == (
        "mongodb://***@db1:27017,db2/x?authSource=admin"
    )
    assert redact_uri("mongodb://db1:27017") == "mongodb://db1:27017"
