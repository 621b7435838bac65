"""Private network namespaces for IPv6-bind tests and benchmarks (Linux, root).

A :class:`NetNS` is a fresh namespace with only ``lo``; ``routed`` prefixes get
``ip -6 route add local PREFIX dev lo`` and ``nonlocal_bind`` sets
``net.ipv6.ip_nonlocal_bind=1`` inside it, exactly what a crawler host needs.
Nothing leaves the namespace: its only interface is its own loopback.

Names are ``crawlertest-<pid>-<random>``; :func:`remove_stale` deletes those
whose creating process is gone (runs that were killed before cleaning up).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devtools.services import Server, _spawn, _wait

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

_PREFIX = "crawlertest-"


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if sys.platform != "linux":
        return f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "the `ip` command is missing: apt-get install iproute2 (make deps does)"
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    probe = f"{_PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return None


def remove_stale() -> None:
    """Delete namespaces left by test runs whose process no longer exists."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(_PREFIX):
            continue
        parts = name[len(_PREFIX):].split("-")
        pid = next((int(p) for p in parts if p.isdigit()), None)
        if pid is None:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        except PermissionError:
            pass


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


@dataclass
class NetNS:
    """A network namespace of our own, deleted by :meth:`delete`."""

    name: str
    servers: list[Server] = field(default_factory=list)

    @classmethod
    def create(cls, routed: tuple[str, ...] = (), nonlocal_bind: bool = True, tag: str = "") -> NetNS:
        name = f"{_PREFIX}{os.getpid()}-{tag + '-' if tag else ''}{uuid.uuid4().hex[:6]}"
        _ip("netns", "add", name)
        ns = cls(name)
        try:
            _ip("-n", name, "link", "set", "lo", "up")
            for prefix in routed:
                _ip("-n", name, "-6", "route", "add", "local", prefix, "dev", "lo")
            if nonlocal_bind:
                ns.run(["sysctl", "-q", "-w", "net.ipv6.ip_nonlocal_bind=1"])
        except BaseException:
            ns.delete()
            raise
        return ns

    def command(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: list[str], timeout: float = 60) -> str:
        done = subprocess.run(self.command(cmd), capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} in {self.name} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def http_get(self, url: str, timeout: float = 30) -> bytes:
        """GET ``url`` from inside the namespace (the test process lives outside it)."""
        code = ("import sys, urllib.request; "
                "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=20).read())")
        done = subprocess.run(self.command([sys.executable, "-c", code, url]), capture_output=True,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"GET {url} in {self.name} failed: {done.stderr.decode(errors='replace')[-500:]}")
        return done.stdout

    def start_redis(self, state: Path, port: int = 6379) -> Server:
        """A private redis-server on 127.0.0.1 inside the namespace."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: run `make deps` (apt-get install redis-server)")
        workdir = state / f"redis-{self.name}"
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "redis.log"
        proc = _spawn(self.command([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"]), log)
        server = Server("redis", proc, port, f"redis://127.0.0.1:{port}/0", log)
        self.servers.append(server)

        def ping() -> bool:
            return self.run(["redis-cli", "-p", str(port), "ping"], timeout=5).strip() == "PONG"

        _wait(ping, proc, f"redis-server in {self.name}", log, 20)
        return server

    def redis(self, port: int, *args: str) -> str:
        return self.run(["redis-cli", "-p", str(port), *args], timeout=10)

    def delete(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()
        # A namespace goes once its last process has exited; retry briefly.
        for _ in range(50):
            done = subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)
            if done.returncode == 0 or self.name not in subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True, check=False
            ).stdout:
                return
            time.sleep(0.1)


@contextlib.contextmanager
def netns(routed: tuple[str, ...] = (), nonlocal_bind: bool = True, tag: str = "") -> Iterator[NetNS]:
    ns = NetNS.create(routed, nonlocal_bind, tag)
    try:
        yield ns
    finally:
        ns.delete()
