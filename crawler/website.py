"""The website key: which website a request belongs to.

One function shared by everything that thinks per website (the frontier's
queues, the byte budget, Scrapy's download slots, the enrich pipeline), so they
always agree.

``WEBSITE_KEY`` (str, default ``"domain"``)
    ``"domain"``: the registrable domain (eTLD+1) from the public-suffix list
    bundled with tldextract, read offline, never fetched at run time:
    ``www.shop.example.co.uk`` -> ``example.co.uk``. Names under a suffix the
    list does not know (``shop-a.test``) follow the list's default rule ``*``:
    the last label is the suffix, so the key is the last two labels.
    ``"host"``: the hostname itself. IP literals are always their own key.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import TYPE_CHECKING

from scrapy.utils.httpobj import urlparse_cached
from tldextract import TLDExtract
from w3lib.url import parse_url

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.settings import BaseSettings

WEBSITE_KEY_MODES = ("domain", "host")

# suffix_list_urls=() and cache_dir=None: the snapshot shipped in the package,
# no network access and no cache files.
_extract = TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=False)


@lru_cache(maxsize=65536)
def registrable_domain(host: str) -> str:
    """eTLD+1 of ``host`` (lower case, no trailing dot); IP literals unchanged."""
    host = host.lower().rstrip(".").strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    result = _extract(host)
    if result.suffix:
        return result.top_domain_under_public_suffix or host
    labels = host.split(".")
    return ".".join(labels[-2:])


def website_key(url: str, mode: str = "domain") -> str:
    """The website ``url`` belongs to, per ``mode`` (see module docstring)."""
    host = (parse_url(url).hostname or "").lower().rstrip(".")
    if mode == "host":
        return host
    return registrable_domain(host)


def website_key_mode(settings: BaseSettings) -> str:
    """``WEBSITE_KEY`` from settings, checked."""
    mode = settings.get("WEBSITE_KEY", "domain")
    if mode not in WEBSITE_KEY_MODES:
        raise ValueError(f"WEBSITE_KEY must be one of {WEBSITE_KEY_MODES}, got {mode!r}")
    return str(mode)


class WebsiteKeys:
    """``website_key`` of requests on a hot path: cached per netloc (``urlparse_cached`` is shared with Scrapy)."""

    _MAX = 100_000

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._keys: dict[str, str] = {}  # netloc -> website key

    def __call__(self, request: Request) -> str:
        netloc = urlparse_cached(request).netloc
        key = self._keys.get(netloc)
        if key is None:
            if len(self._keys) > self._MAX:
                self._keys.clear()
            key = self._keys[netloc] = website_key(request.url, self.mode)
        return key
