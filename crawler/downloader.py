"""Scrapy's downloader, with the per-slot concurrency limit enforced again.

Scrapy 2.19's ``Downloader._process_queue`` starts each download with
``loop.create_task(...)`` and counts the request in ``slot.transferring`` only
when that task first runs, on a later turn of the event loop. Requests that
enter one download slot in the same turn (a scheduler handing the engine a
batch, as the frontier's prefetch buffer does) therefore all see the slot
empty and all start: ``CONCURRENT_REQUESTS_PER_DOMAIN`` is not a bound any
more, only ``CONCURRENT_REQUESTS`` is (Scrapy 2.12 and earlier counted the
request before returning). More connections to one host than the connection
pool keeps (``maxPersistentPerHost`` = ``CONCURRENT_REQUESTS_PER_DOMAIN``,
per bind address) means the surplus is closed as it comes back and opened
again on the next burst.

:class:`Downloader` counts a request as transferring as soon as it leaves the
slot queue; ``_download`` adding it again is a no-op on the set, and removes
it when the download ends, as before. Selected with ``DOWNLOADER``.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING

from scrapy.core.downloader import Downloader as ScrapyDownloader
from scrapy.utils.asyncio import call_later
from scrapy.utils.defer import _schedule_coro

if TYPE_CHECKING:
    from scrapy.core.downloader import Slot


class Downloader(ScrapyDownloader):
    """Scrapy's downloader; a slot never has more than ``concurrency`` downloads under way."""

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
            # The change: count it now, not when the task below first runs.
            slot.transferring.add(request)
            _schedule_coro(self._wait_for_download(slot, request, queue_dfd))
            if delay:
                self._process_queue(slot)
                break
