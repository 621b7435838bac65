"""Sending one batch of upserts to MongoDB, and what to do with the documents it refuses.

:class:`BulkWriter` groups a batch by collection (creating each one's
unique key index before its first write) and sends each group as one
unordered ``bulk_write``. A duplicate-key error on our own key (another
worker inserting the same new key at once, or the version guard refusing
an older write) is retried once; documents MongoDB still refuses are counted
per server error code and stored as dead letters. A write-concern error
raises :class:`WriteConcernError` so that the caller retries the batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pymongo.errors import BulkWriteError, PyMongoError
from pymongo.write_concern import WriteConcern

from pipelines.mongo_ops import DEAD_LETTER_KEY, Op, update
from pipelines.validate import dead_letter_id

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient
    from pymongo.asynchronous.collection import AsyncCollection
    from scrapy.statscollectors import StatsCollector

    from pipelines.mongo_config import MongoWriterConfig

logger = logging.getLogger(__name__)

_DUPLICATE_KEY = 11000


class BulkWriter:
    """Upserts batches of operations into their collections; dead-letters what MongoDB refuses."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], config: MongoWriterConfig,
                 stats: StatsCollector) -> None:
        self.client = client
        self.config = config
        self.stats = stats
        self._indexed: set[str] = set()

    async def ensure_index(self, collection: str, key: tuple[str, ...] | None = None) -> None:
        if collection in self._indexed:
            return
        if key is None:
            key = (DEAD_LETTER_KEY if collection == self.config.dead_letter_collection
                   else self._key_for_collection(collection))
        await self.client[self.config.mongo.database][collection].create_index(
            [(k, 1) for k in key], unique=True, name="_".join(key) + "_unique")
        self._indexed.add(collection)

    def _key_for_collection(self, collection: str) -> tuple[str, ...]:
        c = self.config
        for type_name, coll in c.collections.items():
            if coll == collection and type_name in c.keys:
                return c.keys[type_name]
        return c.default_key

    async def write(self, ops: list[Op]) -> None:
        """Upsert ``ops`` (one per document), per collection; refused documents become dead letters."""
        by_collection: dict[str, list[Op]] = {}
        for op in ops:
            by_collection.setdefault(op.collection, []).append(op)
        for name, group in by_collection.items():
            await self.ensure_index(name, tuple(group[0].filter))
            await self._bulk_collection(self._collection(name), group)

    def _collection(self, name: str) -> AsyncCollection[dict[str, Any]]:
        coll = self.client[self.config.mongo.database][name]
        if self.config.write_concern:
            coll = coll.with_options(write_concern=WriteConcern(**self.config.write_concern))
        return coll

    async def _bulk_collection(self, coll: AsyncCollection[dict[str, Any]], group: list[Op]) -> None:
        try:
            result = await coll.bulk_write([update(op, self.config.version_field) for op in group], ordered=False)
        except BulkWriteError as exc:
            details = exc.details
            if details.get("writeConcernErrors"):
                raise WriteConcernError(str(details["writeConcernErrors"][:1])) from None
            self.stats.inc_value("mongo_writer/upserted", details.get("nUpserted", 0))
            await self._write_errors(coll, group, details.get("writeErrors", []))
            return
        self.stats.inc_value("mongo_writer/upserted", result.upserted_count)

    async def _write_errors(self, coll: AsyncCollection[dict[str, Any]], group: list[Op],
                            errors: list[dict[str, Any]]) -> None:
        dupes = [group[e["index"]] for e in errors if _on_key(group[e["index"]], e)]
        others = [(group[e["index"]], e) for e in errors if not _on_key(group[e["index"]], e)]
        if dupes:
            # Another worker inserted the same key between our match and our
            # insert, or the version guard refused an older write. Once more:
            # a race now finds the document and updates it.
            try:
                await coll.bulk_write([update(op, self.config.version_field) for op in dupes], ordered=False)
            except BulkWriteError as exc:
                for e in exc.details.get("writeErrors", []):
                    op = dupes[e["index"]]
                    if _on_key(op, e) and op.version is not None:
                        self.stats.inc_value("mongo_writer/stale")
                        logger.debug("Skipped an older write of %(key)s in %(coll)s",
                                     {"key": op.filter, "coll": coll.name})
                    elif _on_key(op, e):
                        self.stats.inc_value("mongo_writer/duplicate_key")
                        logger.warning("Duplicate key %(key)s in %(coll)s: %(msg)s",
                                       {"key": op.filter, "coll": coll.name, "msg": e.get("errmsg")})
                    else:
                        others.append((op, e))
            self.stats.inc_value("mongo_writer/duplicate_key_retried", len(dupes))
        if not others:
            return
        letters = []
        for op, e in others:
            code = int(e.get("code", 0))
            self.stats.inc_value(f"mongo_writer/write_error/{code}")
            logger.error("MongoDB refused %(key)s in %(coll)s: %(msg)s",
                         {"key": op.filter, "coll": coll.name, "msg": e.get("errmsg")})
            if coll.name == self.config.dead_letter_collection:
                self.stats.inc_value("mongo_writer/dead_letter_failed")
                continue
            # (Records journaled before the id was: derived from their key.)
            letter_id = op.dead_letter_id or dead_letter_id(coll.name, op.doc.get("source_url"), op.filter)
            letters.append(Op(op.seq, self.config.dead_letter_collection, {"dead_letter_id": letter_id}, {
                "item_type": op.item_type or coll.name, "source_url": op.doc.get("source_url"),
                "errors": [{"field": "", "kind": f"write_error/{code}", "message": str(e.get("errmsg"))}],
                "item": {**op.filter, **op.doc}}, None))
        if letters:
            await self.write(letters)


def _on_key(op: Op, error: dict[str, Any]) -> bool:
    """A duplicate-key error on our own unique key (not on another unique index of the collection)."""
    if error.get("code") != _DUPLICATE_KEY:
        return False
    pattern = error.get("keyPattern")
    return not pattern or set(pattern) == set(op.filter)


class WriteConcernError(PyMongoError):
    """The write concern was not satisfied: retry the batch."""
