"""Canonical host names and host patterns.

A name is canonicalised once (case, one trailing dot, IDNA to punycode, every IPv4 spelling
to dotted quad) and that canonical form is what the allowlist, secret binding, the upstream
connection and the audit record all use. Two spellings of one host can never get two
different decisions.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Literal

import idna
from publicsuffixlist import PublicSuffixList

from egress.errors import InvalidHost

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# WHATWG URL: a host whose last label is numeric is an IPv4 address in some spelling.
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f/\\@?#%]")


# Per-request callers ask about the same few names again and again (the tunnel's host, its
# Host header, its SNI): the pure functions below keep their answers for recent strings. The
# strings are the agent's, so the caches are bounded in entries (least recently used go)
# and take only strings short enough to be a host; anything else is computed every time.
# An error (InvalidHost) is never cached: it is raised anew on every call.
CACHE_ENTRIES = 2048
CACHE_MAX_CHARS = 300  # a DNS name is at most 253 characters; a bracketed IPv6 address less


def _ip(text: str) -> IPAddress | None:
    if type(text) is str and len(text) <= CACHE_MAX_CHARS:
        return _ip_cached(text)
    return _ip_uncached(text)


def _ip_uncached(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 is 127.0.0.1 on the wire: decide on the IPv4 address.
        return addr.ipv4_mapped
    return addr


_ip_cached = functools.lru_cache(maxsize=CACHE_ENTRIES)(_ip_uncached)


def canonical_host(raw: str) -> str:
    """Return the canonical form of a host (name or address), or raise InvalidHost."""
    if type(raw) is str and len(raw) <= CACHE_MAX_CHARS:
        return _canonical_cached(raw)
    return _canonical_host(raw)


def _canonical_host(raw: str) -> str:
    host = raw.strip() if isinstance(raw, str) else ""
    if not host or host != raw:
        raise InvalidHost(f"invalid host {raw!r}: empty or surrounded by white space")
    if "%" in host:
        raise InvalidHost(
            f"invalid host {raw!r}: an IPv6 zone id (or '%') has no place in a destination"
        )
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidHost(f"invalid host {raw!r}: brackets must hold an IPv6 address") from None
        return str(_ip(host[1:-1]))
    addr = _ip(host)
    if addr is not None:
        return str(addr)
    if _FORBIDDEN.search(host):
        raise InvalidHost(f"invalid host {raw!r}: contains a forbidden character")
    name = host[:-1] if host.endswith(".") else host
    if not name or name.endswith("."):
        raise InvalidHost(f"invalid host {raw!r}: empty label")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as e:
            raise InvalidHost(f"invalid host {raw!r}: {e}") from None
    name = name.lower()
    labels = name.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        try:
            # inet_aton accepts every legacy spelling (127.1, 0x7f000001, 0177.0.0.1, ...)
            return socket.inet_ntoa(socket.inet_aton(name))
        except OSError:
            raise InvalidHost(f"invalid host {raw!r}: looks like an IPv4 address but is not one")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidHost(f"invalid host {raw!r}: not a valid DNS name")
    if any(label.startswith("xn--") for label in labels):
        try:
            idna.decode(name)
        except idna.IDNAError as e:
            raise InvalidHost(f"invalid host {raw!r}: bad punycode label ({e})") from None
    return name


_canonical_cached = functools.lru_cache(maxsize=CACHE_ENTRIES)(_canonical_host)


def is_ip(host: str) -> bool:
    return _ip(host) is not None


def split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" / "host" (no canonicalisation)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            raise InvalidHost(f"invalid authority {authority!r}")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise InvalidHost(f"invalid authority {authority!r}")
        port_text = rest[1:]
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    else:
        return authority, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise InvalidHost(f"invalid port in {authority!r}")
    return host, int(port_text)


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def has_known_suffix(name: str) -> bool:
    """Does ``name`` (lower case) end in a suffix of the Public Suffix List (com, co.uk...)
    with a label before it? Not true of test, local, invalid or file names such as a.png."""
    return "." in name and _psl().publicsuffix(name, accept_unknown=False) not in (None, name)


@dataclass(frozen=True)
class HostPattern:
    """One host entry of a rule or a secret binding: exact name, *.wildcard, address or CIDR."""

    text: str  # canonical text, as written back in messages
    kind: Literal["name", "wildcard", "address"]
    network: IPNetwork | None = None

    def matches(self, host: str) -> bool:
        """host must already be canonical."""
        if self.kind == "name":
            return host == self.text
        if self.kind == "wildcard":
            return host.endswith(self.text[1:])  # "*.a.com" -> ".a.com": subdomains only
        addr = _ip(host)
        return addr is not None and self.network is not None and addr in self.network

    def __str__(self) -> str:
        return self.text


def parse_host_pattern(raw: object) -> HostPattern:
    """Parse a rule's host entry. Raises ValueError with a message that suggests the fix."""
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, not {type(raw).__name__}")
    if raw != raw.strip() or re.search(r"[\s\x00-\x1f\x7f]", raw):
        raise ValueError(f"{raw!r} contains white space or control characters")
    if "://" in raw:
        host = raw.split("://", 1)[1].split("/", 1)[0]
        raise ValueError(
            f"{raw!r} has a scheme: write the host alone ({host!r}) and list schemes under 'schemes'"
        )
    if "@" in raw:
        raise ValueError(f"{raw!r} has userinfo ('user@'): write the host alone")
    try:
        net = ipaddress.ip_network(raw.strip("[]"), strict=False)
    except ValueError:
        net = None
    if (
        isinstance(net, ipaddress.IPv6Network)
        and net.num_addresses == 1
        and net.network_address.ipv4_mapped
    ):
        # ::ffff:127.0.0.1 is decided as 127.0.0.1: the rule must say so too.
        net = ipaddress.ip_network(net.network_address.ipv4_mapped)
    if net is not None:
        if "/" in raw and str(net) != raw:
            raise ValueError(f"{raw!r} has host bits set: did you mean {str(net)!r}?")
        exact = net.num_addresses == 1
        text = str(net.network_address) if exact else str(net)
        return HostPattern(text=text, kind="address", network=net)
    if "/" in raw:
        raise ValueError(f"{raw!r} has a path: write the host alone and list paths under 'paths'")
    if raw == "*":
        raise ValueError(
            "a bare '*' would allow every host: list the hosts the agent needs (e.g. 'api.github.com')"
        )
    if re.search(r":\d+$", raw):
        host = raw.rsplit(":", 1)[0]
        raise ValueError(f"{raw!r} has a port: write {host!r} and list the port under 'ports'")
    wildcard = raw.startswith("*.")
    rest = raw[2:] if wildcard else raw
    if "*" in rest:
        raise ValueError(
            f"{raw!r}: a wildcard is only allowed as a leading '*.' (e.g. '*.example.com')"
        )
    if not rest.isascii():
        try:
            puny = idna.encode(rest, uts46=True).decode("ascii")
            hint = f"write it in punycode: {('*.' if wildcard else '') + puny!r}"
        except idna.IDNAError:
            hint = "it is not a valid internationalised name"
        raise ValueError(f"{raw!r} is not ASCII: {hint}")
    try:
        name = canonical_host(rest)
    except InvalidHost as e:
        raise ValueError(str(e)) from None
    if is_ip(name):
        raise ValueError(f"{raw!r} is an unusual spelling of the address {name!r}: write {name!r}")
    if wildcard:
        if _psl().is_public(name) or "." not in name:
            raise ValueError(
                f"{raw!r} would allow every host under the public suffix {name!r}: "
                f"name the registrable domain (e.g. '*.example.{name}')"
            )
        return HostPattern(text="*." + name, kind="wildcard")
    return HostPattern(text=name, kind="name")
