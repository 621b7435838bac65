"""Stopping a background loop task for sure: cancel it until it ends.

Python 3.11's ``asyncio.wait_for`` returns the inner result, and drops the
cancellation, when ``Task.cancel()`` arrives in the same event-loop turn as
the inner future's result (CPython gh-86296; 3.12 rebuilt ``wait_for`` on
``asyncio.timeout``). redis-py awaits every socket write with ``wait_for``, so
one ``cancel()`` of a loop that calls Redis can be lost: the loop goes on to
its next sleep, and whoever awaits the task waits for ever. Seen here: a
frontier heartbeat cancelled while its status call was writing kept beating,
and the worker's close waited its full ``FRONTIER_CLOSE_TIMEOUT`` (a test hit
its 300 s limit in CI).

:func:`stop_task` is for loops with nothing to clean up when they stop
(a heartbeat, a refresher); a component with work to finish on stop asks with
a flag instead (``pipelines/mongo_writer.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

# How long to wait for a cancelled task before cancelling it again.
RECANCEL_SECONDS = 0.1


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again while a cancellation is lost.

    The task's own exception, if it ended with one, is retrieved (not raised).
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    if not task.cancelled():
        task.exception()  # retrieved: asyncio does not log it as never retrieved
