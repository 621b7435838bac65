"""``make demo``: a real multi-worker crawl of the bundled demo sites.

Starts Redis and the MongoDB stand-in (unless ``REDIS_URL`` / ``MONGO_URI``
name external servers) and the demo site server, seeds the shared frontier,
runs ``--workers`` ``scrapy crawl`` processes of every demo spider, shows
progress, and prints a summary checked against the demo server's own request
log. Exits non-zero when a check fails.

The demo writes to the MongoDB database ``crawler_demo`` and to the Redis keys
of the demo spiders, and deletes both first: it says so before it starts, and
refuses a ``REDIS_URL`` / ``MONGO_URI`` that is not on this machine unless
``--allow-remote`` is given. URLs are printed with their credentials redacted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawler.redact import redact_uri
from devtools.services import DEFAULT_STATE, ROOT, Server, local_services, start_demosite

DEMO_DB = "crawler_demo"
SPIDERS = ("shop_a", "shop_b", "news")


def spider_hosts(names: tuple[str, ...]) -> dict[str, str]:
    """spider name -> the demo host it crawls (its single allowed domain)."""
    from scrapy.spiderloader import SpiderLoader
    from scrapy.utils.project import get_project_settings

    loader = SpiderLoader.from_settings(get_project_settings())
    return {name: loader.load(name).allowed_domains[0] for name in names}


_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def remote_hosts(redis_url: str, mongo_uri: str) -> list[str]:
    """The hosts of ``redis_url`` / ``mongo_uri`` (either may be empty) that are not this machine."""
    from urllib.parse import urlsplit

    from pymongo.uri_parser import parse_uri

    hosts: list[str] = []
    if redis_url and not redis_url.startswith("unix:"):
        hosts.append(urlsplit(redis_url).hostname or "")
    if mongo_uri:
        hosts += [host for host, _ in parse_uri(mongo_uri)["nodelist"] if not host.endswith(".sock")]
    return [h for h in hosts if h not in _LOCAL_HOSTS and not h.startswith("127.")]


def what_is_deleted(spiders: tuple[str, ...]) -> str:
    keys = ", ".join(f"{s}:start_urls, {s}:start_urls:dead, {{{s}}}:*" for s in spiders)
    return f"Redis keys {keys}; the MongoDB database {DEMO_DB}"


def server_log(site: Server, since: int = 0) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{site.url}/_demo/log?since={since}", timeout=10) as r:
        return [json.loads(line) for line in r.read().splitlines() if line]


@dataclass
class Worker:
    spider: str
    index: int
    proc: subprocess.Popen[bytes]
    log: Path
    stats_path: Path
    stats: dict[str, Any] = field(default_factory=dict)


def start_workers(
    spiders: tuple[str, ...], workers: int, env: dict[str, str], run_dir: Path, extra: list[str]
) -> list[Worker]:
    scrapy = str(Path(sys.executable).parent / "scrapy")
    out = []
    for spider in spiders:
        for i in range(1, workers + 1):
            log = run_dir / f"{spider}-{i}.log"
            stats = run_dir / f"{spider}-{i}.stats.json"
            cmd = [scrapy, "crawl", spider, "-s", f"LOG_FILE={log}", "-s", f"STATS_FILE_PATH={stats}", *extra]
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            out.append(Worker(spider, i, proc, log, stats))
    return out


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _queued(r: Any, spider: str, partitions: int = 1) -> int:
    """Requests waiting in a spider's frontier: the total its depth index keeps (crawler/frontier/store.py),
    in every partition (crawler/frontier/partitions.py)."""
    from crawler.frontier.partitions import partition_prefixes

    return sum(int(r.get(p + ":queued") or 0) for p in partition_prefixes("{" + spider + "}", partitions))


def analyse(records: list[dict[str, Any]], hosts: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per site: requests, distinct URLs, bytes, duplicates split by why they happened."""
    by_host: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in records:
        by_host[r["host"]].append(r)
    out = {}
    for host in hosts.values():
        recs = by_host.get(host, [])
        counts = collections.Counter(r["path"] for r in recs)
        statuses: dict[str, set[int]] = collections.defaultdict(set)
        for r in recs:
            statuses[r["path"]].add(r["status"])
        dup = {"robots": 0, "retries": 0, "unexplained": 0}
        unexplained = []
        refetched: dict[str, int] = {}
        for path, n in counts.items():
            if n == 1:
                continue
            if path == "/robots.txt":
                dup["robots"] += n - 1  # every worker reads robots.txt once itself
            elif statuses[path] & {429, 500, 502, 503, 504, 522, 524, 408}:
                dup["retries"] += n - 1  # RetryMiddleware / politeness re-fetch failed pages
                refetched[path] = n
            else:
                dup["unexplained"] += n - 1
                unexplained.append(path)
        out[host] = {
            "requests": len(recs),
            "distinct": len(counts),
            "bytes": sum(r["bytes"] for r in recs),
            "duplicates": dup,
            "unexplained": unexplained[:10],
            "error_fetches": refetched,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes per spider (default 2)")
    parser.add_argument("--spiders", default=",".join(SPIDERS))
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE)
    parser.add_argument("-s", "--set", action="append", default=[], metavar="NAME=VALUE",
                        help="extra Scrapy setting for every worker")
    parser.add_argument("--allow-remote", action="store_true",
                        help="run against a REDIS_URL / MONGO_URI on another machine (its demo keys and "
                             f"database {DEMO_DB} are deleted)")
    args = parser.parse_args(argv)
    spiders = tuple(s for s in args.spiders.split(",") if s)
    remote = remote_hosts(os.environ.get("REDIS_URL", ""), os.environ.get("MONGO_URI", ""))
    if remote and not args.allow_remote:
        print(f"REDIS_URL / MONGO_URI name another machine ({', '.join(remote)}): the demo would delete "
              f"{what_is_deleted(spiders)} there. Unset them to use local servers, or add --allow-remote.",
              file=sys.stderr)
        return 2
    hosts = spider_hosts(spiders)
    run_dir = args.state / "demo" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # worker logs and stats: this user only

    print(f"Starting services (state in {args.state}) ...", flush=True)
    with local_services(args.state) as svc:
        site = start_demosite(args.state)
        try:
            return _run(args, spiders, hosts, run_dir, svc.redis_url, svc.mongo_uri, site)
        finally:
            site.stop()


def _run(
    args: argparse.Namespace,
    spiders: tuple[str, ...],
    hosts: dict[str, str],
    run_dir: Path,
    redis_url: str,
    mongo_uri: str,
    site: Server,
) -> int:
    import redis
    from pymongo import MongoClient

    r = redis.Redis.from_url(redis_url)
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    print(f"  redis   {redact_uri(redis_url)}\n  mongodb {redact_uri(mongo_uri)} (database {DEMO_DB})\n"
          f"  demo    {', '.join(hosts.values())} on 127.0.0.1 and [::1] port {site.port}\n"
          f"Deleting what an earlier demo left: {what_is_deleted(spiders)}", flush=True)
    for spider in spiders:
        r.delete(f"{spider}:start_urls", f"{spider}:start_urls:dead",
                 *r.scan_iter(match="{" + spider + "}:*"))  # the frontier's keys (crawler/frontier/store.py)
    mongo.drop_database(DEMO_DB)
    for spider, host in hosts.items():
        r.lpush(f"{spider}:start_urls", json.dumps({"url": f"http://{host}:{site.port}/"}))

    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "MONGO_URI": mongo_uri,
        "MONGO_DATABASE": DEMO_DB,
        "RESOLVE_HOSTS": "*.test:127.0.0.1",
    }
    # Each worker serves its Prometheus metrics on a free port (named in the summary).
    extra = ["-s", "FRONTIER_IDLE_CLOSE_SECONDS=3", "-s", "METRICS_ENABLED=1", "-s", "METRICS_PORT=0"]
    partitions = 1
    for setting in args.set:
        extra += ["-s", setting]
        if setting.startswith("FRONTIER_PARTITIONS="):
            partitions = int(setting.split("=", 1)[1])
    started = time.monotonic()
    workers = start_workers(spiders, args.workers, env, run_dir, extra)
    print(f"Running {len(workers)} workers ({args.workers} per spider); logs in {run_dir}", flush=True)

    counted = 0
    per_host: collections.Counter[str] = collections.Counter()
    while any(w.proc.poll() is None for w in workers):
        time.sleep(1)
        new = server_log(site, counted)
        counted += len(new)
        per_host.update(rec["host"] for rec in new)
        queued = sum(_queued(r, s, partitions) for s in spiders)
        items = sum(mongo[DEMO_DB][c].estimated_document_count() for c in ("product", "article"))
        running = sum(w.proc.poll() is None for w in workers)
        sites = " ".join(f"{h.split('.')[0]}={per_host[h]}" for h in hosts.values())
        print(f"  {time.monotonic() - started:5.1f}s  pages {counted:6d} ({sites})  queued {queued:5d}  "
              f"items {items:6d}  workers running {running}", flush=True)
    elapsed = time.monotonic() - started

    failed = [w for w in workers if w.proc.returncode != 0]
    for w in workers:
        if w.stats_path.exists():
            w.stats = json.loads(w.stats_path.read_text())
    code = _summary(workers, failed, server_log(site), hosts, mongo, elapsed)
    print(next_steps([(f"{w.spider}#{w.index}", w.log) for w in workers]))
    return code


def next_steps(worker_logs: list[tuple[str, Path]]) -> str:
    """Where the metrics and the status were, and how to go on to a crawl of one's own."""
    endpoints = []
    for name, log in worker_logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.search(r"Metrics endpoint: (\S+)", text)
        if found:
            endpoints.append(f"{name} {found.group(1)}")
    return "\n".join([
        "",
        "Metrics: each worker served Prometheus metrics while it ran (-s METRICS_ENABLED=1, docs/metrics.md):",
        *(f"  {e}" for e in endpoints[:6]),
        "Cluster status while workers run: .venv/bin/python -m crawler status [SPIDER] [--watch] (docs/status.md)",
        "",
        "Next, a crawl of your own (README.md, 'Writing a spider'):",
        "  .venv/bin/python -m devtools.local up                       # Redis and MongoDB on the default ports, kept",
        "  .venv/bin/scrapy genspider -t site example example.com      # the spider, its item, schema and test",
        "  .venv/bin/scrapy savefixture example https://example.com/   # a page it is tested on offline",
        "  .venv/bin/python -m crawler seed example https://example.com/",
        "  .venv/bin/scrapy crawl example -s METRICS_ENABLED=1         # runs as a service until Ctrl-C",
        "  .venv/bin/python -m crawler status example                  # the cluster, while it runs",
        "  items: MongoDB database 'crawler', collection 'example'; invalid ones in 'dead_letter'",
    ])


def _summary(
    workers: list[Worker],
    failed: list[Worker],
    records: list[dict[str, Any]],
    hosts: dict[str, str],
    mongo: Any,
    elapsed: float,
) -> int:
    from demosite.sites import DEFAULT_SITES

    problems: list[str] = []
    rows = []
    for w in workers:
        s = w.stats
        rows.append([f"{w.spider}#{w.index}", s.get("downloader/response_count", 0),
                     _fmt_bytes(s.get("downloader/response_bytes", 0)), s.get("item_scraped_count", 0),
                     s.get("finish_reason", f"exit {w.proc.returncode}")])
    print(f"\nCrawl finished in {elapsed:.1f}s\n\nWorkers (their own stats)")
    print(_table(rows, ["worker", "pages", "bytes", "items", "finish"]))

    sites = analyse(records, hosts)
    expected = {s.host: s.expected_pages() for s in DEFAULT_SITES}
    rows = []
    for spider, host in hosts.items():
        a = sites[host]
        d = a["duplicates"]
        want = sum(expected[host].values()) + 1  # + robots.txt
        rows.append([host, a["requests"], a["distinct"], want, _fmt_bytes(a["bytes"]), d["robots"], d["retries"],
                     d["unexplained"]])
        if a["distinct"] != want:
            problems.append(f"{host}: {a['distinct']} distinct URLs fetched, expected {want}")
        if d["unexplained"]:
            problems.append(f"{host}: pages fetched twice without a reason: {a['unexplained']}")
        mine = [w for w in workers if w.spider == spider]
        shares = [w.stats.get("downloader/response_count", 0) for w in mine]
        if len(mine) > 1 and min(shares) < 0.1 * sum(shares):
            problems.append(f"{spider}: a worker did less than 10% of the work ({shares})")
        crawler_pages = sum(shares)
        if crawler_pages != a["requests"]:
            problems.append(f"{host}: server saw {a['requests']} requests, workers counted {crawler_pages}")
    print("\nDemo server (its own request log)")
    print(_table(rows, ["site", "requests", "distinct", "expected", "bytes on wire", "dup robots.txt",
                        "dup retries", "dup other"]))
    print("  robots.txt: each worker reads it once; retries: RetryMiddleware re-fetching 429/500 pages")

    total_server = sum(a["requests"] for a in sites.values())
    total_workers = sum(w.stats.get("downloader/response_count", 0) for w in workers)
    bytes_server = sum(a["bytes"] for a in sites.values())
    bytes_workers = sum(w.stats.get("downloader/response_bytes", 0) for w in workers)
    print(f"\nAgreement: pages server {total_server} / workers {total_workers}; bytes server "
          f"{bytes_server} / workers {bytes_workers} ({bytes_workers / max(bytes_server, 1):.4f})")
    print("  (workers' downloader/response_bytes rebuild headers and drop chunked framing, so they differ a little)")

    problems += _check_mongo(mongo, workers, hosts)
    for w in failed:
        problems.append(f"worker {w.spider}#{w.index} exited with {w.proc.returncode}; see {w.log}")

    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems))
        return 1
    print("\nOK: every page fetched once (but for explained duplicates), every item stored once, "
          "server and workers agree.")
    return 0


def _check_mongo(mongo: Any, workers: list[Worker], hosts: dict[str, str]) -> list[str]:
    """Print what MongoDB holds; return what is wrong with it."""
    from demosite.sites import DEFAULT_SITES

    problems: list[str] = []
    expected = {s.host: s.expected_pages() for s in DEFAULT_SITES}
    rows = []
    db = mongo[DEMO_DB]
    scraped = sum(w.stats.get("item_scraped_count", 0) for w in workers)
    stored = 0
    for name in sorted(db.list_collection_names()):
        n = db[name].count_documents({})
        distinct = len(db[name].distinct("url"))
        stored += n
        rows.append([name, n, distinct])
        if n != distinct:
            problems.append(f"MongoDB {name}: {n} documents for {distinct} URLs")
    print("\nMongoDB")
    print(_table(rows, ["collection", "documents", "distinct urls"]))
    if stored != scraped:
        problems.append(f"{scraped} items scraped but {stored} stored")
    want_items = sum(expected[h]["items"] for h in hosts.values())
    if stored != want_items:
        problems.append(f"{stored} items stored, the demo sites have {want_items}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
