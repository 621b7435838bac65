"""Journal records as MongoDB upserts: decoding, coalescing within a batch, the version guard.

One journal record is one upsert (:class:`Op`). Before a batch is sent as one
unordered ``bulk_write`` (whose operations MongoDB may apply in any order),
the operations on the same document are merged into one by :func:`coalesce`,
so that the batch means what applying its records one by one in journal
order would mean, version guard included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bson
from pymongo import UpdateOne

DEAD_LETTER_KEY = ("dead_letter_id",)  # the key of the dead-letter collection


@dataclass(slots=True)
class Op:
    """A decoded journal record: one upsert."""

    seq: int
    collection: str
    filter: dict[str, Any]
    doc: dict[str, Any]
    version: Any
    dead_letter_id: str | None = None  # should MongoDB refuse it
    item_type: str | None = None


def decode(seq: int, payload: bytes) -> Op:
    record = bson.decode(payload)
    return Op(seq, record["c"], record["f"], record["d"], record.get("v"), record.get("i"), record.get("t"))


def _older(a: Any, b: Any) -> bool:
    """``a`` is a strictly older version than ``b`` (unknown or incomparable versions: not older)."""
    if a is None or b is None:
        return False
    try:
        return bool(a < b)
    except TypeError:
        return False


def coalesce(ops: list[Op]) -> tuple[list[Op], int]:
    """One operation per document, and how many operations the version guard refused.

    Applied one by one, an operation older than one before it on the same
    document is refused by the guard (see :func:`update`): it is dropped here
    too, so it cannot overwrite the newer fields under the newer version. Of
    the others, later fields win, as if applied in order.
    """
    merged: dict[tuple[str, bytes], Op] = {}
    stale = 0
    for op in ops:
        key = (op.collection, bson.encode(op.filter))
        prev = merged.get(key)
        if prev is None:
            merged[key] = op
        elif _older(op.version, prev.version):
            stale += 1
        else:
            prev.doc.update(op.doc)
            if op.version is not None:
                prev.version = op.version
            prev.seq = op.seq
    return list(merged.values()), stale


def update(op: Op, version_field: str | None) -> UpdateOne:
    query = dict(op.filter)
    if version_field and op.version is not None:
        # An older operation replayed late must not overwrite a newer
        # crawl: match only documents not newer than this one (or without
        # a version); otherwise the upsert hits the unique index. ($not
        # $gt rather than an $or with null: same meaning, and SecantusDB
        # answers it from the index, 10x faster.)
        query[version_field] = {"$not": {"$gt": op.version}}
    return UpdateOne(query, {"$set": op.doc}, upsert=True)
