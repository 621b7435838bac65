"""``python -m devtools.local up|down|status``: servers that outlive the command, keep their data, and stop."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import redis
from pymongo import MongoClient

from devtools.services import ROOT, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def local(state: Path, ports: tuple[int, int], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devtools.local", command, "--state", str(state),
                           "--redis-port", str(ports[0]), "--mongo-port", str(ports[1])], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def ports(tmp_path: Path) -> Iterator[tuple[int, int]]:
    chosen = (free_port(), free_port())
    yield chosen
    local(tmp_path / "local", chosen, "down")  # whatever the test left running


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_up_keeps_running_down_stops_and_data_survives(tmp_path: Path, ports: tuple[int, int]) -> None:
    state = tmp_path / "local"
    out = local(state, ports, "up")
    assert out.returncode == 0, out.stderr
    redis_url, mongo_uri = f"redis://127.0.0.1:{ports[0]}/0", f"mongodb://127.0.0.1:{ports[1]}"
    assert redis_url in out.stdout and mongo_uri in out.stdout
    assert f"export REDIS_URL={redis_url} MONGO_URI={mongo_uri}" in out.stdout
    # The command has returned: the servers run on their own.
    with redis.Redis.from_url(redis_url, socket_timeout=10) as r:
        r.set("frontier-survives", "yes")
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000) as client:
        client.db.items.insert_one({"_id": 1, "title": "kept"})
    assert "running, pid" in local(state, ports, "status").stdout
    assert local(state, ports, "up").stdout.count("already running") == 2

    out = local(state, ports, "down")
    assert out.returncode == 0 and out.stdout.count("stopped") == 2
    assert _refused(ports[0]) and _refused(ports[1])
    assert local(state, ports, "status").stdout.count("not running") == 2

    assert local(state, ports, "up").returncode == 0
    with redis.Redis.from_url(redis_url, socket_timeout=10) as r:
        assert r.get("frontier-survives") == b"yes"  # the append-only file
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000) as client:
        assert client.db.items.find_one({"_id": 1}) == {"_id": 1, "title": "kept"}


def test_a_port_taken_by_another_program(tmp_path: Path, ports: tuple[int, int]) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", ports[0]))
        other.listen()
        out = local(tmp_path / "local", ports, "up")
    assert out.returncode == 1
    assert f"redis: port {ports[0]} is taken by another program" in out.stderr


def test_the_demo_summary_says_where_metrics_and_status_are(tmp_path: Path) -> None:
    from devtools.demo import next_steps

    log = tmp_path / "shop_a-1.log"
    log.write_text("2026-01-01 [crawler.extensions.metrics] INFO: Metrics endpoint: http://127.0.0.1:40001/metrics\n")
    text = next_steps([("shop_a#1", log), ("news#1", tmp_path / "missing.log")])
    assert "  shop_a#1 http://127.0.0.1:40001/metrics" in text and "news#1" not in text
    assert ".venv/bin/python -m crawler status" in text and "python -m devtools.local up" in text
    assert "scrapy genspider -t site example example.com" in text
