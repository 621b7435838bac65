"""A closing worker hands back what it holds: its tasks stop, its requests go back to Redis.

Part of :mod:`crawler.frontier.scheduler`, which bounds the whole of it with
``FRONTIER_CLOSE_TIMEOUT``: a Redis that stops answering cannot keep a
worker from exiting (every call here is also bounded by the client's socket
timeout, and a cancelled call is not waited for). Until then, a failed call
is retried: nothing the worker holds is dropped while Redis may come back.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from crawler.stopping import stop_task

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from crawler.frontier.failures import FailedLog
    from crawler.frontier.outbox import Outbox
    from crawler.frontier.refill import Refill

# Pause between attempts while Redis does not take what the worker holds.
RETRY_PAUSE = 0.5


async def stop_tasks(heartbeat: asyncio.Task[Any] | None, refill: Refill, others: Iterable[asyncio.Task[Any]]) -> None:
    """The heartbeat is cancelled (for sure: crawler.stopping); the pop under way and the other tasks
    (seed reading) are waited for."""
    await stop_task(heartbeat)
    await refill.stop()
    others = list(others)
    if others:
        await asyncio.gather(*others, return_exceptions=True)


async def hand_back(outbox: Outbox, failed: FailedLog, release: Callable[[], Awaitable[int]]) -> int:
    """Flush the outbox (prefetched requests already in it) and the failed list, then acknowledge what is
    done and return the rest of this worker's leased requests (pops whose reply never came, for one).

    Returns how many requests ``release`` put back in their queues.
    """
    await outbox.close(RETRY_PAUSE)
    await failed.close(RETRY_PAUSE)
    while True:
        try:
            return await release()
        except RedisError:
            await asyncio.sleep(RETRY_PAUSE)
