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

``REDIS_URL`` picks the kind of Redis (docs/settings.md):

* ``redis://[user:password@]host:port/db``, ``rediss://...``, ``unix://...``: one server.
* ``redis+cluster://[user:password@]host:port[,host:port...]``
  (``rediss+cluster://`` for TLS): a Redis Cluster, the nodes given as seeds.
  Every script of the project touches the keys of one hash slot (each key
  name carries the hash tag of what it belongs to), so the client routes each
  call by its first key.
* ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``:
  the master of ``service`` as the Sentinels say, followed through failovers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from crawler.setting_values import float_setting, int_setting

if TYPE_CHECKING:
    from typing import Any, Self

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
        if not url or not isinstance(url, str) or url.partition("://")[0] not in _SCHEMES or "://" not in url:
            raise ValueError(f"REDIS_URL must be a URL with a scheme of {', '.join(_SCHEMES)}, got "
                             f"{_redacted(url)!r}")
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
        """A ``redis.asyncio`` client for workers (close it with ``await client.aclose()``).

        For a cluster URL it is a ``RedisCluster``, typed as ``Redis``: the same
        command methods, each call routed to the node that holds its keys.
        """
        timeouts: dict[str, Any] = {"socket_timeout": self.socket_timeout,
                                    "socket_connect_timeout": self.connect_timeout}
        kind, nodes, auth, path = _split(self.url)
        retry = AsyncRetry(_backoff(), self.retries, _RETRY_ON)
        if kind == "cluster":
            cluster = AsyncRedisCluster(
                startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in nodes], retry=retry,
                ssl=self.url.startswith("rediss"), **auth, **timeouts)
            return cast("redis.asyncio.Redis", cluster)
        if kind == "sentinel":
            service, db = _service(path)
            # redis-py's Sentinel classes are not annotated: hence the ignores.
            sentinel = redis.asyncio.sentinel.Sentinel(nodes, sentinel_kwargs=timeouts, **timeouts)  # type: ignore[no-untyped-call]
            master = sentinel.master_for(service, redis_class=_AsyncSentinelMaster, db=db, retry=retry, **auth)
            master.sentinels = tuple(sentinel.sentinels)
            return cast("redis.asyncio.Redis", master)
        return redis.asyncio.Redis.from_url(self.url, retry=retry, **timeouts)

    def sync_client(self) -> redis.Redis:
        """A blocking client, for command-line tools only (never on the reactor thread)."""
        timeouts: dict[str, Any] = {"socket_timeout": self.socket_timeout,
                                    "socket_connect_timeout": self.connect_timeout}
        kind, nodes, auth, path = _split(self.url)
        retry = Retry(_backoff(), self.retries, _RETRY_ON)
        if kind == "cluster":
            cluster = redis.cluster.RedisCluster(
                startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in nodes],  # type: ignore[no-untyped-call]
                retry=retry,
                ssl=self.url.startswith("rediss"), **auth, **timeouts)
            return cast("redis.Redis", cluster)
        if kind == "sentinel":
            service, db = _service(path)
            sentinel = redis.sentinel.Sentinel(nodes, sentinel_kwargs=timeouts, **timeouts)  # type: ignore[no-untyped-call]
            master = sentinel.master_for(service, redis_class=_SentinelMaster, db=db, retry=retry, **auth)  # type: ignore[no-untyped-call]
            master.sentinels = tuple(sentinel.sentinels)
            return cast("redis.Redis", master)
        return redis.Redis.from_url(self.url, retry=retry, **timeouts)


class AsyncRedisCluster(redis.asyncio.cluster.RedisCluster):
    """A cluster client that learns the cluster's layout before its first command.

    redis-py 8.1's ``RedisCluster`` resolves a command's routing policy before
    it initializes itself, so the first commands sent at once through a fresh
    client open connections that initialization then closes under them: about
    one call in ten among 50 concurrent first calls failed ("Connection closed
    by server", "Error while writing to socket", or an ``AttributeError``
    writing to a connection whose writer was gone, which no Redis error
    handler catches). ``initialize`` is idempotent and locked: after the first
    call it returns at once. tests/test_redis_cluster.py
    ``test_concurrent_first_calls_through_a_fresh_cluster_client`` shows it.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.initialize()
        return await super().execute_command(*args, **kwargs)


class _AsyncSentinelMaster(redis.asyncio.Redis):
    """The master behind Sentinels; closing it also closes the connections to the Sentinels."""

    sentinels: tuple[redis.asyncio.Redis, ...] = ()

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.sentinels:
            await sentinel.aclose()


class _SentinelMaster(redis.Redis):
    sentinels: tuple[redis.Redis, ...] = ()

    def close(self) -> None:
        super().close()
        for sentinel in self.sentinels:
            sentinel.close()


_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")


def _redacted(url: object) -> object:
    if isinstance(url, str) and "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


def _split(url: str) -> tuple[str, list[tuple[str, int]], dict[str, Any], str]:
    """(kind, [(host, port)], username/password kwargs, path) of a cluster or sentinel URL; kind "single" else."""
    scheme, _, rest = url.partition("://")
    if "+" not in scheme:
        return "single", [], {}, ""
    kind = scheme.partition("+")[2]
    hosts, _, path = rest.partition("/")
    auth: dict[str, Any] = {}
    if "@" in hosts:
        userinfo, _, hosts = hosts.rpartition("@")
        user, _, password = userinfo.partition(":")
        auth = {k: unquote(v) for k, v in (("username", user), ("password", password)) if v}
    nodes = []
    for hostport in hosts.split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"REDIS_URL: {hostport!r} is not host:port in {_redacted(url)!r}")
        nodes.append((host.strip("[]"), int(port)))
    return kind, nodes, auth, path


def _service(path: str) -> tuple[str, int]:
    """(service name, db) of a sentinel URL's path ``service[/db]``."""
    service, _, db = path.partition("/")
    if not service or (db and not db.isdigit()):
        raise ValueError(f"REDIS_URL: a redis+sentinel:// URL ends with /service[/db], got /{path!r}")
    return service, int(db or 0)


_BACKOFF_CAP = 0.5


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=_BACKOFF_CAP, base=0.05)
