"""The frontier's local prefetch buffer: popped requests by website, served round-robin.

Part of :mod:`crawler.frontier.scheduler` (refilled by :mod:`crawler.frontier.refill`); no I/O here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from scrapy import Request


@dataclass(slots=True)
class Buffered:
    """A popped request, with what it takes to put it back unchanged."""

    request: Request
    fingerprint: str
    score: float
    payload: bytes
    lease: str = ""  # its field in this worker's pops hash (crawler.frontier.leases)


class PrefetchBuffer:
    """Requests by website; ``take`` serves the websites in turn."""

    def __init__(self) -> None:
        self._by_site: dict[str, deque[Buffered]] = {}
        self._ring: deque[str] = deque()  # websites with requests, next to serve first
        self.size = 0
        self._not_before: dict[str, float] = {}  # website -> Unix time (Redis clock) it is held until

    def __len__(self) -> int:
        return self.size

    def __contains__(self, website: str) -> bool:
        return website in self._by_site

    def add(self, website: str, item: Buffered) -> None:
        items = self._by_site.get(website)
        if items is None:
            items = self._by_site[website] = deque()
            self._ring.append(website)
        items.append(item)
        self.size += 1

    def take(self, slots: dict[str, Any] | None, held: Callable[[str], bool], turn: Mapping[str, int],
             new_slot_concurrency: Callable[[str], int],
             ) -> tuple[tuple[str, Buffered] | None, list[tuple[str, list[Buffered]]]]:
        """The next request with its website, and the requests of websites found ``held`` (removed).

        A website whose download slot (in Scrapy's ``downloader.slots``)
        already has ``concurrency`` requests is passed over for one whose slot
        has room, so one website's requests do not wait in its slot queue
        while another website could download; with no such website, one more
        slot's worth may queue (as with Scrapy's own scheduler).

        A slot's requests are its ``active`` ones plus ``turn[website]``, the
        requests taken for it in this event-loop turn: the engine asks for
        many requests in one turn, and Scrapy adds a request to ``active``
        only on a later turn (``Downloader.fetch`` runs as a task). A website
        without a slot yet counts against the concurrency its slot will get.
        """
        ring = self._ring
        removed: list[tuple[str, list[Buffered]]] = []
        fallback = None
        for _ in range(len(ring)):
            if not ring:
                break
            website = ring[0]
            ring.rotate(-1)  # website is now last: served round-robin
            if held(website):
                removed.append((website, self.remove(website)))
                continue
            if slots is not None:
                slot = slots.get(website)
                busy = turn.get(website, 0)
                if slot is not None:
                    busy += len(slot.active)
                    concurrency = slot.concurrency
                else:  # no slot and nothing taken this turn: room
                    concurrency = new_slot_concurrency(website) if busy else 1
                if busy >= concurrency:
                    if fallback is None and busy < 2 * concurrency:
                        fallback = website
                    continue
            return (website, self._pop(website)), removed
        return ((fallback, self._pop(fallback)) if fallback is not None else None), removed

    def held(self, website: str, now: float) -> bool:
        """Whether ``website`` is held (not to be served) at ``now``; forgets expired holds."""
        until = self._not_before.get(website)
        if until is None:
            return False
        if until > now:
            return True
        del self._not_before[website]
        return False

    def hold(self, website: str, until: float) -> list[Buffered]:
        """Hold ``website`` until ``until`` (the later hold wins); returns its buffered requests (removed)."""
        self._not_before[website] = max(self._not_before.get(website, 0.0), until)
        return self.remove(website)

    def not_before(self, website: str) -> float:
        """The time ``website`` is held until (0: not held)."""
        return self._not_before.get(website, 0.0)

    def remove(self, website: str) -> list[Buffered]:
        """Every buffered request of ``website``."""
        items = self._by_site.pop(website, None)
        if not items:
            return []
        self._ring.remove(website)
        self.size -= len(items)
        return list(items)

    def drain(self) -> list[tuple[str, Buffered]]:
        """Every buffered request, emptying the buffer."""
        out = [(website, item) for website, items in self._by_site.items() for item in items]
        self._by_site.clear()
        self._ring.clear()
        self.size = 0
        return out

    def _pop(self, website: str) -> Buffered:
        items = self._by_site[website]
        item = items.popleft()
        self.size -= 1
        if not items:
            del self._by_site[website]
            self._ring.remove(website)
        return item
