"""One request's whole decision, without sending anything: URL, allowlist and addresses.

The same steps the proxy takes, as a pure function over plain data. ``egress check`` and
the conformance table use it; the proxy runs the same pieces in its hooks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from egress.addresses import AddressPolicy
from egress.errors import InvalidHost
from egress.hostnames import IPAddress, canonical_host, is_ip
from egress.policy import Allowlist, Decision
from egress.reasons import Reason
from egress.routing import override_methods


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    host: str  # canonical, or as given when it could not be canonicalised
    port: int
    scheme: str
    path: str
    address: IPAddress | None = None  # the address the proxy would dial
    refused: tuple[tuple[IPAddress, str], ...] = ()  # answers it would not dial, and why


def decide_url(
    allowlist: Allowlist,
    method: str,
    url: str,
    answers: Mapping[str, Sequence[str]] | None = None,
    addresses: AddressPolicy | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Outcome:
    """Decide ``method url``. With ``answers`` (name -> addresses, as DNS would give them)
    the address checks run too; without, only the allowlist is decided."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    raw_host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return Outcome(
            Decision(False, Reason.INVALID_HOST, None, f"invalid port in {url!r}"),
            raw_host,
            0,
            scheme,
            path,
        )
    if scheme not in ("http", "https"):
        return Outcome(Decision(False, Reason.SCHEME_NOT_ALLOWED, None, f"{scheme!r} is not proxied"), raw_host,
                       port, scheme, path)  # fmt: skip
    if parts.username is not None or parts.password is not None:
        d = Decision(False, Reason.USERINFO_IN_URL, None, "the URL carries credentials ('user@')")
        return Outcome(d, raw_host, port, scheme, path)
    try:
        host = canonical_host(raw_host)
    except InvalidHost as e:
        return Outcome(
            Decision(False, Reason.INVALID_HOST, None, str(e)), raw_host, port, scheme, path
        )
    overrides = override_methods(headers, path)
    d = allowlist.decide(scheme, host, port, method.upper(), path, False, overrides)
    if not d.allowed or answers is None:
        return Outcome(d, host, port, scheme, path)
    policy = addresses or AddressPolicy()
    if is_ip(host):
        found: list[IPAddress] = [ipaddress.ip_address(host)]
    else:
        found = [ipaddress.ip_address(a) for a in answers.get(host, ())]
    if not found:
        return Outcome(
            Decision(False, Reason.DNS_FAILURE, d.rule, f"{host!r} has no address"),
            host,
            port,
            scheme,
            path,
        )
    ok, refused = policy.usable(found, port)
    if not ok:
        listed = ", ".join(f"{a} ({why})" for a, why in refused)
        detail = f"{host!r} resolves only to addresses egress does not dial: {listed}"
        return Outcome(Decision(False, Reason.RESOLVED_PRIVATE, d.rule, detail), host, port, scheme, path,
                       refused=tuple(refused))  # fmt: skip
    return Outcome(d, host, port, scheme, path, ok[0], tuple(refused))
