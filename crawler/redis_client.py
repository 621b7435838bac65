"""Redis clients of the project: every call bounded by a timeout.

redis-py's clients wait for a reply for ever by default (no socket timeout)
and retry a failed call ten times: one lost reply from a silent Redis blocked
a worker's task for good. Every client the project makes (frontier, byte
budget, CLIs) comes from :class:`RedisClientConfig`, so a call that gets no
answer fails with ``redis.exceptions.TimeoutError`` after at most
``(retries + 1) * REDIS_SOCKET_TIMEOUT`` plus a short backoff, and the caller
treats it like any other Redis error.

Wrong credentials are not an outage: the frontier's first call at start-up
fails the worker with one line naming ``REDIS_URL`` (redacted) and saying to
check the user and password (crawler/frontier/scheduler.py).

Settings: ``REDIS_SOCKET_TIMEOUT`` (float s, default 5), ``REDIS_CONNECT_TIMEOUT``
(float s, default 5), ``REDIS_RETRIES`` (int, default 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from crawler.setting_values import float_setting, int_setting

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings

_RETRY_ON = (RedisConnectionError, RedisTimeoutError)


@dataclass(frozen=True, slots=True)
class RedisClientConfig:
    """How the project's Redis clients connect: URL and the bounds on every call."""

    url: str
    socket_timeout: float
    connect_timeout: float
    retries: int

    @classmethod
    def from_settings(cls, settings: BaseSettings, url: str | None = None) -> Self:
        """``url`` overrides ``REDIS_URL`` (a component with a Redis of its own)."""
        url = url or settings.get("REDIS_URL")
        if not url or not isinstance(url, str):
            raise ValueError(f"REDIS_URL must be a redis:// URL, got {url!r}")
        return cls(
            url=url,
            socket_timeout=float_setting(settings, "REDIS_SOCKET_TIMEOUT", 5.0, minimum=0, exclusive=True),
            connect_timeout=float_setting(settings, "REDIS_CONNECT_TIMEOUT", 5.0, minimum=0, exclusive=True),
            retries=int_setting(settings, "REDIS_RETRIES", 1, minimum=0),
        )

    @property
    def longest_call(self) -> float:
        """An upper bound on how long one call can wait before it fails (seconds)."""
        return (self.retries + 1) * (self.socket_timeout + self.connect_timeout) + self.retries * _BACKOFF_CAP

    def async_client(self) -> redis.asyncio.Redis:
        """A ``redis.asyncio`` client for workers (close it with ``await client.aclose()``)."""
        return redis.asyncio.Redis.from_url(
            self.url, socket_timeout=self.socket_timeout, socket_connect_timeout=self.connect_timeout,
            retry=AsyncRetry(_backoff(), self.retries, _RETRY_ON),
        )

    def sync_client(self) -> redis.Redis:
        """A blocking client, for command-line tools only (never on the reactor thread)."""
        return redis.Redis.from_url(
            self.url, socket_timeout=self.socket_timeout, socket_connect_timeout=self.connect_timeout,
            retry=Retry(_backoff(), self.retries, _RETRY_ON),
        )


_BACKOFF_CAP = 0.5


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=_BACKOFF_CAP, base=0.05)
