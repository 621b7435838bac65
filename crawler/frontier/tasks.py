"""The frontier's background tasks: none dies silently.

Part of :mod:`crawler.frontier.scheduler`. Every task the frontier starts
(heartbeat, refill, flush, seed reading) is started here. A task that ends
with an unexpected exception (Redis errors are handled inside the tasks) is
logged once, with its traceback, and counted in ``frontier/task_error``;
asyncio's "Task exception was never retrieved" never appears. A loop task
(the heartbeat) is restarted after a short pause; after
``_MAX_RESTARTS`` crashes within ``_RESTART_WINDOW`` seconds the worker is
closed with reason ``frontier_task_failed`` rather than left running
without its heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)

_MAX_RESTARTS = 3
_RESTART_WINDOW = 60.0
_RESTART_PAUSE = 1.0


class Tasks:
    """Starts the frontier's tasks, reports their crashes, waits for them on close."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: StatsCollector,
                 give_up: Callable[[str], None]) -> None:
        self._loop = loop
        self._stats = stats
        self._give_up = give_up  # closes the worker with this reason
        self.running: set[asyncio.Task[Any]] = set()

    def start(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro``; an unexpected exception is logged once with its traceback."""
        task = self._loop.create_task(coro, name=f"frontier-{name}")
        self.running.add(task)
        task.add_done_callback(self._done)
        return task

    def start_loop(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """Run ``factory()`` for ever, restarting it after a crash (see module docstring)."""
        return self._loop.create_task(self._supervise(name, factory), name=f"frontier-{name}")

    async def _supervise(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        crashes: list[float] = []
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                now = time.monotonic()
                crashes = [t for t in crashes if now - t < _RESTART_WINDOW] + [now]
                self._stats.inc_value("frontier/task_error")
                if len(crashes) > _MAX_RESTARTS:
                    logger.error("Frontier %(name)s task failed %(n)d times in %(w)ds; closing the worker",
                                 {"name": name, "n": len(crashes), "w": _RESTART_WINDOW}, exc_info=True)
                    self._give_up("frontier_task_failed")
                    return
                logger.error("Frontier %(name)s task failed; restarting it in %(p).0fs",
                             {"name": name, "p": _RESTART_PAUSE}, exc_info=True)
            await asyncio.sleep(_RESTART_PAUSE)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.running.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._stats.inc_value("frontier/task_error")
            logger.error("Frontier task %(name)s failed", {"name": task.get_name()},
                         exc_info=(type(exc), exc, exc.__traceback__))
