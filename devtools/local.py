"""``python -m devtools.local up|down|status``: Redis and the MongoDB stand-in on fixed ports, kept running.

For a crawl of one's own after ``make demo`` (whose servers run on random
ports and stop with it):

* ``up`` starts ``redis-server`` on 127.0.0.1:6379 with an append-only file
  (fsync every second: a restart keeps the frontier, seen set and budgets) and
  SecantusDB on 127.0.0.1:27017, both under ``.state/local/``, and returns;
  they keep running. Those are the project's default ``REDIS_URL`` and
  ``MONGO_URI`` (settings/env.py), so ``scrapy crawl`` and ``python -m crawler``
  use them without any variable. It prints the URLs either way.
* ``down`` stops them (SIGTERM, then SIGKILL after 20 s); their data stays.
* ``status`` says whether each is running, and where.

``--redis-port`` / ``--mongo-port`` / ``--state`` choose other ports and folders.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.services import DEFAULT_STATE, secantusd_path

REDIS_PORT = 6379  # settings/env.py: REDIS_URL default
MONGO_PORT = 27017  # settings/env.py: MONGO_URI default
_STOP_TIMEOUT = 20.0
_START_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Service:
    """One local server: how to start it and where its pid, data and log live."""

    name: str
    port: int
    folder: Path
    marker: str  # a word of its command line, to recognise its process

    @property
    def pidfile(self) -> Path:
        return self.folder / "pid"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def url(self) -> str:
        if self.name == "redis":
            return f"redis://127.0.0.1:{self.port}/0"
        return f"mongodb://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.name == "redis":
            exe = shutil.which("redis-server")
            if exe is None:
                raise SystemExit("redis-server not found: run `make deps`")
            return [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                    "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "yes"]
        exe = secantusd_path()
        if not exe.exists():
            raise SystemExit(f"{exe} not found: run `make deps`")
        return [str(exe), "--host", "127.0.0.1", "--port", str(self.port),
                "--storage-path", str(self.folder / "data"), "--log-level", "WARNING"]

    def pid(self) -> int | None:
        """The pid of our running server, or None (a stale pid file or another program's process is not ours)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if self.marker.encode() in cmdline else None


def services(state: Path, redis_port: int, mongo_port: int) -> list[Service]:
    return [Service("redis", redis_port, state / "redis", "redis-server"),
            Service("mongodb", mongo_port, state / "mongodb", "secantusd")]


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _start(service: Service) -> None:
    service.folder.mkdir(parents=True, exist_ok=True)
    # setsid --fork: the server leaves this process' session and outlives it; the shell
    # writes its own pid, which exec hands to the server.
    script = 'echo $$ > "$0"; exec "$@"'
    with open(service.log, "ab") as log:
        subprocess.run(["setsid", "--fork", "sh", "-c", script, str(service.pidfile), *service.command()],
                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True, timeout=30)
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if _listening(service.port) and service.pid() is not None:
            return
        time.sleep(0.1)
    raise SystemExit(f"{service.name} did not start listening on port {service.port}; see {service.log}")


def _stop(service: Service) -> bool:
    pid = service.pid()
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT
    while service.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if service.pid() is not None:
        os.kill(pid, signal.SIGKILL)
        while service.pid() is not None:
            time.sleep(0.1)
    service.pidfile.unlink(missing_ok=True)
    return True


def up(items: list[Service]) -> int:
    for service in items:
        if service.pid() is not None:
            print(f"{service.name:8} already running: {service.url()}")
            continue
        if _listening(service.port):
            print(f"{service.name}: port {service.port} is taken by another program; stop it, or choose "
                  f"another port (--{'redis' if service.name == 'redis' else 'mongo'}-port) and set "
                  f"{'REDIS_URL' if service.name == 'redis' else 'MONGO_URI'}", file=sys.stderr)
            return 1
        _start(service)
        print(f"{service.name:8} {service.url()}  (data and log in {service.folder})")
    redis_url, mongo_uri = items[0].url(), items[1].url()
    defaults = items[0].port == REDIS_PORT and items[1].port == MONGO_PORT
    print("\nThese are the project's defaults: scrapy crawl and python -m crawler use them as they are."
          if defaults else f"\nexport REDIS_URL={redis_url} MONGO_URI={mongo_uri}")
    print("Next: README.md, 'Writing a spider'. Stop them with: .venv/bin/python -m devtools.local down")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.local", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE / "local")
    parser.add_argument("--redis-port", type=int, default=REDIS_PORT)
    parser.add_argument("--mongo-port", type=int, default=MONGO_PORT)
    args = parser.parse_args(argv)
    items = services(args.state.resolve(), args.redis_port, args.mongo_port)
    if args.command == "up":
        return up(items)
    for service in items:
        if args.command == "down":
            print(f"{service.name:8} {'stopped' if _stop(service) else 'was not running'}")
        else:
            pid = service.pid()
            print(f"{service.name:8} " + (f"running, pid {pid}: {service.url()}" if pid else "not running"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
