"""The MongoDB connection settings shared by the MongoDB pipelines.

``MONGO_URI`` (str)
    Connection string; credentials in it are never logged (:func:`redact_uri`).
``MONGO_DATABASE`` (str, default ``"crawler"``)
    Database name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pymongo.uri_parser import parse_uri

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings


def redact_uri(uri: str) -> str:
    """The URI without its credentials, fit for logs."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    _, at, hosts = rest.rpartition("@")
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
