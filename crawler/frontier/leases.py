"""This worker's leased requests: acknowledged once their outcome is processed and what it produced is stored.

Part of :mod:`crawler.frontier.scheduler`. Every request a pop returns is
leased to this worker in Redis (``lua/pop.lua``, ``lua/leases.lua``) under a
lease field. The request is done when the engine has processed its outcome
(response parsed, its items through the pipelines, its new links enqueued;
or its failure handled), or when it is handed back to the outbox. Its
acknowledgement is sent only once everything enqueued before it was done is
stored in Redis (the outbox, the failed list), so a crash in between loses
nothing: the request is delivered again instead. Acknowledgements ride on
the worker's next pop, heartbeat or close (no round trip of their own); each
of those calls renews the lease, and the heartbeat makes one when
``FRONTIER_LEASE_SECONDS / 4`` passed without any, or when
``FRONTIER_PREFETCH`` acknowledgements wait.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable


class Progress(Protocol):
    """A FIFO of writes to Redis: how many were appended, and how many of the first ones are stored."""

    @property
    def appended(self) -> int: ...

    @property
    def stored(self) -> int: ...


class Leases:
    """Acknowledgements waiting for their turn, and when the lease was last renewed."""

    def __init__(self, seconds: float, writes: Iterable[Progress], batch: int = 32) -> None:
        """``seconds``: FRONTIER_LEASE_SECONDS (0: leases off, acknowledged on receipt);
        ``writes``: what must be stored before a done request is acknowledged; ``batch``: this many
        acknowledgements waiting make the heartbeat send them if no pop did (FRONTIER_PREFETCH)."""
        self.seconds = seconds
        self._batch = batch
        self._writes = list(writes)
        self._waiting: deque[tuple[tuple[int, ...], str]] = deque()  # (writes appended when done, field)
        self._ready: list[str] = []  # acknowledgements to send with the next call
        self._renewed = time.monotonic()
        self.acknowledged = 0

    def __len__(self) -> int:
        return len(self._waiting) + len(self._ready)

    def received(self, fields: list[str]) -> None:
        """A pop's requests arrived: without leases they are acknowledged now."""
        if not self.seconds:
            self._ready += fields

    def done(self, lease: str) -> None:
        """The request of ``lease`` is done: acknowledge it once what it produced is stored."""
        if lease and self.seconds:
            self._waiting.append((tuple(w.appended for w in self._writes), lease))

    def take(self) -> list[str]:
        """The acknowledgements to send now (give them back with :meth:`unsent` if the call fails)."""
        stored = [w.stored for w in self._writes]
        while self._waiting and all(s >= a for s, a in zip(stored, self._waiting[0][0], strict=True)):
            self._ready.append(self._waiting.popleft()[1])
        ready, self._ready = self._ready, []
        return ready

    def unsent(self, fields: list[str]) -> None:
        self._ready[:0] = fields

    def sent(self, fields: list[str]) -> None:
        """A call carrying ``fields`` succeeded: acknowledged, and the lease renewed."""
        self.acknowledged += len(fields)
        self._renewed = time.monotonic()

    def renew_due(self) -> bool:
        """A quarter of the lease time passed since the last call that renewed it, or a batch of
        acknowledgements waits (no pop carried them: nothing is ready in Redis, say)."""
        return bool(self.seconds) and (time.monotonic() - self._renewed >= self.seconds / 4
                                       or len(self) >= self._batch)
