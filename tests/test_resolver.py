"""RESOLVE_HOSTS: parsing, matching, and real crawls over IPv4 and IPv6."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from crawler.resolver import ResolveConfig
from tests.conftest import assert_clean_log

if TYPE_CHECKING:
    from tests.conftest import DemoSite


@pytest.mark.parametrize(
    ("value", "host", "expected"),
    [
        ("shop-a.test:127.0.0.1", "shop-a.test", ("127.0.0.1",)),
        ("shop-a.test:127.0.0.1", "SHOP-A.test.", ("127.0.0.1",)),
        ("*.test:::1", "news.test", ("::1",)),
        ("*.test:::1", "a.b.test", ("::1",)),
        ("*.test:::1", "test", None),
        ("*.test:::1,shop-a.test:127.0.0.2", "shop-a.test", ("127.0.0.2",)),
        ("*.test:127.0.0.1,*.b.test:127.0.0.3", "x.b.test", ("127.0.0.3",)),
        (["x.test:[::1]", "x.test:127.0.0.1"], "x.test", ("::1", "127.0.0.1")),
        ({"x.test": ["::1", "127.0.0.1"]}, "x.test", ("::1", "127.0.0.1")),
        ({"x.test": "127.0.0.1"}, "y.test", None),
        ("", "x.test", None),
        (None, "x.test", None),
    ],
)
def test_lookup(value: object, host: str, expected: tuple[str, ...] | None) -> None:
    assert ResolveConfig.from_value(value).lookup(host) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("shop-a.test", "not of the form 'host:address'"),
        ("shop-a.test:localhost", "'localhost' .* is not an IP address"),
        ("*:127.0.0.1", "is not a hostname"),
        ("a*.test:127.0.0.1", "is not a hostname"),
        (42, "expected a dict, a list or a string"),
    ],
)
def test_invalid_values_name_the_setting(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"RESOLVE_HOSTS: .*{message}"):
        ResolveConfig.from_value(value)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_crawl_reaches_demo_site_over_ipv4_and_ipv6(
    demo_site: DemoSite, redis_url: str, run_crawl, address: str
) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as r:
        r.lpush("news:start_urls", f'{{"url": "{demo_site.url("news.test", "/list/1")}"}}')
    mark = demo_site.mark()
    result = run_crawl(
        "news",
        {"FRONTIER_IDLE_CLOSE_SECONDS": "1", "ITEM_PIPELINES": "{}", "DEPTH_LIMIT": "1"},
        env={"REDIS_URL": redis_url, "RESOLVE_HOSTS": f"*.test:{address}"},
    )
    assert result.returncode == 0, result.log[-3000:]
    assert_clean_log(result.log)
    seen = [r for r in demo_site.log(mark) if r["host"] == "news.test"]
    assert len(seen) == result.stats["downloader/response_count"] > 5
    assert {r["client"] for r in seen} == {address}


def test_invalid_setting_stops_the_crawl(redis_url: str, run_crawl) -> None:
    result = run_crawl("news", {"FRONTIER_IDLE_CLOSE_SECONDS": "1"},
                       env={"REDIS_URL": redis_url, "RESOLVE_HOSTS": "news.test:not-an-ip"})
    assert result.returncode != 0
    assert "RESOLVE_HOSTS: 'not-an-ip' (for 'news.test') is not an IP address" in result.log
