"""Items as journal records: the collection and key of each item type, its document, and its dead letter.

One record per item (BSON): ``{"c": collection, "f": key fields, "d": the
rest of the document, "i": dead-letter id, "t": item type, "v": version}``,
read back by :func:`pipelines.mongo_ops.decode`. An item without its key or
that BSON cannot encode becomes a :class:`~pipelines.validate.DeadLetter`
(stats ``mongo_writer/missing_key``, ``mongo_writer/unencodable``), whose id
is the one :func:`~pipelines.validate.dead_letter_id` gives the item anywhere.
Settings are :class:`~pipelines.mongo_config.MongoWriterConfig`'s.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import bson
from bson.errors import InvalidDocument

from pipelines.mongo_ops import DEAD_LETTER_KEY
from pipelines.validate import DeadLetter, dead_letter_id, item_to_dict, own_fields

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector

    from pipelines.item_context import ItemContexts
    from pipelines.mongo_config import MongoWriterConfig

# The writer's logger: its lines keep the name they had before this module was split off.
logger = logging.getLogger("pipelines.mongo_writer")


class RecordEncoder:
    """Turns items into journal records (see module docstring)."""

    def __init__(self, crawler: Crawler, config: MongoWriterConfig, stats: StatsCollector,
                 contexts: ItemContexts) -> None:
        self.crawler = crawler
        self.config = config
        self.stats = stats
        self.contexts = contexts
        self._routes: dict[type, tuple[str, tuple[str, ...]]] = {}

    def _route(self, item: Any) -> tuple[str, tuple[str, ...]]:
        cls = type(item)
        route = self._routes.get(cls)
        if route is None:
            if cls is DeadLetter:
                route = (self.config.dead_letter_collection, DEAD_LETTER_KEY)
            else:
                full = f"{cls.__module__}.{cls.__qualname__}"
                c = self.config
                collection = c.collections.get(full) or c.collections.get(cls.__name__) or cls.__name__.lower()
                key = c.keys.get(full) or c.keys.get(cls.__name__) or c.default_key
                route = (collection, key)
            self._routes[cls] = route
        return route

    def _document(self, item: Any) -> dict[str, Any]:
        doc = item_to_dict(item)
        context = self.contexts.get(item)
        if context is not None:
            for name, value in context.enrichment.items():
                if doc.get(name) is None:
                    doc[name] = value
        return doc

    def encode(self, item: Any) -> bytes:
        collection, key = self._route(item)
        doc = self._document(item)
        missing = [k for k in key if doc.get(k) is None]
        if missing:
            self.stats.inc_value("mongo_writer/missing_key")
            return self.encode(self._dead_letter(item, doc, "missing_key", f"no value for key field(s) {missing}"))
        record: dict[str, Any] = {
            "c": collection,
            "f": {k: doc.pop(k) for k in key},
            "d": doc,
        }
        if key != DEAD_LETTER_KEY:
            # Journaled with the operation: should MongoDB refuse the
            # document, its dead letter gets the same id as any other.
            record["i"], record["t"], _ = self.letter_id(item)
        vf = self.config.version_field
        version = doc.get(vf) if vf and key != DEAD_LETTER_KEY else None
        if version is not None:
            record["v"] = version
        try:
            return bson.encode(record)
        except (InvalidDocument, OverflowError, TypeError) as exc:
            if isinstance(item, DeadLetter) and item.errors[0]["kind"] == "unencodable":
                raise
            self.stats.inc_value("mongo_writer/unencodable")
            return self.encode(self._dead_letter(item, {"repr": repr(item)[:20000]}, "unencodable", str(exc)))

    def letter_id(self, item: Any) -> tuple[str, str, str | None]:
        """The dead-letter id, item type and source URL of ``item`` (see :func:`dead_letter_id`)."""
        if isinstance(item, DeadLetter):
            return item.dead_letter_id, item.item_type, item.source_url
        context = self.contexts.get(item)
        item_type = f"{type(item).__module__}.{type(item).__qualname__}"
        source_url = context.source_url if context else None
        return dead_letter_id(item_type, source_url, own_fields(item, context)), item_type, source_url

    def _dead_letter(self, item: Any, doc: dict[str, Any], kind: str, message: str) -> DeadLetter:
        letter_id, item_type, source_url = self.letter_id(item)
        logger.error("%(type)s from %(url)s stored as a dead letter: %(msg)s",
                     {"type": item_type, "url": source_url, "msg": message})
        spider = self.crawler.spider.name if self.crawler.spider else None
        errors = [{"field": "", "kind": kind, "message": message}]
        letter = DeadLetter(letter_id, item_type, errors, doc, source_url, spider)
        self.contexts.alias(item, letter)
        return letter

