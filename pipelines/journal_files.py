"""The journal's files: record framing, the ACKED position, private folders and files.

Pure functions and plain file I/O, the latter run in worker threads by
:class:`pipelines.journal.Journal`; none of it touches the journal's books.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_HEADER = struct.Struct("<IIQ")
_SEQ = struct.Struct("<Q")
_ACK = struct.Struct("<QI")  # seq, crc32 of the packed seq
_ACKED = "ACKED"


def frame(seq: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq))), seq) + payload


def parse_segment(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """Records of a segment file's content, and how many bytes at its end were torn."""
    records = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc, seq = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        payload = data[start:start + length]
        if len(payload) < length or zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq))) != crc:
            break
        records.append((seq, payload))
        pos = start + length
    return records, len(data) - pos


def private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, readable by the owner only (they hold scraped data)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)


def private_file(path: Path, flags: int, mode: str) -> IO[bytes]:
    return os.fdopen(os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600), mode)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_segment(file: IO[bytes] | None, new_segment: Path | None, data: bytes) -> IO[bytes]:
    """Worker-thread side of an append: file I/O only. Returns the file now written to."""
    if new_segment is not None:
        if file is not None:
            file.close()
        file = private_file(new_segment, os.O_WRONLY | os.O_APPEND, "ab")
        fsync_dir(new_segment.parent)
    assert file is not None
    file.write(data)
    file.flush()
    os.fsync(file.fileno())
    return file


def read_acked(run: Path) -> int:
    """The acknowledged position of a run folder: every seq below is in MongoDB (0 if unknown)."""
    try:
        data = (run / _ACKED).read_bytes()
    except FileNotFoundError:
        return 0
    if len(data) != _ACK.size:
        return 0
    seq, crc = _ACK.unpack(data)
    return int(seq) if zlib.crc32(_SEQ.pack(seq)) == crc else 0


def commit_acked(run: Path, upto: int, done: list[Path]) -> None:
    """Worker-thread side of a commit: persist the acknowledged position atomically, delete done segments."""
    tmp = run / f"{_ACKED}.tmp"
    with private_file(tmp, os.O_WRONLY | os.O_TRUNC, "wb") as f:
        f.write(_ACK.pack(upto, zlib.crc32(_SEQ.pack(upto))))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run / _ACKED)
    for path in done:
        path.unlink(missing_ok=True)
    fsync_dir(run)
