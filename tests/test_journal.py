"""The write-ahead journal: group commit, segments, torn tails, orphan adoption."""

from __future__ import annotations

import asyncio
import fcntl
from typing import TYPE_CHECKING

from pipelines.journal import Journal, parse_segment, pending_records

if TYPE_CHECKING:
    from pathlib import Path


async def read_all(j: Journal, cursor: int) -> list[tuple[int, bytes]]:
    """What the writer does: read batches (each within one segment or the cache) until caught up."""
    out: list[tuple[int, bytes]] = []
    while batch := await j.read(cursor, 4):
        out += batch
        cursor = batch[-1][0] + 1
    return out


def test_append_read_commit_and_segments(tmp_path: Path) -> None:
    async def run() -> None:
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

    asyncio.run(run())


def test_torn_tail_is_ignored(tmp_path: Path) -> None:
    async def run() -> Path:
        j = Journal(tmp_path)
        await j.open()
        for i in range(3):
            await j.append(b"x" * 10 + bytes([i]))
        await j.close(remove=False)
        assert j.path is not None
        return j.path

    path = asyncio.run(run())
    (segment,) = path.glob("*.wal")
    data = segment.read_bytes()
    segment.write_bytes(data[:-4])  # a crash in the middle of the last write
    records, torn = parse_segment(segment.read_bytes())
    assert [s for s, _ in records] == [0, 1]
    assert torn > 0
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF
    assert len(parse_segment(bytes(corrupt))[0]) == 2


def test_orphans_are_adopted_in_order_live_journals_are_not(tmp_path: Path) -> None:
    async def run() -> None:
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

    asyncio.run(run())
    assert pending_records(tmp_path) == 6


def test_a_locked_directory_is_left_alone(tmp_path: Path) -> None:
    busy = tmp_path / "run-busy"
    busy.mkdir()
    with open(busy / "LOCK", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)

        async def run() -> int:
            j = Journal(tmp_path)
            await j.open()
            await j.close(remove=True)
            return j.adopted

        assert asyncio.run(run()) == 0
        assert busy.exists()
