"""Shared pieces of the benchmarks: servers, crawl runs, medians, output.

A crawl's speed is taken from the demo server's own request log: pages served
to that run divided by the time from its first to its last request. Process
start-up and the idle wait before a worker closes are thereby left out, for
every contender alike.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demosite.sites import SiteConfig
from devtools.services import DEFAULT_STATE, ROOT, Server, start_demosite, start_redis, start_secantus

if TYPE_CHECKING:
    from collections.abc import Callable

SCRAPY = str(Path(sys.executable).parent / "scrapy")
_CORE_SWAP_SECONDS = 0.5


def bench_site(items: int, page_bytes: int = 2000) -> SiteConfig:
    """A shop of ~2 KB pages with 4 links each and no failures: the shape scrapy-redis is usually measured on."""
    return SiteConfig(host="shop-a.test", kind="shop", items=items, page_bytes=page_bytes, related=3,
                      errors=0, redirect_every=10**9)


@dataclass
class RunResult:
    label: str
    pages: int
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)
    returncode: int = 0
    measured: tuple[int, float] | None = None  # (pages, seconds) the speed is taken from, if not the whole run

    @property
    def pages_per_s(self) -> float:
        pages, seconds = self.measured or (self.pages, self.seconds)
        return pages / seconds if seconds > 0 else 0.0


@dataclass
class BenchServers:
    """Private Redis (and optionally SecantusDB) plus a demo site, for one benchmark run."""

    site: SiteConfig
    need_mongo: bool = False
    state: Path = field(default_factory=lambda: DEFAULT_STATE / "bench")
    redis: Server | None = None
    mongo: Server | None = None
    demo: Server | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))

    def __enter__(self) -> BenchServers:
        self.state.mkdir(parents=True, exist_ok=True)
        self.redis = start_redis(self.state)
        if self.need_mongo:
            self.mongo = start_secantus(self.state)
        self.demo = start_demosite(self.state, (self.site,))
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self.demo, self.mongo, self.redis):
            if server is not None:
                server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def start_url(self) -> str:
        assert self.demo is not None
        return f"http://{self.site.host}:{self.demo.port}/"

    def log(self, since: int = 0) -> list[dict[str, Any]]:
        assert self.demo is not None
        with urllib.request.urlopen(f"{self.demo.url}/_demo/log?since={since}", timeout=30) as r:
            return [json.loads(line) for line in r.read().splitlines() if line]

    def mark(self) -> int:
        assert self.demo is not None
        with urllib.request.urlopen(f"{self.demo.url}/_demo/health", timeout=30) as r:
            return int(json.loads(r.read())["requests"])

    def flush_redis(self) -> None:
        import redis

        assert self.redis is not None
        with redis.Redis.from_url(self.redis.url) as r:
            r.flushall()

    def env(self, **extra: str) -> dict[str, str]:
        assert self.redis is not None
        env = {**os.environ, "REDIS_URL": self.redis.url, "RESOLVE_HOSTS": "*.test:127.0.0.1",
               "PYTHONPATH": str(ROOT)}
        if self.mongo is not None:
            env["MONGO_URI"] = self.mongo.url
        env.update(extra)
        return env

    def crawl(self, label: str, cmd: list[str], env: dict[str, str], cwd: Path = ROOT,
              timeout: float = 600) -> RunResult:
        """Run one crawl command to completion; measure it from the server's log."""
        stats_path = self.workdir / f"{label}-{time.monotonic_ns()}.json"
        log_path = stats_path.with_suffix(".log")
        mark = self.mark()
        full = [*cmd, "-s", f"STATS_FILE_PATH={stats_path}", "-s", f"LOG_FILE={log_path}"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(full, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=timeout, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        records = self.log(mark)
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        # User + system CPU seconds of the crawl process (start-up included):
        # it is the only child reaped meanwhile.
        stats["_cpu"] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        if proc.returncode != 0 or not records:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{proc.stderr.decode()[-2000:]}\n{tail}")
        seconds = records[-1]["t"] - records[0]["t"]
        return RunResult(label, len(records), seconds, stats, proc.returncode)


def vanilla_cmd(start_url: str, settings: dict[str, Any] | None = None) -> list[str]:
    """``scrapy runspider`` of the plain-Scrapy shop spider under bench.vanilla_settings."""
    cmd = [SCRAPY, "runspider", str(ROOT / "bench" / "vanilla_spider.py"), "-a", f"start_url={start_url}"]
    for key, value in (settings or {}).items():
        cmd += ["-s", f"{key}={value}"]
    return cmd


def vanilla_env(servers: BenchServers) -> dict[str, str]:
    return servers.env(SCRAPY_SETTINGS_MODULE="bench.vanilla_settings")


def stack_cmd(spider: str = "shop_a", settings: dict[str, Any] | None = None) -> list[str]:
    cmd = [SCRAPY, "crawl", spider, "-s", "FRONTIER_IDLE_CLOSE_SECONDS=1"]
    for key, value in (settings or {}).items():
        cmd += ["-s", f"{key}={value}"]
    return cmd


def seed(servers: BenchServers, spider: str = "shop_a") -> None:
    import redis

    assert servers.redis is not None
    with redis.Redis.from_url(servers.redis.url) as r:
        r.lpush(f"{spider}:start_urls", json.dumps({"url": servers.start_url}))


@dataclass
class Arm:
    """One crawl of a side-by-side run: its own servers, command and environment; ``seed_key`` gets the
    start URL first (None: the command has its own)."""

    label: str
    servers: BenchServers
    cmd: list[str]
    env: dict[str, str]
    seed_key: str | None = "shop_a:start_urls"


def stack_arm(label: str, servers: BenchServers, settings: dict[str, Any]) -> Arm:
    """``scrapy crawl shop_a`` of this project with ``settings``, against ``servers``."""
    return Arm(label, servers, stack_cmd("shop_a", settings), servers.env())


def _signal(pid: int, sig: signal.Signals) -> None:
    """``sig`` to a child not reaped yet (a zombie at worst). Not ``Popen.send_signal``: it polls first, and
    a poll that reaps the child leaves ``os.wait4`` below without its CPU time (ChildProcessError)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float, stop_at_first: bool,
              tick: Callable[[], None] | None = None, stopped: set[int] | None = None) -> dict[int, tuple[int, float]]:
    """Each process's exit code and user + system CPU seconds, by pid (SIGKILL all past ``timeout``);
    ``tick`` is called every 50 ms meanwhile; ``stopped`` gets the pids sent SIGTERM by ``stop_at_first``."""
    usage: dict[int, tuple[int, float]] = {}
    deadline = time.monotonic() + timeout
    while len(usage) < len(procs):
        if tick is not None:
            tick()
        for proc in procs:
            if proc.pid in usage:
                continue
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                usage[pid] = (os.waitstatus_to_exitcode(status), rusage.ru_utime + rusage.ru_stime)
                proc.returncode = usage[pid][0]  # reaped here: Popen must not wait for it again
                if stop_at_first:
                    for other in procs:
                        if other.pid not in usage:
                            _signal(other.pid, signal.SIGTERM)
                            if stopped is not None:
                                stopped.add(other.pid)
        if time.monotonic() > deadline:
            for proc in procs:
                if proc.pid not in usage:
                    _signal(proc.pid, signal.SIGKILL)
            raise RuntimeError("a side-by-side crawl did not finish in time")
        time.sleep(0.05)
    return usage


def pin(pid: int, cores: set[int]) -> None:
    """Run every thread of process ``pid`` on ``cores`` only."""
    with contextlib.suppress(FileNotFoundError):  # the process has ended
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), cores)


def side_by_side(arms: list[Arm], timeout: float = 600, overlap: bool = False,
                 stop_at_first: bool = False, one_core_each: bool = False) -> list[RunResult]:
    """Start one crawl per arm at once; each measured from its own server's log, CPU from ``wait4``.

    ``overlap``: each arm's pages/s counts only the pages its server logged while every arm was crawling
    (from the last first request to the first last request), so an arm that finishes first does not leave
    the other a quieter machine for its tail. Pages and CPU per page still cover the whole crawl.
    ``stop_at_first``: when one arm's crawl ends, the others get SIGTERM (a graceful stop) rather than
    finishing alone; for a pair whose arms differ much in speed, with ``overlap``.
    ``one_core_each``: each arm's worker and servers run on one CPU core only, a core per arm (as many arms
    as cores), so an arm that waits (on Redis, say) leaves its core idle rather than lending it to the other
    arm; the arms trade cores every ``_CORE_SWAP_SECONDS``, as the cores' speeds differ (they are virtual
    CPUs here: the same worker read 3.9 and 4.3 ms of CPU per page side by side with itself)."""
    cores = sorted(os.sched_getaffinity(0))
    if one_core_each and len(arms) > len(cores):
        raise ValueError(f"{len(arms)} arms, {len(cores)} cores: one core each is not possible")
    started = []
    for arm in arms:
        arm.servers.flush_redis()
        if arm.seed_key is not None:
            seed(arm.servers, arm.seed_key.removesuffix(":start_urls"))
        stats_path = arm.servers.workdir / f"{arm.label}-{time.monotonic_ns()}.json"
        cmd = [*arm.cmd, "-s", f"STATS_FILE_PATH={stats_path}", "-s", f"LOG_FILE={stats_path.with_suffix('.log')}"]
        started.append((arm, stats_path, arm.servers.mark(), cmd))
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=arm.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for arm, _, _, cmd in started]
    # Pinned within milliseconds of the start, long before the first request; the servers are set either
    # way, as an earlier run may have pinned them.
    groups = [[proc, *(s.proc for s in (arm.servers.redis, arm.servers.mongo, arm.servers.demo) if s is not None)]
              for arm, proc in zip(arms, procs, strict=True)]
    swaps = itertools.count()
    next_swap = time.monotonic()

    def place() -> None:
        nonlocal next_swap
        if time.monotonic() < next_swap:
            return
        shift = next(swaps)
        for i, group in enumerate(groups):
            for proc in group:
                if proc.returncode is None:  # not reaped: its pid is still its own
                    pin(proc.pid, {cores[(i + shift) % len(cores)]} if one_core_each else set(cores))
        next_swap = time.monotonic() + (_CORE_SWAP_SECONDS if one_core_each else math.inf)

    place()
    stopped: set[int] = set()
    usage = _wait_all(procs, timeout, stop_at_first, place, stopped)
    results = []
    logs = []
    for proc, (arm, stats_path, mark, _) in zip(procs, started, strict=True):
        code, cpu = usage[proc.pid]
        records = arm.servers.log(mark)
        # An arm stopped by stop_at_first as it was ending by itself (its handlers already gone) dies of
        # the SIGTERM: stopped as asked, not failed.
        if (code != 0 and not (proc.pid in stopped and code == -signal.SIGTERM)) or not records:
            tail = stats_path.with_suffix(".log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{arm.label} failed (exit {code}):\n{tail}")
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        stats["_cpu"] = cpu
        logs.append([float(r["t"]) for r in records])
        results.append(RunResult(arm.label, len(records), logs[-1][-1] - logs[-1][0], stats, code))
    if overlap:
        t0, t1 = max(ts[0] for ts in logs), min(ts[-1] for ts in logs)
        if t1 <= t0:
            raise RuntimeError("side-by-side crawls did not overlap")
        for result, ts in zip(results, logs, strict=True):
            result.measured = (sum(1 for t in ts if t0 <= t <= t1), t1 - t0)
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header, *[[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
           for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def emit(result: dict[str, Any]) -> None:
    """The last line of every benchmark: one JSON object."""
    print(json.dumps(result, sort_keys=True), flush=True)


@dataclass(frozen=True)
class Paired:
    """Runs "with" and "without" something, paired run by run: the ratios a benchmark reports."""

    medians: dict[str, float]  # pages/s per arm
    pairs: list[float]  # with / without, per pair
    ratio: float  # median of the pairs
    of_medians: float  # median with / median without
    cpu: dict[str, float]  # worker CPU seconds per page, median per arm

    @classmethod
    def of(cls, runs: dict[str, list[RunResult]]) -> Paired:
        medians = {label: median([r.pages_per_s for r in rs]) for label, rs in runs.items()}
        pairs = [w.pages_per_s / wo.pages_per_s for w, wo in zip(runs["with"], runs["without"], strict=True)]
        return cls(medians, pairs, median(pairs),
                   medians["with"] / medians["without"] if medians["without"] else 0.0,
                   {label: median([r.stats["_cpu"] / r.pages for r in rs]) for label, rs in runs.items()})

    def table(self, runs: dict[str, list[RunResult]], first: str, run: str) -> str:
        """pages/s per run and arm, with / without per pair, medians."""
        return table([[label, *(round(r.pages_per_s) for r in rs), round(self.medians[label])]
                      for label, rs in runs.items()]
                     + [["with / without", *(f"{p:.3f}" for p in self.pairs), f"{self.ratio:.3f}"]],
                     [first, *(f"{run} {i + 1}" for i in range(len(self.pairs))), "median"])
