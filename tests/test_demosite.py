"""The demo site server: routing, encodings, failures, and its request log."""

from __future__ import annotations

import gzip
import json
import socket
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest

from demosite.sites import DEFAULT_SITES, SiteConfig, item_data, render, sites_from_json, sites_to_json

if TYPE_CHECKING:
    from tests.conftest import DemoSite


def raw_get(port: int, host: str, path: str, headers: str = "", family: int = socket.AF_INET) -> bytes:
    """One HTTP/1.1 request on a fresh connection; returns every byte received."""
    addr = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect((addr, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


def dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out += rest[:size]
        body = rest[size + 2 :]


def last_record(site: DemoSite, mark: int) -> dict:
    for _ in range(50):
        records = site.log(mark)
        if records:
            return records[-1]
        time.sleep(0.02)
    raise AssertionError("no log record")


def test_sites_are_told_apart_by_host(demo_site: DemoSite) -> None:
    status_a, _, body_a = split(raw_get(demo_site.port, "shop-a.test", "/"))
    status_n, _, body_n = split(raw_get(demo_site.port, "news.test", "/"))
    assert status_a.endswith("200 OK") and status_n.endswith("200 OK")
    assert b"<h1>shop-a.test</h1>" in body_a
    assert b"<h1>news.test</h1>" in body_n
    status, _, _ = split(raw_get(demo_site.port, "unknown.test", "/"))
    assert " 404 " in status


def test_item_page_carries_the_structured_data(demo_site: DemoSite) -> None:
    site = SiteConfig(host="shop-a.test", kind="shop", items=300, page_bytes=2000)
    _, _, body = split(raw_get(demo_site.port, "shop-a.test", "/item/5"))
    data = item_data(site, 5)
    assert f'itemprop="sku">{data["sku"]}<'.encode() in body
    assert f'content="{data["price"]:.2f}"'.encode() in body


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_wire_bytes_logged_exactly(demo_site: DemoSite, family: int) -> None:
    mark = demo_site.mark()
    raw = raw_get(demo_site.port, "shop-b.test", "/item/3", family=family)
    rec = last_record(demo_site, mark)
    assert rec["bytes"] == len(raw)
    assert rec["path"] == "/item/3" and rec["host"] == "shop-b.test" and rec["status"] == 200
    assert rec["client"] == ("127.0.0.1" if family == socket.AF_INET else "::1")
    assert rec["port"] > 0


def test_gzip_on_request_and_chunked_pages(demo_site: DemoSite) -> None:
    # item 7 of every site is chunked (chunked_every=7) and has no Content-Length.
    mark = demo_site.mark()
    raw = raw_get(demo_site.port, "shop-a.test", "/item/7", "Accept-Encoding: gzip\r\n")
    _, headers, body = split(raw)
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert headers["content-encoding"] == "gzip"
    html = gzip.decompress(dechunk(body))
    assert html == render(SiteConfig(host="shop-a.test", items=300), "/item/7").body
    assert last_record(demo_site, mark)["bytes"] == len(raw)

    _, headers, body = split(raw_get(demo_site.port, "shop-a.test", "/item/8"))
    assert int(headers["content-length"]) == len(body)
    assert "content-encoding" not in headers


@pytest.mark.parametrize(
    ("path", "status", "header"),
    [
        ("/go/10", 301, ("location", "/item/10")),
        ("/missing/1", 404, None),
        ("/broken/1", 500, None),
        ("/busy/1", 429, ("retry-after", "1")),
        ("/item/99999", 404, None),
        ("/robots.txt", 200, ("content-type", "text/plain")),
    ],
)
def test_redirects_and_failures(demo_site: DemoSite, path: str, status: int, header: tuple[str, str] | None) -> None:
    line, headers, _ = split(raw_get(demo_site.port, "shop-a.test", path))
    assert line.split(" ")[1] == str(status)
    if header:
        assert headers[header[0]] == header[1]


def test_keep_alive_connection_reused(demo_site: DemoSite) -> None:
    mark = demo_site.mark()
    with socket.create_connection(("127.0.0.1", demo_site.port), timeout=5) as s:
        for n in (1, 2):
            s.sendall(f"GET /item/{n} HTTP/1.1\r\nHost: news.test\r\n\r\n".encode())
            data = b""
            while b"</html>" not in data:
                data += s.recv(65536)
    records = [r for r in demo_site.log(mark) if r["host"] == "news.test"]
    assert len(records) == 2
    assert records[0]["conn"] == records[1]["conn"]
    assert records[0]["port"] == records[1]["port"]


def test_admin_paths_are_not_logged(demo_site: DemoSite) -> None:
    mark = demo_site.mark()
    demo_site.log(mark)
    assert demo_site.mark() == mark


def test_slow_span_delays_every_answer_but_robots_txt(demo_site: DemoSite) -> None:
    host = DEFAULT_SITES[0].host
    mark = demo_site.mark()
    admin = f"{demo_site.server.url}/_demo/%s?host={host}"
    with urllib.request.urlopen(admin % "slow" + "&seconds=600&ms=2000", timeout=10) as r:
        assert json.loads(r.read())["kind"] == "slow"
    try:
        assert split(raw_get(demo_site.port, host, "/list/1"))[0].endswith(" 200 OK")
        assert split(raw_get(demo_site.port, host, "/robots.txt"))[0].endswith(" 200 OK")
    finally:
        urllib.request.urlopen(admin % "clear", timeout=10).close()
    assert split(raw_get(demo_site.port, host, "/list/1"))[0].endswith(" 200 OK")
    # The server's own times: /list/1 answered >= 2 s after the request while slow (1 ms: the
    # log's rounding); robots.txt, and /list/1 after the span, not held back (bound: < 2 s, a
    # margin of 2 s for a busy machine on a ~1 ms answer).
    slow, robots, fast = [r for r in demo_site.log(mark) if r["host"] == host]
    assert slow["t_end"] - slow["t"] >= 2 - 0.001
    assert robots["t_end"] - robots["t"] < 2 and fast["t_end"] - fast["t"] < 2


def test_site_config_round_trip_and_validation() -> None:
    assert sites_from_json(sites_to_json(DEFAULT_SITES)) == DEFAULT_SITES
    with pytest.raises(ValueError, match="kind"):
        SiteConfig(host="x.test", kind="blog")
    with pytest.raises(ValueError, match="items"):
        SiteConfig(host="x.test", items=0)
    with pytest.raises(ValueError, match="unknown site keys"):
        sites_from_json('[{"host": "x.test", "colour": "red"}]')
