"""The local Redis the project starts for people (make demo, local_services) keeps the frontier: AOF everysec."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from devtools.services import local_services

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def test_local_redis_runs_with_aof_everysec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with local_services(tmp_path, need_mongo=False) as services, redis.Redis.from_url(services.redis_url) as r:
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
