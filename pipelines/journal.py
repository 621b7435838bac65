"""A local write-ahead journal: every write operation is on disk before its item is acknowledged.

``MongoWriterPipeline`` appends each item's operation here and returns from
``process_item`` only once it is fsync'd, so ``kill -9`` loses no item Scrapy
has counted as scraped. Appends waiting at the same time share one
``write`` + ``fsync`` (group commit) in a worker thread, never on the reactor.
The books (segments, sizes, the open file) are the event loop's alone: the
thread is handed a file and data, does the I/O and returns; the loop
decides rotations and records their results.

Layout: ``<directory>/<run>/`` per process (``<run>`` = start time, pid and a
random part; folders created mode 0700, files 0600: they hold scraped
data), holding a ``LOCK`` file the process keeps an exclusive
``flock`` on, and segments ``<first seq>.wal`` of framed records::

    <u32 length> <u32 crc32 of seq+payload> <u64 seq> <payload>

A torn record at the end of a segment (a crash mid-write) fails its length or
CRC check and ends the segment. ``commit(upto)`` records what MongoDB has
acknowledged in an ``ACKED`` file (``<u64 upto> <u32 crc32>``, replaced
atomically: temp file, fsync, rename) and deletes every segment but the
current one whose records are all below it.

At open, the directories of other processes whose ``LOCK`` is free (their
process is gone) are *adopted*: their records not yet acknowledged (from
their ``ACKED`` position on) are copied, in order, to the head of the new
journal and replayed first, then the old directory is deleted. Several
workers sharing one directory each adopt different orphans.

Records appended while the consumer keeps up stay in a memory cache, so the
normal path never reads the disk back; ``spill()`` drops the cache (MongoDB
down) and the consumer then reads records from the segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from pipelines.journal_files import (
    commit_acked,
    frame,
    fsync_dir,
    parse_segment,
    private_dirs,
    private_file,
    read_acked,
    write_segment,
)

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["Journal", "parse_segment", "pending_records"]

@dataclass
class _Segment:
    path: Path
    first: int
    end: int  # one past the last seq written to it
    size: int


@dataclass
class _Opened:
    """What opening found and wrote, built in the worker thread and handed to the loop."""

    path: Path
    lock: IO[bytes]
    segment_bytes: int
    file: IO[bytes] | None = None
    segments: list[_Segment] = field(default_factory=list)
    next_seq: int = 0
    adopted: int = 0
    skipped: int = 0
    torn: int = 0

    def write(self, data: bytes, first: int, count: int) -> None:
        rotate = not self.segments or self.segments[-1].size >= self.segment_bytes
        if rotate:
            self.segments.append(_Segment(self.path / f"{first:016d}.wal", first, first, 0))
        segment = self.segments[-1]
        self.file = write_segment(self.file, segment.path if rotate else None, data)
        segment.size += len(data)
        segment.end = first + count


class Journal:
    """Append-only fsync'd log of opaque records with sequence numbers."""

    def __init__(self, directory: Path, segment_bytes: int = 8 << 20, prefix: str = "run") -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.prefix = prefix
        self.path: Path | None = None
        self.next_seq = 0  # next to assign
        self.durable = 0  # every seq below is fsync'd
        self.acked = 0  # every seq below is in MongoDB, as persisted in the ACKED file
        self.adopted = 0
        self.skipped = 0  # records of adopted journals not replayed: MongoDB had acknowledged them
        self.torn = 0
        # The books (segments, the open file) belong to the event loop: worker
        # threads only do file I/O on what they are handed and return results.
        self._lock_file: IO[bytes] | None = None
        self._file: IO[bytes] | None = None
        self._segments: list[_Segment] = []
        self._pending: list[tuple[int, bytes, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._cache: deque[tuple[int, bytes]] = deque()
        self._caching = True
        self._read_segment: tuple[Path, list[tuple[int, bytes]]] | None = None
        self.error: BaseException | None = None

    # -- open / close -------------------------------------------------------

    async def open(self) -> None:
        opened = await asyncio.to_thread(self._open_sync)
        self.path = opened.path
        self._lock_file = opened.lock
        self._file = opened.file
        self._segments = opened.segments
        self.next_seq = self.durable = opened.next_seq
        self.adopted = opened.adopted
        self.skipped = opened.skipped
        self.torn = opened.torn

    def _open_sync(self) -> _Opened:
        name = f"{self.prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{secrets.token_hex(4)}"
        # Created under a hidden name, locked, then renamed: a scanning peer
        # never sees an unlocked run directory that is not an orphan.
        tmp = self.directory / f".{name}"
        for attempt in range(3):
            private_dirs(self.directory)
            try:
                tmp.mkdir(mode=0o700)
                break
            except FileNotFoundError:  # a closing peer removed the empty parent just now
                if attempt == 2:
                    raise
        lock = private_file(tmp / "LOCK", os.O_WRONLY | os.O_TRUNC, "wb")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = self.directory / name
        tmp.rename(path)
        fsync_dir(self.directory)
        opened = _Opened(path, lock, self.segment_bytes)
        for orphan in self._orphans(path):
            self._adopt(orphan, opened)
        return opened

    def _orphans(self, own: Path) -> list[tuple[Path, IO[bytes]]]:
        found: list[tuple[Path, IO[bytes]]] = []
        for path in sorted(self.directory.iterdir()):
            if path == own or path.name.startswith(".") or not path.is_dir():
                continue
            try:
                lock = open(path / "LOCK", "rb")  # noqa: SIM115 (held until adopted)
            except FileNotFoundError:
                continue  # being deleted by whoever adopted it
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()  # a live process
                continue
            found.append((path, lock))
        return found

    @staticmethod
    def _adopt(orphan: tuple[Path, IO[bytes]], opened: _Opened) -> None:
        path, lock = orphan
        acked = read_acked(path)
        count = skipped = 0
        for segment in sorted(path.glob("*.wal")):
            try:
                data = segment.read_bytes()
            except FileNotFoundError:
                continue  # its owner closed cleanly and is deleting it
            records, torn = parse_segment(data)
            opened.torn += bool(torn)
            # Records MongoDB acknowledged before the orphan stopped are not replayed.
            fresh = [p for seq, p in records if seq >= acked]
            skipped += len(records) - len(fresh)
            if fresh:
                first = opened.next_seq
                opened.write(b"".join(frame(first + i, p) for i, p in enumerate(fresh)), first, len(fresh))
                opened.next_seq += len(fresh)
                count += len(fresh)
        # Only once the copy is durable: a crash before this line leaves both
        # copies, and replaying an operation twice is harmless (idempotent).
        shutil.rmtree(path, ignore_errors=True)
        lock.close()
        opened.adopted += count
        opened.skipped += skipped
        if count or skipped:
            logger.info("Adopted %(n)d journaled operations from %(path)s (%(skipped)d already in MongoDB skipped)",
                        {"n": count, "path": path, "skipped": skipped})

    async def close(self, remove: bool) -> None:
        """Close; ``remove`` deletes the directory (only when every record is committed)."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        file, self._file = self._file, None
        lock, self._lock_file = self._lock_file, None
        await asyncio.to_thread(self._close_sync, file, lock, self.path if remove else None)

    def _close_sync(self, file: IO[bytes] | None, lock: IO[bytes] | None, remove: Path | None) -> None:
        if file is not None:
            file.close()
        if remove is not None:
            shutil.rmtree(remove, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.directory.rmdir()  # only when empty: no other worker's journal in it
        if lock is not None:
            lock.close()  # releases the flock: a leftover journal becomes an orphan

    # -- append -------------------------------------------------------------

    def append(self, payload: bytes) -> asyncio.Future[int]:
        """Assign the next seq to ``payload``; the future resolves to it once fsync'd."""
        if self.error is not None:
            raise OSError(f"journal {self.path} failed earlier: {self.error}")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((self.next_seq, payload, future))
        self.next_seq += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            first = batch[0][0]
            data = b"".join(frame(seq, payload) for seq, payload, _ in batch)
            # Rotation is decided here, on the loop; the thread only opens the file.
            new = None
            if not self._segments or self._segments[-1].size >= self.segment_bytes:
                assert self.path is not None
                new = _Segment(self.path / f"{first:016d}.wal", first, first, 0)
            try:
                self._file = await asyncio.to_thread(write_segment, self._file, new.path if new else None, data)
            except BaseException as exc:
                # Disk full or gone: nothing can be acknowledged any more.
                self.error = exc
                for _, _, future in [*batch, *self._pending]:
                    if not future.done():
                        future.set_exception(OSError(f"journal write failed: {exc}"))
                self._pending = []
                return
            if new is not None:
                self._segments.append(new)
            segment = self._segments[-1]
            segment.size += len(data)
            segment.end = first + len(batch)
            self.durable = first + len(batch)
            for seq, payload, future in batch:
                if self._caching:
                    self._cache.append((seq, payload))
                if not future.done():
                    future.set_result(seq)

    # -- consume ------------------------------------------------------------

    def spill(self) -> None:
        """Stop keeping records in memory; the consumer reads them back from disk."""
        self._caching = False
        self._cache.clear()

    def unspill(self) -> None:
        self._caching = True

    async def read(self, cursor: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` durable records from ``cursor`` on, in order."""
        while self._cache and self._cache[0][0] < cursor:
            self._cache.popleft()
        if self._cache and self._cache[0][0] == cursor:
            out: list[tuple[int, bytes]] = []
            for record in self._cache:
                if len(out) >= limit:
                    break
                out.append(record)
            return out
        end = min(self.durable, self._cache[0][0] if self._cache else self.durable)
        if cursor >= end:
            return []
        segment = next((s for s in self._segments if s.first <= cursor < s.end), None)
        if segment is None:
            return []
        need = min(end, segment.end) - 1
        cached = self._read_segment
        if cached is None or cached[0] != segment.path or not cached[1] or cached[1][-1][0] < need:
            data = await asyncio.to_thread(segment.path.read_bytes)
            cached = self._read_segment = (segment.path, parse_segment(data)[0])
        records = cached[1]
        return [r for r in records if cursor <= r[0] < end][:limit]

    async def commit(self, upto: int) -> None:
        """Every record below ``upto`` is in MongoDB: persist that, and delete the segments holding only such records.

        A worker restarted after a crash then replays only what MongoDB had
        not acknowledged. Called by the one consumer, never concurrently.
        """
        while self._cache and self._cache[0][0] < upto:
            self._cache.popleft()
        if upto <= self.acked or self.path is None:
            return
        last = self._segments[-1] if self._segments else None
        keep: list[_Segment] = []
        done: list[_Segment] = []
        for segment in self._segments:
            (done if segment.end <= upto and segment is not last else keep).append(segment)
        self._segments = keep
        if self._read_segment is not None and any(s.path == self._read_segment[0] for s in done):
            self._read_segment = None
        await asyncio.to_thread(commit_acked, self.path, upto, [s.path for s in done])
        self.acked = upto

    @property
    def size(self) -> int:
        """Bytes in the journal's segments on disk."""
        return sum(s.size for s in self._segments)

    @property
    def segment_count(self) -> int:
        return len(self._segments)


def pending_records(directory: Path) -> int:
    """How many records journals under ``directory`` hold (for tests and tools)."""
    total = 0
    for segment in directory.rglob("*.wal"):
        with contextlib.suppress(FileNotFoundError):
            total += len(parse_segment(segment.read_bytes())[0])
    return total
