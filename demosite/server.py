"""A fast HTTP/1.1 server for the synthetic demo websites.

One process, one asyncio event loop, listening on loopback (IPv4 and ``::1``).
Sites are told apart by the ``Host`` header. Rendered pages are cached (raw and
gzip; bodies over 256 KB in a separate cache bounded to 64 MB), so a small
request costs a dictionary lookup and one ``transport.write``. Bodies over
64 KB are streamed (:mod:`demosite.protocol`).

Every request is recorded (format in :mod:`demosite.protocol`) and exposed at
``GET /_demo/log?since=N`` as JSON lines, so tests and benchmarks can check
what the *server* saw (:mod:`demosite.analysis` judges them).

Admin endpoints (not recorded): ``/_demo/log?since=N``, ``/_demo/health``,
``/_demo/sites``, ``/_demo/throttle``, ``/_demo/fail``, ``/_demo/clear``,
``/_demo/conditions``, ``/_demo/listen`` (see :meth:`DemoSiteServer.admin`).

Run: ``python -m demosite --port 8080 [--bind 127.0.0.1 --bind ::1]
[--sites-json '[...]'] [--log-file requests.jsonl]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import signal
import time
from collections import OrderedDict
from typing import IO, Any
from urllib.parse import parse_qs

from .conditions import FAIL, SLOW, THROTTLE, Conditions, Span
from .listeners import Listeners
from .protocol import HttpProtocol
from .sites import DEFAULT_SITES, Page, SiteConfig, render, sites_from_json, sites_to_json

logger = logging.getLogger(__name__)

_SMALL_CACHE_BODY = 256 * 1024
_SMALL_CACHE_BYTES = 512 * 1024 * 1024
_LARGE_CACHE_BYTES = 64 * 1024 * 1024


class RequestLog:
    """Append-only in-memory log of served requests, optionally mirrored to a JSONL file.

    A record is listed when its request arrives and updated while its response
    is sent; the file gets it once finished, so file order is completion order.
    """

    def __init__(self, path: str | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def finished(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _AdminError(Exception):
    pass


class DemoSiteServer:
    """Page caches, site conditions and request log shared by all connections."""

    def __init__(self, sites: tuple[SiteConfig, ...], log: RequestLog) -> None:
        self.sites = {s.host: s for s in sites}
        self.log = log
        self.conditions = Conditions(self.sites)
        self.listeners: Listeners | None = None  # set by serve()
        self._cache: dict[tuple[str, str, bool], tuple[Page, bytes]] = {}
        self._large: OrderedDict[tuple[str, str, bool], tuple[Page, bytes]] = OrderedDict()
        self._cache_bytes = 0
        self._large_bytes = 0
        self._connections = 0
        self.started = time.time()

    def next_connection_id(self) -> int:
        self._connections += 1
        return self._connections

    def page(self, host: str, path: str, use_gzip: bool) -> tuple[Page, bytes]:
        key = (host, path, use_gzip)
        hit = self._cache.get(key) or self._large.get(key)
        if hit is None:
            page = render(self.sites[host], path)
            body = page.body
            if use_gzip and body and page.compress:
                body = gzip.compress(body, compresslevel=6, mtime=0)
            hit = (page, body)
            self._store(key, hit)
        elif key in self._large:
            self._large.move_to_end(key)
        return hit

    def _store(self, key: tuple[str, str, bool], hit: tuple[Page, bytes]) -> None:
        size = len(hit[0].body) + len(hit[1])
        if size <= _SMALL_CACHE_BODY:
            if len(self._cache) < 200_000 and self._cache_bytes + size <= _SMALL_CACHE_BYTES:
                self._cache[key] = hit
                self._cache_bytes += size
            return
        # Huge bodies: a small LRU, so a crawl re-fetching one costs no re-render or re-gzip.
        self._large[key] = hit
        self._large_bytes += size
        while self._large_bytes > _LARGE_CACHE_BYTES and len(self._large) > 1:
            _, (old, old_body) = self._large.popitem(last=False)
            self._large_bytes -= len(old.body) + len(old_body)

    def admin(self, path: str, query: str, via: str = "") -> tuple[int, bytes, str]:
        """Answer an admin request.

        * ``/_demo/log?since=N``: records N.. as JSON lines.
        * ``/_demo/health``: ``{"requests": <number of records>}``.
        * ``/_demo/sites``: the site configuration as JSON.
        * ``/_demo/throttle?host=H&seconds=S[&status=429][&retry_after=N][&date=1]``:
          from now for S seconds every request to H but robots.txt gets ``status``
          with ``Retry-After: N`` (an HTTP-date now+N with ``date=1``); no
          Retry-After header without ``retry_after``.
        * ``/_demo/fail?host=H&seconds=S[&status=503]``: from now for S seconds every
          request to H (robots.txt included) gets ``status``; ``status=0`` closes the
          connection right after the request head, without a response.
        * ``/_demo/slow?host=H&seconds=S&ms=M``: from now for S seconds every request
          to H but robots.txt is answered as usual, M milliseconds later (a website
          under strain: its response times rise).
        * ``/_demo/clear?host=H``: end every span of H (configured ones too).
        * ``/_demo/conditions?host=H``: the spans of H as JSON.
        * ``/_demo/listen?address=A&on=0|1``: stop or start listening on loopback
          address A (one of the ``--bind`` addresses, not the one this call came
          in on ``via``): connections to A are refused until it listens again.
          Answers ``{"address": A, "listening": bool}``.

        The span calls answer the new span as JSON; bad parameters get 400.
        """
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        try:
            return self._admin(path, params, via)
        except _AdminError as exc:
            return 400, f"{exc}\n".encode(), "text/plain"
        except ValueError as exc:
            return 400, f"bad parameter: {exc}\n".encode(), "text/plain"

    def _admin(self, path: str, params: dict[str, str], via: str) -> tuple[int, bytes, str]:
        if path == "/_demo/log":
            since = int(params.get("since", "0"))
            self.log.flush()
            lines = "".join(json.dumps(r) + "\n" for r in self.log.records[since:])
            return 200, lines.encode(), "application/x-ndjson"
        if path == "/_demo/sites":
            return 200, sites_to_json(tuple(self.sites.values())).encode(), "application/json"
        if path == "/_demo/health":
            return 200, json.dumps({"requests": len(self.log.records)}).encode(), "application/json"
        if path in ("/_demo/throttle", "/_demo/fail", "/_demo/slow", "/_demo/clear", "/_demo/conditions"):
            return self._admin_span(path, params)
        if path == "/_demo/listen":
            return self._admin_listen(params, via)
        return 404, b"unknown admin path\n", "text/plain"

    def _admin_listen(self, params: dict[str, str], via: str) -> tuple[int, bytes, str]:
        assert self.listeners is not None
        address = params.get("address", "")
        on = params.get("on", "") == "1"
        if not on and address == via:
            raise _AdminError(f"this call came in on {address}: it cannot stop listening there")
        self.listeners.switch(address, on)
        body = json.dumps({"address": address, "listening": self.listeners.listening(address)})
        return 200, body.encode(), "application/json"

    def _admin_span(self, path: str, params: dict[str, str]) -> tuple[int, bytes, str]:
        host = params.get("host", "")
        if host not in self.sites:
            raise _AdminError(f"unknown host {host!r}")
        now = time.time()
        if path == "/_demo/conditions":
            body = json.dumps([s.as_dict() for s in self.conditions.spans(host)])
            return 200, body.encode(), "application/json"
        if path == "/_demo/clear":
            self.conditions.clear(host, now)
            return 200, b"[]", "application/json"
        seconds = float(params["seconds"]) if "seconds" in params else None
        if seconds is None or seconds < 0:
            raise _AdminError("seconds must be given and >= 0")
        if path == "/_demo/throttle":
            status = int(params.get("status", "429"))
            if not 100 <= status <= 599:
                raise _AdminError(f"status must be an HTTP status, not {status}")
            span = Span(THROTTLE, now, now + seconds, status, int(params.get("retry_after", "-1")),
                        params.get("date", "0") == "1")
        elif path == "/_demo/slow":
            ms = int(params.get("ms", "0"))
            if ms <= 0:
                raise _AdminError(f"ms must be > 0, not {ms}")
            span = Span(SLOW, now, now + seconds, 200, delay_ms=ms)
        else:
            status = int(params.get("status", "503"))
            if status != 0 and not 100 <= status <= 599:
                raise _AdminError(f"status must be 0 (drop) or an HTTP status, not {status}")
            span = Span(FAIL, now, now + seconds, status)
        self.conditions.add(host, span)
        return 200, json.dumps(span.as_dict()).encode(), "application/json"


async def serve(
    port: int,
    binds: list[str],
    sites: tuple[SiteConfig, ...],
    log_file: str | None = None,
    ready_file: str | None = None,
) -> None:
    log = RequestLog(log_file)
    server = DemoSiteServer(sites, log)
    loop = asyncio.get_running_loop()
    server.listeners = listeners = Listeners(lambda: HttpProtocol(server))
    actual = await listeners.open(binds, port)
    logger.info("demo site serving %s on %s port %d", ", ".join(server.sites), binds, actual)
    if ready_file:
        with open(ready_file, "w", encoding="utf-8") as f:
            f.write(str(actual))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(0.5)
            log.flush()

    flusher = asyncio.create_task(flush_periodically())
    await stop.wait()
    flusher.cancel()
    listeners.close()
    log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demosite", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--bind", action="append", help="address to listen on (repeatable); default 127.0.0.1 and ::1")
    parser.add_argument("--sites-json", help="JSON list of site configs (see demosite/sites.py)")
    parser.add_argument("--log-file", help="also append each request as a JSON line to this file")
    parser.add_argument("--ready-file", help="write the bound port here once listening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s demosite %(levelname)s %(message)s")
    sites = sites_from_json(args.sites_json) if args.sites_json else DEFAULT_SITES
    asyncio.run(serve(args.port, args.bind or ["127.0.0.1", "::1"], sites, args.log_file, args.ready_file))
