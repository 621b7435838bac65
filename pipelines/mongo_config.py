"""Settings of the MongoDB pipelines, parsed and checked at start-up.

:class:`MongoConfig`: the connection, shared by every MongoDB component.

``MONGO_URI`` (str)
    Connection string; credentials in it are never logged (:func:`crawler.redact.redact_uri`).
``MONGO_DATABASE`` (str, default ``"crawler"``)
    Database name.

:class:`MongoWriterConfig`: the ``MONGO_WRITER_*`` settings, documented in
:mod:`pipelines.mongo_writer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri
from pymongo.write_concern import WriteConcern

from crawler.redact import redact_uri
from crawler.setting_values import float_setting, int_setting

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings


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


def _keys(value: Any, setting: str) -> tuple[str, ...]:
    fields = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list | tuple) else ()
    if not fields or not all(isinstance(f, str) and f and not f.startswith("$") for f in fields):
        raise ValueError(f"{setting} must be a field name or a list of field names, got {value!r}")
    return fields


@dataclass(frozen=True, slots=True)
class MongoWriterConfig:
    mongo: MongoConfig
    collections: dict[str, str]
    keys: dict[str, tuple[str, ...]]
    default_key: tuple[str, ...]
    dead_letter_collection: str
    batch_size: int
    flush_interval: float
    buffer_size: int
    write_concern: dict[str, Any]
    retry_times: int
    retry_backoff: float
    retry_backoff_max: float
    server_timeout: float
    connect_timeout: float
    socket_timeout: float
    close_timeout: float
    journal_dir: Path
    journal_segment_bytes: int
    journal_max_bytes: int
    version_field: str | None

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        collections = {}
        for key, value in settings.getdict("MONGO_WRITER_COLLECTIONS").items():
            if not isinstance(value, str) or not value or "$" in value:
                raise ValueError(f"MONGO_WRITER_COLLECTIONS[{key!r}] must be a collection name, got {value!r}")
            collections[_type_name(key)] = value
        keys = {_type_name(k): _keys(v, f"MONGO_WRITER_KEYS[{k!r}]")
                for k, v in settings.getdict("MONGO_WRITER_KEYS").items()}
        batch_size = int_setting(settings, "MONGO_WRITER_BATCH_SIZE", 500, minimum=0, exclusive=True)
        buffer_size = int_setting(settings, "MONGO_WRITER_BUFFER_SIZE", 4 * batch_size, minimum=0, exclusive=True)
        if buffer_size < batch_size:
            raise ValueError(f"MONGO_WRITER_BUFFER_SIZE must be >= MONGO_WRITER_BATCH_SIZE ({batch_size}), "
                             f"got {buffer_size!r}")
        write_concern = settings.getdict("MONGO_WRITER_WRITE_CONCERN", {"j": True})
        try:
            WriteConcern(**write_concern)
        except (TypeError, ValueError, PyMongoError) as exc:
            raise ValueError(f"MONGO_WRITER_WRITE_CONCERN {write_concern!r} is invalid: {exc}") from None
        retry_times = settings.get("MONGO_WRITER_RETRY_TIMES", 5)
        if not isinstance(retry_times, int | str) or not str(retry_times).isdigit():
            raise ValueError(f"MONGO_WRITER_RETRY_TIMES must be an integer >= 0, got {retry_times!r}")
        dead = settings.get("MONGO_WRITER_DEAD_LETTER_COLLECTION", "dead_letter")
        if not isinstance(dead, str) or not dead or "$" in dead:
            raise ValueError(f"MONGO_WRITER_DEAD_LETTER_COLLECTION must be a collection name, got {dead!r}")
        journal_dir = settings.get("MONGO_WRITER_JOURNAL_DIR", "mongo-journal")
        if not isinstance(journal_dir, str | Path) or not str(journal_dir):
            raise ValueError(f"MONGO_WRITER_JOURNAL_DIR must be a directory path, got {journal_dir!r}")
        segment_bytes = int_setting(settings, "MONGO_WRITER_JOURNAL_SEGMENT_BYTES", 8 << 20,
                                    minimum=0, exclusive=True)
        max_bytes = settings.get("MONGO_WRITER_JOURNAL_MAX_BYTES", 1 << 30)
        try:
            max_bytes = int(max_bytes)
        except (TypeError, ValueError):
            max_bytes = -1
        if max_bytes != 0 and max_bytes < 2 * segment_bytes:
            raise ValueError(f"MONGO_WRITER_JOURNAL_MAX_BYTES must be 0 (no limit) or at least twice "
                             f"MONGO_WRITER_JOURNAL_SEGMENT_BYTES ({segment_bytes}), got "
                             f"{settings.get('MONGO_WRITER_JOURNAL_MAX_BYTES')!r}")
        version = settings.get("MONGO_WRITER_VERSION_FIELD", "fetched_at")
        if version is not None and not isinstance(version, str):
            raise ValueError(f"MONGO_WRITER_VERSION_FIELD must be a field name or empty, got {version!r}")
        return cls(
            mongo=MongoConfig.from_settings(settings),
            collections=collections,
            keys=keys,
            default_key=_keys(settings.get("MONGO_WRITER_DEFAULT_KEY", "canonical_url"),
                              "MONGO_WRITER_DEFAULT_KEY"),
            dead_letter_collection=dead,
            batch_size=batch_size,
            flush_interval=float_setting(settings, "MONGO_WRITER_FLUSH_INTERVAL", 1.0, minimum=0, exclusive=True),
            buffer_size=buffer_size,
            write_concern=write_concern,
            retry_times=int(retry_times),
            retry_backoff=float_setting(settings, "MONGO_WRITER_RETRY_BACKOFF", 0.5, minimum=0, exclusive=True),
            retry_backoff_max=float_setting(settings, "MONGO_WRITER_RETRY_BACKOFF_MAX", 10.0,
                                            minimum=0, exclusive=True),
            server_timeout=float_setting(settings, "MONGO_WRITER_SERVER_TIMEOUT", 5.0, minimum=0, exclusive=True),
            connect_timeout=float_setting(settings, "MONGO_WRITER_CONNECT_TIMEOUT", 5.0, minimum=0, exclusive=True),
            socket_timeout=float_setting(settings, "MONGO_WRITER_SOCKET_TIMEOUT", 30.0, minimum=0, exclusive=True),
            close_timeout=float_setting(settings, "MONGO_WRITER_CLOSE_TIMEOUT", 60.0, minimum=0, exclusive=True),
            journal_dir=Path(journal_dir),
            journal_segment_bytes=segment_bytes,
            journal_max_bytes=max_bytes,
            version_field=version or None,
        )


def _type_name(key: Any) -> str:
    if isinstance(key, type):
        return f"{key.__module__}.{key.__qualname__}"
    if not isinstance(key, str) or not key:
        raise ValueError(f"item types in MONGO_WRITER_* settings must be classes or names, got {key!r}")
    return key
