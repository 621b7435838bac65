"""Scrapy's RobotsTxtMiddleware with robots.txt obeyed by every request that waited for it.

Scrapy 2.19's ``RobotsTxtMiddleware.robot_parser`` lets every request that
arrives while a host's robots.txt is being downloaded await the same
Deferred through ``maybe_deferred_to_future`` (since scrapy/scrapy#6802).
``Deferred.asFuture`` consumes the result, so only the first waiter gets the
parser; every other one gets ``None`` and is let through, robots.txt
unread. A plain crawl rarely has many requests for a fresh host at once; a
shared frontier hands a worker a whole batch, and ``make demo`` fetched
``/private/`` pages that robots.txt disallows. Here each waiter gets a
Deferred of its own, relayed from the shared one (the pattern Scrapy used
before #6802).

It also announces each host's robots.txt ``Crawl-delay`` (for our user
agent, from ``RobotParser.crawl_delay``; Protego, the default parser, reads
it) and ``Request-rate`` (``parser.rp.request_rate``, which Protego and the
standard library's parser have) once, with the signal
:data:`robots_crawl_delay`, before the first request to that host leaves this
middleware: politeness (:mod:`middlewares.politeness`) turns them into a
cluster-wide gate.

Enabled in place of Scrapy's (``DOWNLOADER_MIDDLEWARES``, same order 100),
with Scrapy's settings (``ROBOTSTXT_OBEY``, ``ROBOTSTXT_PARSER``, ...).

:class:`RobotsTxtOffsiteMiddleware` (order 49, before Scrapy's
OffsiteMiddleware at 50) lets the robots.txt requests of that middleware
through the offsite filter. A seed is ``dont_filter``, so it reaches a host
outside ``allowed_domains``; its robots.txt request was then filtered as
offsite, the middleware read that as "no robots.txt" and let the seed fetch a
disallowed path. robots.txt is now read and obeyed for every host a request
goes to.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware as _ScrapyRobotsTxtMiddleware
from scrapy.http.request import NO_CALLBACK
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.defer import Deferred

from crawler.scrapy_internals import pending_robots_parser

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.robotstxt import RobotParser

logger = logging.getLogger(__name__)

#: Sent once per host (netloc) when its robots.txt is known, with keyword
#: arguments ``netloc`` (str), ``url`` (a URL of that host), ``delay``
#: (float seconds, or None when robots.txt gives none or could not be read)
#: and ``request_rate`` (``(requests, seconds)`` from ``Request-rate``, or None).
robots_crawl_delay = object()


class RobotsTxtMiddleware(_ScrapyRobotsTxtMiddleware):
    """Scrapy's middleware; concurrent waiters for one robots.txt all get its parser."""

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self._announced: set[str] = set()  # netlocs whose Crawl-delay was announced

    async def robot_parser(self, request: Request) -> RobotParser | None:
        netloc = urlparse_cached(request).netloc
        pending = pending_robots_parser(self, netloc)
        if isinstance(pending, Deferred):
            waiter: Deferred[RobotParser | None] = Deferred()

            def relay(result: RobotParser | None) -> RobotParser | None:
                waiter.callback(result)
                return result  # keep it for the next waiter

            pending.addCallback(relay)
            parser = await maybe_deferred_to_future(waiter)
        else:
            parser = await super().robot_parser(request)
        if netloc not in self._announced:
            self._announced.add(netloc)
            self._announce(netloc, request, parser)
        return parser

    def _announce(self, netloc: str, request: Request, parser: RobotParser | None) -> None:
        delay: float | None = None
        rate: tuple[int, float] | None = None
        if parser is not None:
            settings = self.crawler.settings
            agent = (settings.get("ROBOTSTXT_USER_AGENT") or request.headers.get(b"User-Agent")
                     or settings.get("USER_AGENT") or "")
            delay = parser.crawl_delay(agent)  # None from parsers without Crawl-delay support
            rate = _request_rate(parser, agent)
        if delay is not None or rate is not None:
            logger.info("robots.txt of %(netloc)s: Crawl-delay %(delay)s, Request-rate %(rate)s",
                        {"netloc": netloc, "delay": f"{delay:g}s" if delay is not None else "none",
                         "rate": f"{rate[0]}/{rate[1]:g}s" if rate else "none"},
                        extra={"spider": self.crawler.spider})
        self.crawler.signals.send_catch_log(robots_crawl_delay, netloc=netloc, url=request.url, delay=delay,
                                            request_rate=rate)


def _request_rate(parser: RobotParser, agent: str | bytes) -> tuple[int, float] | None:
    """``Request-rate: n/m`` for ``agent`` as ``(n, m seconds)``; None if absent or not read by the parser."""
    reader = getattr(getattr(parser, "rp", None), "request_rate", None)  # Protego, urllib.robotparser
    if reader is None:
        return None
    try:
        found = reader(agent.decode("latin-1") if isinstance(agent, bytes) else agent)
    except (TypeError, ValueError):
        return None
    if found is None or not found.requests or found.requests <= 0 or not found.seconds or found.seconds <= 0:
        return None
    return int(found.requests), float(found.seconds)


class RobotsTxtOffsiteMiddleware:
    """Marks the robots.txt middleware's own requests ``allow_offsite``: robots.txt is read for every host."""

    def process_request(self, request: Request) -> None:
        # The robots.txt middleware's requests: NO_CALLBACK (nothing a seed or
        # a frontier entry can name) and dont_obey_robotstxt, for /robots.txt.
        if (request.callback is NO_CALLBACK and request.meta.get("dont_obey_robotstxt")
                and urlparse_cached(request).path == "/robots.txt"):
            request.meta.setdefault("allow_offsite", True)
