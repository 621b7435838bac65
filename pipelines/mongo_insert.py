"""Insert every item into MongoDB, one document per item.

The simple pipeline of the foundation: one ``insert_one`` per item through
pymongo's asyncio client (never blocking the reactor). The collection is the
item class name in lower case (``Product`` -> ``product``).

Settings:

``MONGO_URI`` (str)
    Connection string; credentials in it are never logged.
``MONGO_DATABASE`` (str, default ``"crawler"``)
    Database name.
``MONGO_INSERT_ENABLED`` (bool, default ``True``)
    Turn this pipeline off.

Stats: ``mongo_insert/inserted``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from pymongo import AsyncMongoClient
from pymongo.uri_parser import parse_uri
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import is_asyncio_available

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)


def redact_uri(uri: str) -> str:
    """The URI without its credentials, fit for logs."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    _auth, at, hosts = rest.rpartition("@")
    return f"{scheme}://***@{hosts}" if at else uri


@dataclass(frozen=True, slots=True)
class MongoConfig:
    uri: str
    database: str

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        uri = settings.get("MONGO_URI")
        if not uri or not isinstance(uri, str):
            raise ValueError(f"MONGO_URI must be a mongodb:// URI, got {uri!r}")
        try:
            parse_uri(uri)
        except Exception as exc:
            raise ValueError(f"MONGO_URI {redact_uri(uri)!r} is invalid: {exc}") from None
        database = settings.get("MONGO_DATABASE") or "crawler"
        if not isinstance(database, str) or any(c in database for c in '/\\. "$'):
            raise ValueError(f"MONGO_DATABASE {database!r} is not a valid database name")
        return cls(uri=uri, database=database)


class MongoInsertPipeline:
    """Inserts each item into the collection named after its class."""

    def __init__(self, crawler: Crawler, config: MongoConfig) -> None:
        if not is_asyncio_available():
            raise RuntimeError("MongoInsertPipeline needs the asyncio reactor")
        self.crawler = crawler
        self.config = config
        self.client: AsyncMongoClient[dict[str, Any]] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("MONGO_INSERT_ENABLED", True):
            raise NotConfigured
        return cls(crawler, MongoConfig.from_settings(crawler.settings))

    async def open_spider(self) -> None:
        self.client = AsyncMongoClient(self.config.uri, tz_aware=True)
        logger.info(
            "Inserting items into %(uri)s database %(db)s",
            {"uri": redact_uri(self.config.uri), "db": self.config.database},
        )

    async def close_spider(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def process_item(self, item: Any) -> Any:
        assert self.client is not None
        collection = self.client[self.config.database][type(item).__name__.lower()]
        await collection.insert_one(ItemAdapter(item).asdict())
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("mongo_insert/inserted")
        return item
