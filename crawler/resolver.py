"""Name resolution with static overrides, like curl's ``--resolve``.

Select it with ``TWISTED_DNS_RESOLVER = "crawler.resolver.StaticHostResolver"``
(the project's default). Names matched by ``RESOLVE_HOSTS`` resolve to the
configured addresses without touching ``/etc/hosts`` or DNS; every other name
goes to Scrapy's :class:`~scrapy.resolver.CachingHostnameResolver`, which
resolves IPv4 *and* IPv6 (Scrapy's default resolver is IPv4-only).

Settings:

``RESOLVE_HOSTS``
    A dict ``{"shop-a.test": "127.0.0.1", "*.test": ["::1", "127.0.0.1"]}``, a
    list of ``"host:address"`` strings, or one string of them separated by
    commas (the form of the ``RESOLVE_HOSTS`` environment variable), e.g.
    ``"shop-a.test:127.0.0.1,*.test:::1"``. ``*.suffix`` matches any name
    ending in ``.suffix``; an exact entry wins over a wildcard, a longer
    wildcard over a shorter one. Addresses are tried in the order given.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy.resolver import CachingHostnameResolver, HostResolution
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from zope.interface import implementer

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Self

    from scrapy.crawler import Crawler
    from twisted.internet.base import ReactorBase
    from twisted.internet.interfaces import IAddress, IHostResolution, IResolutionReceiver

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResolveConfig:
    """Parsed ``RESOLVE_HOSTS``: exact names and ``*.suffix`` wildcards."""

    exact: dict[str, tuple[str, ...]]
    wildcard: tuple[tuple[str, tuple[str, ...]], ...]  # (".suffix", addresses), longest first

    @classmethod
    def from_value(cls, value: Any) -> Self:
        exact: dict[str, list[str]] = {}
        wildcard: dict[str, list[str]] = {}
        for raw_host, raw_addr in _entries(value):
            host = raw_host.strip().lower().rstrip(".")
            addr = raw_addr.strip().strip("[]")
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ValueError(f"RESOLVE_HOSTS: {addr!r} (for {host!r}) is not an IP address") from None
            if host.startswith("*."):
                wildcard.setdefault(host[1:], []).append(addr)
            elif host and "*" not in host:
                exact.setdefault(host, []).append(addr)
            else:
                raise ValueError(f"RESOLVE_HOSTS: {host!r} is not a hostname or '*.suffix' pattern")
        ordered = sorted(wildcard.items(), key=lambda kv: -len(kv[0]))
        return cls(
            exact={h: tuple(a) for h, a in exact.items()},
            wildcard=tuple((s, tuple(a)) for s, a in ordered),
        )

    def lookup(self, host: str) -> tuple[str, ...] | None:
        host = host.lower().rstrip(".")
        if host in self.exact:
            return self.exact[host]
        for suffix, addrs in self.wildcard:
            if host.endswith(suffix):
                return addrs
        return None


def _entries(value: Any) -> list[tuple[str, str]]:
    """(host, address) pairs from any accepted form of ``RESOLVE_HOSTS``."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if isinstance(value, dict):
        return [(host, addr) for host, addrs in value.items()
                for addr in ([addrs] if isinstance(addrs, str) else addrs)]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"RESOLVE_HOSTS: expected a dict, a list or a string, got {value!r}")
    entries = []
    for item in value:
        host, sep, addr = str(item).strip().partition(":")
        if not sep:
            raise ValueError(f"RESOLVE_HOSTS: entry {item!r} is not of the form 'host:address'")
        entries.append((host, addr))
    return entries


@implementer(IHostnameResolver)
class StaticHostResolver(CachingHostnameResolver):
    """IPv4/IPv6 caching resolver that answers ``RESOLVE_HOSTS`` names itself."""

    def __init__(self, reactor: ReactorBase, cache_size: int, config: ResolveConfig) -> None:
        super().__init__(reactor, cache_size)
        self.config = config

    @classmethod
    def from_crawler(cls, crawler: Crawler, reactor: ReactorBase) -> Self:
        settings = crawler.settings
        cache_size = settings.getint("DNSCACHE_SIZE") if settings.getbool("DNSCACHE_ENABLED") else 0
        config = ResolveConfig.from_value(settings.get("RESOLVE_HOSTS"))
        if config.exact or config.wildcard:
            logger.info(
                "Static name resolution: %(exact)s %(wildcard)s",
                {"exact": config.exact, "wildcard": dict(config.wildcard)},
            )
        return cls(reactor, cache_size, config)

    def resolveHostName(  # noqa: N802 (Twisted interface)
        self,
        resolutionReceiver: IResolutionReceiver,  # noqa: N803
        hostName: str,  # noqa: N803
        portNumber: int = 0,  # noqa: N803
        addressTypes: Sequence[type[IAddress]] | None = None,  # noqa: N803
        transportSemantics: str = "TCP",  # noqa: N803
    ) -> IHostResolution:
        addrs = self.config.lookup(hostName)
        if addrs is None:
            return super().resolveHostName(
                resolutionReceiver, hostName, portNumber, addressTypes, transportSemantics
            )
        resolution = HostResolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        for addr in addrs:
            is_v6 = ":" in addr
            cls_ = IPv6Address if is_v6 else IPv4Address
            if addressTypes is None or cls_ in addressTypes:
                resolutionReceiver.addressResolved(cls_("TCP", addr, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution
