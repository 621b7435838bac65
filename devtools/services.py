"""Start and stop the local servers the demo, tests and benchmarks need.

* Redis: Debian's ``redis-server`` on loopback, no persistence, under a state
  folder. Skipped when ``REDIS_URL`` is set (an external server is used).
* MongoDB stand-in: SecantusDB's ``secantusd-py`` from its own virtual
  environment (``SECANTUSD`` or ``.state/secantus-venv/bin/secantusd-py``).
  Skipped when ``MONGO_URI`` is set.
* The demo site server (:mod:`demosite`), always local.

Each server is a child process in its own session, stopped with SIGTERM (then
SIGKILL) when the context manager exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from demosite.sites import SiteConfig

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE = ROOT / ".state"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see {log}:\n{_tail(log)}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f}s; see {log}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Server:
    """A child process serving on a loopback port."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    url: str
    log: Path

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the server goes away as in a crash."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )


def start_redis(state: Path, port: int | None = None, persistent: bool = False,
                password: str | None = None) -> Server:
    """A redis-server in ``state/redis-<port>``; ``persistent``: with AOF ``everysec`` (docs/frontier.md,
    "Persistence"), as the demo runs it; without persistence for tests and benchmarks (flushed at will);
    with ``password``, clients must authenticate (``requirepass``)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: run `make deps` (apt-get install redis-server)")
    port = port or free_port()
    workdir = state / f"redis-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if persistent else ["--appendonly", "no"]
    cmd = [exe]
    if password is not None:
        # In a file of its own (mode 0600), not on the command line that `ps` shows.
        conf = workdir / "auth.conf"
        conf.touch(mode=0o600)
        conf.write_text(f"requirepass {password}\n")
        cmd.append(str(conf))
    cmd += ["--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence,
            "--dir", str(workdir), "--daemonize", "no", "--protected-mode", "yes"]
    proc = _spawn(cmd, log)
    auth = f":{password}@" if password is not None else ""
    server = Server("redis", proc, port, f"redis://{auth}127.0.0.1:{port}/0", log)

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))

    _wait(ping, proc, "redis-server", log, 20)
    return server


@dataclass
class RedisCluster:
    """A Redis Cluster of ``masters`` redis-servers on loopback (no replicas, no persistence): for tests."""

    nodes: list[Server]

    @property
    def url(self) -> str:
        """The project's cluster URL (crawler/redis_client.py): every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_redis_cluster(state: Path, masters: int = 3) -> RedisCluster:
    """``masters`` ``redis-server --cluster-enabled yes`` joined by ``redis-cli --cluster create``."""
    exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if exe is None or cli is None:
        raise RuntimeError("redis-server/redis-cli not found: run `make deps` (apt-get install redis-server)")
    nodes: list[Server] = []
    try:
        for _ in range(masters):
            port = free_port()
            workdir = state / f"redis-cluster-{port}"
            workdir.mkdir(parents=True, exist_ok=True)
            log = workdir / "redis.log"
            proc = _spawn([exe, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                           "--cluster-port", str(free_port()),  # not port + 10000 (over 65535 for high ports)
                           "--cluster-config-file", str(workdir / "nodes.conf"), "--save", "", "--appendonly", "no",
                           "--dir", str(workdir), "--daemonize", "no"], log)
            nodes.append(Server("redis-cluster", proc, port, f"redis://127.0.0.1:{port}/0", log))
        for node in nodes:
            _wait(_pinger(node.port), node.proc, "redis-server (cluster node)", node.log, 20)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)

        def ready() -> bool:
            for node in nodes:
                out = subprocess.run([cli, "-p", str(node.port), "cluster", "info"], capture_output=True,
                                     text=True, timeout=10, check=False).stdout
                if "cluster_state:ok" not in out:
                    return False
            return True

        _wait(ready, nodes[0].proc, "redis cluster", nodes[0].log, 30)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return RedisCluster(nodes)


def _pinger(port: int) -> Callable[[], bool]:
    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    return ping


def secantusd_path() -> Path:
    return Path(os.environ.get("SECANTUSD", DEFAULT_STATE / "secantus-venv" / "bin" / "secantusd-py"))


def start_secantus(state: Path, port: int | None = None, storage: Path | None = None,
                   user: tuple[str, str] | None = None) -> Server:
    """Start SecantusDB (MongoDB wire protocol) with persistent storage under ``state``.

    With ``user`` (name, password): that user is created (role ``root``) and the
    server restarted with ``--auth`` (SCRAM-SHA-256), as SecantusDB provisions users.
    """
    exe = secantusd_path()
    if not exe.exists():
        raise RuntimeError(f"{exe} not found: run `make deps` (SecantusDB in its own venv) or set MONGO_URI")
    port = port or free_port()
    storage = storage or state / f"secantus-{port}"
    storage.mkdir(parents=True, exist_ok=True)
    log = storage.parent / f"secantus-{port}.log"
    cmd = [str(exe), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage),
           "--log-level", "WARNING"]
    url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    server = Server("secantus", _spawn(cmd, log), port, url, log)
    _wait(lambda: _mongo_ping(url), server.proc, "secantusd-py", log, 60)
    if user is None:
        return server
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]]
    with MongoClient(url, serverSelectionTimeoutMS=5000) as client:
        client.admin.command("createUser", user[0], pwd=user[1], roles=["root"])
    server.stop()
    auth_url = f"mongodb://{user[0]}:{user[1]}@127.0.0.1:{port}/?directConnection=true&authSource=admin"
    server = Server("secantus", _spawn([*cmd, "--auth"], log), port, auth_url, log)
    _wait(lambda: _mongo_ping(auth_url), server.proc, "secantusd-py --auth", log, 60)
    return server


def _mongo_ping(url: str) -> bool:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]]
    with MongoClient(url, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as client:
        client.admin.command("ping")
    return True


def start_demosite(
    state: Path,
    sites: tuple[SiteConfig, ...] | None = None,
    port: int | None = None,
    binds: tuple[str, ...] = ("127.0.0.1", "::1"),
    netns: str | None = None,
) -> Server:
    from demosite.sites import sites_to_json

    port = port or free_port()
    state.mkdir(parents=True, exist_ok=True)
    log = state / f"demosite-{port}.log"
    ready = Path(tempfile.mkstemp(prefix="demosite-ready-", dir=state)[1])
    ready.unlink()
    cmd = [sys.executable, "-m", "demosite", "--port", str(port), "--ready-file", str(ready)]
    for b in binds:
        cmd += ["--bind", b]
    if sites is not None:
        cmd += ["--sites-json", sites_to_json(sites)]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = _spawn(cmd, log, env)
    _wait(ready.exists, proc, "demo site", log, 20)
    ready.unlink()
    return Server("demosite", proc, port, f"http://127.0.0.1:{port}", log)


@dataclass
class LocalServices:
    """Redis and MongoDB endpoints: external when the environment names them, else local."""

    state: Path = DEFAULT_STATE
    redis_url: str = ""
    mongo_uri: str = ""
    servers: list[Server] = field(default_factory=list)

    def start(self, need_mongo: bool = True) -> LocalServices:
        self.redis_url = os.environ.get("REDIS_URL", "")
        if not self.redis_url:
            server = start_redis(self.state, persistent=True)  # the frontier is state: AOF everysec
            self.servers.append(server)
            self.redis_url = server.url
        if need_mongo:
            self.mongo_uri = os.environ.get("MONGO_URI", "")
            if not self.mongo_uri:
                server = start_secantus(self.state)
                self.servers.append(server)
                self.mongo_uri = server.url
        return self

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()


@contextlib.contextmanager
def local_services(state: Path = DEFAULT_STATE, need_mongo: bool = True) -> Iterator[LocalServices]:
    services = LocalServices(state=state)
    try:
        yield services.start(need_mongo=need_mongo)
    finally:
        services.stop()
