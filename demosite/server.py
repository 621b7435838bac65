"""A fast HTTP/1.1 server for the synthetic demo websites.

One process, one asyncio event loop, listening on loopback (IPv4 and ``::1``).
Sites are told apart by the ``Host`` header. Rendered pages are cached (raw and
gzip), so a request costs a dictionary lookup and one ``transport.write``.

Every request is recorded (time, Host, path, status, client address and port,
connection number, bytes written to the socket) and exposed at
``GET /_demo/log?since=N`` as JSON lines, so tests and benchmarks can check
what the *server* saw. ``GET /_demo/sites`` returns the site configuration.
Requests under ``/_demo/`` are not recorded.

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
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from .sites import DEFAULT_SITES, Page, SiteConfig, render, sites_from_json, sites_to_json

logger = logging.getLogger(__name__)

_REASONS = {
    200: b"OK",
    301: b"Moved Permanently",
    400: b"Bad Request",
    404: b"Not Found",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
}
_MAX_HEAD = 64 * 1024
_CHUNK = 4096


class RequestLog:
    """Append-only in-memory log of served requests, optionally mirrored to a JSONL file."""

    def __init__(self, path: str | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class DemoSiteServer:
    """Page cache and request log shared by all connections."""

    def __init__(self, sites: tuple[SiteConfig, ...], log: RequestLog) -> None:
        self.sites = {s.host: s for s in sites}
        self.log = log
        self._cache: dict[tuple[str, str, bool], tuple[Page, bytes]] = {}
        self._connections = 0
        self.started = time.time()

    def next_connection_id(self) -> int:
        self._connections += 1
        return self._connections

    def page(self, host: str, path: str, use_gzip: bool) -> tuple[Page, bytes]:
        key = (host, path, use_gzip)
        hit = self._cache.get(key)
        if hit is None:
            page = render(self.sites[host], path)
            body = page.body
            if use_gzip and body:
                body = gzip.compress(body, compresslevel=6, mtime=0)
            hit = (page, body)
            if len(self._cache) < 200_000:
                self._cache[key] = hit
        return hit

    def admin(self, path: str, query: str) -> tuple[int, bytes, str]:
        if path == "/_demo/log":
            since = int(parse_qs(query).get("since", ["0"])[0])
            self.log.flush()
            lines = "".join(json.dumps(r) + "\n" for r in self.log.records[since:])
            return 200, lines.encode(), "application/x-ndjson"
        if path == "/_demo/sites":
            return 200, sites_to_json(tuple(self.sites.values())).encode(), "application/json"
        if path == "/_demo/health":
            return 200, json.dumps({"requests": len(self.log.records)}).encode(), "application/json"
        return 404, b"unknown admin path\n", "text/plain"


class _HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; requests on one connection are served in order."""

    def __init__(self, server: DemoSiteServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.conn_id = 0
        self.last_record: dict[str, Any] | None = None
        self.body_remaining = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.conn_id = self.server.next_connection_id()

    def connection_lost(self, exc: Exception | None) -> None:
        # Bytes still in our write buffer never reached the client: don't count them.
        if self.transport is not None and self.last_record is not None:
            unsent = self.transport.get_write_buffer_size()
            if unsent:
                self.last_record["bytes"] -= unsent
                self.last_record["truncated"] = True
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            if self.body_remaining:
                dropped = min(self.body_remaining, len(self.buffer))
                del self.buffer[:dropped]
                self.body_remaining -= dropped
                if self.body_remaining:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self._respond_plain(400, b"request head too large\n", close=True)
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            self._handle(head)

    def _handle(self, head: str) -> None:
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._respond_plain(400, b"bad request line\n", close=True)
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.body_remaining = int(headers.get("content-length", "0") or 0)
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        split = urlsplit(target)
        path = split.path or "/"
        if path.startswith("/_demo/"):
            status, body, ctype = self.server.admin(path, split.query)
            self._write(status, body, ctype, (), False, close)
            return
        host = headers.get("host", "").rsplit(":", 1)[0] if not headers.get("host", "").startswith("[") else ""
        if host not in self.server.sites:
            nbytes = self._respond_plain(404, b"unknown site\n", close=close)
            self._record(method, host, path, 404, nbytes)
            return
        use_gzip = "gzip" in headers.get("accept-encoding", "")
        page, body = self.server.page(host, path, use_gzip)
        extra = page.headers
        if use_gzip and body:
            extra = (*extra, ("Content-Encoding", "gzip"))
        if method == "HEAD":
            body = b""
        nbytes = self._write(page.status, body, page.content_type, extra, page.chunked, close)
        self._record(method, host, path, page.status, nbytes)

    def _record(self, method: str, host: str, path: str, status: int, nbytes: int) -> None:
        self.last_record = {
            "t": round(time.time(), 6),
            "method": method,
            "host": host,
            "path": path,
            "status": status,
            "client": self.peer[0],
            "port": self.peer[1],
            "conn": self.conn_id,
            "bytes": nbytes,
        }
        self.server.log.add(self.last_record)

    def _respond_plain(self, status: int, body: bytes, close: bool) -> int:
        return self._write(status, body, "text/plain", (), False, close)

    def _write(
        self,
        status: int,
        body: bytes,
        ctype: str,
        extra: tuple[tuple[str, str], ...],
        chunked: bool,
        close: bool,
    ) -> int:
        assert self.transport is not None
        head = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Status"))]
        head.append(b"Content-Type: " + ctype.encode())
        for name, value in extra:
            head.append(f"{name}: {value}".encode())
        if chunked:
            head.append(b"Transfer-Encoding: chunked")
            pieces = [body[i : i + _CHUNK] for i in range(0, len(body), _CHUNK)]
            parts = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces]
            payload = b"".join(parts) + b"0\r\n\r\n"
        else:
            head.append(b"Content-Length: %d" % len(body))
            payload = body
        if close:
            head.append(b"Connection: close")
        data = b"\r\n".join(head) + b"\r\n\r\n" + payload
        self.transport.write(data)
        if close:
            self.transport.close()
        return len(data)


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
    servers = [await loop.create_server(lambda: _HttpProtocol(server), host=b, port=port) for b in binds]
    actual = servers[0].sockets[0].getsockname()[1]
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
    for s in servers:
        s.close()
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
