"""Synthetic websites served by the demo server.

Every page is a pure function of (site, path), so the same URL always has the
same bytes, crawls are reproducible and tests can compute what a crawler should
have found. A site is described by a :class:`SiteConfig`; ``DEFAULT_SITES``
holds the three demo sites used by ``make demo``, the tests and the benchmarks.

URL layout of every site::

    /                     home page: links to every listing page
    /robots.txt           disallows /private/
    /list/<k>             listing page k: links to its items, prev/next pages,
                          and (on some pages) redirects and error pages
    /item/<n>             item page with structured data (shop or news)
    /go/<n>               301 redirect to /item/<n>
    /missing/<k>          404
    /broken/<k>           500
    /busy/<k>             429 with Retry-After
    /private/<k>          linked but disallowed by robots.txt

Optional behaviours of real websites (all off by default, so a plain
``SiteConfig(host=...)`` serves exactly what it always did):

* mixed page sizes: ordinary item pages of an exact size drawn from
  ``[page_bytes, page_bytes_max]``, and every ``huge_every``-th item huge
  (``[huge_bytes_min, huge_bytes_max]`` bytes of real HTML), see :func:`item_size`;
* rate limiting (``throttle_*``) and failures or dropped connections
  (``fail_*``) for a time span, applied by the server (:mod:`demosite.server`);
* ``crawl_delay`` / ``request_rate`` lines in robots.txt;
* slow responses (``slow_ms`` before the head of some item pages) and a
  bandwidth cap on streamed bodies (``stream_bytes_per_s``).

Ready-made combinations live in :mod:`demosite.profiles`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import html
import json
import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """Shape of one synthetic website."""

    host: str
    kind: str = "shop"  # "shop" or "news"
    items: int = 1000
    per_page: int = 20
    page_bytes: int = 2000  # approximate size of an item page before gzip
    related: int = 3  # links from an item page to other items (duplicates for the dupefilter)
    chunked_every: int = 7  # every n-th item page is sent chunked, without Content-Length
    redirect_every: int = 10  # every n-th item is linked through /go/<n> (301)
    errors: int = 2  # how many of each of /missing, /broken, /busy are linked
    retry_after: int = 1  # seconds, on 429 pages
    # Mixed page sizes. page_bytes_max > 0: ordinary item pages have an exact body size
    # drawn from [page_bytes, page_bytes_max] (0 keeps the historic page_bytes +-25%).
    page_bytes_max: int = 0
    # huge_every > 0: item n is huge when n % huge_every == huge_every - 1; its body is
    # exactly a size drawn from [huge_bytes_min, huge_bytes_max] bytes.
    huge_every: int = 0
    huge_bytes_min: int = 1_000_000
    huge_bytes_max: int = 5_000_000
    huge_chunked: bool = True  # huge pages are sent chunked, without Content-Length
    huge_gzip: bool = False  # gzip huge pages too when asked (off: like pre-compressed downloads)
    # Rate limiting: from throttle_after seconds after the site's first request, for
    # throttle_for seconds, every request but robots.txt gets throttle_status.
    throttle_after: float = -1.0  # < 0: off
    throttle_for: float = 0.0
    throttle_status: int = 429
    throttle_retry_after: int = -1  # seconds in Retry-After; < 0: no Retry-After header
    throttle_http_date: bool = False  # Retry-After as an HTTP-date instead of seconds
    # Failures: from fail_after seconds after the first request, for fail_for seconds,
    # every request (robots.txt included) gets fail_status; fail_status 0 drops the
    # connection after reading the request head, without any response.
    fail_after: float = -1.0  # < 0: off
    fail_for: float = 0.0
    fail_status: int = 503
    # robots.txt: "Crawl-delay: <crawl_delay>" when > 0, "Request-rate: <request_rate>" when set.
    crawl_delay: float = 0.0
    request_rate: str = ""
    # Slow responses: item pages n with n % slow_every == 0 wait slow_ms before the head.
    slow_ms: int = 0
    slow_every: int = 1
    stream_bytes_per_s: int = 0  # > 0: each response over 16 KB is sent in 16 KB pieces at this rate

    def __post_init__(self) -> None:
        if self.kind not in ("shop", "news"):
            raise ValueError(f"site {self.host}: kind must be 'shop' or 'news', not {self.kind!r}")
        for name in ("items", "per_page", "chunked_every", "redirect_every", "slow_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"site {self.host}: {name} must be >= 1")
        for name in ("page_bytes", "related", "errors", "retry_after", "page_bytes_max", "huge_every",
                     "huge_bytes_min", "throttle_for", "fail_for", "crawl_delay", "slow_ms",
                     "stream_bytes_per_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"site {self.host}: {name} must be >= 0")
        if self.page_bytes_max and self.page_bytes_max < self.page_bytes:
            raise ValueError(f"site {self.host}: page_bytes_max must be 0 or >= page_bytes")
        if self.huge_bytes_max < self.huge_bytes_min:
            raise ValueError(f"site {self.host}: huge_bytes_max must be >= huge_bytes_min")
        if not 100 <= self.throttle_status <= 599:
            raise ValueError(f"site {self.host}: throttle_status must be an HTTP status, not {self.throttle_status}")
        if self.fail_status != 0 and not 100 <= self.fail_status <= 599:
            raise ValueError(f"site {self.host}: fail_status must be 0 (drop) or an HTTP status")

    def is_huge(self, n: int) -> bool:
        """Whether item ``n`` is a huge page."""
        return self.huge_every > 0 and n % self.huge_every == self.huge_every - 1

    def huge_items(self) -> list[int]:
        """The item numbers of the huge pages."""
        return [n for n in range(self.items) if self.is_huge(n)]

    def is_slow(self, n: int) -> bool:
        """Whether item ``n`` waits ``slow_ms`` before its response head."""
        return self.slow_ms > 0 and n % self.slow_every == 0

    @property
    def pages(self) -> int:
        """Number of listing pages."""
        return -(-self.items // self.per_page)

    def expected_pages(self) -> dict[str, int]:
        """Distinct fetchable URLs a complete crawl reaches, by outcome."""
        redirects = len(range(0, self.items, self.redirect_every))
        return {
            "home": 1,
            "listings": self.pages,
            "items": self.items,
            "redirects": redirects,
            "errors": 3 * min(self.errors, self.pages),
        }


DEFAULT_SITES: tuple[SiteConfig, ...] = (
    SiteConfig(host="shop-a.test", kind="shop", items=1200, page_bytes=2000),
    SiteConfig(host="shop-b.test", kind="shop", items=600, page_bytes=8000, per_page=30),
    SiteConfig(host="news.test", kind="news", items=400, page_bytes=4000, per_page=10),
)


def sites_from_json(text: str) -> tuple[SiteConfig, ...]:
    """Parse a JSON list of site objects (keys as in :class:`SiteConfig`)."""
    data = json.loads(text)
    if not isinstance(data, list) or not data:
        raise ValueError("sites JSON must be a non-empty list of objects")
    names = {f.name for f in dataclasses.fields(SiteConfig)}
    sites = []
    for entry in data:
        unknown = set(entry) - names
        if unknown:
            raise ValueError(f"unknown site keys: {sorted(unknown)}")
        sites.append(SiteConfig(**entry))
    return tuple(sites)


def sites_to_json(sites: tuple[SiteConfig, ...]) -> str:
    return json.dumps([dataclasses.asdict(s) for s in sites])


@dataclass(frozen=True, slots=True)
class Page:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    chunked: bool = False
    compress: bool = True  # gzip the body when the client accepts it
    delay_ms: int = 0  # wait this long before sending the response head


_WORDS = (
    "alpha", "bravo", "copper", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
    "kestrel", "lumen", "meadow", "nimbus", "onyx", "pepper", "quartz", "raven", "saffron",
    "tundra", "umber", "velvet", "willow", "xenon", "yarrow", "zephyr",
)


def _rng(site: SiteConfig, n: int) -> random.Random:
    seed = hashlib.blake2b(f"{site.host}/{n}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(seed, "big"))


def _filler(rng: random.Random, size: int) -> str:
    out: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        out.append(word)
        length += len(word) + 1
    return " ".join(out)


@functools.lru_cache(maxsize=64)
def _filler_block(host: str) -> bytes:
    # 64 KB of words per site; exact-size pages are cut from it, so a 5 MB page
    # costs a few memory copies rather than a million random draws.
    seed = hashlib.blake2b(f"{host}/filler".encode(), digest_size=8).digest()
    return _filler(random.Random(int.from_bytes(seed, "big")), 65536).encode() + b" "


def _filler_bytes(host: str, n: int, size: int) -> bytes:
    block = _filler_block(host)
    start = (n * 7919) % len(block)
    reps = (start + size) // len(block) + 1
    return (block * reps)[start : start + size]


def item_size(site: SiteConfig, n: int) -> int | None:
    """Exact body size of item page ``n``, or None for the historic approximate size.

    Huge pages get a size in ``[huge_bytes_min, huge_bytes_max]``; with
    ``page_bytes_max`` set, other pages get one in ``[page_bytes, page_bytes_max]``.
    A size below the page's own markup (about 700 bytes) yields just the markup.
    """
    rng = _rng(site, n + 2_000_000)
    if site.is_huge(n):
        return rng.randint(site.huge_bytes_min, site.huge_bytes_max)
    if site.page_bytes_max:
        return rng.randint(site.page_bytes, site.page_bytes_max)
    return None


def _doc(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    ).encode()


def status_page(status: int, reason: str) -> bytes:
    """A small HTML page for an error status."""
    return _doc(reason, f"<h1>{status} {html.escape(reason)}</h1>")


def item_href(site: SiteConfig, n: int) -> str:
    return f"/go/{n}" if n % site.redirect_every == 0 else f"/item/{n}"


def render_home(site: SiteConfig) -> Page:
    links = "\n".join(
        f'<li><a class="listing" href="/list/{k}">Page {k}</a></li>' for k in range(1, site.pages + 1)
    )
    return Page(200, _doc(f"{site.host}", f"<h1>{site.host}</h1>\n<ul class=\"listings\">\n{links}\n</ul>"))


def render_listing(site: SiteConfig, k: int) -> Page | None:
    if not 1 <= k <= site.pages:
        return None
    first = (k - 1) * site.per_page
    entries = [
        f'<li><a class="item" href="{item_href(site, n)}">Item {n}</a></li>'
        for n in range(first, min(first + site.per_page, site.items))
    ]
    if k <= site.errors:
        # A few broken links, as on any real site: one of each failure kind.
        entries += [
            f'<li><a class="item" href="/missing/{k}">Gone {k}</a></li>',
            f'<li><a class="item" href="/broken/{k}">Broken {k}</a></li>',
            f'<li><a class="item" href="/busy/{k}">Busy {k}</a></li>',
        ]
    entries.append(f'<li><a class="item" href="/private/{k}">Private {k}</a></li>')
    nav = []
    if k > 1:
        nav.append(f'<a class="prev" href="/list/{k - 1}">prev</a>')
    if k < site.pages:
        nav.append(f'<a class="next" href="/list/{k + 1}">next</a>')
    body = (
        f"<h1>Listing {k}</h1>\n<ul class=\"items\">\n" + "\n".join(entries) + "\n</ul>\n"
        f"<nav>{' '.join(nav)}</nav>"
    )
    return Page(200, _doc(f"{site.host} listing {k}", body))


def item_data(site: SiteConfig, n: int) -> dict[str, Any]:
    """The structured data an item page carries (what a spider should extract)."""
    rng = _rng(site, n)
    if site.kind == "shop":
        return {
            "title": f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS).title()} {n}",
            "sku": f"{site.host.split('.')[0].upper()}-{n:06d}",
            "price": round(rng.uniform(1, 500), 2),
            "currency": "EUR",
            "in_stock": rng.random() > 0.2,
            "category": f"/list/{n // site.per_page + 1}",
        }
    return {
        "headline": f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS)} report {n}",
        "author": f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS).title()}",
        "published": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z",
        "section": rng.choice(("world", "science", "culture", "sport")),
    }


def render_item(site: SiteConfig, n: int) -> Page | None:
    if not 0 <= n < site.items:
        return None
    data = item_data(site, n)
    rng = _rng(site, n + 1_000_000)
    related = "\n".join(
        f'<li><a class="related" href="/item/{(n + 1 + i * 7) % site.items}">more</a></li>'
        for i in range(site.related)
    )
    if site.kind == "shop":
        availability = "InStock" if data["in_stock"] else "OutOfStock"
        main = (
            '<div class="product" itemscope itemtype="https://schema.org/Product">\n'
            f'<h1 itemprop="name">{html.escape(data["title"])}</h1>\n'
            f'<span itemprop="sku">{data["sku"]}</span>\n'
            f'<span itemprop="price" content="{data["price"]:.2f}">{data["price"]:.2f}</span>'
            f'<span itemprop="priceCurrency">{data["currency"]}</span>\n'
            f'<link itemprop="availability" href="https://schema.org/{availability}">\n'
            f'<a class="category" href="{data["category"]}">category</a>\n'
        )
        title = data["title"]
    else:
        main = (
            '<article itemscope itemtype="https://schema.org/NewsArticle">\n'
            f'<h1 itemprop="headline">{html.escape(data["headline"])}</h1>\n'
            f'<span itemprop="author">{html.escape(data["author"])}</span>\n'
            f'<time itemprop="datePublished" datetime="{data["published"]}">{data["published"][:10]}</time>\n'
            f'<span itemprop="articleSection">{data["section"]}</span>\n'
        )
        title = data["headline"]
    size = max(0, site.page_bytes - len(main) - 400)
    # Vary page sizes by +-25% so byte estimates have something to learn.
    size = int(size * rng.uniform(0.75, 1.25))
    closing = "</div>" if site.kind == "shop" else "</article>"
    huge = site.is_huge(n)
    chunked = n % site.chunked_every == 0 or (huge and site.huge_chunked)
    delay = site.slow_ms if site.is_slow(n) else 0
    exact = item_size(site, n)
    if exact is not None:
        mark = "\x00"  # stands for the filler while the markup is measured
        doc = _doc(title, f'{main}<p itemprop="description">{mark}</p>\n'
                          f'<ul class="related">\n{related}\n</ul>\n{closing}')
        before, after = doc.split(mark.encode(), 1)
        filler = _filler_bytes(site.host, n, max(0, exact - len(before) - len(after)))
        return Page(200, before + filler + after, chunked=chunked, compress=not huge or site.huge_gzip,
                    delay_ms=delay)
    body = (
        f'{main}<p itemprop="description">{_filler(rng, size)}</p>\n'
        f'<ul class="related">\n{related}\n</ul>\n{closing}'
    )
    return Page(200, _doc(title, body), chunked=chunked, delay_ms=delay)


ROBOTS = b"User-agent: *\nDisallow: /private/\n"


def render_robots(site: SiteConfig) -> bytes:
    """robots.txt: ``ROBOTS`` plus the site's Crawl-delay and Request-rate lines, if any."""
    text = ROBOTS.decode()
    if site.crawl_delay > 0:
        text += f"Crawl-delay: {site.crawl_delay:g}\n"
    if site.request_rate:
        text += f"Request-rate: {site.request_rate}\n"
    return text.encode()


def render(site: SiteConfig, path: str) -> Page:
    """Render the page at ``path`` (query string already removed)."""
    parts = path.strip("/").split("/")
    head = parts[0]
    arg: int | None = None
    if len(parts) == 2 and parts[1].isdigit():
        arg = int(parts[1])
    page: Page | None = None
    if path == "/":
        page = render_home(site)
    elif path == "/robots.txt":
        page = Page(200, render_robots(site), content_type="text/plain")
    elif arg is not None:
        if head == "list":
            page = render_listing(site, arg)
        elif head == "item":
            page = render_item(site, arg)
        elif head == "go" and 0 <= arg < site.items:
            page = Page(301, b"", headers=(("Location", f"/item/{arg}"),))
        elif head == "broken":
            page = Page(500, _doc("Server error", "<h1>500</h1>"))
        elif head == "busy":
            page = Page(
                429,
                _doc("Too many requests", "<h1>429</h1>"),
                headers=(("Retry-After", str(site.retry_after)),),
            )
        elif head == "private":
            page = Page(200, _doc("Private", "<h1>robots.txt says no</h1>"))
    return page or Page(404, _doc("Not found", "<h1>404</h1>"))
