"""MongoWriterPipeline (with the whole item chain) against the real local MongoDB-compatible server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
from typing import TYPE_CHECKING, Any

import pytest
from pymongo import MongoClient
from scrapy.settings import Settings
from scrapy.utils.misc import build_from_crawler

from crawler.redact import redact_uri
from devtools.services import free_port, start_secantus
from pipelines.mongo_config import MongoConfig, MongoWriterConfig
from pipelines.mongo_writer import MongoWriterPipeline
from pipelines.validate import dead_letter_id, item_to_dict
from tests.pipeline_chain import Chain, article, chain_crawler, product, response_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from scrapy.crawler import Crawler


def docs(uri: str, db: str, collection: str) -> list[dict[str, Any]]:
    with MongoClient(uri, tz_aware=True) as client:
        return list(client[db][collection].find({}, {"_id": 0}))


@contextlib.asynccontextmanager
async def running(crawler: Crawler, pairs: list[Any], concurrency: int = 8) -> AsyncIterator[Chain]:
    """The item chain, opened and fed ``pairs``; closed (MongoDB written, journal settled) on leaving."""
    chain = Chain(crawler)  # inside the loop: components check is_asyncio_available()
    await chain.open()
    try:
        await chain.feed(pairs, concurrency)
        yield chain
    finally:
        await chain.close()


async def run_chain(crawler: Crawler, pairs: list[Any], concurrency: int = 8) -> Chain:
    async with running(crawler, pairs, concurrency) as chain:
        pass
    return chain


async def process_fetched_earlier(chain: Chain, item: Any, earlier: datetime.timedelta) -> None:
    """``item`` through the chain as if its page had been fetched ``earlier`` than now."""
    response = response_for(item)
    (item,) = list(chain.middleware.process_spider_output(response, [item]))
    context = chain.middleware.contexts.get(item)
    assert context is not None and context.fetched_at is not None
    context.fetched_at -= earlier
    await chain.process(response, item)


@pytest.mark.asyncio
async def test_items_are_upserted_with_enrichment_and_invalid_ones_dead_lettered(
    mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    crawler = chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal")
    pairs: list[Any] = [(response_for(p, meta={"bindaddress": ("2001:db8::7", 0)}), p)
                        for p in (product(i) for i in range(20))]
    pairs += [(response_for(a), a) for a in (article(i) for i in range(5))]
    bad = [product(100, title="", price=-1.0), product(101, currency="euro"), article(102, url="ftp://x/y")]
    pairs += [(response_for(b), b) for b in bad]
    chain = await run_chain(crawler, pairs)

    products = {d["sku"]: d for d in docs(mongo_server_uri, mongo_db, "product")}
    assert sorted(products) == [f"SKU-{i:06d}" for i in range(20)]
    d = products["SKU-000003"]
    response = pairs[3][0]
    assert d["canonical_url"] == "http://shop-a.test/item/3"
    assert d["website"] == "shop-a.test"
    assert d["source_url"] == "http://shop-a.test/item/3"
    assert d["spider"] == "test_spider"
    assert d["job_id"] == "job-1"
    assert d["http_status"] == 200
    assert d["response_bytes"] == len(response.body)
    assert d["content_fingerprint"] == hashlib.sha256(response.body).hexdigest()
    assert d["source_address"] == "2001:db8::7"
    assert abs(d["fetched_at"] - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=5)
    assert d["fetched_at"].utcoffset() == datetime.timedelta(0)
    articles = docs(mongo_server_uri, mongo_db, "article")
    assert len(articles) == 5
    assert all(a["source_address"] is None for a in articles)

    letters = {d["item"]["url"]: d for d in docs(mongo_server_uri, mongo_db, "dead_letter")}
    assert sorted(letters) == ["ftp://x/y", "http://shop-a.test/item/100", "http://shop-a.test/item/101"]
    first = letters["http://shop-a.test/item/100"]
    assert first["item_type"] == "crawler.items.Product"
    assert first["spider"] == "test_spider"
    assert first["source_url"] == "http://shop-a.test/item/100"
    assert first["item"]["price"] == -1.0
    assert {(e["field"], e["kind"]) for e in first["errors"]} == {("title", "minlength"), ("title", "pattern"),
                                                                  ("price", "minimum")}
    assert all(e["message"] for e in first["errors"])
    assert {(e["field"], e["kind"]) for e in letters["http://shop-a.test/item/101"]["errors"]} == {
        ("currency", "pattern")}
    assert letters["ftp://x/y"]["item_type"] == "crawler.items.Article"
    assert [e["field"] for e in letters["ftp://x/y"]["errors"]] == ["url"]
    s = chain.stats
    assert s["validate/valid"] == 25
    assert s["validate/invalid"] == 3
    assert s["validate/error/minimum"] == 1
    assert s["validate/error/pattern"] == 3
    assert s["mongo_writer/written"] == 28
    assert s["mongo_writer/left_in_journal"] == 0
    assert not list((tmp_path / "journal").glob("*/*/*.wal")), "a clean close leaves no journal"
    assert len(chain.scraped) == 28  # nothing silently dropped
    assert len(chain.middleware.contexts) == 0  # every item's context released


@pytest.mark.asyncio
async def test_recrawl_updates_one_document_per_key(mongo_server_uri: str, mongo_db: str, tmp_path: Path) -> None:
    for run, (price, query) in enumerate(((5.0, "b=1&a=0"), (7.5, "a=0&b=1")), 1):
        crawler = chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal", ENRICH_JOB_ID=f"job-{run}")
        # The query's order differs between the runs; the canonical URL is the key.
        items = [product(i, price=price, url=f"http://shop-a.test/item/{i}?{query}") for i in range(30)]
        await run_chain(crawler, [(response_for(p), p) for p in items])
    found = docs(mongo_server_uri, mongo_db, "product")
    assert len(found) == 30
    assert len({d["canonical_url"] for d in found}) == 30
    assert {d["price"] for d in found} == {7.5}
    assert {d["job_id"] for d in found} == {"job-2"}
    assert {d["url"] for d in found} == {f"http://shop-a.test/item/{i}?a=0&b=1" for i in range(30)}


@pytest.mark.asyncio
async def test_duplicate_keys_in_one_batch_coalesce_in_order(mongo_server_uri: str, mongo_db: str,
                                                             tmp_path: Path) -> None:
    crawler = chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal", MONGO_WRITER_BATCH_SIZE=50)
    pairs = []
    for version in range(4):
        pairs += [(response_for(p), p) for p in (product(i, price=float(version)) for i in range(10))]
    chain = await run_chain(crawler, pairs, concurrency=1)
    found = docs(mongo_server_uri, mongo_db, "product")
    assert len(found) == 10
    assert {d["price"] for d in found} == {3.0}  # the last one of each key wins
    assert chain.stats["mongo_writer/coalesced"] == 30
    assert chain.stats["mongo_writer/written"] == 40


@pytest.mark.asyncio
async def test_an_older_write_replayed_late_does_not_overwrite_a_newer_one(
    mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    newer = product(1, price=2.0)
    older = product(1, price=1.0)
    crawler = chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal", MONGO_WRITER_BATCH_SIZE=1)
    async with running(crawler, [(response_for(newer), newer)]) as chain:
        # Fetched an hour before the stored one, arriving now (a journal
        # replayed late by another worker, say): it must not win.
        await process_fetched_earlier(chain, older, datetime.timedelta(hours=1))
    (doc,) = docs(mongo_server_uri, mongo_db, "product")
    assert doc["price"] == 2.0
    assert chain.stats["mongo_writer/stale"] == 1
    assert "mongo_writer/duplicate_key" not in chain.stats


@pytest.mark.asyncio
async def test_backpressure_bounds_the_buffer(mongo_server_uri: str, mongo_db: str, tmp_path: Path) -> None:
    crawler = chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal", MONGO_WRITER_BATCH_SIZE=10,
                            MONGO_WRITER_BUFFER_SIZE=20)
    highest = 0
    async with running(crawler, []) as chain:
        writer = chain.writer
        original = writer.journal.append

        def append(payload: bytes) -> Any:
            nonlocal highest
            highest = max(highest, writer.journal.next_seq + 1 - writer.cursor)
            return original(payload)

        writer.journal.append = append  # type: ignore[method-assign]
        await chain.feed([(response_for(p), p) for p in (product(i) for i in range(120))], concurrency=16)
    assert 10 < highest <= 20
    assert chain.stats["mongo_writer/backpressure"] > 0
    assert len(docs(mongo_server_uri, mongo_db, "product")) == 120


@pytest.mark.asyncio
async def test_mongodb_killed_and_restarted_mid_crawl_every_item_once(tmp_path: Path, mongo_db: str) -> None:
    port = free_port()
    storage = tmp_path / "secantus"
    server = start_secantus(tmp_path, port, storage)
    items = [product(i) for i in range(150)]
    try:
        crawler = chain_crawler(server.url, mongo_db, tmp_path / "journal", MONGO_WRITER_BATCH_SIZE=20,
                                MONGO_WRITER_BUFFER_SIZE=40)
        async with running(crawler, [(response_for(p), p) for p in items[:50]]) as chain:
            server.kill()
            # MongoDB is gone: after its retries the writer declares it down and
            # the crawl goes on into the journal, without back-pressure.
            await chain.feed([(response_for(p), p) for p in items[50:120]])
            assert chain.writer.down
            restarted = await asyncio.to_thread(start_secantus, tmp_path, port, storage)
            server.proc = restarted.proc
            await chain.feed([(response_for(p), p) for p in items[120:]])
        found = docs(server.url, mongo_db, "product")
    finally:
        server.stop()
    assert sorted(d["sku"] for d in found) == [f"SKU-{i:06d}" for i in range(150)], chain.stats
    s = chain.stats
    assert s["mongo_writer/down"] >= 1
    assert s["mongo_writer/retries"] >= 3
    assert s["mongo_writer/left_in_journal"] == 0
    assert len(chain.scraped) == 150


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"MONGO_URI": ""}, "MONGO_URI must be a mongodb:// URI"),
        ({"MONGO_URI": "http://x"}, "MONGO_URI 'http://x' is invalid"),
        ({"MONGO_URI": "mongodb://u:secret@h", "MONGO_DATABASE": "a.b"}, "MONGO_DATABASE 'a.b' is not a valid"),
        ({"MONGO_WRITER_BATCH_SIZE": 0}, "MONGO_WRITER_BATCH_SIZE must be an integer > 0, got 0"),
        ({"MONGO_WRITER_BATCH_SIZE": "ten"}, "MONGO_WRITER_BATCH_SIZE must be an integer > 0, got 'ten'"),
        ({"MONGO_WRITER_BATCH_SIZE": 100, "MONGO_WRITER_BUFFER_SIZE": 50}, "MONGO_WRITER_BUFFER_SIZE must be >="),
        ({"MONGO_WRITER_FLUSH_INTERVAL": -1}, "MONGO_WRITER_FLUSH_INTERVAL must be a number > 0, got -1"),
        ({"MONGO_WRITER_CONNECT_TIMEOUT": 0}, "MONGO_WRITER_CONNECT_TIMEOUT must be a number > 0, got 0"),
        ({"MONGO_WRITER_SOCKET_TIMEOUT": "x"}, "MONGO_WRITER_SOCKET_TIMEOUT must be a number > 0, got 'x'"),
        ({"MONGO_WRITER_KEYS": {"Product": []}}, r"MONGO_WRITER_KEYS\['Product'\] must be a field name"),
        ({"MONGO_WRITER_DEFAULT_KEY": "$x"}, "MONGO_WRITER_DEFAULT_KEY must be a field name"),
        ({"MONGO_WRITER_WRITE_CONCERN": {"w": -3}}, "MONGO_WRITER_WRITE_CONCERN"),
        ({"MONGO_WRITER_RETRY_TIMES": "x"}, "MONGO_WRITER_RETRY_TIMES must be an integer"),
        ({"MONGO_WRITER_COLLECTIONS": {"Product": ""}}, r"MONGO_WRITER_COLLECTIONS\['Product'\]"),
        ({"MONGO_WRITER_JOURNAL_MAX_BYTES": 1000}, "MONGO_WRITER_JOURNAL_MAX_BYTES must be 0 .no limit. or at least"),
    ],
)
def test_invalid_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MongoWriterConfig.from_settings(Settings({"MONGO_URI": "mongodb://127.0.0.1:1", **settings}))


def test_config_and_credentials_are_redacted() -> None:
    config = MongoWriterConfig.from_settings(Settings({"MONGO_URI": "mongodb://u:pw@h", "MONGO_WRITER_KEYS": {
        "Product": ["sku", "website"]}}))
    assert config.keys == {"Product": ("sku", "website")}
    assert config.buffer_size == 4 * config.batch_size
    assert MongoConfig.from_settings(Settings({"MONGO_URI": "mongodb://h"})).database == "crawler"
    assert redact_uri("mongodb://user:s3cret@db1:27017,db2/x?authSource=admin") == (
        "mongodb://***@db1:27017,db2/x?authSource=admin"
    )
    assert redact_uri("mongodb://db1:27017") == "mongodb://db1:27017"


@pytest.mark.asyncio
async def test_a_document_refused_by_mongodb_is_dead_lettered_not_fatal(
    mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    # The user's own unique index on sku: a second product with the same sku
    # is refused (E11000 on another index than our key), the rest go on.
    with MongoClient(mongo_server_uri) as client:
        client[mongo_db]["product"].create_index("sku", unique=True)
    crawler = chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal")
    items = [product(1), product(2, sku="SKU-000001"), product(3)]
    chain = await run_chain(crawler, [(response_for(p), p) for p in items], concurrency=1)
    assert sorted(d["url"] for d in docs(mongo_server_uri, mongo_db, "product")) == [
        "http://shop-a.test/item/1", "http://shop-a.test/item/3"]
    (letter,) = docs(mongo_server_uri, mongo_db, "dead_letter")
    assert letter["item"]["url"] == "http://shop-a.test/item/2"
    assert letter["errors"][0]["kind"] == "write_error/11000"
    assert letter["item_type"] == "crawler.items.Product"
    assert letter["dead_letter_id"] == dead_letter_id("crawler.items.Product", items[1].url, item_to_dict(items[1]))
    assert "duplicate key" in letter["errors"][0]["message"]
    assert chain.stats["mongo_writer/write_error/11000"] == 1
    assert "mongo_writer/stale" not in chain.stats
    assert chain.stats["mongo_writer/left_in_journal"] == 0


@pytest.mark.asyncio
async def test_items_without_key_or_not_encodable_are_dead_lettered(
    mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    crawler = chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal", VALIDATE_REQUIRE_SCHEMA=False)
    good = {"url": "http://x.test/ok", "n": 1}
    unencodable = {"url": "http://x.test/set", "tags": {"a", "b"}}
    keyless = {"title": "no url, not from a response"}
    async with running(crawler, [(response_for(good), good), (response_for(unencodable), unencodable)]) as chain:
        item = chain.enrich.process_item(chain.validate.process_item(keyless))  # not from a response
        chain.scraped.append(await chain.writer.process_item(item))
    assert [d["url"] for d in docs(mongo_server_uri, mongo_db, "dict")] == ["http://x.test/ok"]
    letters = {d["errors"][0]["kind"]: d for d in docs(mongo_server_uri, mongo_db, "dead_letter")}
    assert set(letters) == {"unencodable", "missing_key"}
    assert "tags" in letters["unencodable"]["item"]["repr"]
    assert letters["unencodable"]["source_url"] == "http://x.test/set"
    assert letters["missing_key"]["item"]["title"] == keyless["title"]
    assert chain.stats["mongo_writer/unencodable"] == 1
    assert chain.stats["mongo_writer/missing_key"] == 1
    assert chain.stats["enrich/no_context"] == 1
    assert len(chain.scraped) == 3


@pytest.mark.asyncio
async def test_journal_size_cap_pauses_the_crawl_while_mongodb_is_down(tmp_path: Path, mongo_db: str) -> None:
    port = free_port()
    storage = tmp_path / "secantus"
    server = start_secantus(tmp_path, port, storage)
    cap = 8000
    try:
        crawler = chain_crawler(server.url, mongo_db, tmp_path / "journal", MONGO_WRITER_BATCH_SIZE=5,
                                MONGO_WRITER_JOURNAL_SEGMENT_BYTES=2000, MONGO_WRITER_JOURNAL_MAX_BYTES=cap)
        async with running(crawler, [(response_for(p), p) for p in (product(i) for i in range(10))]) as chain:
            server.kill()
            feeding = asyncio.create_task(chain.feed(
                [(response_for(p), p) for p in (product(i) for i in range(10, 110))], concurrency=4))
            while not (chain.writer.down and chain.writer.journal.size >= cap) and not feeding.done():
                await asyncio.sleep(0.05)
            paused_at, journal_bytes = len(chain.scraped), chain.writer.journal.size
            restarted = await asyncio.to_thread(start_secantus, tmp_path, port, storage)
            server.proc = restarted.proc
            await feeding
        found = docs(server.url, mongo_db, "product")
    finally:
        server.stop()
    # Each upsert is ~600 bytes: the 100 items of the outage do not fit under
    # the cap, so the crawl waited (4 concurrent appends may overshoot it).
    assert paused_at < 40
    assert journal_bytes < cap + 4 * 1000
    assert sorted(d["sku"] for d in found) == [f"SKU-{i:06d}" for i in range(110)]
    assert chain.stats["mongo_writer/left_in_journal"] == 0


@pytest.mark.asyncio
async def test_an_older_write_journaled_after_a_newer_one_in_the_same_batch_does_not_win(
    mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    newer = product(1, price=2.0, title="Newer")
    older = product(1, price=1.0, title="Older")
    # Batches of 2 and no flush by time: both operations go in one bulk_write.
    crawler = chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal", MONGO_WRITER_BATCH_SIZE=2,
                            MONGO_WRITER_FLUSH_INTERVAL=600)
    async with running(crawler, [(response_for(newer), newer)], concurrency=1) as chain:
        await process_fetched_earlier(chain, older, datetime.timedelta(hours=1))
    (doc,) = docs(mongo_server_uri, mongo_db, "product")
    assert (doc["price"], doc["title"]) == (2.0, "Newer")
    assert chain.stats["mongo_writer/batches"] == 1
    assert chain.stats["mongo_writer/coalesced"] == 1
    assert chain.stats["mongo_writer/stale"] == 1


@pytest.mark.asyncio
async def test_the_mongodb_client_has_connect_socket_and_server_selection_timeouts(
    mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    crawler = chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal", MONGO_WRITER_CONNECT_TIMEOUT=2.5,
                            MONGO_WRITER_SOCKET_TIMEOUT=7, MONGO_WRITER_SERVER_TIMEOUT=1.5)

    writer = build_from_crawler(MongoWriterPipeline, crawler)
    await writer.open_spider()
    assert writer.client is not None
    options = writer.client.options
    timeouts = (options.pool_options.connect_timeout, options.pool_options.socket_timeout,
                options.server_selection_timeout)
    await writer.close_spider()
    assert timeouts == (2.5, 7.0, 1.5)
    defaults = MongoWriterConfig.from_settings(Settings({"MONGO_URI": "mongodb://h"}))
    assert (defaults.connect_timeout, defaults.socket_timeout, defaults.server_timeout) == (5.0, 30.0, 5.0)


@pytest.mark.asyncio
async def test_a_worker_restarted_after_a_crash_replays_only_what_mongodb_had_not_acknowledged(
    mongo_server_uri: str, mongo_db: str, tmp_path: Path
) -> None:
    items = [product(i) for i in range(35)]
    settings = {"MONGO_WRITER_BATCH_SIZE": 10, "MONGO_WRITER_FLUSH_INTERVAL": 600}

    chain = Chain(chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal", **settings))
    await chain.open()
    writer = chain.writer
    await chain.feed([(response_for(p), p) for p in items[:30]])
    while writer.cursor < 30:  # three full batches: MongoDB acknowledges them
        await asyncio.sleep(0.01)
    await chain.feed([(response_for(p), p) for p in items[30:]])  # less than a batch: not written
    # The worker dies: no close_spider, its journal stays on disk.
    assert writer._task is not None
    writer._task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer._task
    await writer.journal.close(remove=False)
    assert writer.client is not None
    await writer.client.close()
    assert len(docs(mongo_server_uri, mongo_db, "product")) == 30
    restarted = await run_chain(chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal", **settings), [])
    assert restarted.stats["mongo_writer/adopted"] == 5  # the unacknowledged tail only
    assert restarted.stats["mongo_writer/adopted_acknowledged"] == 30
    assert restarted.stats["mongo_writer/written"] == 5
    assert sorted(d["sku"] for d in docs(mongo_server_uri, mongo_db, "product")) == [
        f"SKU-{i:06d}" for i in range(35)]
    assert not list((tmp_path / "journal").glob("*/*/*.wal"))


@pytest.mark.asyncio
async def test_a_recrawled_bad_item_is_the_same_dead_letter(mongo_server_uri: str, mongo_db: str,
                                                            tmp_path: Path) -> None:
    keyless = {"url": "http://x.test/keyless", "title": "no sku"}
    unencodable = {"url": "http://x.test/set", "tags": {"a", "b"}}
    invalid = product(7, price=-1.0)
    for run in (1, 2):
        # Another job, another fetch time and another page body each time.
        crawler = chain_crawler(mongo_server_uri, mongo_db, tmp_path / "journal", ENRICH_JOB_ID=f"job-{run}",
                                VALIDATE_REQUIRE_SCHEMA=False, MONGO_WRITER_KEYS={"dict": "sku"})
        await run_chain(crawler, [(response_for(i, body=f"<html>run {run}</html>".encode()), i)
                                  for i in (dict(keyless), dict(unencodable), invalid)], concurrency=1)
    found = docs(mongo_server_uri, mongo_db, "dead_letter")
    letters = {d["errors"][0]["kind"]: d for d in found}
    assert sorted(d["errors"][0]["kind"] for d in found) == ["minimum", "missing_key", "unencodable"]  # not 6
    # One scheme for ValidatePipeline's and MongoWriterPipeline's dead letters.
    assert letters["missing_key"]["dead_letter_id"] == dead_letter_id("builtins.dict", keyless["url"], keyless)
    assert letters["unencodable"]["dead_letter_id"] == dead_letter_id("builtins.dict", unencodable["url"],
                                                                      unencodable)
    assert letters["minimum"]["dead_letter_id"] == dead_letter_id("crawler.items.Product", invalid.url,
                                                                  item_to_dict(invalid))


@pytest.mark.parametrize(("text", "clean"), [
    ("redis://:hunter2@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
    ("rediss://default:hunter2@r.example:6380", "rediss://***@r.example:6380"),
    ("redis://r.example:6379/0?password=hunter2&db=1", "redis://r.example:6379/0?password=***&db=1"),
    ("setting=MONGO_URI=mongodb://u:hunter2@h/x and REDIS_URL=redis://:hunter2@h",
     "setting=MONGO_URI=mongodb://***@h/x and REDIS_URL=redis://***@h"),
])
def test_redaction_of_any_url_in_text(text: str, clean: str) -> None:
    assert redact_uri(text) == clean and "hunter2" not in redact_uri(text)
