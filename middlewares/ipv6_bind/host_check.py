"""Is this host set up to send from the configured prefixes? Checked without sending a packet."""

from __future__ import annotations

import ipaddress
import secrets
import socket
from pathlib import Path

from crawler.startup import StartupError

_RTF_LOCAL = 0x80000000  # include/uapi/linux/ipv6_route.h
_IFF_UP = 0x1  # include/uapi/linux/if.h


class IPv6BindSetupError(StartupError):
    """The host is not set up to send from the configured prefixes."""



def check_host_setup(
    prefixes: tuple[ipaddress.IPv6Network, ...], route_table: Path = Path("/proc/net/ipv6_route"),
    loopback_flags: Path = Path("/sys/class/net/lo/flags"),
) -> None:
    """Raise :class:`IPv6BindSetupError` saying what to run unless every prefix is local and bindable.

    Checks that send no packet: the loopback interface is up (a fresh network
    namespace has it down, and no ``local`` route can use it then), a ``local``
    route covering the prefix in the kernel's routing tables, and ``bind()``
    to a random address in it.
    """
    if loopback_flags.exists() and not int(loopback_flags.read_text().strip(), 16) & _IFF_UP:
        raise IPv6BindSetupError(
            "IPV6_BIND_PREFIXES: this host is not set up to send from the configured prefixes:\n  - "
            "the loopback interface lo is down: run `ip link set lo up`, then "
            + ", ".join(f"`ip -6 route add local {prefix} dev lo`" for prefix in prefixes)
            + "\nOr set IPV6_BIND_ENABLED=False."
        )
    local_routes: list[ipaddress.IPv6Network] = []
    if route_table.exists():
        for line in route_table.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 9 and int(fields[8], 16) & _RTF_LOCAL:
                addr = ipaddress.IPv6Address(int(fields[0], 16))
                local_routes.append(ipaddress.IPv6Network((addr, int(fields[1], 16)), strict=False))
    problems: list[str] = []
    for prefix in prefixes:
        if route_table.exists() and not any(prefix.subnet_of(r) for r in local_routes):
            problems.append(
                f"{prefix} is not routed to this host as local addresses: run "
                f"`ip -6 route add local {prefix} dev lo` (and route {prefix} to this host upstream)"
            )
            continue
        address = str(prefix[secrets.randbelow(prefix.num_addresses)])
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
                sock.bind((address, 0))
        except OSError as exc:
            problems.append(
                f"cannot bind {address} from {prefix} ({exc.strerror or exc}): run "
                "`sysctl -w net.ipv6.ip_nonlocal_bind=1` (persist it in /etc/sysctl.d/)"
            )
    if problems:
        raise IPv6BindSetupError(
            "IPV6_BIND_PREFIXES: this host is not set up to send from the configured prefixes:\n  - "
            + "\n  - ".join(problems)
            + "\nOr set IPV6_BIND_ENABLED=False."
        )
