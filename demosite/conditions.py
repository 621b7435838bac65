"""Time spans during which a demo site is rate limited, failing, dropping connections or slow.

A span comes either from the site's configuration (``throttle_after`` /
``fail_after``, measured from the first request the server saw for the site)
or from an admin call (``/_demo/throttle``, ``/_demo/fail``, ``/_demo/slow``), which starts it
at once so tests need not guess at timing. State lives in the server process.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sites import SiteConfig

THROTTLE = "throttle"
FAIL = "fail"
SLOW = "slow"  # answers as usual, each one delay_ms later (robots.txt exempt)


@dataclass(frozen=True, slots=True)
class Span:
    """One condition on one site, active for ``start <= now < end`` (epoch seconds)."""

    kind: str  # THROTTLE (robots.txt exempt), FAIL (every path) or SLOW (robots.txt exempt)
    start: float
    end: float
    status: int  # 0 for FAIL: drop the connection without a response
    retry_after: int = -1  # < 0: no Retry-After header
    http_date: bool = False
    delay_ms: int = 0  # SLOW: extra wait before the response head

    def retry_after_header(self, now: float) -> tuple[tuple[str, str], ...]:
        """The Retry-After header to send at ``now``, if any."""
        if self.retry_after < 0:
            return ()
        if self.http_date:
            return (("Retry-After", email.utils.formatdate(now + self.retry_after, usegmt=True)),)
        return (("Retry-After", str(self.retry_after)),)

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "status": self.status,
                "retry_after": self.retry_after, "http_date": self.http_date, "delay_ms": self.delay_ms}


class Conditions:
    """Active and scheduled spans per host."""

    def __init__(self, sites: dict[str, SiteConfig]) -> None:
        self._sites = sites
        self._spans: dict[str, list[Span]] = {h: [] for h in sites}
        self.first_seen: dict[str, float] = {}

    def seen(self, host: str, now: float) -> None:
        """Note a request to ``host``; the first one schedules the configured spans."""
        if host in self.first_seen:
            return
        self.first_seen[host] = now
        site = self._sites[host]
        if site.throttle_after >= 0:
            start = now + site.throttle_after
            self._spans[host].append(Span(THROTTLE, start, start + site.throttle_for, site.throttle_status,
                                          site.throttle_retry_after, site.throttle_http_date))
        if site.fail_after >= 0:
            start = now + site.fail_after
            self._spans[host].append(Span(FAIL, start, start + site.fail_for, site.fail_status))

    def add(self, host: str, span: Span) -> None:
        self._spans[host].append(span)

    def clear(self, host: str, now: float) -> None:
        """Forget every span of ``host`` (configured ones too: they are not scheduled again)."""
        self.first_seen.setdefault(host, now)
        self._spans[host].clear()

    def active(self, host: str, path: str, now: float) -> Span | None:
        """The span that decides the answer to ``path`` at ``now``: a failure before a throttle."""
        found: Span | None = None
        for span in self._spans[host]:
            if not span.start <= now < span.end or span.kind == SLOW:
                continue
            if span.kind == FAIL:
                return span
            if path != "/robots.txt" and found is None:
                found = span
        return found

    def delay_ms(self, host: str, path: str, now: float) -> int:
        """Extra milliseconds before the head of ``path`` at ``now`` (the longest SLOW span in force)."""
        if path == "/robots.txt":
            return 0
        return max((s.delay_ms for s in self._spans[host] if s.kind == SLOW and s.start <= now < s.end),
                   default=0)

    def spans(self, host: str) -> list[Span]:
        return list(self._spans[host])
