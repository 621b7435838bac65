"""Judge a crawl by what the demo server saw: pure functions over its request log.

The records are the dicts ``GET /_demo/log`` returns (see :mod:`demosite.server`);
every function takes the whole list and a host, and ignores other hosts. To
leave some requests out (robots.txt, say), filter the list first.

Time of a request: ``t`` (request head received). Time of its bytes: a
response with a ``timeline`` delivered them along the piecewise-linear curve
through its samples ``[t, cumulative_bytes]``; any other response delivered
all its ``bytes`` at ``t_end`` (at ``t`` in records without ``t_end``). Windows
are half-open, ``[s, s + window_s)``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

Record = Mapping[str, Any]


def host_records(records: Iterable[Record], host: str) -> list[Record]:
    """The records of ``host``, ordered by request time ``t``."""
    return sorted((r for r in records if r.get("host") == host), key=lambda r: float(r["t"]))


def total_bytes(records: Iterable[Record], host: str) -> int:
    """Bytes the server handed to the kernel for ``host``."""
    return sum(int(r["bytes"]) for r in host_records(records, host))


def largest_response(records: Iterable[Record], host: str) -> Record | None:
    """The record of ``host`` with the most bytes (the earliest on a tie), or None."""
    best: Record | None = None
    for r in host_records(records, host):
        if best is None or int(r["bytes"]) > int(best["bytes"]):
            best = r
    return best


class _Curve:
    """Cumulative bytes C(x) of one host: piecewise linear, with jumps (point masses)."""

    def __init__(self, records: list[Record]) -> None:
        masses: dict[float, float] = {}
        slopes: dict[float, float] = {}
        for r in records:
            for (t0, c0), (t1, c1) in _segments(r):
                if t1 > t0:
                    slope = (c1 - c0) / (t1 - t0)
                    slopes[t0] = slopes.get(t0, 0.0) + slope
                    slopes[t1] = slopes.get(t1, 0.0) - slope
                elif c1 != c0:
                    masses[t0] = masses.get(t0, 0.0) + (c1 - c0)
        self.times = sorted(set(masses) | set(slopes))
        self.left: list[float] = []  # C(T_i-): bytes strictly before T_i
        self.right: list[float] = []  # C(T_i): bytes up to and including T_i
        self.slope: list[float] = []  # dC/dt on (T_i, T_i+1)
        total = 0.0
        slope = 0.0
        previous: float | None = None
        for t in self.times:
            if previous is not None:
                total += slope * (t - previous)
            self.left.append(total)
            total += masses.get(t, 0.0)
            self.right.append(total)
            slope += slopes.get(t, 0.0)
            self.slope.append(slope)
            previous = t

    def at(self, x: float, before: bool = False) -> float:
        """C(x), or C(x-) (bytes strictly before x) with ``before``."""
        i = bisect.bisect_right(self.times, x) - 1
        if i < 0:
            return 0.0
        if self.times[i] == x:
            return self.left[i] if before else self.right[i]
        return self.right[i] + self.slope[i] * (x - self.times[i])

    def in_window(self, s: float, window_s: float) -> float:
        """Bytes in [s, s + window_s)."""
        return self.at(s + window_s, before=True) - self.at(s, before=True)


def _segments(record: Record) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    nbytes = float(record["bytes"])
    end = float(record.get("t_end") or record["t"])
    timeline = record.get("timeline")
    if not timeline:
        return [((end, 0.0), (end, nbytes))]
    points = [(float(t), float(c)) for t, c in timeline]
    if points[0][1] != 0:
        points.insert(0, (points[0][0], 0.0))
    if points[-1][1] != nbytes:
        points.append((max(end, points[-1][0]), nbytes))
    return list(itertools.pairwise(points))


def _window_starts(records: list[Record], window_s: float, start: float | None, last: float) -> tuple[float, int]:
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, not {window_s}")
    origin = float(records[0]["t"]) if start is None else start
    count = max(1, math.floor((last - origin) / window_s) + 1)
    return origin, count


def bytes_per_window(records: Iterable[Record], host: str, window_s: float,
                     start: float | None = None) -> list[float]:
    """Bytes of ``host`` in consecutive windows ``[start + k*window_s, start + (k+1)*window_s)``.

    ``start`` defaults to the host's first request; windows run until the last
    byte. A long response's bytes are spread over the windows along its timeline.
    """
    recs = host_records(records, host)
    if not recs:
        return []
    curve = _Curve(recs)
    last = curve.times[-1] if curve.times else float(recs[-1]["t"])
    origin, count = _window_starts(recs, window_s, start, last)
    return [curve.in_window(origin + k * window_s, window_s) for k in range(count)]


def max_bytes_in_any_window(records: Iterable[Record], host: str, window_s: float) -> float:
    """The most bytes of ``host`` in any window of ``window_s`` seconds, over every start.

    Exact: bytes in [s, s + w) are piecewise linear in s between the curve's
    breakpoints b and b - w, so the supremum is at (or just after) one of them.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, not {window_s}")
    recs = host_records(records, host)
    curve = _Curve(recs)
    best = 0.0
    for b in curve.times:
        for s in (b, b - window_s):
            # [s, s + w) and its limit from the right, (s, s + w].
            best = max(best, curve.in_window(s, window_s), curve.at(s + window_s) - curve.at(s))
    return best


def crawl_span(records: Iterable[Record], host: str) -> tuple[float, float] | None:
    """From the first request of ``host`` to its last byte (a timeline's last sample or ``t_end``), or None."""
    recs = host_records(records, host)
    if not recs:
        return None
    ends = [t for r in recs for (_, (t, _)) in _segments(r)]
    return float(recs[0]["t"]), max([float(recs[0]["t"]), *ends])


def budget_use(records: Iterable[Record], host: str, budget: float, window_s: float) -> float:
    """How much of a byte budget of ``budget`` bytes per ``window_s`` a crawl of ``host`` used.

    Its mean rate over the budget's: all its bytes over ``budget`` times the
    windows it lasted (:func:`crawl_span`). It counts every byte and does not
    depend on where fixed windows fall: two crawls of the same bytes that
    take the same time score the same. A crawl that keeps every sliding window
    at ``budget`` scores 1.0 when paced evenly, and up to (k + 1) / k when it
    sends ``budget`` in bursts at the start of k + 1 windows (a short crawl:
    k windows long). 0.0 for a crawl of no duration.
    """
    if window_s <= 0 or budget <= 0:
        raise ValueError(f"budget and window_s must be > 0, not {budget} and {window_s}")
    span = crawl_span(records, host)
    if span is None or span[1] <= span[0]:
        return 0.0
    return total_bytes(records, host) * window_s / (budget * (span[1] - span[0]))


def request_times(records: Iterable[Record], host: str) -> list[float]:
    """Sorted request times ``t`` of ``host``."""
    return [float(r["t"]) for r in host_records(records, host)]


def requests_per_window(records: Iterable[Record], host: str, window_s: float,
                        start: float | None = None) -> list[int]:
    """Requests of ``host`` that started in each window ``[start + k*w, start + (k+1)*w)``."""
    recs = host_records(records, host)
    if not recs:
        return []
    times = [float(r["t"]) for r in recs]
    origin, count = _window_starts(recs, window_s, start, times[-1])
    counts = [0] * count
    for t in times:
        k = math.floor((t - origin) / window_s)
        if 0 <= k < count:
            counts[k] += 1
    return counts


def max_requests_in_any_window(records: Iterable[Record], host: str, window_s: float) -> int:
    """The most requests of ``host`` starting within any ``[s, s + window_s)``, over every s."""
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, not {window_s}")
    times = request_times(records, host)
    best = 0
    first = 0
    for last, t in enumerate(times):
        while t - times[first] >= window_s:
            first += 1
        best = max(best, last - first + 1)
    return best


def gaps(records: Iterable[Record], host: str) -> list[float]:
    """Seconds between consecutive request starts of ``host``, in time order."""
    times = request_times(records, host)
    return [b - a for a, b in itertools.pairwise(times)]


def min_gap(records: Iterable[Record], host: str) -> float | None:
    """The shortest time between two request starts of ``host``; None with fewer than two."""
    return min(gaps(records, host), default=None)


def requests_during(records: Iterable[Record], host: str, t0: float, t1: float) -> list[Record]:
    """Requests of ``host`` that started in ``[t0, t1)``."""
    return [r for r in host_records(records, host) if t0 <= float(r["t"]) < t1]


class FetchCount(NamedTuple):
    """How often one path was fetched."""

    complete: int  # the whole response reached the kernel
    truncated: int  # connection lost first (dropped connections included)

    @property
    def total(self) -> int:
        return self.complete + self.truncated


def _complete(record: Record) -> bool:
    return not record.get("truncated", False)


def fetch_counts(records: Iterable[Record], host: str) -> dict[str, FetchCount]:
    """Path -> how many fetches of it were complete and truncated."""
    counts: dict[str, list[int]] = {}
    for r in host_records(records, host):
        entry = counts.setdefault(str(r["path"]), [0, 0])
        entry[0 if _complete(r) else 1] += 1
    return {path: FetchCount(*c) for path, c in counts.items()}


def _is_success(status: int) -> bool:
    return 200 <= status < 300


def refetched_after_complete(records: Iterable[Record], host: str,
                             success: Callable[[int], bool] = _is_success) -> list[str]:
    """Sorted paths of ``host`` requested again after a response to them was fully sent.

    "Fully sent": not truncated, with a ``success`` status (2xx by default); "after":
    the later request's ``t`` is at or past that response's ``t_end``.
    """
    recs = host_records(records, host)
    finished: dict[str, list[tuple[float, int]]] = {}
    for i, r in enumerate(recs):
        if _complete(r) and success(int(r["status"])):
            finished.setdefault(str(r["path"]), []).append((float(r.get("t_end") or r["t"]), i))
    again = set()
    for i, r in enumerate(recs):
        path = str(r["path"])
        if any(end <= float(r["t"]) and j != i for end, j in finished.get(path, ())):
            again.add(path)
    return sorted(again)
