"""IPv6BindMiddleware: settings, address draws and meta handling, in-process.

The end-to-end tests, real crawls in a network namespace, are in
tests/test_e2e_ipv6_bind.py.
"""

from __future__ import annotations

import ipaddress
import math
from typing import TYPE_CHECKING, Any

import pytest
from scrapy import Request
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.settings import Settings
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from middlewares.ipv6_bind.addresses import AddressSource, Permutation
from middlewares.ipv6_bind.config import IPv6BindConfig
from middlewares.ipv6_bind.host_check import check_host_setup
from middlewares.ipv6_bind.middleware import IPv6BindMiddleware

if TYPE_CHECKING:
    from pathlib import Path

PREFIX = "2001:db8:6b1d::/64"
RESOLVER = {"TWISTED_DNS_RESOLVER": "crawler.resolver.StaticHostResolver"}
NET = ipaddress.IPv6Network(PREFIX)

# ---------------------------------------------------------------- settings


def _config(**settings: Any) -> IPv6BindConfig:
    return IPv6BindConfig.from_settings(Settings({"IPV6_BIND_PREFIXES": [PREFIX], **RESOLVER, **settings}))


def test_config_defaults_and_forms() -> None:
    config = _config()
    assert config.prefixes == (NET,)
    assert (config.policy, config.sticky_addresses) == ("sticky", 2)
    assert (config.sticky_requests, config.sticky_seconds) == (1000, 300)
    assert (config.ipv4_targets, config.partition, config.close_connections) == ("fetch", (0, 1), True)
    both = _config(IPV6_BIND_PREFIXES="2001:db8:1::/64, 2001:db8:2::/120")
    assert [str(p) for p in both.prefixes] == ["2001:db8:1::/64", "2001:db8:2::/120"]
    assert _config(IPV6_BIND_PARTITION="2/3").partition == (2, 3)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"TWISTED_DNS_RESOLVER": "scrapy.resolver.CachingThreadedResolver"},
         r"IPV6_BIND_ENABLED needs an IPv6-capable TWISTED_DNS_RESOLVER .*CachingThreadedResolver"),
        ({"IPV6_BIND_PREFIXES": ["10.0.0.0/8"]}, r"IPV6_BIND_PREFIXES: '10.0.0.0/8' is an IPv4 network"),
        ({"IPV6_BIND_PREFIXES": ["2001:db8::1/64"]},
         r"IPV6_BIND_PREFIXES: '2001:db8::1/64' is not a valid IPv6 prefix .*host bits set"),
        ({"IPV6_BIND_PREFIXES": ["2001:db8::/129"]}, r"IPV6_BIND_PREFIXES: '2001:db8::/129' is not a valid"),
        ({"IPV6_BIND_PREFIXES": "no-prefix"}, r"IPV6_BIND_PREFIXES: 'no-prefix' is not a valid"),
        ({"IPV6_BIND_PREFIXES": []}, r"IPV6_BIND_PREFIXES must list one or more IPv6 prefixes"),
        ({"IPV6_BIND_PREFIXES": None}, r"IPV6_BIND_PREFIXES must list one or more IPv6 prefixes"),
        ({"IPV6_BIND_PREFIXES": ["2001:db8::/64", "2001:db8::/96"]}, r"IPV6_BIND_PREFIXES: .* overlap"),
        ({"IPV6_BIND_POLICY": "random"}, r"IPV6_BIND_POLICY must be one of .*'random'"),
        ({"IPV6_BIND_IPV4_TARGETS": "skip"}, r"IPV6_BIND_IPV4_TARGETS must be one of .*'skip'"),
        ({"IPV6_BIND_STICKY_ADDRESSES": 0}, r"IPV6_BIND_STICKY_ADDRESSES must be an integer >= 1, got 0"),
        ({"IPV6_BIND_STICKY_REQUESTS": "many"}, r"IPV6_BIND_STICKY_REQUESTS must be an integer >= 0, got 'many'"),
        ({"IPV6_BIND_STICKY_SECONDS": -1}, r"IPV6_BIND_STICKY_SECONDS must be a number >= 0, got -1"),
        ({"IPV6_BIND_PARTITION": "2/2"}, r"IPV6_BIND_PARTITION must be 'i/n' .*'2/2'"),
        ({"IPV6_BIND_PARTITION": "first"}, r"IPV6_BIND_PARTITION must be 'i/n' .*'first'"),
        ({"IPV6_BIND_PREFIXES": ["2001:db8::5/128"], "IPV6_BIND_PARTITION": "0/2"},
         r"IPV6_BIND_PARTITION 0/2 leaves no address of 2001:db8::5/128"),
    ],
)
def test_invalid_settings_name_the_setting(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**settings)


def test_disabled_is_not_configured() -> None:
    crawler = get_crawler(settings_dict={"IPV6_BIND_ENABLED": False, "IPV6_BIND_PREFIXES": [PREFIX]})
    with pytest.raises(NotConfigured):
        build_from_crawler(IPv6BindMiddleware, crawler)


def test_invalid_prefix_stops_start_up() -> None:
    crawler = get_crawler(settings_dict={"IPV6_BIND_ENABLED": True, "IPV6_BIND_PREFIXES": ["192.0.2.0/24"], **RESOLVER})
    with pytest.raises(ValueError, match="IPV6_BIND_PREFIXES"):
        build_from_crawler(IPv6BindMiddleware, crawler)


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize("size", [1, 2, 3, 17, 255, 1000, 4096])
def test_permutation_is_a_bijection(size: int) -> None:
    perm = Permutation(size, b"k" * 32)
    assert sorted(perm[i] for i in range(size)) == list(range(size))


def test_small_prefix_is_used_up_before_any_reuse() -> None:
    source = AddressSource((ipaddress.IPv6Network("2001:db8::100/120"),))
    draws = [source.draw() for _ in range(255)]
    addresses = [a for a, _ in draws]
    assert len(set(addresses)) == 255  # every usable address once
    assert "2001:db8::100" not in addresses  # Subnet-Router anycast is skipped
    assert all(ipaddress.IPv6Address(a) in ipaddress.IPv6Network("2001:db8::100/120") for a in addresses)
    assert [w for _, w in draws] == [False] * 254 + [True]  # reuse is reported when it starts
    assert {source.draw()[0] for _ in range(255)} == set(addresses)  # next round: same set, new order


def test_partitions_split_a_small_prefix_between_workers() -> None:
    net = ipaddress.IPv6Network("2001:db8::/120")
    sources = [AddressSource((net,), (i, 3)) for i in range(3)]
    shares = [{source.draw()[0] for _ in range(85)} for source in sources]
    assert all(len(s) == 85 for s in shares)
    assert len(shares[0] | shares[1] | shares[2]) == 255  # disjoint, and together the whole prefix


def test_two_workers_draw_different_orders() -> None:
    one, two = AddressSource((NET,)), AddressSource((NET,))
    first = [one.draw()[0] for _ in range(1000)]
    assert len(set(first)) == 1000
    assert not set(first) & {two.draw()[0] for _ in range(1000)}


def test_draws_are_uniform_over_all_prefixes() -> None:
    big, small = ipaddress.IPv6Network("2001:db8:1::/116"), ipaddress.IPv6Network("2001:db8:2::/120")
    source = AddressSource((big, small))
    n = 4000
    in_small = sum(ipaddress.IPv6Address(source.draw()[0]) in small for _ in range(n))
    p = 255 / (4095 + 255)
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(in_small - n * p) < 6 * sigma, (in_small, n * p)


# ---------------------------------------------------------------- middleware, unit


def _middleware(**settings: Any) -> IPv6BindMiddleware:
    """The middleware, built in an async test (``is_asyncio_available()`` needs the running loop)."""
    crawler = get_crawler(settings_dict={
        "IPV6_BIND_ENABLED": True, "IPV6_BIND_PREFIXES": [PREFIX], "IPV6_BIND_SELF_CHECK": False, **RESOLVER,
        **settings})
    return build_from_crawler(IPv6BindMiddleware, crawler)


async def _run(mw: IPv6BindMiddleware, requests: list[Request]) -> list[Request]:
    for request in requests:
        assert await mw.process_request(request) is None
    return requests


def _stat(mw: IPv6BindMiddleware, name: str) -> Any:
    assert mw.crawler.stats is not None
    return mw.crawler.stats.get_value(f"ipv6_bind/{name}")


@pytest.mark.asyncio
async def test_per_request_binds_a_fresh_address_and_closes_the_connection() -> None:
    mw = _middleware(IPV6_BIND_POLICY="per_request")
    requests = await _run(mw, [Request(f"http://[::1]:8080/item/{i}") for i in range(200)])
    assert _stat(mw, "bound") == 200
    addresses = [r.meta["ipv6_bind_address"] for r in requests]
    assert len(set(addresses)) == 200
    assert all(ipaddress.IPv6Address(a) in NET for a in addresses)
    assert all(r.meta["bindaddress"] == (r.meta["ipv6_bind_address"], 0) for r in requests)
    assert all(r.headers[b"Connection"] == b"close" for r in requests)


@pytest.mark.asyncio
async def test_no_connection_header_over_http2() -> None:
    mw = _middleware(IPV6_BIND_POLICY="per_request",
                     DOWNLOAD_HANDLERS={"https": "scrapy.core.downloader.handlers.http2.H2DownloadHandler"})
    h2, h1 = await _run(mw, [Request("https://[::1]/"), Request("http://[::1]/")])
    assert b"Connection" not in h2.headers and "ipv6_bind_connection_close" not in h2.meta
    assert h2.meta["bindaddress"] == (h2.meta["ipv6_bind_address"], 0)
    assert h1.headers[b"Connection"] == b"close"


@pytest.mark.parametrize(
    ("per_host", "closing"),
    [
        (2, [4, 5, 10, 11]),  # 1 connection per address: its last request closes it
        (4, [2, 3, 4, 5, 8, 9, 10, 11]),  # 2 per address: its last 2 requests
    ],
)
@pytest.mark.asyncio
async def test_sticky_uses_k_addresses_in_turn_and_rotates_after_n_requests(per_host: int, closing: list[int]) -> None:
    mw = _middleware(IPV6_BIND_STICKY_ADDRESSES=2, IPV6_BIND_STICKY_REQUESTS=3, CONCURRENT_REQUESTS_PER_DOMAIN=per_host)
    requests = await _run(mw, [Request(f"http://[::1]/{i}") for i in range(12)])
    addresses = [r.meta["ipv6_bind_address"] for r in requests]
    # Slots alternate; each address serves 3 requests, then the slot draws a new one.
    assert len(set(addresses)) == 4
    assert addresses[0:6:2] == [addresses[0]] * 3 and addresses[1:6:2] == [addresses[1]] * 3
    assert addresses[6] not in addresses[:6]
    # The last requests of each address ask the server to close their connection,
    # one per connection the address holds (its share of the per-host concurrency).
    assert [i for i, r in enumerate(requests) if r.headers.get(b"Connection") == b"close"] == closing
    assert _stat(mw, "rotated/requests") == 2 and _stat(mw, "addresses") == 4


@pytest.mark.asyncio
async def test_sticky_rotates_after_t_seconds_and_per_website() -> None:
    mw = _middleware(IPV6_BIND_STICKY_ADDRESSES=1, IPV6_BIND_STICKY_REQUESTS=0, IPV6_BIND_STICKY_SECONDS=60)
    now = [1000.0]
    mw.clock = lambda: now[0]
    a = await _run(mw, [Request("http://[::1]/a"), Request("http://[::1]/b")])
    other = await _run(mw, [Request("http://[2001:db8:ffff::1]/")])
    now[0] += 60
    b = await _run(mw, [Request("http://[::1]/c")])
    assert a[0].meta["ipv6_bind_address"] == a[1].meta["ipv6_bind_address"]
    assert other[0].meta["ipv6_bind_address"] != a[0].meta["ipv6_bind_address"]  # another website
    assert b[0].meta["ipv6_bind_address"] != a[0].meta["ipv6_bind_address"]
    assert _stat(mw, "rotated/seconds") == 1
    assert all(b"Connection" not in r.headers for r in a + b)


@pytest.mark.asyncio
async def test_callers_keys_are_honoured() -> None:
    mw = _middleware()
    own = Request("http://[::1]/", meta={"bindaddress": ("2001:db8:ffff::9", 0)})
    dont = Request("http://[::1]/", meta={"ipv6_bind_dont_bind": True})
    pinned = Request("http://[::1]/", meta={"ipv6_bind_pin": "2001:db8:6b1d::42"})
    proxied = Request("http://[::1]/", meta={"proxy": "http://127.0.0.1:3128"})
    await _run(mw, [own, dont, pinned, proxied])
    assert own.meta["bindaddress"] == ("2001:db8:ffff::9", 0)
    assert "ipv6_bind_address" not in own.meta
    assert "bindaddress" not in dont.meta and "bindaddress" not in proxied.meta
    assert pinned.meta["bindaddress"] == ("2001:db8:6b1d::42", 0) == (pinned.meta["ipv6_bind_address"], 0)
    assert (_stat(mw, "skipped/bindaddress"), _stat(mw, "skipped/dont_bind"), _stat(mw, "pinned"),
            _stat(mw, "skipped/proxy")) == (1, 1, 1, 1)


@pytest.mark.parametrize("pin", ["2001:db8:ffff::1", "::1", "nowhere"])
@pytest.mark.asyncio
async def test_a_pin_outside_the_prefixes_is_refused(pin: str, caplog: pytest.LogCaptureFixture) -> None:
    """A pin outside IPV6_BIND_PREFIXES would be a spoofed source address: ignored, counted, logged once."""
    mw = _middleware()
    requests = await _run(mw, [Request(f"http://[::1]/{i}", meta={"ipv6_bind_pin": pin}) for i in range(3)])
    assert all(ipaddress.IPv6Address(r.meta["ipv6_bind_address"]) in mw.config.prefixes[0] for r in requests)
    assert all(r.meta["ipv6_bind_address"] != pin for r in requests)
    assert (_stat(mw, "pin_refused"), _stat(mw, "pinned"), _stat(mw, "bound")) == (3, None, 3)
    assert next(r.message for r in caplog.records if "ipv6_bind_pin" in r.message).startswith(
        f"Ignored meta ipv6_bind_pin {pin!r}")
    assert sum("ipv6_bind_pin" in r.message for r in caplog.records) == 1


@pytest.mark.asyncio
async def test_retries_and_redirects_are_decided_again() -> None:
    mw = _middleware(IPV6_BIND_POLICY="per_request")
    first = (await _run(mw, [Request("http://[::1]/busy/1")]))[0]
    retry = (await _run(mw, [first.copy()]))[0]  # what RetryMiddleware sends
    assert retry.meta["ipv6_bind_address"] != first.meta["ipv6_bind_address"]
    assert retry.headers.getlist(b"Connection") == [b"close"]
    moved = (await _run(mw, [first.replace(url="http://127.0.0.1/elsewhere")]))[0]  # a redirect to an IPv4 host
    assert "bindaddress" not in moved.meta and b"Connection" not in moved.headers
    assert _stat(mw, "rebound") == 2 and _stat(mw, "ipv4_only/fetched") == 1


@pytest.mark.asyncio
async def test_ipv4_targets_fetched_or_refused() -> None:
    fetched = (await _run(_middleware(), [Request("http://127.0.0.1/")]))[0]
    assert "bindaddress" not in fetched.meta
    mw = _middleware(IPV6_BIND_IPV4_TARGETS="refuse")
    with pytest.raises(IgnoreRequest, match="no IPv6 address and IPV6_BIND_IPV4_TARGETS is 'refuse'"):
        await _run(mw, [Request("http://127.0.0.1/")])
    assert _stat(mw, "ipv4_only/refused") == 1


def test_self_check_names_the_route_command(tmp_path: Path) -> None:
    table = tmp_path / "ipv6_route"
    # ::1/128 local, and 2001:db8:6b1d::/64 local: what `ip -6 route add local ... dev lo` leaves.
    table.write_text(
        "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 00000000 00000003 00000000 80200001       lo\n"
        "20010db86b1d00000000000000000000 40 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 00000400 00000001 00000000 80000001       lo\n"
    )
    lo_up = tmp_path / "flags"
    lo_up.write_text("0x9\n")
    with pytest.raises(RuntimeError, match=r"`ip -6 route add local 2001:db8:7::/64 dev lo`"):
        check_host_setup((ipaddress.IPv6Network("2001:db8:7::/64"),), table, lo_up)


def test_self_check_says_to_bring_loopback_up_first(tmp_path: Path) -> None:
    lo_down = tmp_path / "flags"
    lo_down.write_text("0x8\n")  # what a fresh network namespace's lo has: IFF_UP unset
    with pytest.raises(RuntimeError, match=r"lo is down: run `ip link set lo up`, then "
                                           r"`ip -6 route add local 2001:db8:7::/64 dev lo`"):
        check_host_setup((ipaddress.IPv6Network("2001:db8:7::/64"),), tmp_path / "no-table", lo_down)
