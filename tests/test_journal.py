"""The write-ahead journal: group commit, segments, torn tails, orphan adoption."""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
import threading
from typing import TYPE_CHECKING, Any

import pytest

from pipelines.journal import Journal, parse_segment, pending_records

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


async def read_all(j: Journal, cursor: int) -> list[tuple[int, bytes]]:
    """What the writer does: read batches (each within one segment or the cache) until caught up."""
    out: list[tuple[int, bytes]] = []
    while batch := await j.read(cursor, 4):
        out += batch
        cursor = batch[-1][0] + 1
    return out


@pytest.mark.asyncio
async def test_append_read_commit_and_segments(tmp_path: Path) -> None:
    j = Journal(tmp_path / "db", segment_bytes=200)
    await j.open()
    seqs = []
    for start in range(0, 50, 5):  # concurrent appends share one fsync; rotation is between them
        seqs += await asyncio.gather(*(j.append(f"record-{i}".encode()) for i in range(start, start + 5)))
    assert seqs == list(range(50))
    assert j.durable == 50
    assert j.segment_count > 3  # rotated by size
    assert [p for _, p in await j.read(10, 3)] == [b"record-10", b"record-11", b"record-12"]
    # Memory dropped (MongoDB down): the same records come back from disk.
    j.spill()
    assert [p for _, p in await j.read(10, 3)] == [b"record-10", b"record-11", b"record-12"]
    await j.append(b"late")
    assert (await j.read(50, 10)) == [(50, b"late")]
    j.unspill()
    await j.append(b"cached")
    assert [s for s, _ in await read_all(j, 48)] == [48, 49, 50, 51]
    await j.commit(40)
    assert pending_records(tmp_path / "db") < 52  # committed segments deleted
    assert [p for _, p in await read_all(j, 40)][::10] == [b"record-40", b"late"]
    await j.commit(52)
    await j.close(remove=True)
    assert list(tmp_path.iterdir()) == []  # its folder, and the then empty database folder


@pytest.mark.asyncio
async def test_torn_tail_is_ignored(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    await j.open()
    for i in range(3):
        await j.append(b"x" * 10 + bytes([i]))
    await j.close(remove=False)
    assert j.path is not None
    (segment,) = j.path.glob("*.wal")
    data = segment.read_bytes()
    segment.write_bytes(data[:-4])  # a crash in the middle of the last write
    records, torn = parse_segment(segment.read_bytes())
    assert [s for s, _ in records] == [0, 1]
    assert torn > 0
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF
    assert len(parse_segment(bytes(corrupt))[0]) == 2


@pytest.mark.asyncio
async def test_orphans_are_adopted_in_order_live_journals_are_not(tmp_path: Path) -> None:
    old = Journal(tmp_path)
    await old.open()
    for i in range(5):
        await old.append(f"old-{i}".encode())
    await old.close(remove=False)  # like a crash: the records stay, the lock goes

    live = Journal(tmp_path)
    await live.open()
    await live.append(b"live")
    assert live.adopted == 5  # the live one took the orphan ...

    other = Journal(tmp_path)
    await other.open()
    assert other.adopted == 0  # ... and a running journal is never taken
    assert [p for _, p in await read_all(live, 0)] == [b"old-0", b"old-1", b"old-2", b"old-3", b"old-4",
                                                      b"live"]
    assert old.path is not None and not old.path.exists()
    await other.close(remove=True)
    await live.close(remove=False)
    assert pending_records(tmp_path) == 6


@pytest.mark.asyncio
async def test_a_locked_directory_is_left_alone(tmp_path: Path) -> None:
    busy = tmp_path / "run-busy"
    busy.mkdir()
    with open(busy / "LOCK", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        j = Journal(tmp_path)
        await j.open()
        await j.close(remove=True)
        assert j.adopted == 0
        assert busy.exists()


@pytest.mark.asyncio
async def test_journal_folders_and_files_are_private(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        orphan = Journal(tmp_path / "journal" / "db", segment_bytes=100)
        await orphan.open()
        await orphan.append(b"adopted")
        await orphan.close(remove=False)
        j = Journal(tmp_path / "journal" / "db", segment_bytes=100)
        await j.open()
        for i in range(10):
            await j.append(b"x" * 50 + bytes([i]))
        await j.commit(3)
        await j.close(remove=False)
    finally:
        os.umask(umask)
    path = j.path
    assert path is not None
    folders = [tmp_path / "journal", tmp_path / "journal" / "db", path]
    assert [oct(stat.S_IMODE(f.stat().st_mode)) for f in folders] == [oct(0o700)] * 3
    files = list(path.iterdir())
    assert len(files) >= 3  # LOCK, segments, the acknowledged position
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: oct(0o600) for f in files}


class _PausingList(list[Any]):
    """The journal's list of segments, pausing the event loop once, at the end of an iteration."""

    pause: Any = None

    def __iter__(self) -> Iterator[Any]:
        yield from list.__iter__(self)
        if self.pause is not None:
            pause, self.pause = self.pause, None
            pause()


@pytest.mark.asyncio
async def test_a_rotation_during_a_commit_keeps_every_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker thread rotates to a new segment exactly while the loop's commit rebuilds its books."""
    started, go, written = threading.Event(), threading.Event(), threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        # The writing thread, held at its first fsync (the folder's, after
        # creating the new segment) until the commit is under way.
        if threading.current_thread() is not threading.main_thread() and not go.is_set():
            started.set()
            assert go.wait(10)
        real_fsync(fd)
        if stat.S_ISREG(os.fstat(fd).st_mode) and go.is_set():
            written.set()

    def let_the_thread_write() -> None:  # on the loop, inside commit
        go.set()
        assert written.wait(10)

    j = Journal(tmp_path, segment_bytes=100)
    await j.open()
    for i in range(8):  # 26 bytes each: records 0-3 and 4-7 fill two segments
        await j.append(f"op-{i:06d}".encode())
    assert j.segment_count == 2
    monkeypatch.setattr(os, "fsync", fsync)
    appended = j.append(b"op-000008")  # rotates to a third segment
    await asyncio.to_thread(started.wait, 10)
    books = _PausingList(j._segments)
    books.pause = let_the_thread_write
    j._segments = books
    await j.commit(4)  # the first segment is in MongoDB
    assert await appended == 8
    assert go.is_set() and books.pause is None  # the interleaving happened
    monkeypatch.undo()
    assert j.segment_count == 2
    assert j.size == sum(p.stat().st_size for p in tmp_path.glob("*/*.wal"))
    j.spill()  # read back from the segments
    assert [s for s, _ in await read_all(j, 4)] == [4, 5, 6, 7, 8]
    await j.close(remove=True)


@pytest.mark.asyncio
async def test_a_restart_replays_only_what_mongodb_has_not_acknowledged(tmp_path: Path) -> None:
    old = Journal(tmp_path, segment_bytes=100)
    await old.open()
    for i in range(10):
        await old.append(f"op-{i:06d}".encode())
    await old.commit(7)  # MongoDB has 0..6
    await old.close(remove=False)  # a crash: the records stay, the lock goes

    new = Journal(tmp_path, segment_bytes=100)
    await new.open()
    assert new.adopted == 3  # only the unacknowledged tail, nothing of it lost
    assert [p for _, p in await read_all(new, 0)] == [b"op-000007", b"op-000008", b"op-000009"]
    await new.append(b"own")
    await new.commit(new.durable)  # MongoDB has everything
    await new.close(remove=False)  # a second crash

    again = Journal(tmp_path, segment_bytes=100)
    await again.open()
    assert again.adopted == 0
    await again.close(remove=True)
    assert pending_records(tmp_path) == 0
