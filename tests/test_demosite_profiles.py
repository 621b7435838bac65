"""Demo site profiles judged by the server's own log, and the log analysis itself.

The server tests run against a private demo server with the profile sites;
they wait for events (log records, admin answers) and never assert on
wall-clock durations.
"""

from __future__ import annotations

import email.utils
import gzip
import itertools
import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from demosite import analysis, profiles
from demosite.sites import SiteConfig, render, sites_from_json, sites_to_json
from devtools.services import start_demosite
from tests.conftest import DemoSite
from tests.test_demosite import dechunk

if TYPE_CHECKING:
    from collections.abc import Iterator

H = "a.test"


def rec(t: float, nbytes: int, path: str = "/", host: str = H, **extra: Any) -> dict[str, Any]:
    return {"t": t, "host": host, "path": path, "status": 200, "bytes": nbytes, "t_end": t, "truncated": False,
            **extra}


# ---- analysis on hand-made records -------------------------------------------------------------


def test_bytes_per_window_spreads_a_long_response_along_its_timeline() -> None:
    # 1000 bytes from t=10 to t=20 (linear), plus a small response at t=12.
    records = [
        rec(10.0, 1000, "/big", t_end=20.0, timeline=[[10.0, 0], [15.0, 500], [20.0, 1000]]),
        rec(12.0, 50, "/small"),
        rec(12.0, 999, host="other.test"),
    ]
    assert analysis.bytes_per_window(records, H, 5.0) == pytest.approx([550.0, 500.0, 0.0])
    # a timeline that is not linear: the first half in 1 s, the second in 9 s
    records[0]["timeline"] = [[10.0, 0], [11.0, 500], [20.0, 1000]]
    assert analysis.bytes_per_window(records, H, 5.0, start=10.0)[0] == pytest.approx(500 + 50 + 500 * 4 / 9)
    assert analysis.total_bytes(records, H) == 1050


def test_max_bytes_in_any_window_is_the_sliding_worst_case() -> None:
    # Fixed 10 s windows from t=0 see at most 600 bytes; the window [5, 15) sees 1200.
    records = [rec(6.0, 600, "/a"), rec(14.0, 600, "/b"), rec(30.0, 100, "/c")]
    assert max(analysis.bytes_per_window(records, H, 10.0, start=0.0)) == 600
    assert analysis.max_bytes_in_any_window(records, H, 10.0) == 1200
    # half-open windows: two responses exactly 10 s apart never share one
    assert analysis.max_bytes_in_any_window([rec(0.0, 5), rec(10.0, 7)], H, 10.0) == 7


def test_max_bytes_in_any_window_over_a_timeline() -> None:
    # 2 MB at 0.5 MB/s (t=0..4) and a 1 MB burst at t=5. The worst 2 s window
    # ends just after the burst and starts at 3 (a breakpoint minus the window):
    # 0.5 MB of the stream plus the burst.
    mb = 1_000_000
    records = [
        rec(0.0, 2 * mb, "/stream", t_end=4.0, timeline=[[0.0, 0], [2.0, mb], [4.0, 2 * mb]]),
        rec(5.0, mb, "/burst"),
    ]
    assert analysis.max_bytes_in_any_window(records, H, 2.0) == pytest.approx(1.5 * mb)
    assert max(analysis.bytes_per_window(records, H, 2.0)) == pytest.approx(mb)
    assert analysis.max_bytes_in_any_window(records, H, 0.5) == pytest.approx(mb)
    assert analysis.max_bytes_in_any_window(records, H, 100.0) == pytest.approx(3 * mb)
    assert analysis.largest_response(records, H)["path"] == "/stream"  # type: ignore[index]


def test_requests_windows_and_gaps() -> None:
    records = [rec(t, 10, f"/{i}") for i, t in enumerate((0.0, 1.0, 1.5, 4.0, 4.0, 9.0))]
    assert analysis.gaps(records, H) == pytest.approx([1.0, 0.5, 2.5, 0.0, 5.0])
    assert analysis.min_gap(records, H) == 0.0
    assert analysis.min_gap(records[:1], H) is None
    assert analysis.requests_per_window(records, H, 2.0) == [3, 0, 2, 0, 1]
    assert analysis.max_requests_in_any_window(records, H, 3.0) == 3  # [1.0, 4.0) holds 1.0, 1.5 ... not 4.0
    assert analysis.max_requests_in_any_window(records, H, 3.1) == 4  # [1.0, 4.1) holds 1.0, 1.5, 4.0, 4.0
    assert [r["t"] for r in analysis.requests_during(records, H, 1.0, 4.0)] == [1.0, 1.5]


def test_fetch_counts_and_refetched_after_complete() -> None:
    records = [
        rec(0.0, 100, "/a", t_end=1.0),
        rec(0.5, 100, "/a", t_end=1.2),  # started before the first /a was sent: concurrent, not a refetch
        rec(0.0, 30, "/b", t_end=2.0, truncated=True),
        rec(3.0, 100, "/b", t_end=4.0),  # a retry after a truncated response is fine
        rec(5.0, 100, "/c", status=429),
        rec(6.0, 100, "/c"),  # and after a 429
        rec(7.0, 100, "/d"),
        rec(8.0, 100, "/d"),  # a real refetch
        rec(9.0, 100, "/a"),  # and another
    ]
    counts = analysis.fetch_counts(records, H)
    assert counts["/b"] == analysis.FetchCount(complete=1, truncated=1)
    assert counts["/a"].total == 3
    assert analysis.refetched_after_complete(records, H) == ["/a", "/d"]
    assert analysis.refetched_after_complete(records[:4], H) == []


# ---- the server -------------------------------------------------------------------------------

MB = 1_000_000
HUGE = 5 * MB
# No rate cap: the flow-control tests need the server to send as fast as the client reads.
MIXED = profiles.mixed_sizes("mixed.test", items=30, huge_every=10, huge_bytes=(HUGE, HUGE), stream_bytes_per_s=0)
PLAIN_HUGE = SiteConfig(host="cl.test", items=10, huge_every=5, huge_bytes_min=300_000, huge_bytes_max=300_000,
                        huge_chunked=False, chunked_every=100)
SMALL = profiles.small_with_one_big("small.test", items=10)
LIMITED = profiles.rate_limited("limited.test", status=429, retry_after=8, for_seconds=3600)
DELAY = profiles.crawl_delay("delay.test", 2.5, request_rate="1/5")
FLAKY = profiles.flaky("flaky.test", status=0, after_seconds=0, for_seconds=3600)
SLOW = profiles.slow("slow.test", slow_ms=300, every=2, stream_bytes_per_s=2 * MB, huge_every=5,
                     huge_bytes_min=600_000, huge_bytes_max=600_000)
ADMIN = SiteConfig(host="admin.test", items=20)
SITES = (MIXED, PLAIN_HUGE, SMALL, LIMITED, DELAY, FLAKY, SLOW, ADMIN)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSite]:
    # 127.0.0.2 is loopback too (127/8): a second address that can stop listening.
    server = start_demosite(tmp_path_factory.mktemp("profiles"), SITES, binds=("127.0.0.1", "::1", "127.0.0.2"))
    yield DemoSite(server)
    server.stop()


def request(port: int, host: str, path: str, headers: str = "", close: bool = True) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{conn}{headers}\r\n".encode()


def get(site: DemoSite, host: str, path: str, headers: str = "", address: str = "127.0.0.1") -> bytes:
    """One request on a fresh connection; every byte received until the server closes."""
    with socket.create_connection((address, site.port), timeout=30) as s:
        s.sendall(request(site.port, host, path, headers))
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def admin(site: DemoSite, call: str) -> Any:
    with urllib.request.urlopen(f"{site.server.url}/_demo/{call}", timeout=10) as r:
        return json.loads(r.read())


def finished(site: DemoSite, mark: int, host: str, path: str, count: int = 1) -> list[dict[str, Any]]:
    """The first ``count`` records of host+path since ``mark``, once the server has finished them."""
    deadline = time.monotonic() + 30  # a bound on waiting, not a timing assertion
    while True:
        recs = [r for r in site.log(mark) if r["host"] == host and r["path"] == path]
        if len(recs) >= count and all(r["t_end"] is not None for r in recs[:count]):
            return recs[:count]
        assert time.monotonic() < deadline, f"server did not finish {host}{path}: {recs}"
        time.sleep(0.02)


def check_timeline(rec: dict[str, Any]) -> None:
    tl = rec["timeline"]
    assert tl[0][1] == 0 and tl[-1] == [rec["t_end"], rec["bytes"]]
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in itertools.pairwise(tl[:-1]))
    assert tl[-2][1] <= tl[-1][1]  # the final [t_end, bytes] may add no bytes
    assert all(b[1] - a[1] >= 256 * 1024 for a, b in itertools.pairwise(tl[:-1]))


def test_profiles_round_trip_through_json() -> None:
    assert sites_from_json(sites_to_json(SITES)) == SITES
    with pytest.raises(ValueError, match="huge_bytes_max"):
        SiteConfig(host="x.test", huge_bytes_min=10, huge_bytes_max=5)
    with pytest.raises(ValueError, match="fail_status"):
        SiteConfig(host="x.test", fail_status=7)


def test_page_sizes_are_exact_and_deterministic() -> None:
    assert [len(render(SMALL, f"/item/{n}").body) for n in range(10)] == [800] * 9 + [24_000]
    assert MIXED.huge_items() == [9, 19, 29]
    sizes = [len(render(MIXED, f"/item/{n}").body) for n in range(30)]
    assert all(2_000 <= s <= 20_000 for n, s in enumerate(sizes) if n not in (9, 19, 29))
    assert [sizes[n] for n in (9, 19, 29)] == [HUGE] * 3
    huge = render(MIXED, "/item/9")
    assert huge.chunked and not huge.compress and huge.body.endswith(b"</body></html>\n")
    assert huge.body == render(MIXED, "/item/9").body
    assert huge.body != render(MIXED, "/item/19").body


def test_huge_chunked_page_logged_with_every_byte_and_a_timeline(site: DemoSite) -> None:
    mark = site.mark()
    raw = get(site, MIXED.host, "/item/9", "Accept-Encoding: gzip\r\n")
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
    assert b"Content-Encoding" not in head  # huge pages are not gzipped
    body = dechunk(payload)
    assert body == render(MIXED, "/item/9").body
    pieces = -(-HUGE // (16 * 1024))
    framing = sum(len(b"%x\r\n\r\n" % len(body[i : i + 16384])) for i in range(0, HUGE, 16384)) + len(b"0\r\n\r\n")
    assert pieces == 306 and len(payload) == HUGE + framing
    (rec,) = finished(site, mark, MIXED.host, "/item/9")
    assert rec["bytes"] == len(raw) == len(head) + 4 + HUGE + framing
    assert rec["truncated"] is False and rec["status"] == 200
    check_timeline(rec)


def test_client_that_stops_reading_stops_the_server(site: DemoSite) -> None:
    mark = site.mark()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        rcvbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        s.connect(("127.0.0.1", site.port))
        s.sendall(request(site.port, MIXED.host, "/item/19"))
        received = 0
        while received < 100_000:
            received += len(s.recv(65536))
    # Closed with unread data: the kernel resets the connection.
    (rec,) = finished(site, mark, MIXED.host, "/item/19")
    assert rec["truncated"] is True
    # The server writes only what the kernel accepts: its send buffer (at most
    # tcp_wmem's maximum, 4 MB by default), our receive buffer, and one 16 KB
    # piece left in asyncio's buffer. Without flow control it would be all 5 MB.
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    bound = min(4 * MB, wmem_max) + 2 * rcvbuf + 64 * 1024
    assert bound < HUGE
    assert received - rec.get("unsent", 0) <= rec["bytes"] < bound
    check_timeline(rec)


def test_content_length_huge_page_and_pipelined_requests_after_it(site: DemoSite) -> None:
    mark = site.mark()
    with socket.create_connection(("127.0.0.1", site.port), timeout=30) as s:
        # Both requests at once: the second waits until the streamed first is sent.
        s.sendall(request(site.port, PLAIN_HUGE.host, "/item/4", close=False)
                  + request(site.port, PLAIN_HUGE.host, "/item/1"))
        raw = b""
        while chunk := s.recv(1 << 20):
            raw += chunk
    (first,) = finished(site, mark, PLAIN_HUGE.host, "/item/4")
    (second,) = finished(site, mark, PLAIN_HUGE.host, "/item/1")
    body4 = render(PLAIN_HUGE, "/item/4").body
    body1 = render(PLAIN_HUGE, "/item/1").body
    assert len(body4) == 300_000
    assert b"Content-Length: 300000\r\n" in raw[:1000]
    assert raw.count(body4) == 1 and raw.endswith(body1)
    assert raw.index(body4) < raw.index(body1)
    assert first["bytes"] + second["bytes"] == len(raw)
    assert first["conn"] == second["conn"] and first["t_end"] <= second["t_end"]
    check_timeline(first)
    assert "timeline" not in second


def test_gzip_when_asked_for_ordinary_pages(site: DemoSite) -> None:
    mark = site.mark()
    raw = get(site, MIXED.host, "/item/3", "Accept-Encoding: gzip\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head and b"Content-Length: %d" % len(body) in head
    assert gzip.decompress(body) == render(MIXED, "/item/3").body
    (rec,) = finished(site, mark, MIXED.host, "/item/3")
    assert rec["bytes"] == len(raw) and "timeline" not in rec


def test_robots_txt_carries_crawl_delay(site: DemoSite) -> None:
    _, _, body = get(site, DELAY.host, "/robots.txt").partition(b"\r\n\r\n")
    assert body == b"User-agent: *\nDisallow: /private/\nCrawl-delay: 2.5\nRequest-rate: 1/5\n"
    _, _, plain = get(site, ADMIN.host, "/robots.txt").partition(b"\r\n\r\n")
    assert b"Crawl-delay" not in plain


def test_configured_rate_limit_spares_robots_txt(site: DemoSite) -> None:
    assert b" 200 " in get(site, LIMITED.host, "/robots.txt").split(b"\r\n")[0]
    head = get(site, LIMITED.host, "/item/1").partition(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 429 ") and "\r\nRetry-After: 8\r\n" in head


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def test_throttle_admin_call_then_200_once_the_span_ends(site: DemoSite) -> None:
    mark = site.mark()
    span = admin(site, f"throttle?host={ADMIN.host}&seconds=0.5&status=429&retry_after=3")
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while not seen or seen[-1] != 200:
        raw = get(site, ADMIN.host, "/item/2")
        seen.append(status_of(raw))
        if seen[-1] == 429:
            assert b"\r\nRetry-After: 3\r\n" in raw
        assert time.monotonic() < deadline
    # Judge by the server's clock: 429 before the span's end, 200 after it.
    recs = [r for r in site.log(mark) if r["host"] == ADMIN.host]
    assert [r["status"] for r in recs] == seen
    assert all((r["status"] == 429) == (r["t"] < span["end"]) for r in recs)
    assert analysis.requests_during(recs, ADMIN.host, span["end"], float("inf")) == recs[-1:]


def test_throttle_without_retry_after_and_with_an_http_date(site: DemoSite) -> None:
    admin(site, f"throttle?host={ADMIN.host}&seconds=600&status=503")
    head = get(site, ADMIN.host, "/item/3").partition(b"\r\n\r\n")[0]
    assert status_of(head) == 503 and b"Retry-After" not in head
    assert status_of(get(site, ADMIN.host, "/robots.txt")) == 200
    admin(site, f"clear?host={ADMIN.host}")
    span = admin(site, f"throttle?host={ADMIN.host}&seconds=600&retry_after=120&date=1")
    raw = get(site, ADMIN.host, "/item/3")
    found = re.search(rb"\r\nRetry-After: ([^\r]*)\r\n", raw)
    assert status_of(raw) == 429 and found is not None
    when = email.utils.parsedate_to_datetime(found[1].decode())
    # An HTTP-date (whole seconds) 120 s after the answer was made, which is after the span began.
    assert when.tzinfo is not None and when.timestamp() >= int(span["start"]) + 120
    admin(site, f"clear?host={ADMIN.host}")
    assert status_of(get(site, ADMIN.host, "/item/3")) == 200
    assert admin(site, f"conditions?host={ADMIN.host}") == []


@pytest.mark.parametrize("call", ["throttle?host=nope.test&seconds=1", "fail?host=admin.test",
                                  "fail?host=admin.test&seconds=1&status=7", "slow?host=admin.test&seconds=1"])
def test_bad_admin_calls_get_400(site: DemoSite, call: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{site.server.url}/_demo/{call}", timeout=10)
    assert info.value.code == 400
    info.value.close()


def read_all(site: DemoSite, host: str, path: str) -> bytes:
    try:
        return get(site, host, path)
    except ConnectionResetError:
        return b""


def test_dropped_connections_and_error_spans(site: DemoSite) -> None:
    mark = site.mark()
    # flaky.test is down from its first request on, robots.txt included.
    assert read_all(site, FLAKY.host, "/robots.txt") == b""
    assert read_all(site, FLAKY.host, "/item/1") == b""
    recs = finished(site, mark, FLAKY.host, "/item/1")
    assert recs[0]["status"] == 0 and recs[0]["dropped"] is True and recs[0]["bytes"] == 0
    assert recs[0]["truncated"] is True
    assert analysis.fetch_counts(site.log(mark), FLAKY.host)["/item/1"] == analysis.FetchCount(0, 1)

    admin(site, f"fail?host={ADMIN.host}&seconds=600&status=502")
    assert status_of(get(site, ADMIN.host, "/robots.txt")) == 502
    admin(site, f"clear?host={ADMIN.host}")
    admin(site, f"fail?host={ADMIN.host}&seconds=600&status=0")
    assert read_all(site, ADMIN.host, "/item/4") == b""
    admin(site, f"clear?host={ADMIN.host}")
    assert status_of(get(site, ADMIN.host, "/item/4")) == 200


def test_slow_responses_wait_before_the_head(site: DemoSite) -> None:
    mark = site.mark()
    assert status_of(get(site, SLOW.host, "/item/2")) == 200
    (rec,) = finished(site, mark, SLOW.host, "/item/2")
    # A lower bound on the server's own clock holds on a busy machine too.
    assert rec["t_end"] - rec["t"] >= 0.29


def test_streaming_rate_cap(site: DemoSite) -> None:
    mark = site.mark()
    raw = get(site, SLOW.host, "/item/9")  # huge (600 KB), not slow (9 % 2)
    (rec,) = finished(site, mark, SLOW.host, "/item/9")
    assert rec["bytes"] == len(raw) > 600_000
    check_timeline(rec)
    # 600 KB at 2 MB/s: the last piece leaves no earlier than 0.29 s after the first,
    # and no stretch of the timeline carries more than the rate allows plus two pieces.
    tl = rec["timeline"]
    assert tl[-1][0] - tl[0][0] >= 0.29
    for (t0, c0), (t1, c1) in itertools.combinations(tl, 2):
        assert c1 - c0 <= SLOW.stream_bytes_per_s * (t1 - t0) + 2 * 16 * 1024 + 1024


def test_a_listener_that_stops_refuses_connections(site: DemoSite) -> None:
    assert status_of(get(site, ADMIN.host, "/item/5", address="127.0.0.2")) == 200
    with socket.create_connection(("127.0.0.2", site.port), timeout=30) as kept:
        assert admin(site, "listen?address=127.0.0.2&on=0") == {"address": "127.0.0.2", "listening": False}
        with pytest.raises(ConnectionRefusedError):
            get(site, ADMIN.host, "/item/5", address="127.0.0.2")
        assert status_of(get(site, ADMIN.host, "/item/5")) == 200  # the other addresses still answer
        # a connection made before keeps working
        kept.sendall(request(site.port, ADMIN.host, "/item/6"))
        assert kept.recv(12) == b"HTTP/1.1 200"
    assert admin(site, "listen?address=127.0.0.2&on=1") == {"address": "127.0.0.2", "listening": True}
    assert status_of(get(site, ADMIN.host, "/item/5", address="127.0.0.2")) == 200


@pytest.mark.parametrize("call", ["listen?address=127.0.0.1&on=0", "listen?address=127.0.0.3&on=0"])
def test_listen_refuses_the_admin_address_and_unknown_ones(site: DemoSite, call: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{site.server.url}/_demo/{call}", timeout=10)
    assert info.value.code == 400
    info.value.close()


def test_budget_use_is_the_crawls_rate_wherever_the_windows_fall() -> None:
    # Two crawls of 3,000 bytes over the same 9 s (b = 1,000 per 4 s): one
    # sends most of its bytes early, the other late. Fixed windows from the
    # first request without the last partial one ([8, 9) left out) scored
    # them 1.25 and 0.67; both used the budget at 3000 / (1000 * 9 / 4).
    early = [rec(0.0, 1500, "/a"), rec(4.0, 1000, "/b"), rec(9.0, 500, "/c")]
    late = [rec(0.0, 500, "/a"), rec(7.5, 2500, "/b", t_end=9.0, timeline=[[7.5, 0], [9.0, 2500]])]
    for records in (early, late):
        assert analysis.crawl_span(records, H) == (0.0, 9.0)
        assert analysis.budget_use(records, H, 1000, 4.0) == pytest.approx(3000 / 2250)
    grid = [sum(analysis.bytes_per_window(r, H, 4.0)[:-1]) / 2000 for r in (early, late)]
    assert grid == pytest.approx([1.25, (500 + 2500 / 3) / 2000])
    assert analysis.crawl_span(early, "other.test") is None
    assert analysis.budget_use([rec(1.0, 10)], H, 1000, 4.0) == 0.0  # no duration
    with pytest.raises(ValueError, match="must be > 0"):
        analysis.budget_use(early, H, 0, 4.0)
