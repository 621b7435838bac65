"""Instructions redis-server executes per crawled request, counted by valgrind's callgrind.

``bench scale`` reads the server's CPU time, which moves with the machine's
speed of the moment (up to ±30% here between runs). An instruction count does
not: this benchmark measures a change to the frontier's scripts exactly, on any
machine, at the price of a ~50x slower server. It needs valgrind
(``apt-get install valgrind``; not part of ``make deps``).

It runs redis-server under ``valgrind --tool=callgrind``, loads ``--queued``
requests over ``--websites`` (``bench scale``'s records), runs ``--warmup``
crawled requests of ``bench scale``'s steady state (:func:`bench.scale.crawl`:
leased pops of 32, pushes of 200), zeroes the counters, runs ``--requests``
more and dumps them. Then the floor of the design, on the same data shape:
scripts that only pop one request per website (``ZPOPMIN``, 32 websites a
call) and add one to its queue (``ZADD``, 200 a call), nothing else.

Figures: ``instructions_per_request`` and ``instructions_per_request_floor``
(thousands), and their ratio.

Usage: ``python -m bench instructions [--websites N] [--queued N] [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from scrapy.settings import Settings

from bench.harness import emit, table
from bench.scale import POP_BATCH, PUSH_BATCH, crawl, entries, load
from crawler.frontier.seen import SeenConfig
from crawler.frontier.store import FrontierStore
from devtools.services import free_port

FLOOR_POP = """local out = {}
for i = 1, #KEYS do
  local got = redis.call('ZPOPMIN', KEYS[i], '1')
  out[#out + 1] = got[1]
  out[#out + 1] = got[2]
end
return out"""
FLOOR_PUSH = """for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
end
return #KEYS"""


class Callgrind:
    """redis-server under callgrind on a free loopback port; counters zeroed and dumped on demand."""

    def __init__(self, workdir: Path) -> None:
        valgrind, server = shutil.which("valgrind"), shutil.which("redis-server")
        if valgrind is None or server is None:
            raise SystemExit("bench instructions needs valgrind and redis-server: apt-get install valgrind")
        self.workdir, self.port = workdir, free_port()
        self.log = (workdir / "valgrind.log").open("w")
        self.proc = subprocess.Popen(
            [valgrind, "--tool=callgrind", f"--callgrind-out-file={workdir}/callgrind.out.%p", server,
             "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 120  # valgrind starts a server slowly
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"redis-server under valgrind did not start: {workdir}/valgrind.log") from None
                time.sleep(0.5)

    def _control(self, option: str) -> None:
        subprocess.run(["callgrind_control", option, str(self.proc.pid)], check=True,
                       capture_output=True, timeout=120)

    def zero(self) -> None:
        self._control("-z")

    def dump(self) -> int:
        """Instructions executed since the last zero (the newest dump's total)."""
        before = set(self.workdir.glob("callgrind.out.*.*"))
        self._control("-d")
        new = sorted(set(self.workdir.glob("callgrind.out.*.*")) - before, key=lambda p: p.stat().st_mtime)
        found = re.search(r"^summary: (\d+)", new[-1].read_text(), re.MULTILINE)
        if found is None:
            raise SystemExit(f"no summary in {new[-1]}")
        return int(found.group(1))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.log.close()


async def frontier(redis: Redis, cg: Callgrind, args: argparse.Namespace) -> float:
    spec = SeenConfig.from_settings(Settings({"FRONTIER_DEDUPE": "exact"})).spec
    store = FrontierStore(redis, "{bench}", spec)
    await load(store, args.websites, args.queued)
    await crawl(store, args.warmup)
    cg.zero()
    n = len(await crawl(store, args.requests))
    return cg.dump() / n


async def floor(redis: Redis, cg: Callgrind, args: argparse.Namespace) -> float:
    pop, push = redis.register_script(FLOOR_POP), redis.register_script(FLOOR_PUSH)
    queues = [f"{{floor}}:q:shop-{w}.test" for w in range(args.websites)]
    for w, key in enumerate(queues):
        await redis.zadd(key, {e.payload + e.fingerprint.encode(): 0 for e in entries(f"shop-{w}.test", 0, 20)})
    fresh: list[Any] = []
    cg.zero()
    for step in range(args.requests // POP_BATCH):
        keys = [queues[(step * POP_BATCH + j) % len(queues)] for j in range(POP_BATCH)]
        await pop(keys=keys)
        fresh += [(key, e.payload + e.fingerprint.encode()) for key in keys
                  for e in entries(key.rsplit(":", 1)[1], step, 1)]
        if len(fresh) >= PUSH_BATCH:
            await push(keys=[k for k, _ in fresh], args=[v for _, m in fresh for v in (0, m)])
            fresh = []
    if fresh:
        await push(keys=[k for k, _ in fresh], args=[v for _, m in fresh for v in (0, m)])
    return cg.dump() / (args.requests // POP_BATCH * POP_BATCH)


async def run(cg: Callgrind, args: argparse.Namespace) -> dict[str, Any]:
    redis = Redis(port=cg.port, socket_timeout=600)
    try:
        ours = await frontier(redis, cg, args)
        await redis.flushall()
        bare = await floor(redis, cg, args)
    finally:
        await redis.aclose()
    return {"instructions_per_request": round(ours / 1000, 1), "instructions_per_request_floor": round(bare / 1000, 1),
            "ratio_to_floor": round(ours / bare, 2), "websites": args.websites, "queued": args.queued,
            "requests": args.requests}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--websites", type=int, default=1000)
    parser.add_argument("--queued", type=int, default=20_000, help="requests loaded (20 per website)")
    parser.add_argument("--warmup", type=int, default=640, help="crawled requests before counting")
    parser.add_argument("--requests", type=int, default=3200, help="crawled requests counted")
    args = parser.parse_args(argv)
    cg = Callgrind(Path(tempfile.mkdtemp(prefix="bench-instructions-")))
    try:
        result = asyncio.run(run(cg, args))
    finally:
        cg.stop()
    print(table([[k, v] for k, v in result.items()], ["figure", "value"]))
    emit(result)
    return 0
