"""ValidatePipeline: schemas per item type, dead letters with per-field errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from scrapy import Spider
from scrapy.settings import Settings
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from crawler.items import Article, Product
from pipelines.validate import DeadLetter, ValidateConfig, ValidatePipeline, item_to_dict
from settings import VALIDATE_SCHEMAS
from tests.pipeline_chain import article, product


@dataclass
class Unknown:
    url: str


def pipeline(**settings: Any) -> ValidatePipeline:
    crawler = get_crawler(Spider, settings_dict={"VALIDATE_SCHEMAS": VALIDATE_SCHEMAS, **settings})
    crawler.spider = crawler._create_spider("v")
    crawler.stats.open_spider()  # type: ignore[union-attr]
    return build_from_crawler(ValidatePipeline, crawler)


def test_valid_items_pass_unchanged() -> None:
    p = pipeline()
    items = [product(1), product(2, price=None, currency=None, in_stock=None), article(3, author=None)]
    assert [p.process_item(i) for i in items] == items
    assert p.stats.get_value("validate/valid") == 3


@pytest.mark.parametrize(
    ("item", "errors"),
    [
        (product(1, sku=""), {("sku", "minlength"), ("sku", "pattern")}),
        (product(1, price="12"), {("price", "type")}),
        (product(1, price=-0.01, currency="eur"), {("price", "minimum"), ("currency", "pattern")}),
        (product(1, url="/relative"), {("url", "pattern")}),
        (article(1, headline="   "), {("headline", "pattern")}),
        (article(1, published="yesterday"), {("published", "pattern")}),
        ({"url": "http://x.test/"}, {("", "no_schema")}),
        (Unknown(url="http://x.test/"), {("", "no_schema")}),
    ],
)
def test_invalid_items_become_dead_letters(item: Any, errors: set[tuple[str, str]]) -> None:
    p = pipeline()
    letter = p.process_item(item)
    assert isinstance(letter, DeadLetter)
    assert {(e["field"], e["kind"]) for e in letter.errors} == errors
    assert letter.item == item_to_dict(item)
    assert letter.spider == "v"
    assert p.stats.get_value("validate/invalid") == 1
    for _, kind in errors:
        assert p.stats.get_value(f"validate/error/{kind}") >= 1
    kinds = [k[len("validate/error/"):] for k in p.stats.get_stats() if k.startswith("validate/error/")]
    assert all("/" not in kind for kind in kinds)
    # The same invalid item is the same dead letter (idempotent upsert key).
    assert p.process_item(item).dead_letter_id == letter.dead_letter_id


def test_missing_field_of_a_dict_item_is_named() -> None:
    p = pipeline(VALIDATE_SCHEMAS={"builtins.dict": {"type": "object", "required": ["url", "title"]}})
    letter = p.process_item({"url": "http://x.test/"})
    assert [(e["field"], e["kind"]) for e in letter.errors] == [("title", "required")]


def test_items_without_schema_pass_when_not_required() -> None:
    p = pipeline(VALIDATE_REQUIRE_SCHEMA=False)
    item = Unknown(url="x")
    assert p.process_item(item) is item


def test_item_to_dict_matches_itemadapter() -> None:
    from itemadapter import ItemAdapter

    nested = {"url": "u", "tags": ["a"], "inner": {"k": 1}}
    for item in (product(1), article(2), nested, Unknown(url="u")):
        assert item_to_dict(item) == ItemAdapter(item).asdict()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"crawler.items.Product": "crawler.schemas.NOPE"}, "cannot import 'crawler.schemas.NOPE'"),
        ({"crawler.items.Product": ["x"]}, "must be a JSON Schema dict"),
        ({"crawler.items.Product": {"type": "nonsense"}}, "is not a valid JSON Schema"),
        ({3: {}}, "keys must be item classes"),
    ],
)
def test_invalid_settings(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ValidateConfig.from_settings(Settings({"VALIDATE_SCHEMAS": value}))


def test_schemas_by_class() -> None:
    from crawler.schemas import ARTICLE, PRODUCT

    config = ValidateConfig.from_settings(Settings({"VALIDATE_SCHEMAS": {Product: PRODUCT, Article: ARTICLE}}))
    assert set(config.schemas) == {"crawler.items.Product", "crawler.items.Article"}
