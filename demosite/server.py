"""A fast HTTP/1.1 server for the synthetic demo websites.

One process, one asyncio event loop, listening on loopback (IPv4 and ``::1``).
Sites are told apart by the ``Host`` header. Rendered pages are cached (raw and
gzip; bodies over 256 KB in a separate cache bounded to 64 MB), so a small
request costs a dictionary lookup and one ``transport.write``. Bodies over
64 KB are streamed in 16 KB pieces with flow control (a write only when
asyncio's write buffer is empty), so a client that stops reading stops the
server after what the kernel buffers hold.

Every request is recorded and exposed at ``GET /_demo/log?since=N`` as JSON
lines, so tests and benchmarks can check what the *server* saw
(:mod:`demosite.analysis` judges them). A record::

    t          request head received (epoch seconds)
    method, host, path, status   (status 0: connection dropped without a response)
    client, port, conn           peer address and port, connection number
    bytes      bytes handed to the kernel for this response (head and chunk
               framing included); on a lost connection, minus what was still
               in asyncio's write buffer when last observed (see ``unsent``)
    t_end      last byte handed to the kernel, or connection lost; null while sending
    truncated  the connection was lost before the whole response was handed over
    timeline   only for responses over 64 KB: [[t, cumulative_bytes], ...],
               from [start of sending, 0], every 256 KB, and at the end
    unsent     only when truncated with data in asyncio's buffer: an unknown
               part of it (at most one 16 KB piece plus head) may still have
               reached the kernel, so the true count is in [bytes, bytes + unsent]
    dropped    only true, for a connection closed without a response

Admin endpoints (not recorded): ``/_demo/log?since=N``, ``/_demo/health``,
``/_demo/sites``, ``/_demo/throttle``, ``/_demo/fail``, ``/_demo/clear``,
``/_demo/conditions`` (see :meth:`DemoSiteServer.admin`).

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
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .conditions import FAIL, THROTTLE, Conditions, Span
from .sites import DEFAULT_SITES, Page, SiteConfig, render, sites_from_json, sites_to_json, status_page

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger(__name__)

_REASONS = {
    200: b"OK",
    301: b"Moved Permanently",
    400: b"Bad Request",
    404: b"Not Found",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_MAX_HEAD = 64 * 1024
_CHUNK = 4096  # chunk size of small chunked responses (sent in one write)
_PIECE = 16 * 1024  # write size (and chunk size) of streamed responses
_STREAM_OVER = 64 * 1024  # responses larger than this are streamed and get a timeline
_SAMPLE_EVERY = 256 * 1024  # timeline resolution
_SMALL_CACHE_BODY = 256 * 1024
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
        self._cache: dict[tuple[str, str, bool], tuple[Page, bytes]] = {}
        self._large: OrderedDict[tuple[str, str, bool], tuple[Page, bytes]] = OrderedDict()
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
            if len(self._cache) < 200_000:
                self._cache[key] = hit
            return
        # Huge bodies: a small LRU, so a crawl re-fetching one costs no re-render or re-gzip.
        self._large[key] = hit
        self._large_bytes += size
        while self._large_bytes > _LARGE_CACHE_BYTES and len(self._large) > 1:
            _, (old, old_body) = self._large.popitem(last=False)
            self._large_bytes -= len(old.body) + len(old_body)

    def admin(self, path: str, query: str) -> tuple[int, bytes, str]:
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
        * ``/_demo/clear?host=H``: end every span of H (configured ones too).
        * ``/_demo/conditions?host=H``: the spans of H as JSON.

        The span calls answer the new span as JSON; bad parameters get 400.
        """
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        try:
            return self._admin(path, params)
        except _AdminError as exc:
            return 400, f"{exc}\n".encode(), "text/plain"
        except ValueError as exc:
            return 400, f"bad parameter: {exc}\n".encode(), "text/plain"

    def _admin(self, path: str, params: dict[str, str]) -> tuple[int, bytes, str]:
        if path == "/_demo/log":
            since = int(params.get("since", "0"))
            self.log.flush()
            lines = "".join(json.dumps(r) + "\n" for r in self.log.records[since:])
            return 200, lines.encode(), "application/x-ndjson"
        if path == "/_demo/sites":
            return 200, sites_to_json(tuple(self.sites.values())).encode(), "application/json"
        if path == "/_demo/health":
            return 200, json.dumps({"requests": len(self.log.records)}).encode(), "application/json"
        if path in ("/_demo/throttle", "/_demo/fail", "/_demo/clear", "/_demo/conditions"):
            return self._admin_span(path, params)
        return 404, b"unknown admin path\n", "text/plain"

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
        else:
            status = int(params.get("status", "503"))
            if status != 0 and not 100 <= status <= 599:
                raise _AdminError(f"status must be 0 (drop) or an HTTP status, not {status}")
            span = Span(FAIL, now, now + seconds, status)
        self.conditions.add(host, span)
        return 200, json.dumps(span.as_dict()).encode(), "application/json"


def _pieces(head: bytes, body: bytes, chunked: bool, stream: bool) -> Iterator[bytes]:
    """The response's wire bytes: in one piece, or in ``_PIECE`` pieces when streamed."""
    if not stream:
        if chunked:
            parts = [b"%x\r\n%s\r\n" % (len(body[i : i + _CHUNK]), body[i : i + _CHUNK])
                     for i in range(0, len(body), _CHUNK)]
            yield head + b"".join(parts) + b"0\r\n\r\n"
        else:
            yield head + body
        return
    view = memoryview(body)
    first = head
    for i in range(0, len(body), _PIECE):
        piece = view[i : i + _PIECE]
        data = b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else bytes(piece)
        yield first + data
        first = b""
    yield first + (b"0\r\n\r\n" if chunked else b"")


class _Outgoing:
    """One response being handed to the kernel, and its log record."""

    def __init__(self, record: dict[str, Any] | None, pieces: Iterator[bytes], size: int, close: bool,
                 rate: int) -> None:
        self.record = record
        self.pieces = pieces
        self.close = close
        self.rate = rate  # bytes per second, 0: no cap
        self.handed = 0  # bytes passed to transport.write (and not refused by it)
        self.buffered = 0  # asyncio's write buffer size when last observed
        self.exhausted = False
        self.not_before = 0.0  # monotonic time of the next write under a rate cap
        self.timeline: list[list[float]] | None = [] if record is not None and size > _STREAM_OVER else None
        self.next_sample = 0

    def sample(self, now: float, final: bool = False) -> None:
        if self.timeline is None:
            return
        done = self.handed - self.buffered
        if done >= self.next_sample or final:
            if not self.timeline or self.timeline[-1][1] != done:
                self.timeline.append([round(now, 6), done])
            self.next_sample = (done // _SAMPLE_EVERY + 1) * _SAMPLE_EVERY


class _HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; requests on one connection are served in order."""

    def __init__(self, server: DemoSiteServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.conn_id = 0
        self.body_remaining = 0
        self._out: _Outgoing | None = None  # the response in progress; later requests wait in buffer
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._processing = False
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # High-water mark 0: pause_writing as soon as the kernel refuses bytes and
        # resume_writing only once asyncio's buffer is empty, so at most one piece
        # is ever in that buffer and the byte count stays honest.
        transport.set_write_buffer_limits(high=0)
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.conn_id = self.server.next_connection_id()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._out is not None:
            self._finish(complete=False)
        self.transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        out = self._out
        if out is not None:
            out.buffered = 0
            out.sample(time.time())
            # Not from inside the transport's own callback: write on the next loop turn.
            asyncio.get_running_loop().call_soon(self._pump)

    def eof_received(self) -> bool:
        # The client may half-close after its last request: finish the responses first.
        self._eof = True
        if self._out is None and self.transport is not None:
            self.transport.close()
        return True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._process()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while self.transport is not None and not self.transport.is_closing() and self._out is None:
                if self.body_remaining:
                    dropped = min(self.body_remaining, len(self.buffer))
                    del self.buffer[:dropped]
                    self.body_remaining -= dropped
                    if self.body_remaining:
                        return
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > _MAX_HEAD:
                        self._send(None, 400, b"request head too large\n", "text/plain", (), False, True)
                    return
                head = bytes(self.buffer[:end]).decode("latin-1")
                del self.buffer[: end + 4]
                self._handle(head)
        finally:
            self._processing = False

    def _handle(self, head: str) -> None:
        now = time.time()
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._send(None, 400, b"bad request line\n", "text/plain", (), False, True)
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
            self._send(None, status, body, ctype, (), False, close)
            return
        host = headers.get("host", "").rsplit(":", 1)[0] if not headers.get("host", "").startswith("[") else ""
        record = self._record(now, method, host, path)
        if host not in self.server.sites:
            record["status"] = 404
            self._send(record, 404, b"unknown site\n", "text/plain", (), False, close)
            return
        self.server.conditions.seen(host, now)
        span = self.server.conditions.active(host, path, now)
        if span is not None:
            self._answer_span(record, span, now, close)
            return
        use_gzip = "gzip" in headers.get("accept-encoding", "")
        page, body = self.server.page(host, path, use_gzip)
        extra = page.headers
        if use_gzip and body and page.compress:
            extra = (*extra, ("Content-Encoding", "gzip"))
        if method == "HEAD":
            body = b""
        record["status"] = page.status
        site = self.server.sites[host]
        self._send(record, page.status, body, page.content_type, extra, page.chunked, close,
                   delay_ms=page.delay_ms, rate=site.stream_bytes_per_s)

    def _answer_span(self, record: dict[str, Any], span: Span, now: float, close: bool) -> None:
        if span.status == 0:
            # A site that is down: the connection closes without a byte of response.
            record.update(status=0, dropped=True, truncated=True, t_end=round(now, 6))
            self.server.log.finished(record)
            assert self.transport is not None
            self.transport.close()
            return
        record["status"] = span.status
        reason = _REASONS.get(span.status, b"Error").decode()
        body = status_page(span.status, reason)
        self._send(record, span.status, body, "text/html; charset=utf-8", span.retry_after_header(now), False, close)

    def _record(self, now: float, method: str, host: str, path: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "t": round(now, 6),
            "method": method,
            "host": host,
            "path": path,
            "status": 0,
            "client": self.peer[0],
            "port": self.peer[1],
            "conn": self.conn_id,
            "bytes": 0,
            "t_end": None,
            "truncated": False,
        }
        self.server.log.add(record)
        return record

    def _send(
        self,
        record: dict[str, Any] | None,
        status: int,
        body: bytes,
        ctype: str,
        extra: tuple[tuple[str, str], ...],
        chunked: bool,
        close: bool,
        delay_ms: int = 0,
        rate: int = 0,
    ) -> None:
        head = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Status"))]
        head.append(b"Content-Type: " + ctype.encode())
        for name, value in extra:
            head.append(f"{name}: {value}".encode())
        if chunked:
            head.append(b"Transfer-Encoding: chunked")
        else:
            head.append(b"Content-Length: %d" % len(body))
        if close:
            head.append(b"Connection: close")
        head_bytes = b"\r\n".join(head) + b"\r\n\r\n"
        stream = len(body) > _STREAM_OVER or (rate > 0 and len(body) > _PIECE)
        size = len(head_bytes) + len(body)
        self._out = _Outgoing(record, _pieces(head_bytes, body, chunked, stream), size, close, rate)
        if delay_ms:
            self._timer = asyncio.get_running_loop().call_later(delay_ms / 1000, self._start)
        else:
            self._start()

    def _start(self) -> None:
        self._timer = None
        if self._out is not None:
            self._out.sample(time.time())
            self._pump()

    def _pump(self) -> None:
        out = self._out
        transport = self.transport
        if out is None or transport is None or self._timer is not None:
            return
        while not self._paused and not out.exhausted:
            if out.rate:
                wait = out.not_before - time.monotonic()
                if wait > 0:
                    self._timer = asyncio.get_running_loop().call_later(wait, self._start)
                    return
            data = next(out.pieces, None)
            if data is None:
                out.exhausted = True
                break
            transport.write(data)
            if transport.is_closing():
                # The write failed (peer gone): asyncio dropped the data unsent.
                # connection_lost follows and closes the record.
                return
            out.handed += len(data)
            out.buffered = transport.get_write_buffer_size()
            out.sample(time.time())
            if out.rate:
                out.not_before = max(out.not_before, time.monotonic()) + len(data) / out.rate
        if out.exhausted and out.buffered == 0 and not self._paused:
            self._finish(complete=True)

    def _finish(self, complete: bool) -> None:
        out = self._out
        assert out is not None
        self._out = None
        now = time.time()
        record = out.record
        if record is not None:
            out.sample(now, final=True)
            record["bytes"] = out.handed - out.buffered
            record["t_end"] = round(now, 6)
            record["truncated"] = not complete
            if out.buffered and not complete:
                record["unsent"] = out.buffered
            if out.timeline is not None:
                record["timeline"] = out.timeline
            self.server.log.finished(record)
        if self.transport is None:
            return
        if out.close:
            self.transport.close()
        elif complete:
            self._process()
            if self._eof and self._out is None:
                self.transport.close()


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
