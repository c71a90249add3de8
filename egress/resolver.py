"""Resolve a destination once, check every address, and pick one that may be dialled.

The proxy dials the address it checked, never the name: a second resolution by the
connection code would let DNS rebinding swap in another address between check and use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

from egress.addresses import AddressPolicy
from egress.hostnames import IPAddress, IPNetwork, is_ip
from egress.reasons import Reason


@dataclass(frozen=True)
class Picked:
    address: IPAddress
    refused: tuple[tuple[IPAddress, str], ...] = ()  # other answers, not dialled, and why


@dataclass(frozen=True)
class Refused:
    reason: Reason
    detail: str


def _in_any(addr: IPAddress, nets: tuple[IPNetwork, ...]) -> bool:
    mapped = getattr(addr, "ipv4_mapped", None)
    for a in (addr, mapped) if mapped is not None else (addr,):
        if any(a.version == n.version and a in n for n in nets):
            return True
    return False


class Resolver:
    def __init__(
        self,
        static: dict[str, tuple[str, ...]],
        policy: AddressPolicy,
        timeout: float = 5.0,
        static_only: bool = False,
        locked: tuple[IPNetwork, ...] = (),
    ):
        self.static_only = static_only
        # locked.deny's address patterns: never dialled, whatever name leads there and
        # whatever range a rule or upstream.allow_private opens (docs/agents.md).
        self.locked = locked
        self.static = {
            name: tuple(ipaddress.ip_address(a) for a in addrs) for name, addrs in static.items()
        }
        self.policy = policy
        self.timeout = timeout

    async def lookup(self, host: str) -> list[IPAddress]:
        """All addresses of a canonical host, in answer order (the static map first)."""
        if is_ip(host):
            return [ipaddress.ip_address(host)]
        if host in self.static:
            return list(self.static[host])
        if self.static_only:
            return []  # upstream.dns: static: answers come only from upstream.resolve
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), self.timeout
        )
        seen: dict[IPAddress, None] = {}
        for info in infos:
            seen.setdefault(ipaddress.ip_address(info[4][0].split("%", 1)[0]), None)
        return list(seen)

    async def pick(
        self, host: str, port: int, prefer: IPAddress | None = None,
        allowed: tuple[IPNetwork, ...] | None = None,
    ) -> Picked | Refused:  # fmt: skip
        """Resolve ``host`` and pick an address egress may dial: ``prefer`` (a redirected
        connection's original destination) when it is among the usable answers, else the
        first usable answer. ``prefer`` alone is never trusted. ``allowed``: the private
        ranges this request may reach (an agent's own), instead of the policy's."""
        try:
            addrs = await self.lookup(host)
        except (TimeoutError, OSError) as e:
            why = getattr(e, "strerror", None) or type(e).__name__
            return Refused(Reason.DNS_FAILURE, f"cannot resolve {host!r}: {why}")
        if not addrs:
            return Refused(Reason.DNS_FAILURE, f"{host!r} has no address")
        if self.locked:
            kept = [a for a in addrs if not _in_any(a, self.locked)]
            if not kept:
                listed = ", ".join(str(a) for a in addrs)
                return Refused(Reason.HOST_LOCKED, f"{host!r} resolves only to addresses locked "
                               f"by the admin (locked.deny): {listed}")  # fmt: skip
            addrs = kept
        policy = self.policy if allowed is None else AddressPolicy(allowed, self.policy.own)
        ok, refused = policy.usable(addrs, port)
        if not ok:
            listed = ", ".join(f"{a} ({why})" for a, why in refused)
            return Refused(
                Reason.RESOLVED_PRIVATE,
                f"{host!r} resolves only to addresses egress does not dial: {listed}; to reach an "
                "internal service, list its range under upstream.allow_private",
            )
        return Picked(prefer if prefer in ok else ok[0], tuple(refused))

    def recheck(
        self, host: str, address: IPAddress, port: int, allowed: tuple[IPNetwork, ...] | None
    ) -> Refused | None:
        """Would this resolver's ranges still let egress dial ``address``, picked for
        ``host`` under an earlier policy? (A tunnel open across a reload: egress.reload.)"""
        if self.locked and _in_any(address, self.locked):
            return Refused(Reason.HOST_LOCKED, f"{host!r} was connected to {address}, an address "
                           "locked by the admin (locked.deny)")  # fmt: skip
        policy = self.policy if allowed is None else AddressPolicy(allowed, self.policy.own)
        ok, refused = policy.usable([address], port)
        if not ok:
            listed = ", ".join(f"{a} ({why})" for a, why in refused)
            return Refused(Reason.RESOLVED_PRIVATE, f"{host!r} was connected to an address egress "
                           f"no longer dials: {listed}; to reach an internal service, list its "
                           "range under upstream.allow_private")  # fmt: skip
        return None
