"""Validate every item against the JSON Schema declared for its type.

The validator is jsonschema-rs (JSON Schema 2020-12, compiled to Rust): ~2.5
million small objects/s per core here, per-error keyword kinds and instance
paths, and schemas that are plain data any tool can read. An invalid item
is not dropped and never passed on as such: it is replaced by a
:class:`DeadLetter` item carrying its fields, the per-field errors, its
source URL and spider, which ``MongoWriterPipeline`` stores in the
dead-letter collection (with the same no-loss guarantees as any item).

Settings:

``VALIDATE_ENABLED`` (bool, default ``True``)
``VALIDATE_SCHEMAS`` (dict, default ``{}``)
    Item class -> schema. Keys: the class or its import path
    (``"crawler.items.Product"``). Values: a JSON Schema as a dict, or the
    import path of one (``"crawler.schemas.PRODUCT"``).
``VALIDATE_REQUIRE_SCHEMA`` (bool, default ``True``)
    An item whose type has no schema is a dead letter (error kind
    ``no_schema``); ``False`` passes such items on unchecked.

Stats: ``validate/valid``, ``validate/invalid``, ``validate/error/<kind>``
(``kind``: the JSON Schema keyword that failed, lower case, e.g. ``required``,
``type``, ``minimum``; ``no_schema``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema_rs
from itemadapter import ItemAdapter
from scrapy.exceptions import NotConfigured
from scrapy.utils.misc import load_object

from pipelines.item_context import item_contexts

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

    from pipelines.item_context import ItemContext

logger = logging.getLogger(__name__)

_SCALARS = (str, int, float, bool, type(None))


@dataclass
class DeadLetter:
    """An item that failed validation, as stored in the dead-letter collection."""

    dead_letter_id: str
    item_type: str
    errors: list[dict[str, Any]]
    item: dict[str, Any]
    source_url: str | None
    spider: str | None


_FIELDS: dict[type, tuple[str, ...]] = {}


def item_to_dict(item: Any) -> dict[str, Any]:
    """The item's fields as a new dict.

    ``ItemAdapter.asdict()`` handles every item type but costs ~14 us per
    flat dataclass (it recurses through ``dataclasses.asdict``); flat dicts
    and dataclasses, the common case, take a fast path with the same result.
    """
    cls = type(item)
    if cls is dict:
        out = dict(item)
    else:
        names = _FIELDS.get(cls)
        if names is None:
            if not dataclasses.is_dataclass(item):
                return ItemAdapter(item).asdict()
            names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(item))
        out = {name: getattr(item, name) for name in names}
    for value in out.values():
        if not isinstance(value, _SCALARS):
            return ItemAdapter(item).asdict()
    return out


def _class_key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def own_fields(item: Any, context: ItemContext | None) -> dict[str, Any]:
    """The item's fields as the spider made them: without those EnrichPipeline set on it."""
    fields = item_to_dict(item)
    if context is not None:
        for name in context.enriched_on_item:
            fields.pop(name, None)
    return fields


def _canonical(value: Any) -> str:
    """A text form equal for equal values in any process (dict order, set order and hash seed aside)."""
    if isinstance(value, dict):
        return "{" + ",".join(sorted(f"{_canonical(k)}:{_canonical(v)}" for k, v in value.items())) + "}"
    if isinstance(value, set | frozenset):
        return "{" + ",".join(sorted(_canonical(v) for v in value)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    return repr(value)


def dead_letter_id(item_type: str, source_url: str | None, fields: dict[str, Any]) -> str:
    """The dead-letter key of an item: the same on every crawl of the same item from the same page.

    Made of what the spider produced (item type, the URL of the page it came
    from, its own fields: :func:`own_fields`) and never of what each crawl
    adds (fetch time, job id, body hash), so a re-crawl updates the dead
    letter instead of adding one. Not the request fingerprint: one page
    yields several items, each its own dead letter. Used by every
    component that makes dead letters.
    """
    if all(isinstance(v, _SCALARS) for v in fields.values()):
        text = repr((item_type, source_url, sorted(fields.items())))  # flat items, the common case: ~2x cheaper
    else:
        text = _canonical((item_type, source_url, fields))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class ValidateConfig:
    schemas: dict[str, Any]
    require_schema: bool

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        raw = settings.getdict("VALIDATE_SCHEMAS")
        schemas: dict[str, Any] = {}
        for key, value in raw.items():
            name = key if isinstance(key, str) else _class_key(key) if isinstance(key, type) else None
            if name is None:
                raise ValueError(f"VALIDATE_SCHEMAS keys must be item classes or their import paths, got {key!r}")
            schema = value
            if isinstance(value, str):
                try:
                    schema = load_object(value)
                except (ImportError, NameError, ValueError, AttributeError) as exc:
                    raise ValueError(f"VALIDATE_SCHEMAS[{name!r}]: cannot import {value!r}: {exc}") from None
            if not isinstance(schema, dict):
                raise ValueError(f"VALIDATE_SCHEMAS[{name!r}] must be a JSON Schema dict, got {value!r}")
            try:
                jsonschema_rs.validator_for(schema)
            except Exception as exc:
                raise ValueError(f"VALIDATE_SCHEMAS[{name!r}] is not a valid JSON Schema: {exc}") from None
            schemas[name] = schema
        return cls(schemas=schemas, require_schema=settings.getbool("VALIDATE_REQUIRE_SCHEMA", True))


def _kind(error: Any) -> str:
    return type(error.kind).__name__.lower()


def _field(error: Any) -> str:
    path = [str(p) for p in error.instance_path]
    if not path and _kind(error) == "required":
        path = [str(error.kind.property)]
    return ".".join(path)


class ValidatePipeline:
    """Checks items against their schema; replaces invalid ones by a DeadLetter."""

    def __init__(self, crawler: Crawler, config: ValidateConfig) -> None:
        assert crawler.stats is not None
        self.crawler = crawler
        self.stats = crawler.stats
        self.config = config
        self.contexts = item_contexts(crawler)
        self._by_name = {name: jsonschema_rs.validator_for(s) for name, s in config.schemas.items()}
        self._by_class: dict[type, Any] = {}
        self._warned: set[str] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("VALIDATE_ENABLED", True):
            raise NotConfigured
        return cls(crawler, ValidateConfig.from_settings(crawler.settings))

    def open_spider(self) -> None:
        logger.info("Validating items of types %(types)s", {"types": sorted(self._by_name)})

    def _validator(self, cls: type) -> Any:
        try:
            return self._by_class[cls]
        except KeyError:
            validator = self._by_name.get(_class_key(cls)) or self._by_name.get(cls.__name__)
            self._by_class[cls] = validator
            return validator

    def process_item(self, item: Any) -> Any:
        if isinstance(item, DeadLetter):
            return item
        validator = self._validator(type(item))
        if validator is None:
            if not self.config.require_schema:
                return item
            return self._dead_letter(item, item_to_dict(item), [
                {"field": "", "kind": "no_schema",
                 "message": f"no schema in VALIDATE_SCHEMAS for {_class_key(type(item))}"}])
        fields = item_to_dict(item)
        if validator.is_valid(fields):
            self.stats.inc_value("validate/valid")
            return item
        errors = [{"field": _field(e), "kind": _kind(e), "message": e.message} for e in validator.iter_errors(fields)]
        return self._dead_letter(item, fields, errors)

    def _dead_letter(self, item: Any, fields: dict[str, Any], errors: list[dict[str, Any]]) -> DeadLetter:
        self.stats.inc_value("validate/invalid")
        for error in errors:
            self.stats.inc_value(f"validate/error/{error['kind']}")
        context = self.contexts.get(item)
        source_url = context.source_url if context else None
        spider = self.crawler.spider.name if self.crawler.spider else None
        item_type = _class_key(type(item))
        letter_id = dead_letter_id(item_type, source_url, own_fields(item, context))
        letter = DeadLetter(letter_id, item_type, errors, fields, source_url, spider)
        self.contexts.alias(item, letter)
        # WARNING once per item type (a broken selector yields thousands),
        # DEBUG after that; the stats and the dead letters have every one.
        level = logging.DEBUG if item_type in self._warned else logging.WARNING
        self._warned.add(item_type)
        logger.log(
            level,
            "Invalid %(type)s from %(url)s (stored as a dead letter): %(errors)s",
            {"type": item_type, "url": source_url,
             "errors": "; ".join(f"{e['field'] or '(item)'}: {e['message']}" for e in errors)},
            extra={"spider": self.crawler.spider},
        )
        return letter
