"""Redis clients for test code that inspects Redis directly: a single server or, with ``--redis-cluster``, a cluster.

The project's own clients come from crawler/redis_client.py (by REDIS_URL);
tests that read or write keys themselves use these, so the same test runs
against both (``make test`` runs the cluster-capable ones twice).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.cluster

from crawler.redis_client import AsyncRedisCluster

CLUSTER_SCHEME = "redis+cluster://"


def _first_node(url: str) -> tuple[str, int]:
    host, _, port = url[len(CLUSTER_SCHEME):].split(",", maxsplit=1)[0].split("/", maxsplit=1)[0].rpartition(":")
    return host, int(port)


def sync_redis(url: str, **kwargs: Any) -> redis.Redis:
    """A blocking client for ``url`` (a cluster client for a ``redis+cluster://`` URL)."""
    if url.startswith(CLUSTER_SCHEME):
        host, port = _first_node(url)
        return redis.cluster.RedisCluster(host=host, port=port, **kwargs)  # type: ignore[return-value]
    return redis.Redis.from_url(url, **kwargs)


def async_redis(url: str, **kwargs: Any) -> redis.asyncio.Redis:
    """An asyncio client for ``url`` (the project's cluster client for a ``redis+cluster://`` URL)."""
    if url.startswith(CLUSTER_SCHEME):
        host, port = _first_node(url)
        kwargs.pop("max_connections", None)  # per node in a cluster client: its default suffices
        return AsyncRedisCluster(host=host, port=port, **kwargs)  # type: ignore[return-value]
    return redis.asyncio.Redis.from_url(url, **kwargs)


def flush(url: str) -> None:
    """Every key of every master gone."""
    client = sync_redis(url)
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
        else:
            client.flushall()
    finally:
        client.close()
