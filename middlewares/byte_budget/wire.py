"""What a download cost on the wire, beyond what Scrapy's response shows, and when its bytes arrived."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from middlewares.byte_budget.leases import Grant


def chunked_overhead(body: int) -> int:
    """Wire bytes of a chunked body that Scrapy's response does not show.

    Twisted drops the ``Transfer-Encoding: chunked`` header and the chunk
    framing. Counted: that header line and the framing of one chunk plus the
    last one (``%x\r\n``, ``\r\n``, ``0\r\n\r\n``): exact for a body sent in
    one chunk, a few bytes short per further chunk (under 0.3% for 4 KB chunks).
    """
    return len(b"Transfer-Encoding: chunked\r\n") + len(b"%x\r\n\r\n" % body) + len(b"0\r\n\r\n")


def arrived_members(grant: Grant, reservation: bool,
                    redis_time: Callable[[float], float | None] | None = None) -> list[str]:
    """The download's members (its reservation if ``reservation``, its draws), each with
    the Redis time by which its bytes had all arrived where known, or with its arrival marks.

    A download settled on its own (``reservation``) was marked by the worker's
    clock every ``BYTE_BUDGET_DRAW_BYTES`` as its bytes arrived
    (``Grant.marks``): the marks become ``~<bytes>@<time>`` items, ``time`` a
    Redis time no earlier than their arrival (``redis_time``, from
    ``BudgetStore.redis_time_by``), and its members go undated (the marks say
    it all, and the two must not date the same bytes twice). Otherwise a
    download of unknown size draws once its bytes pass what it has (half an
    increment ahead from its second draw on), so its reservation had all
    arrived by its first draw, and each draw by the draw after the next.
    settle.lua counts those bytes from then rather than from the end.
    """
    if reservation and grant.marks and redis_time is not None:
        marks: list[str] = []
        before = 0
        for received, instant in grant.marks:
            at = redis_time(instant)
            if at is None:
                break  # no Redis time known yet: the members' own dates, as below
            marks.append(f"~{received - before}@{at!r}")
            before = received
        else:
            return [grant.member, *grant.draws, *marks]
    members = [f"{m}@{grant.drawn_at[k + 2]!r}" if k + 2 < len(grant.drawn_at) and grant.expected < 0 else m
               for k, m in enumerate(grant.draws)]
    if not reservation:
        return members
    if grant.drawn_at and grant.expected < 0:  # with Content-Length it drew with the headers
        return [f"{grant.member}@{grant.drawn_at[0]!r}", *members]
    return [grant.member, *members]
