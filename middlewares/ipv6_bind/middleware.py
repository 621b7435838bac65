"""Bind each request to a random IPv6 source address from routed prefixes.

The host must own the prefixes: ``ip -6 route add local PREFIX dev lo`` (the
upstream router routes PREFIX to this host) and
``sysctl -w net.ipv6.ip_nonlocal_bind=1``. The middleware then sets Scrapy's
``bindaddress`` meta key, which the HTTP/1.1 and HTTP/2 handlers honour.

Scrapy 2.19 keys its connection pool by bind address, so the rotation policy
*is* the connection-reuse policy: ``per_request`` opens a fresh connection for
every request (and asks the server to close it, so dead connections do not
pile up in the pool); ``sticky`` keeps K addresses per website and rotates
each after N requests or T seconds, so keep-alive connections are reused.

Only targets reached over IPv6 are bound: the middleware resolves the host
with the crawl's resolver (``reactor.nameResolver``, the project's
:class:`crawler.resolver.StaticHostResolver`) once per host and keeps the
answer. A host with no IPv6 address is fetched as usual, or refused.

Addresses come from :mod:`middlewares.ipv6_bind.addresses` (a keyed permutation
of each prefix, never repeated by one worker until the prefix is used up); the
host's set-up is checked at start-up by :mod:`middlewares.ipv6_bind.host_check`.

Settings: ``IPV6_BIND_ENABLED``, ``IPV6_BIND_PREFIXES``, ``IPV6_BIND_POLICY``,
``IPV6_BIND_STICKY_ADDRESSES``, ``IPV6_BIND_STICKY_REQUESTS``,
``IPV6_BIND_STICKY_SECONDS``, ``IPV6_BIND_IPV4_TARGETS``,
``IPV6_BIND_PARTITION``, ``IPV6_BIND_CLOSE_CONNECTIONS``,
``IPV6_BIND_SELF_CHECK`` (docs/ipv6-bind.md).

Meta keys: ``ipv6_bind_dont_bind`` and ``ipv6_bind_pin`` (set by callers);
``ipv6_bind_address`` and ``ipv6_bind_connection_close`` (set here), besides
Scrapy's ``bindaddress``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.address import IPv6Address as TxIPv6Address
from twisted.internet.interfaces import IResolutionReceiver
from zope.interface import implementer

from crawler.website import website_key
from middlewares.ipv6_bind.addresses import AddressSource
from middlewares.ipv6_bind.config import IPv6BindConfig
from middlewares.ipv6_bind.host_check import check_host_setup

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.statscollectors import StatsCollector
    from twisted.internet.interfaces import IAddress, IHostnameResolver, IHostResolution

logger = logging.getLogger(__name__)

_HOST_CACHE_SIZE = 65536
_WEBSITES_MAX = 65536


@dataclass(slots=True)
class _Slot:
    address: str
    uses: int
    born: float


class _Website:
    """The K sticky addresses of one website, used in turn."""

    __slots__ = ("slots", "turn")

    def __init__(self, k: int) -> None:
        self.slots: list[_Slot | None] = [None] * k
        self.turn = 0




@implementer(IResolutionReceiver)
class _Receiver:
    def __init__(self, future: asyncio.Future[list[IAddress]]) -> None:
        self.future = future
        self.addresses: list[IAddress] = []

    def resolutionBegan(self, resolution: IHostResolution) -> None:  # noqa: N802 (Twisted interface)
        pass

    def addressResolved(self, address: IAddress) -> None:  # noqa: N802
        self.addresses.append(address)

    def resolutionComplete(self) -> None:  # noqa: N802
        if not self.future.done():
            self.future.set_result(self.addresses)



class IPv6BindMiddleware:
    """Sets ``bindaddress`` to a random IPv6 address of the configured prefixes."""

    def __init__(self, crawler: Crawler, config: IPv6BindConfig) -> None:
        if not is_asyncio_available():
            raise RuntimeError("IPv6BindMiddleware needs the asyncio reactor")
        assert crawler.stats is not None
        self.crawler = crawler
        self.stats: StatsCollector = crawler.stats
        self.config = config
        self.source = AddressSource(config.prefixes, config.partition)
        self.clock = time.monotonic
        self._hosts: OrderedDict[str, asyncio.Future[bool | None]] = OrderedDict()
        self._websites: OrderedDict[str, _Website] = OrderedDict()
        self._ipv4_logged: set[str] = set()
        self._pin_refused_logged = False
        # HTTP/2 forbids the Connection header (RFC 9113 8.2.2); h2 would refuse the request.
        handlers = crawler.settings.getwithbase("DOWNLOAD_HANDLERS")
        self._h2_schemes = {s for s in ("http", "https") if "H2" in str(handlers.get(s) or "")}
        # About how many connections one sticky address holds to a host: its
        # share of the per-host concurrency (which bounds Scrapy's pool too).
        per_host = crawler.settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN") or 8
        self._drain = -(-per_host // config.sticky_addresses)
        if config.self_check:
            check_host_setup(config.prefixes)
        logger.info(
            "Binding IPv6 targets to %(prefixes)s, policy %(policy)s%(sticky)s, IPv4 targets: %(ipv4)s",
            {
                "prefixes": ", ".join(map(str, config.prefixes)),
                "policy": config.policy,
                "sticky": (
                    f" ({config.sticky_addresses} addresses per website, rotated after "
                    f"{config.sticky_requests or 'unlimited'} requests / {config.sticky_seconds or 'unlimited'} s)"
                    if config.policy == "sticky" else ""
                ),
                "ipv4": config.ipv4_targets,
            },
        )

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("IPV6_BIND_ENABLED"):
            raise NotConfigured
        return cls(crawler, IPv6BindConfig.from_settings(crawler.settings))

    async def process_request(self, request: Request) -> Request | Response | None:
        meta = request.meta
        self._forget_copied_binding(request)
        host = self._candidate_host(request)
        if host is None:
            return None
        has_ipv6 = await self._has_ipv6(host)
        if has_ipv6 is None:
            # The download itself will fail with the resolver's own error.
            self.stats.inc_value("ipv6_bind/skipped/unresolved")
            return None
        if not has_ipv6:
            self._ipv4_target(host)
            return None

        pin = self._pin(request)
        close = False
        if pin:
            address = pin
            self.stats.inc_value("ipv6_bind/pinned")
        elif self.config.policy == "per_request":
            address = self._draw()
            close = True
        else:
            address, close = self._sticky(request.url)
        meta["bindaddress"] = (address, 0)
        meta["ipv6_bind_address"] = address
        if (close and self.config.close_connections and b"Connection" not in request.headers
                and urlparse_cached(request).scheme not in self._h2_schemes):
            # Scrapy pools connections by bind address: one bound to an address
            # that will not be used again would only sit idle in the pool.
            request.headers[b"Connection"] = b"close"
            meta["ipv6_bind_connection_close"] = True
        self.stats.inc_value("ipv6_bind/bound")
        logger.debug("Bound %(request)s to %(address)s", {"request": request, "address": address},
                     extra={"spider": self.crawler.spider})
        return None

    def _pin(self, request: Request) -> str | None:
        """The request's ``ipv6_bind_pin`` if it is an address of IPV6_BIND_PREFIXES; else None (ignored).

        A pin outside the prefixes would send packets from a source address this
        host does not own (spoofed): it is refused, counted and logged once per worker.
        """
        pin = request.meta.get("ipv6_bind_pin")
        if not pin:
            return None
        try:
            address = ipaddress.IPv6Address(str(pin).strip("[]"))
        except ValueError:
            address = None
        if address is not None and any(address in p for p in self.config.prefixes):
            return str(address)
        self.stats.inc_value("ipv6_bind/pin_refused")
        if not self._pin_refused_logged:
            self._pin_refused_logged = True
            logger.warning("Ignored meta ipv6_bind_pin %(pin)r of %(request)s: not an address of IPV6_BIND_PREFIXES "
                           "(%(prefixes)s); the request is bound as any other. Further refused pins are only "
                           "counted (ipv6_bind/pin_refused)",
                           {"pin": pin, "request": request, "prefixes": ", ".join(map(str, self.config.prefixes))},
                           extra={"spider": self.crawler.spider})
        return None

    def _candidate_host(self, request: Request) -> str | None:
        """The host to bind for, or None when this request is not ours to bind."""
        meta = request.meta
        skip = None
        if meta.get("ipv6_bind_dont_bind"):
            skip = "dont_bind"
        elif meta.get("bindaddress"):
            skip = "bindaddress"
        elif meta.get("proxy"):
            skip = "proxy"  # a bind address would apply to the connection to the proxy
        if skip:
            self.stats.inc_value(f"ipv6_bind/skipped/{skip}")
            return None
        parsed = urlparse_cached(request)
        if parsed.scheme not in ("http", "https"):
            return None
        return parsed.hostname or None

    def _forget_copied_binding(self, request: Request) -> None:
        """Undo our binding on a request copied by RetryMiddleware or RedirectMiddleware.

        A retry deserves a fresh decision (new address, or the sticky one of
        the moment), and a redirect may lead to another, IPv4-only host. A
        ``bindaddress`` that a caller set is left alone: it differs from ours.
        """
        meta = request.meta
        ours = meta.get("ipv6_bind_address")
        if ours is None or meta.get("bindaddress") != (ours, 0):
            return
        del meta["bindaddress"], meta["ipv6_bind_address"]
        if meta.pop("ipv6_bind_connection_close", False):
            del request.headers[b"Connection"]
        self.stats.inc_value("ipv6_bind/rebound")

    def _ipv4_target(self, host: str) -> None:
        refuse = self.config.ipv4_targets == "refuse"
        self.stats.inc_value("ipv6_bind/ipv4_only/refused" if refuse else "ipv6_bind/ipv4_only/fetched")
        if host not in self._ipv4_logged and len(self._ipv4_logged) < _HOST_CACHE_SIZE:
            self._ipv4_logged.add(host)
            logger.info(
                "%(host)s has no IPv6 address: %(action)s (IPV6_BIND_IPV4_TARGETS=%(opt)s)",
                {"host": host, "action": "refusing its requests" if refuse else "fetching it without binding",
                 "opt": self.config.ipv4_targets},
                extra={"spider": self.crawler.spider},
            )
        if refuse:
            raise IgnoreRequest(f"{host} has no IPv6 address and IPV6_BIND_IPV4_TARGETS is 'refuse'")

    def _draw(self) -> str:
        address, wrapped = self.source.draw()
        self.stats.inc_value("ipv6_bind/addresses")
        if wrapped:
            self.stats.inc_value("ipv6_bind/prefix_used_up")
            logger.warning(
                "Every address of an IPV6_BIND_PREFIXES prefix (this worker's share) has been used; "
                "addresses are now reused. Use a larger prefix or fewer workers per prefix.",
                extra={"spider": self.crawler.spider},
            )
        return address

    def _sticky(self, url: str) -> tuple[str, bool]:
        """The website's next address in turn, rotated when it is worn out; whether it is now retired."""
        config = self.config
        key = website_key(url, config.website_key_mode)
        site = self._websites.get(key)
        if site is None:
            site = self._websites[key] = _Website(config.sticky_addresses)
            if len(self._websites) > _WEBSITES_MAX:
                self._websites.popitem(last=False)
        else:
            self._websites.move_to_end(key)
        index = site.turn
        site.turn = (index + 1) % len(site.slots)
        slot = site.slots[index]
        now = self.clock()
        if slot is not None and config.sticky_requests and slot.uses >= config.sticky_requests:
            self.stats.inc_value("ipv6_bind/rotated/requests")
            slot = None
        elif slot is not None and config.sticky_seconds and now - slot.born >= config.sticky_seconds:
            self.stats.inc_value("ipv6_bind/rotated/seconds")
            slot = None
        if slot is None:
            slot = site.slots[index] = _Slot(self._draw(), 0, now)
        slot.uses += 1
        # The address's last requests close the connections they ride on, so
        # its connections do not linger idle in the pool once it is retired.
        return slot.address, bool(config.sticky_requests) and slot.uses > config.sticky_requests - self._drain

    async def _has_ipv6(self, host: str) -> bool | None:
        """Whether ``host`` has an IPv6 address (None: it did not resolve), asked once per host."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return literal.version == 6
        future = self._hosts.get(host)
        if future is None:
            future = self._hosts[host] = asyncio.ensure_future(self._resolve(host))
            if len(self._hosts) > _HOST_CACHE_SIZE:
                self._hosts.popitem(last=False)
        result = await asyncio.shield(future)
        if result is None:
            self._hosts.pop(host, None)  # not cached: try again next time
        return result

    async def _resolve(self, host: str) -> bool | None:
        from twisted.internet import reactor

        future: asyncio.Future[list[IAddress]] = asyncio.get_running_loop().create_future()
        # All address types: the resolver caches what it is asked for, and the
        # download that follows needs every address.
        # The resolver Scrapy installed from TWISTED_DNS_RESOLVER.
        resolver: IHostnameResolver = reactor.nameResolver  # type: ignore[attr-defined]
        resolver.resolveHostName(_Receiver(future), host)
        addresses = await future
        if not addresses:
            return None
        return any(isinstance(a, TxIPv6Address) for a in addresses)
