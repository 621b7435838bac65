"""``python -m bench demosite``: can the demo server outrun a Scrapy process?

Loads the demo server from a separate process with keep-alive connections
(raw asyncio client, gzip like Scrapy, item pages) for ``--seconds``, then
crawls the same site with one vanilla Scrapy process. The server must serve
far faster than a crawler fetches, or every other benchmark measures it.
Last line: ``{"server_requests_per_s", "scrapy_pages_per_s", "headroom"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from multiprocessing import get_context

from bench.harness import BenchServers, bench_site, emit, table, vanilla_cmd, vanilla_env


async def _load(port: int, host: str, items: int, connections: int, seconds: float) -> int:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = k
        while time.monotonic() < deadline:
            n = (n + connections) % items
            if n % 7 == 0:  # chunked pages: skip, to keep this client simple and cheap
                n += 1
            writer.write(f"GET /item/{n} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: gzip\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            done += 1
        writer.close()

    await asyncio.gather(*(worker(k) for k in range(connections)))
    return done


def _client(port: int, host: str, items: int, connections: int, seconds: float) -> int:
    return asyncio.run(_load(port, host, items, connections, seconds))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench demosite", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args(argv)
    site = bench_site(args.items)
    with BenchServers(site) as servers:
        assert servers.demo is not None
        # Warm the page cache, as a crawl's first pass would.
        _client(servers.demo.port, site.host, site.items, 8, 1)
        with get_context("spawn").Pool(1) as pool:
            before = servers.mark()
            started = time.monotonic()
            served = pool.apply(_client, (servers.demo.port, site.host, site.items, args.connections, args.seconds))
            elapsed = time.monotonic() - started
            logged = servers.mark() - before
        if logged != served:
            raise RuntimeError(f"client counted {served} responses, the server logged {logged}")
        # elapsed includes the client process's start-up: a conservative figure.
        server_rps = served / elapsed
        crawl = servers.crawl("vanilla_ci8", vanilla_cmd(servers.start_url, {"CONCURRENT_ITEMS": 8}),
                              vanilla_env(servers))
    print("\nDemo server capacity vs one Scrapy process")
    print(table([["demo server (1 client process)", round(server_rps)],
                 ["scrapy crawl (vanilla, CONCURRENT_ITEMS=8)", round(crawl.pages_per_s)]],
                ["what", "requests/s"]))
    emit({"server_requests_per_s": round(server_rps, 1), "scrapy_pages_per_s": round(crawl.pages_per_s, 1),
          "headroom": round(server_rps / crawl.pages_per_s, 2)})
    return 0
