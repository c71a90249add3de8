"""Which destination addresses egress refuses to dial, whatever name led to them.

Every address an allowed name resolves to is checked against these classes; private and
special ranges are reachable only through explicit entries in the config (an address rule
under ``allow``, or ``upstream.allow_private``). IPv6 forms that embed an IPv4 address
(IPv4-mapped, NAT64, 6to4, Teredo) are judged by the address they embed as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from egress.hostnames import IPAddress, IPNetwork


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Cloud metadata services: AWS/GCP/Azure/DigitalOcean/OpenStack (169.254.169.254), AWS IPv6
# (fd00:ec2::254), Alibaba (100.100.100.200), Oracle (192.0.0.192), Azure wire server
# (168.63.129.16).
METADATA = _nets("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32",
                 "168.63.129.16/32")  # fmt: skip

# (class name, networks), checked in order; the first match names the class.
BLOCKED_CLASSES: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    ("metadata", METADATA),
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ("cgnat", _nets("100.64.0.0/10")),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    ("broadcast", _nets("255.255.255.255/32")),
    (
        "reserved",
        _nets(
            "240.0.0.0/4",
            "192.0.0.0/24",
            "198.18.0.0/15",
            "100::/64",
            "2001:db8::/32",
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
        ),
    ),  # fmt: skip
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def embedded_ipv4(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, for the forms that route to them."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    if addr.ipv4_mapped is not None:
        return [addr.ipv4_mapped]
    if addr in _NAT64 or addr in _NAT64_LOCAL:
        return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
    if addr.sixtofour is not None:
        return [addr.sixtofour]
    if addr.teredo is not None:
        return list(addr.teredo)  # (server, client)
    return []


@dataclass(frozen=True)
class AddressPolicy:
    """Blocked classes, minus the ranges the config allows explicitly."""

    allowed: tuple[IPNetwork, ...] = ()
    own: tuple[tuple[IPAddress, int], ...] = ()  # the proxy's own listeners: never dial them

    def blocked(self, addr: IPAddress, port: int | None = None) -> str | None:
        """The blocked class of ``addr`` (e.g. "loopback"), or None if it may be dialled."""
        if port is not None and any(port == p and (addr == a or a.is_unspecified and _class_of(addr) is not None)
                                    for a, p in self.own):  # fmt: skip
            # A listener on 0.0.0.0/:: answers on every local (loopback or private) address.
            return "the proxy itself"
        if self._allowed(addr):
            return None
        why = _class_of(addr)
        if why is not None:
            return why
        for inner in embedded_ipv4(addr):
            inner_why = None if self._allowed(inner) else _class_of(inner)
            if inner_why is not None:
                return f"{inner_why} (embedded in {addr})"
        return None

    def _allowed(self, addr: IPAddress) -> bool:
        return any(_contains(n, addr) for n in self.allowed)

    def usable(
        self, addrs: Iterable[IPAddress], port: int
    ) -> tuple[list[IPAddress], list[tuple[IPAddress, str]]]:
        """Split resolved addresses into those that may be dialled and those refused (why)."""
        ok: list[IPAddress] = []
        refused: list[tuple[IPAddress, str]] = []
        for a in addrs:
            why = self.blocked(a, port)
            if why is None:
                ok.append(a)
            else:
                refused.append((a, why))
        return ok, refused


def _class_of(addr: IPAddress) -> str | None:
    for name, nets in BLOCKED_CLASSES:
        if any(_contains(n, addr) for n in nets):
            return name
    return None


def _contains(net: IPNetwork, addr: IPAddress) -> bool:
    return net.version == addr.version and addr in net
