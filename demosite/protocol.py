"""The demo server's HTTP/1.1 connections: responses streamed with flow control, and their log records.

Requests on one connection are served in order (keep-alive and pipelining).
A response over 64 KB (or over 16 KB under a ``stream_bytes_per_s`` cap) is
written in 16 KB pieces, each only once asyncio's write buffer is empty, so a
client that stops reading stops the server after what the kernel buffers hold.

A log record::

    t          request head received (epoch seconds)
    method, host, path, status   (status 0: connection dropped without a response)
    client, port, conn           peer address and port, connection number
    bytes      bytes handed to the kernel for this response (head and chunk
               framing included); on a lost connection, minus what was still
               in asyncio's write buffer when last observed (see ``unsent``)
    t_end      last byte handed to the kernel, or connection lost; null while sending
    truncated  the connection was lost before the whole response was handed over
    timeline   only for responses over 64 KB: [[t, cumulative_bytes], ...],
               from [start of sending, 0], about every 256 KB, and always
               ending with [t_end, bytes]
    unsent     only when truncated with data in asyncio's buffer: an unknown
               part of it (at most one 16 KB piece plus head) may still have
               reached the kernel, so the true count is in [bytes, bytes + unsent]
    dropped    only true, for a connection closed without a response
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .sites import status_page

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .conditions import Span
    from .server import DemoSiteServer

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
        if final or (done >= self.next_sample and (not self.timeline or self.timeline[-1][1] != done)):
            # The last sample is always [t_end, bytes], flat after the last byte if need be.
            self.timeline.append([round(now, 6), done])
            self.next_sample = (done // _SAMPLE_EVERY + 1) * _SAMPLE_EVERY


class HttpProtocol(asyncio.Protocol):
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
            assert self.transport is not None
            status, body, ctype = self.server.admin(path, split.query, self.transport.get_extra_info("sockname")[0])
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
        delay_ms = page.delay_ms + self.server.conditions.delay_ms(host, path, now)
        self._send(record, page.status, body, page.content_type, extra, page.chunked, close,
                   delay_ms=delay_ms, rate=site.stream_bytes_per_s)

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
