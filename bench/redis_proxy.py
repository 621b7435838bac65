"""A small TCP proxy on loopback that counts round trips and can add latency.

There is no ``tc netem`` here, so the benchmarks put this between workers and
Redis. A *round trip* is counted each time a client sends after having
received (or at its first send): pipelined commands sent together count once,
as they should. ``delay`` seconds are added to every chunk in each direction
(order kept), like ``netem delay`` on the loopback interface: 2 ms each way is
4 ms more per round trip.

Runs its own event loop in a thread: ``with RedisProxy(port, delay) as proxy:``
then point ``REDIS_URL`` at ``proxy.url``; ``proxy.round_trips`` and
``proxy.reset()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class RedisProxy:
    """Counting, delaying TCP proxy to ``127.0.0.1:<upstream_port>``."""

    def __init__(self, upstream_port: int, delay: float = 0.0, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.round_trips = 0
        self.connections = 0
        self.port = port
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="redis-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def reset(self) -> None:
        self.round_trips = 0
        self.connections = 0

    def __enter__(self) -> RedisProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            # Like a Redis that goes away: listening stops and every connection drops.
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, up_w))
        state = {"client_turn": False}
        tasks = [asyncio.ensure_future(self._pipe(client_r, up_w, state, True)),
                 asyncio.ensure_future(self._pipe(up_r, client_w, state, False))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (client_w, up_w):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict[str, bool],
                    from_client: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                if queue.empty():
                    await writer.drain()

        forwarder = asyncio.ensure_future(forward())
        try:
            while data := await reader.read(65536):
                if from_client:
                    if not state["client_turn"]:
                        self.round_trips += 1
                        state["client_turn"] = True
                else:
                    state["client_turn"] = False
                if self.delay:
                    queue.put_nowait((time.monotonic() + self.delay, data))
                else:
                    writer.write(data)
            while not queue.empty():
                await asyncio.sleep(self.delay or 0.001)
        except (ConnectionError, OSError):
            pass
        finally:
            forwarder.cancel()
