"""Every use of Scrapy's private internals, in one module (Scrapy 2.19).

Nothing else in the project touches a private name of Scrapy's; when an
upgrade changes one of these, ``tests/test_scrapy_internals.py`` fails and
names it. What is used, and why:

* :class:`Downloader` (selected with ``DOWNLOADER``): a copy of
  ``Downloader._process_queue`` with one change. Scrapy 2.19 starts each
  download with ``loop.create_task(...)`` and counts the request in
  ``slot.transferring`` only when that task first runs, on a later turn of the
  event loop. Requests that enter one download slot in the same turn (a
  scheduler handing the engine a batch, as the frontier's prefetch buffer
  does) therefore all see the slot empty and all start:
  ``CONCURRENT_REQUESTS_PER_DOMAIN`` is not a bound any more, only
  ``CONCURRENT_REQUESTS`` is (Scrapy 2.12 and earlier counted the request
  before returning). Here a request counts as transferring as soon as it
  leaves the slot queue; ``_download`` adding it again is a no-op on the set.
  And download holds (:func:`add_download_hold`): a request that leaves its
  slot queue is first shown to each registered check, which can keep it off
  the network (its download fails with :class:`DownloadHeld`). A downloader
  middleware decides in ``process_request``, but the request may then wait
  in its slot queue while the website's answers change everything:
  politeness (:mod:`middlewares.politeness`) holds the requests of a website
  parked meanwhile there, with a dictionary lookup.
* :func:`wake_engine`: the engine slot's ``nextcall``, so a scheduler whose
  requests arrive asynchronously (from Redis) does not wait for the engine's
  5 s heartbeat.
* :func:`in_progress`: the engine slot's ``inprogress`` set, the requests
  whose outcome the engine has not processed yet.
* :func:`downloader_slots` and :func:`new_slot_concurrency`: the downloader's
  slots and the concurrency it gives a new slot (``Downloader._get_slot``'s
  rule, from the values the downloader parsed).
* :func:`pending_robots_parser`: ``RobotsTxtMiddleware._parsers``, for
  :mod:`middlewares.robotstxt`.
"""


from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING, Any

from scrapy.core.downloader import Downloader as ScrapyDownloader
from scrapy.utils.asyncio import call_later
from scrapy.utils.defer import _schedule_coro

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request
    from scrapy.core.downloader import Slot
    from scrapy.core.engine import ExecutionEngine
    from scrapy.crawler import Crawler
    from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware


class DownloadHeld(Exception):  # noqa: N818 (a hold, not an error)
    """A download hold kept this request off the network; ``until``: when its website may be asked again."""

    def __init__(self, until: float) -> None:
        super().__init__(f"held until {until:.3f}")
        self.until = until


class Downloader(ScrapyDownloader):
    """Scrapy's downloader; a slot never has more than ``concurrency`` downloads under way; download holds."""

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.holds: list[Callable[[Request], float | None]] = []

    def _held(self, request: Request) -> float | None:
        for check in self.holds:
            until = check(request)
            if until is not None:
                return until
        return None

    def _process_queue(self, slot: Slot) -> None:
        # Scrapy 2.19's _process_queue, with one change (marked below).
        if slot.latercall:
            return
        now = monotonic()
        delay = slot.download_delay()
        if delay:
            penalty = delay - now + slot.lastseen
            if penalty > 0:
                slot.latercall = call_later(penalty, self._latercall, slot)
                return
        while slot.queue and slot.free_transfer_slots() > 0:
            slot.lastseen = now
            request, queue_dfd = slot.queue.popleft()
            # Download holds (the second change): fail it before any byte is sent.
            if self.holds and (until := self._held(request)) is not None:
                queue_dfd.errback(DownloadHeld(until))
                continue
            # The change: count it now, not when the task below first runs.
            slot.transferring.add(request)
            _schedule_coro(self._wait_for_download(slot, request, queue_dfd))
            if delay:
                self._process_queue(slot)
                break



def add_download_hold(crawler: Crawler, check: Callable[[Request], float | None]) -> bool:
    """Call ``check(request)`` as each request leaves its slot queue; a time keeps it off the network.

    The download then fails with :class:`DownloadHeld` (``until`` = the time
    returned), which downloader middlewares see in ``process_exception``.
    ``check`` runs for every request: local state only. False when the
    crawl's downloader is not :class:`Downloader` (``DOWNLOADER``).
    """
    downloader = getattr(_engine(crawler), "downloader", None)
    if not isinstance(downloader, Downloader):
        return False
    downloader.holds.append(check)
    return True


def _engine(crawler: Crawler) -> ExecutionEngine | None:
    # Crawler.engine is None-typed before the crawl; _engine avoids its assertion.
    return getattr(crawler, "_engine", None)


def wake_engine(crawler: Crawler) -> None:
    """Make the engine ask the scheduler for requests on its next loop turn (no-op outside a crawl)."""
    slot = getattr(_engine(crawler), "_slot", None)
    if slot is not None and slot.closing is None:
        slot.nextcall.schedule()


def in_progress(crawler: Crawler) -> set[Request] | None:
    """Requests the engine has not finished processing; ``None`` outside a running crawl."""
    slot = getattr(_engine(crawler), "_slot", None)
    return getattr(slot, "inprogress", None)


def downloader_slots(crawler: Crawler) -> dict[str, Slot] | None:
    """The downloader's slots by key; ``None`` outside a running crawl."""
    downloader = getattr(_engine(crawler), "downloader", None)
    return getattr(downloader, "slots", None)


def new_slot_concurrency(crawler: Crawler, key: str) -> int:
    """The concurrency Scrapy's downloader will give a new slot ``key`` (``Downloader._get_slot``'s rule)."""
    engine = _engine(crawler)
    assert engine is not None, "new_slot_concurrency needs a running crawl"
    downloader = engine.downloader
    default = downloader.ip_concurrency or downloader.domain_concurrency
    return int(downloader.per_slot_settings.get(key, {}).get("concurrency", default))


def pending_robots_parser(middleware: RobotsTxtMiddleware, netloc: str) -> Any:
    """The parser (or the Deferred of one being downloaded) Scrapy's robots.txt middleware keeps for ``netloc``."""
    return middleware._parsers.get(netloc)
