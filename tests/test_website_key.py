"""The shared website key function."""

from __future__ import annotations

import pytest
from scrapy.settings import Settings

from crawler.website import registrable_domain, website_key, website_key_mode


@pytest.mark.parametrize(
    ("url", "domain", "host"),
    [
        ("http://shop-a.test:8080/item/1", "shop-a.test", "shop-a.test"),
        ("https://www.shop.example.co.uk/x", "example.co.uk", "www.shop.example.co.uk"),
        ("https://WWW.Example.COM./", "example.com", "www.example.com"),
        ("http://a.b.github.io/", "github.io", "a.b.github.io"),  # ICANN section only
        ("http://127.0.0.1:8000/", "127.0.0.1", "127.0.0.1"),
        ("http://[2001:db8::1]:8000/", "2001:db8::1", "2001:db8::1"),
        ("http://localhost/", "localhost", "localhost"),
    ],
)
def test_website_key(url: str, domain: str, host: str) -> None:
    assert website_key(url) == domain
    assert website_key(url, "host") == host


def test_mode_setting() -> None:
    assert website_key_mode(Settings()) == "domain"
    assert website_key_mode(Settings({"WEBSITE_KEY": "host"})) == "host"
    with pytest.raises(ValueError, match=r"WEBSITE_KEY must be one of .* got 'hostname'"):
        website_key_mode(Settings({"WEBSITE_KEY": "hostname"}))


def test_offline_snapshot_is_used() -> None:
    # A suffix only in the bundled list; no network and no cache directory involved.
    assert registrable_domain("a.b.example.kawasaki.jp") == "b.example.kawasaki.jp"
