"""Ready-made :class:`~demosite.sites.SiteConfig` profiles of websites that behave like real ones.

Every profile takes the host and its sizes and counts as parameters, so tests
can serve small versions; any other ``SiteConfig`` field can be passed through
``**overrides``.
"""

from __future__ import annotations

from typing import Any

from .sites import SiteConfig


def mixed_sizes(
    host: str,
    items: int = 200,
    page_bytes: tuple[int, int] = (2_000, 20_000),
    huge_every: int = 25,
    huge_bytes: tuple[int, int] = (1_000_000, 5_000_000),
    chunked_every: int = 7,
    stream_bytes_per_s: int = 8_000_000,
    **overrides: Any,
) -> SiteConfig:
    """Most item pages 2-20 KB (Content-Length, gzip when asked; every ``chunked_every``-th
    chunked), and every ``huge_every``-th one 1-5 MB, chunked without Content-Length and
    never gzipped.

    Responses over 64 KB are sent at ``stream_bytes_per_s`` (0: as fast as the client
    reads), as over a real link: on loopback a client reads so fast that most of a 5 MB
    page is in its receive buffer before it can decide to stop.
    """
    return SiteConfig(**{
        "host": host, "items": items, "page_bytes": page_bytes[0], "page_bytes_max": page_bytes[1],
        "huge_every": huge_every, "huge_bytes_min": huge_bytes[0], "huge_bytes_max": huge_bytes[1],
        "huge_chunked": True, "chunked_every": chunked_every, "stream_bytes_per_s": stream_bytes_per_s,
        **overrides,
    })


def small_with_one_big(host: str, items: int = 100, page_bytes: int = 800, big_bytes: int = 24_000,
                       **overrides: Any) -> SiteConfig:
    """Item pages of exactly ``page_bytes`` (or their bare markup, about 700 bytes, if larger),
    and one page of ``big_bytes``: the last item, ``/item/<items - 1>``, sent with Content-Length."""
    return SiteConfig(**{
        "host": host, "items": items, "page_bytes": page_bytes, "page_bytes_max": page_bytes,
        "huge_every": items, "huge_bytes_min": big_bytes, "huge_bytes_max": big_bytes, "huge_chunked": False,
        "chunked_every": items + 1, **overrides,
    })


def rate_limited(host: str, status: int = 429, retry_after: int = 8, for_seconds: float = 20,
                 after_seconds: float = 0, items: int = 100, http_date: bool = False,
                 **overrides: Any) -> SiteConfig:
    """From ``after_seconds`` after the first request, for ``for_seconds``, every request but
    robots.txt gets ``status`` with ``Retry-After: retry_after`` (none if ``retry_after < 0``)."""
    return SiteConfig(**{
        "host": host, "items": items, "throttle_after": after_seconds, "throttle_for": for_seconds,
        "throttle_status": status, "throttle_retry_after": retry_after, "throttle_http_date": http_date,
        **overrides,
    })


def crawl_delay(host: str, delay: float, items: int = 100, request_rate: str = "", **overrides: Any) -> SiteConfig:
    """robots.txt says ``Crawl-delay: delay`` (and ``Request-rate`` when given)."""
    return SiteConfig(**{"host": host, "items": items, "crawl_delay": delay, "request_rate": request_rate,
                         **overrides})


def flaky(host: str, status: int = 0, after_seconds: float = 2, for_seconds: float = 10, items: int = 100,
          **overrides: Any) -> SiteConfig:
    """From ``after_seconds`` after the first request, for ``for_seconds``, every request
    (robots.txt too) fails with ``status``; ``0`` drops the connection without a response."""
    return SiteConfig(**{
        "host": host, "items": items, "fail_after": after_seconds, "fail_for": for_seconds,
        "fail_status": status, **overrides,
    })


def slow(host: str, slow_ms: int = 500, every: int = 3, items: int = 100, **overrides: Any) -> SiteConfig:
    """Every ``every``-th item page waits ``slow_ms`` before its response head."""
    return SiteConfig(**{"host": host, "items": items, "slow_ms": slow_ms, "slow_every": every, **overrides})
