"""Bulk, idempotent, non-blocking MongoDB writes that lose no item.

Each item becomes one upsert, ``UpdateOne({<key fields>: ...}, {"$set": doc},
upsert=True)``, keyed by a unique key per item type (default
``canonical_url``), so a re-crawl updates its document instead of adding one.
The operation is appended to a local fsync'd journal (:mod:`pipelines.journal`)
*before* ``process_item`` returns: an item Scrapy counts as scraped is on
disk. A background task sends the journaled operations in batches (by size
and by time) as unordered ``bulk_write`` calls through pymongo's
``AsyncMongoClient``, and deletes journal segments once MongoDB has them.

* Back-pressure: while MongoDB is reachable, ``process_item`` waits when
  ``MONGO_WRITER_BUFFER_SIZE`` operations are journaled but not yet written,
  so the crawl slows down to MongoDB's pace instead of memory growing.
* Transient errors (network, server selection, write concern) are retried
  with exponential backoff. After ``MONGO_WRITER_RETRY_TIMES`` failures MongoDB
  counts as down: the crawl goes on, operations go only to the journal (not to
  memory), and the writer keeps probing; when MongoDB is back it replays the
  journal in order, then resumes normal operation. Whatever is still in the
  journal at close (or after a crash) is adopted and replayed by the next
  worker that starts with the same ``MONGO_WRITER_JOURNAL_DIR``: only the
  operations MongoDB had not acknowledged, as the journal persists the
  acknowledged position after every batch.
* Replays are idempotent: the same upsert again changes nothing, and a
  version guard (``MONGO_WRITER_VERSION_FIELD``, default ``fetched_at``) keeps
  an older operation replayed late from overwriting a newer crawl.
* Per-document errors never stop the crawl: duplicate-key races are retried
  once and then counted (``stale`` when the version guard refused an older
  write), others are counted, logged and the document stored as a dead letter.
* Invalid items (``DeadLetter`` from ``ValidatePipeline``), items without
  their key and items BSON cannot encode go to the dead-letter collection
  (the records: :mod:`pipelines.mongo_records`).

Settings (parsed by ``MongoWriterConfig`` in :mod:`pipelines.mongo_config`, with
``MONGO_URI`` and ``MONGO_DATABASE``):

``MONGO_WRITER_ENABLED`` (bool, default ``True``)
``MONGO_WRITER_COLLECTIONS`` (dict, default ``{}``): item class (or import path
    or class name) -> collection; default: the class name in lower case.
``MONGO_WRITER_KEYS`` (dict, default ``{}``): item class -> key field or list
    of fields; default ``MONGO_WRITER_DEFAULT_KEY``.
``MONGO_WRITER_DEFAULT_KEY`` (str or list, default ``"canonical_url"``)
``MONGO_WRITER_DEAD_LETTER_COLLECTION`` (str, default ``"dead_letter"``)
``MONGO_WRITER_BATCH_SIZE`` (int, default 500)
``MONGO_WRITER_FLUSH_INTERVAL`` (float seconds, default 1.0)
``MONGO_WRITER_BUFFER_SIZE`` (int, default 4 x batch size)
``MONGO_WRITER_WRITE_CONCERN`` (dict, default ``{"j": True}``), e.g.
    ``{"w": "majority", "j": True, "wtimeout": 5000}``. Journal segments are
    deleted once MongoDB acknowledges their operations, so the default asks
    for an acknowledgement after MongoDB's own journal is on disk; ``{}``
    takes the URI's / server's default (faster, but a MongoDB crash can then
    lose writes our journal no longer holds).
``MONGO_WRITER_RETRY_TIMES`` (int, default 5)
``MONGO_WRITER_RETRY_BACKOFF`` (float seconds, default 0.5; doubles, capped
    by ``MONGO_WRITER_RETRY_BACKOFF_MAX``, default 10)
``MONGO_WRITER_SERVER_TIMEOUT`` (float seconds, default 5): pymongo's
    server selection timeout, i.e. how long one attempt waits for a server.
``MONGO_WRITER_CONNECT_TIMEOUT`` (float seconds, default 5): pymongo's
    connect timeout, for opening one connection.
``MONGO_WRITER_SOCKET_TIMEOUT`` (float seconds, default 30): pymongo's
    socket timeout, how long one call waits for MongoDB's reply (a batch
    written with ``j: true`` included); past it the batch is retried.
``MONGO_WRITER_CLOSE_TIMEOUT`` (float seconds, default 60): at close, how long
    to wait for MongoDB before leaving the rest in the journal.
``MONGO_WRITER_JOURNAL_DIR`` (str, default ``"mongo-journal"``)
``MONGO_WRITER_JOURNAL_SEGMENT_BYTES`` (int, default 8 MiB)
``MONGO_WRITER_JOURNAL_MAX_BYTES`` (int, default 1 GiB; 0: no limit): past
    this, ``process_item`` waits (the crawl pauses) until MongoDB takes some.
``MONGO_WRITER_VERSION_FIELD`` (str, default ``"fetched_at"``; empty: off)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import is_asyncio_available

from crawler.redact import redact_uri
from pipelines.item_context import item_contexts
from pipelines.journal import Journal
from pipelines.mongo_access import MongoAuthError, check_access, is_auth_error
from pipelines.mongo_bulk import BulkWriter
from pipelines.mongo_config import MongoWriterConfig
from pipelines.mongo_ops import coalesce, decode
from pipelines.mongo_records import RecordEncoder

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class MongoWriterPipeline:
    """Journals each item, then upserts it to MongoDB in unordered batches."""

    def __init__(self, crawler: Crawler, config: MongoWriterConfig) -> None:
        if not is_asyncio_available():
            raise RuntimeError("MongoWriterPipeline needs the asyncio reactor")
        assert crawler.stats is not None
        self.crawler = crawler
        self.stats = crawler.stats
        self.config = config
        self.contexts = item_contexts(crawler)
        self.records = RecordEncoder(crawler, config, self.stats, self.contexts)
        self.client: AsyncMongoClient[dict[str, Any]] | None = None
        # One folder per database: a journal is replayed into the database it was written for.
        self.journal = Journal(config.journal_dir / config.mongo.database, config.journal_segment_bytes)
        self.cursor = 0  # every journal record below is in MongoDB
        self.down = False
        self._attempts_closing = 0
        self._closing = False
        self._work = asyncio.Event()
        self._space = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._failed_while_closing = False
        self._stop = False
        self._task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None  # closes the worker when MongoDB refuses us
        self.bulk: BulkWriter | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("MONGO_WRITER_ENABLED", True):
            raise NotConfigured
        return cls(crawler, MongoWriterConfig.from_settings(crawler.settings))

    # -- lifecycle ----------------------------------------------------------

    async def open_spider(self) -> None:
        c = self.config
        # Every call bounded: finding a server, opening a connection, and
        # waiting for any one reply (pymongo's socket timeout is unset by default).
        self.client = AsyncMongoClient(c.mongo.uri, tz_aware=True,
                                       serverSelectionTimeoutMS=int(c.server_timeout * 1000),
                                       connectTimeoutMS=int(c.connect_timeout * 1000),
                                       socketTimeoutMS=int(c.socket_timeout * 1000))
        try:
            await check_access(self.client, c.mongo.database, c.mongo.uri)  # wrong credentials: stop now
        except MongoAuthError:
            await self.client.close()
            raise
        self.bulk = BulkWriter(self.client, c, self.stats)
        await self.journal.open()
        self.stats.set_value("mongo_writer/adopted", self.journal.adopted)
        self.stats.set_value("mongo_writer/adopted_acknowledged", self.journal.skipped)
        logger.info(
            "Writing items to %(uri)s database %(db)s in batches of %(batch)d (every %(interval)ss), "
            "journal %(journal)s%(adopted)s",
            {"uri": redact_uri(c.mongo.uri), "db": c.mongo.database, "batch": c.batch_size,
             "interval": c.flush_interval, "journal": self.journal.path,
             "adopted": f", replaying {self.journal.adopted} operations left by a previous run"
             if self.journal.adopted else ""},
        )
        self._task = asyncio.create_task(self._run())
        if self.journal.durable:
            self._work.set()

    async def close_spider(self) -> None:
        self._closing = True
        self._work.set()
        deadline = time.monotonic() + self.config.close_timeout
        if self.down:
            self._retry_now.set()  # one more attempt now, not after the backoff
        while self.cursor < self.journal.next_seq and time.monotonic() < deadline and not (
                self.down and self._failed_while_closing):
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), timeout=max(0.01, deadline - time.monotonic()))
        # A flag, not Task.cancel(): wait_for() in 3.11 can swallow a
        # cancellation that races with the event it waits for.
        self._stop = True
        self._work.set()
        self._retry_now.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=self.config.server_timeout + 1)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        left = self.journal.next_seq - self.cursor
        self.stats.set_value("mongo_writer/left_in_journal", left)
        if left:
            logger.warning(
                "%(n)d operations not yet in MongoDB are kept in the journal %(path)s; the next worker started "
                "with MONGO_WRITER_JOURNAL_DIR=%(dir)s replays them",
                {"n": left, "path": self.journal.path, "dir": self.config.journal_dir},
            )
        await self.journal.close(remove=not left)
        if self.client is not None:
            await self.client.close()
            self.client = None

    # -- items --------------------------------------------------------------

    async def process_item(self, item: Any) -> Any:
        payload = self.records.encode(item)
        waited = False
        max_bytes = self.config.journal_max_bytes
        # While MongoDB is up: at most buffer_size upserts not yet written.
        # While it is down: the journal takes everything, up to max_bytes.
        while (not self.down and self.journal.next_seq - self.cursor >= self.config.buffer_size) or (
                max_bytes and self.journal.size >= max_bytes):
            if not waited:
                self.stats.inc_value("mongo_writer/backpressure")
                waited = True
            self._space.clear()
            await self._space.wait()
        await self.journal.append(payload)
        self.stats.inc_value("mongo_writer/journaled")
        if self.journal.durable - self.cursor >= self.config.batch_size:
            self._work.set()
        return item

    # -- writing ------------------------------------------------------------

    async def _run(self) -> None:
        """Send journaled operations to MongoDB, batch after batch, in order."""
        # Unique indexes for the collections known now (others before their
        # first write), here rather than in open_spider so that a MongoDB that
        # is down does not hold up the start of the crawl.
        assert self.bulk is not None
        try:
            for name in sorted({*self.config.collections.values(), self.config.dead_letter_collection}):
                await self.bulk.ensure_index(name)
        except PyMongoError as exc:
            logger.warning("Could not create indexes yet (%(exc)s); retrying before the first write", {"exc": exc})
        while not self._stop:
            backlog = self.journal.durable - self.cursor
            if backlog <= 0 or (not self._closing and not self.down and backlog < self.config.batch_size):
                self._work.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), timeout=self.config.flush_interval)
                if self.journal.durable <= self.cursor:
                    continue
            try:
                records = await self.journal.read(self.cursor, self.config.batch_size)
                if not records:
                    await asyncio.sleep(0.01)
                    continue
                if not await self._write_batch(records):
                    return
                self.cursor = records[-1][0] + 1
                await self.journal.commit(self.cursor)
            except Exception:
                # Reading the journal back failed (disk error): nothing is
                # lost, the records stay on disk; try again shortly.
                logger.error("MongoDB writer error; retrying", exc_info=True)
                await asyncio.sleep(self.config.retry_backoff_max)
                continue
            self._space.set()

    def _failed_attempt_while_closing(self) -> None:
        # Closing gives MongoDB the configured attempts again, counted from the
        # close: a server that just came back (pymongo has not seen it yet) gets
        # its chance, one that is down does not hold the close for long.
        self._attempts_closing += 1
        if self._attempts_closing > self.config.retry_times:
            self._failed_while_closing = True
            self._space.set()

    def _refused(self, exc: Exception) -> bool:
        """If MongoDB refused our credentials or privileges (waiting cannot fix that): close the worker."""
        if not is_auth_error(exc):
            return False
        if not self.down:
            self.down = True
            self.journal.spill()
        self._failed_while_closing = True  # close_spider does not wait for MongoDB
        self._space.set()
        self.stats.inc_value("mongo_writer/auth_failed")
        logger.error("MONGO_URI %(uri)s: MongoDB refused to write (%(exc)s); closing the worker (finish reason "
                     "mongo_auth_failed), operations stay in the journal %(path)s",
                     {"uri": redact_uri(self.config.mongo.uri), "exc": redact_uri(str(exc))[:300],
                      "path": self.journal.path})
        engine = self.crawler.engine
        if engine is not None:
            self._closer = asyncio.get_running_loop().create_task(
                engine.close_spider_async(reason="mongo_auth_failed"))
        return True

    async def _write_batch(self, records: list[tuple[int, bytes]]) -> bool:
        """Write one batch: True once MongoDB has it (or its failures are accounted for), False if stopped."""
        ops = []
        for seq, payload in records:
            try:
                ops.append(decode(seq, payload))
            except Exception:  # CRC-checked, so only a bug or a foreign file
                self.stats.inc_value("mongo_writer/undecodable")
                logger.error("Journal record %(seq)d of %(path)s cannot be decoded; skipped",
                             {"seq": seq, "path": self.journal.path}, exc_info=True)
        if not ops:
            return True
        assert self.bulk is not None
        merged, stale = coalesce(ops)
        if len(merged) < len(ops):
            self.stats.inc_value("mongo_writer/coalesced", len(ops) - len(merged))
        if stale:
            # What the version guard would have refused had they come in separate batches.
            self.stats.inc_value("mongo_writer/stale", stale)
        attempt = 0
        while True:
            try:
                await self.bulk.write(merged)
            except Exception as exc:
                if self._stop or self._refused(exc):
                    return False
                attempt += 1
                if self._closing:
                    self._failed_attempt_while_closing()
                if not isinstance(exc, PyMongoError):
                    logger.error("Unexpected error writing to MongoDB; retrying", exc_info=True)
                self.stats.inc_value("mongo_writer/retries")
                if attempt > self.config.retry_times and not self.down:
                    self.down = True
                    self.journal.spill()
                    self.stats.inc_value("mongo_writer/down")
                    logger.error(
                        "MongoDB unreachable after %(n)d attempts (%(exc)s): the crawl goes on, operations are "
                        "kept in the journal %(path)s and replayed when MongoDB is back",
                        {"n": attempt, "exc": exc, "path": self.journal.path},
                    )
                    self._space.set()  # release writers waiting on back-pressure
                delay = min(self.config.retry_backoff * 2 ** min(attempt - 1, 20), self.config.retry_backoff_max)
                logger.debug("MongoDB write failed (%(exc)s); retry %(n)d in %(delay).1fs",
                             {"exc": exc, "n": attempt, "delay": delay})
                self._retry_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), timeout=delay)
                continue
            break
        if self.down:
            self.down = False
            self.journal.unspill()
            logger.info("MongoDB is back; replaying the journal from operation %(seq)d", {"seq": records[0][0]})
        self.stats.inc_value("mongo_writer/written", len(records))
        self.stats.inc_value("mongo_writer/batches")
        return True
