"""IPv6 prefix math and the keyed address permutation: pure functions, no I/O.

Addresses are a keyed pseudo-random permutation (a 4-round BLAKE2b Feistel
network, keys from :mod:`secrets`) of each prefix, walked from a random start:
uniform, unpredictable, and never repeated by one worker until the prefix is
used up. Workers sharing a small prefix split it with ``IPV6_BIND_PARTITION``.
"""

from __future__ import annotations

import ipaddress
import secrets
from hashlib import blake2b
from typing import Any


def parse_prefixes(value: Any) -> tuple[ipaddress.IPv6Network, ...]:
    if isinstance(value, str):
        value = [part for part in value.replace(" ", ",").split(",") if part]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"IPV6_BIND_PREFIXES must list one or more IPv6 prefixes such as '2001:db8:1::/64', got {value!r}"
        )
    prefixes = []
    for item in value:
        try:
            network = ipaddress.ip_network(str(item).strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"IPV6_BIND_PREFIXES: {item!r} is not a valid IPv6 prefix ({exc})") from None
        if not isinstance(network, ipaddress.IPv6Network):
            raise ValueError(f"IPV6_BIND_PREFIXES: {item!r} is an IPv4 network; only IPv6 prefixes can be bound")
        prefixes.append(network)
    for i, a in enumerate(prefixes):
        for b in prefixes[i + 1 :]:
            if a.overlaps(b):
                raise ValueError(f"IPV6_BIND_PREFIXES: {a} and {b} overlap")
    return tuple(prefixes)


def parse_partition(value: Any) -> tuple[int, int]:
    if value in (None, ""):
        return (0, 1)
    index, sep, count = str(value).partition("/")
    try:
        parsed = (int(index), int(count))
    except ValueError:
        parsed = (-1, 0)
    if not sep or not 0 <= parsed[0] < parsed[1]:
        raise ValueError(f"IPV6_BIND_PARTITION must be 'i/n' with 0 <= i < n (worker i of n), got {value!r}")
    return parsed



class Permutation:
    """A keyed pseudo-random permutation of ``range(size)``.

    A 4-round Feistel network over 2w bits with keyed BLAKE2b as round
    function (Luby-Rackoff: a pseudo-random permutation), restricted to
    ``range(size)`` by cycle walking.
    """

    __slots__ = ("_half", "_keys", "_mask", "size")

    def __init__(self, size: int, key: bytes) -> None:
        self.size = size
        half = max(1, ((size - 1).bit_length() + 1) // 2)
        self._half = half
        self._mask = (1 << half) - 1
        self._keys = [blake2b(key + bytes([r]), digest_size=32).digest() for r in range(4)]

    def _encrypt(self, x: int) -> int:
        half, mask = self._half, self._mask
        nbytes = (half + 7) // 8
        left, right = x >> half, x & mask
        for key in self._keys:
            digest = blake2b(right.to_bytes(nbytes, "big"), key=key, digest_size=nbytes).digest()
            left, right = right, left ^ (int.from_bytes(digest, "big") & mask)
        return (left << half) | right

    def __getitem__(self, index: int) -> int:
        x = self._encrypt(index)
        while x >= self.size:
            x = self._encrypt(x)
        return x


class _PrefixWalk:
    """This worker's share of one prefix, visited in a random order without repeats."""

    __slots__ = ("_first", "_next", "_perm", "_start", "network", "size", "wrapped")

    def __init__(self, network: ipaddress.IPv6Network, partition: tuple[int, int]) -> None:
        self.network = network
        # Skip the Subnet-Router anycast address (host part 0, RFC 4291 2.6.1),
        # except in a /127 or /128 where every address counts (RFC 6164).
        low = 1 if network.prefixlen <= 126 else 0
        total = network.num_addresses - low
        index, count = partition
        first = low + total * index // count
        self.size = low + total * (index + 1) // count - first
        if self.size < 1:
            raise ValueError(
                f"IPV6_BIND_PARTITION {index}/{count} leaves no address of {network} to worker {index}"
            )
        self._first = first
        self._perm = Permutation(self.size, secrets.token_bytes(32))
        self._start = secrets.randbelow(self.size)
        self._next = 0
        self.wrapped = 0

    def draw(self) -> str:
        offset = self._perm[(self._start + self._next) % self.size]
        self._next += 1
        if self._next % self.size == 0:
            self.wrapped += 1
        return str(self.network[self._first + offset])


class AddressSource:
    """Draws addresses uniformly over all configured prefixes (this worker's share of them)."""

    def __init__(self, prefixes: tuple[ipaddress.IPv6Network, ...], partition: tuple[int, int] = (0, 1)) -> None:
        self.walks = [_PrefixWalk(p, partition) for p in prefixes]
        self.total = sum(w.size for w in self.walks)

    def draw(self) -> tuple[str, bool]:
        """A fresh address, and whether its prefix has now been used up (reuse starts)."""
        pick = secrets.randbelow(self.total)
        for walk in self.walks:
            if pick < walk.size:
                break
            pick -= walk.size
        before = walk.wrapped
        return walk.draw(), walk.wrapped != before


