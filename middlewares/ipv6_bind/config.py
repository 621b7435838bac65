"""``IPV6_BIND_*`` settings, parsed once into :class:`IPv6BindConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from scrapy.utils.misc import load_object
from twisted.internet.interfaces import IHostnameResolver

from crawler.setting_values import float_setting, int_setting
from crawler.website import website_key_mode
from middlewares.ipv6_bind.addresses import AddressSource, parse_partition, parse_prefixes

if TYPE_CHECKING:
    import ipaddress

    from scrapy.settings import BaseSettings

POLICIES = ("per_request", "sticky")
IPV4_TARGETS = ("fetch", "refuse")


@dataclass(frozen=True, slots=True)
class IPv6BindConfig:
    """Parsed ``IPV6_BIND_*`` settings."""

    prefixes: tuple[ipaddress.IPv6Network, ...]
    policy: str = "sticky"
    sticky_addresses: int = 2
    sticky_requests: int = 1000
    sticky_seconds: float = 300.0
    ipv4_targets: str = "fetch"
    partition: tuple[int, int] = (0, 1)
    close_connections: bool = True
    self_check: bool = True
    website_key_mode: str = "domain"

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        policy = settings.get("IPV6_BIND_POLICY", "sticky")
        if policy not in POLICIES:
            raise ValueError(f"IPV6_BIND_POLICY must be one of {POLICIES}, got {policy!r}")
        ipv4 = settings.get("IPV6_BIND_IPV4_TARGETS", "fetch")
        if ipv4 not in IPV4_TARGETS:
            raise ValueError(f"IPV6_BIND_IPV4_TARGETS must be one of {IPV4_TARGETS}, got {ipv4!r}")
        resolver = settings.get("TWISTED_DNS_RESOLVER")
        if not IHostnameResolver.implementedBy(load_object(resolver)):
            # Scrapy's default resolver answers IPv4 only: every host would look IPv4-only.
            raise ValueError(
                f"IPV6_BIND_ENABLED needs an IPv6-capable TWISTED_DNS_RESOLVER such as "
                f"'crawler.resolver.StaticHostResolver' (the project's default), got {resolver!r}"
            )
        config = cls(
            prefixes=parse_prefixes(settings.get("IPV6_BIND_PREFIXES")),
            policy=policy,
            sticky_addresses=int_setting(settings, "IPV6_BIND_STICKY_ADDRESSES", 2, minimum=1),
            sticky_requests=int_setting(settings, "IPV6_BIND_STICKY_REQUESTS", 1000, minimum=0),
            sticky_seconds=float_setting(settings, "IPV6_BIND_STICKY_SECONDS", 300.0, minimum=0),
            ipv4_targets=ipv4,
            partition=parse_partition(settings.get("IPV6_BIND_PARTITION")),
            close_connections=settings.getbool("IPV6_BIND_CLOSE_CONNECTIONS", True),
            self_check=settings.getbool("IPV6_BIND_SELF_CHECK", True),
            website_key_mode=website_key_mode(settings),
        )
        # Fail now, not on the first request, if a partition leaves a prefix empty.
        AddressSource(config.prefixes, config.partition)
        return config

