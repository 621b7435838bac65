"""crawler.stopping: a loop whose cancellation is lost (Python 3.11's wait_for) still stops."""

from __future__ import annotations

import asyncio
import sys

import pytest

from crawler.stopping import stop_task


async def _beat(step: asyncio.Future[None], beats: list[int]) -> None:
    """A heartbeat-like loop: one awaited call through wait_for (as redis-py writes), then sleeps."""
    await asyncio.wait_for(step, timeout=5)
    while True:
        beats.append(1)
        await asyncio.sleep(0.01)


async def _lost_cancellation(beats: list[int]) -> asyncio.Task[None]:
    """A running loop task whose cancel() arrived in the same turn as its wait_for's result."""
    step: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_beat(step, beats))
    await asyncio.sleep(0)  # the task now waits in wait_for
    step.set_result(None)
    task.cancel()  # same turn: Python 3.11's wait_for returns the result and drops this
    await asyncio.sleep(0.05)
    return task


@pytest.mark.asyncio
@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancellation from Python 3.12")
async def test_the_lost_cancellation_is_real_on_this_python() -> None:
    """The defect stop_task exists for: after cancel(), the loop is still beating."""
    beats: list[int] = []
    task = await _lost_cancellation(beats)
    try:
        assert not task.done()
        before = len(beats)
        await asyncio.sleep(0.05)
        assert len(beats) > before
    finally:
        await stop_task(task)


@pytest.mark.asyncio
async def test_stop_task_ends_a_loop_whose_cancellation_was_lost() -> None:
    beats: list[int] = []
    task = await _lost_cancellation(beats)
    # Bounded: a plain ``await task`` here waits for ever on Python 3.11.
    async with asyncio.timeout(10):
        await stop_task(task)
    assert task.done()


@pytest.mark.asyncio
async def test_stop_task_retrieves_the_tasks_own_exception() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await stop_task(task)  # returns; asyncio does not report "exception was never retrieved"
    assert isinstance(task.exception(), RuntimeError)
    await stop_task(None)
