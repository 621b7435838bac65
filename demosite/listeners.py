"""The demo server's listening sockets: a loopback one can stop listening and start again.

A closed listener makes connection attempts to that address fail with
"connection refused", as with a website whose server is down, while every
other address (and every open connection) keeps working. Only loopback
addresses the server was started with can be switched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class Listeners:
    """One asyncio server per bound address, all on the same port."""

    def __init__(self, factory: Callable[[], asyncio.Protocol]) -> None:
        self._factory = factory
        self._servers: dict[str, asyncio.Server] = {}
        self._binds: list[str] = []
        # Reopened sockets listen at once; asyncio serves them from the task's end.
        self._pending: dict[str, tuple[socket.socket, asyncio.Task[asyncio.Server]]] = {}
        self.port = 0

    async def open(self, binds: list[str], port: int) -> int:
        """Listen on every address of ``binds``; with ``port`` 0 the first one picks the port."""
        loop = asyncio.get_running_loop()
        for address in binds:
            server = await loop.create_server(self._factory, host=address, port=port)
            port = port or server.sockets[0].getsockname()[1]
            self._servers[address] = server
        self._binds = list(binds)
        self.port = port
        return port

    def listening(self, address: str) -> bool:
        return address in self._servers or address in self._pending

    def switch(self, address: str, on: bool) -> None:
        """Stop (``on=False``) or start listening on loopback ``address``, at once."""
        if address not in self._binds:
            raise ValueError(f"{address!r} is not one of the bound addresses {self._binds}")
        if not ipaddress.ip_address(address).is_loopback:
            raise ValueError(f"{address!r} is not a loopback address")
        if not on:
            server = self._servers.pop(address, None)
            if server is not None:
                server.close()  # closes the listening socket now; open connections stay
            pending = self._pending.pop(address, None)
            if pending is not None:
                pending[1].cancel()
                pending[0].close()
            return
        if self.listening(address):
            return
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, self.port))
        sock.listen(128)
        sock.setblocking(False)
        # The kernel accepts connections into the backlog from here on; asyncio
        # starts serving them on its next turn.
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_server(self._factory, sock=sock))
        self._pending[address] = (sock, task)
        task.add_done_callback(lambda t: self._started(address, t))

    def _started(self, address: str, task: asyncio.Task[asyncio.Server]) -> None:
        pending = self._pending.get(address)
        if pending is None or pending[1] is not task or task.cancelled():
            return
        del self._pending[address]
        if task.exception() is None:
            self._servers[address] = task.result()
        else:
            pending[0].close()

    def close(self) -> None:
        for address in list(self._servers) + list(self._pending):
            self.switch(address, on=False)
