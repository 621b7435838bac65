"""The project deployed as users deploy it: an egg built by scrapyd-deploy, run by a real scrapyd.

What can break only in an egg: package data read with importlib.resources
from a zip (the frontier's ``crawler/lua`` and the byte budget's
``middlewares/lua``), the ``scrapy`` entry point naming the settings module,
the packages pyproject.toml puts in it. scrapyd runs its jobs with its own
environment, so the servers reach the job through REDIS_URL, MONGO_URI,
MONGO_DATABASE and RESOLVE_HOSTS (settings/env.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from pymongo import MongoClient
from scrapy.spiderloader import get_spider_loader
from scrapy.utils.project import get_project_settings

from devtools.demo import analyse
from devtools.services import ROOT, free_port
from tests.conftest import TEST_SITES, assert_clean_log

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import DemoSite

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
PROJECT = "crawler"  # scrapy.cfg: [deploy] project = crawler
SPIDERS = sorted(get_spider_loader(get_project_settings()).list())  # every spider of the project goes in the egg
# Untracked things in a working tree that a fresh clone has not (.gitignore).
BUILD_ARTEFACTS = (".git", ".venv", ".state", "build", "*.egg-info", "__pycache__", ".*_cache", "mongo-journal")
TIMEOUT = 120.0  # overall limit of every wait below; none is a timed assertion


def _poll(check: Any, what: str, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> Any:
    """Call ``check()`` until it returns something truthy; fail after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: scrapyd exited with code {proc.returncode}:\n{_tail(log)}")
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what}: not done after {TIMEOUT:.0f}s:\n{_tail(log)}")


def _tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def egg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The egg, built as users build it: ``scrapyd-deploy --build-egg`` in the project root.

    In a copy of the checkout without its build artefacts: setuptools also packs
    what a stale ``crawler.egg-info/SOURCES.txt`` lists, which would hide a
    file missing from pyproject.toml's package data. The copy also keeps the
    build's ``build/`` and ``*.egg-info`` out of the working tree.
    """
    base = tmp_path_factory.mktemp("egg")
    project = base / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(*BUILD_ARTEFACTS))
    path = base / f"{PROJECT}.egg"
    proc = subprocess.run([str(BIN / "scrapyd-deploy"), "--build-egg", str(path)], cwd=project,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return path


@dataclass
class Scrapyd:
    proc: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path

    def get(self, endpoint: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/{endpoint}{query}", timeout=30) as r:
            return dict(json.loads(r.read()))

    def post(self, endpoint: str, fields: list[tuple[str, str]], files: dict[str, bytes] | None = None,
             ) -> dict[str, Any]:
        if files:  # multipart/form-data, as scrapyd-deploy uploads an egg
            boundary = uuid.uuid4().hex
            parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                     for k, v in fields]
            parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.egg"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                      for k, data in files.items()]
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            ctype = f"multipart/form-data; boundary={boundary}"
        else:
            body, ctype = urllib.parse.urlencode(fields).encode(), "application/x-www-form-urlencoded"
        req = urllib.request.Request(f"{self.url}/{endpoint}", data=body, headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=30) as r:
            return dict(json.loads(r.read()))


@pytest.fixture
def scrapyd(tmp_path: Path, redis_url: str, mongo_server_uri: str, mongo_db: str) -> Iterator[Scrapyd]:
    """A real scrapyd on a free loopback port, with its directories under ``tmp_path``."""
    home = tmp_path / "scrapyd"
    home.mkdir()
    port = free_port()
    # Read from the working directory (scrapyd/config.py); no scrapy.cfg above a pytest tmp dir.
    (home / "scrapyd.conf").write_text(
        "[scrapyd]\n"
        f"bind_address = 127.0.0.1\nhttp_port = {port}\n"
        f"eggs_dir = {home / 'eggs'}\nlogs_dir = {home / 'logs'}\n"
        f"items_dir = {home / 'items'}\ndbs_dir = {home / 'dbs'}\n"
        "poll_interval = 0.2\nmax_proc = 1\n")
    env = {**os.environ,
           # What the service passes on to its jobs (settings/env.py).
           "REDIS_URL": redis_url, "MONGO_URI": mongo_server_uri, "MONGO_DATABASE": mongo_db,
           "RESOLVE_HOSTS": "*.test:127.0.0.1",
           # ~/.scrapyd.conf and ~/.config/scrapy.cfg of whoever runs the tests stay out.
           "HOME": str(home)}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    log = home / "scrapyd.log"
    proc = subprocess.Popen([str(BIN / "scrapyd"), "--pidfile=", f"--logfile={log}"], cwd=home, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = Scrapyd(proc, f"http://127.0.0.1:{port}", home, log)
    try:
        def ready() -> bool:
            try:
                return server.get("daemonstatus.json")["status"] == "ok"
            except OSError:
                return False

        _poll(ready, "scrapyd start", proc, log)
        yield server
    finally:
        # Its own session: the job processes it spawned go with it.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_egg_holds_packages_lua_and_settings_entry_point(egg: Path) -> None:
    with zipfile.ZipFile(egg) as z:
        names = set(z.namelist())
        entry_points = z.read("EGG-INFO/entry_points.txt").decode()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"EGG-INFO", "crawler", "middlewares", "pipelines", "settings"}
    scripts = [lua.relative_to(ROOT).as_posix()
               for top in ("crawler", "middlewares") for lua in (ROOT / top).rglob("*.lua")]
    # Every package's lua/ folder: the frontier, the byte budget, politeness.
    assert {s.split("/lua/")[0] for s in scripts} >= {"crawler/frontier", "middlewares/byte_budget",
                                                       "middlewares/politeness"}
    missing = [s for s in scripts if s not in names]
    assert not missing, f"Lua scripts missing from the egg: {missing}"
    assert "[scrapy]\nsettings = settings" in entry_points


def test_spider_runs_from_the_egg_in_scrapyd(
    egg: Path, scrapyd: Scrapyd, demo_site: DemoSite, redis_url: str, mongo_server_uri: str, mongo_db: str,
) -> None:
    added = scrapyd.post("addversion.json", [("project", PROJECT), ("version", "r1")], {"egg": egg.read_bytes()})
    assert added["status"] == "ok", added
    listed = scrapyd.get("listspiders.json", project=PROJECT)
    assert listed["status"] == "ok", listed
    assert sorted(listed["spiders"]) == SPIDERS

    # scrapyd's runner activates the egg the same way for every job: its modules
    # and Lua files, not the checkout's (which the editable install also offers).
    probe = subprocess.run(
        [sys.executable, "-c",
         "from scrapyd.runner import project_environment\n"
         "with project_environment('crawler'):\n"
         "    import crawler.frontier.store as f, middlewares.byte_budget.store as b, settings\n"
         "    print(f.__file__, b.__file__, settings.__file__)\n"],
        cwd=scrapyd.home, env={**os.environ, "SCRAPY_PROJECT": PROJECT, "HOME": str(scrapyd.home)},
        capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert probe.returncode == 0, probe.stderr
    eggs_dir = str(scrapyd.home / "eggs")
    assert all(path.startswith(eggs_dir) for path in probe.stdout.split()), probe.stdout

    site = TEST_SITES[2]  # news.test, the smallest
    with redis.Redis.from_url(redis_url) as r:
        r.lpush("news:start_urls", json.dumps({"url": demo_site.url(site.host)}))
    mark = demo_site.mark()
    stats_path = scrapyd.home / "news.stats.json"
    scheduled = scrapyd.post("schedule.json", [
        ("project", PROJECT), ("spider", "news"),
        ("setting", "FRONTIER_IDLE_CLOSE_SECONDS=2"),
        # A budget far above the crawl's size, so the byte budget's Lua scripts run.
        ("setting", "BYTE_BUDGET_DEFAULT=1000000000"),
        ("setting", f"STATS_FILE_PATH={stats_path}"),
    ])
    assert scheduled["status"] == "ok", scheduled
    job = scheduled["jobid"]

    def finished() -> dict[str, Any] | None:
        jobs = scrapyd.get("listjobs.json", project=PROJECT)
        return next((j for j in jobs["finished"] if j["id"] == job), None)

    _poll(finished, f"job {job}", scrapyd.proc, scrapyd.log)
    job_log = scrapyd.home / "logs" / PROJECT / "news" / f"{job}.log"
    assert job_log.exists(), _tail(scrapyd.log)
    log_text = job_log.read_text(errors="replace")
    assert_clean_log(log_text)
    # A job that dies before Scrapy's logging starts leaves its traceback in scrapyd's log.
    assert "Traceback" not in scrapyd.log.read_text(errors="replace"), _tail(scrapyd.log)
    # items_dir: scrapyd's own feed of the job's items, besides MongoDB.
    feed = scrapyd.home / "items" / PROJECT / "news" / f"{job}.jl"
    assert len(feed.read_text().splitlines()) == site.items

    stats = json.loads(stats_path.read_text())
    assert stats["finish_reason"] == "finished"
    assert stats["item_scraped_count"] == site.items
    assert stats.get("byte_budget/leases", 0) > 0, {k: v for k, v in stats.items() if k.startswith("byte_budget")}

    records = [rec for rec in demo_site.log(mark) if rec["host"] == site.host]
    summary = analyse(records, {"news": site.host})[site.host]
    assert summary["distinct"] == sum(site.expected_pages().values()) + 1  # + robots.txt
    # RetryMiddleware fetches each 500 page 3 times; a 429 page (always 429,
    # Retry-After: 1) is fetched once, again after each of politeness's 3 parks,
    # then twice more by RetryMiddleware: exactly (see tests/test_e2e_workers.py).
    errors = min(site.errors, site.pages)
    dup = summary["duplicates"]
    assert dup["robots"] == 0 and dup["unexplained"] == 0, summary
    assert summary["error_fetches"] == {**{f"/broken/{k}": 3 for k in range(1, errors + 1)},
                                        **{f"/busy/{k}": 1 + 3 + 2 for k in range(1, errors + 1)}}, summary
    assert dup["retries"] == 2 * errors + 5 * errors, summary
    assert stats["downloader/response_count"] == summary["requests"]

    with MongoClient(mongo_server_uri) as client:
        docs = list(client[mongo_db]["article"].find({}, {"_id": 0, "url": 1}))
    assert len(docs) == len({d["url"] for d in docs}) == site.items
