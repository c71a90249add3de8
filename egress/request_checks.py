"""The per-request checks on what a request says about itself, as pure functions.

The proxy runs them in its hooks (``addons/policy.py``) and ``egress check`` replays them
(``egress.decide``): one copy of each decision and of each refusal's wording. A check
returns None when the request passes, or the reason and detail of its refusal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from egress.errors import InvalidHost
from egress.grammar import fold_name
from egress.hostnames import canonical_host, split_host_port
from egress.reasons import Reason
from egress.routing import is_form

if TYPE_CHECKING:
    from egress.policy import Allowlist

Problem = tuple[Reason, str]

# Meant for the proxy, never sent upstream (names compared with fold_name).
PROXY_ONLY_HEADERS = ("proxy-authorization", "proxy-connection")


def authority(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def userinfo_problem(url_authority: str) -> Problem | None:
    """Credentials in a URL ('user@host') would go upstream in no header egress guards."""
    if "@" in url_authority:
        return (Reason.USERINFO_IN_URL,
                "the URL carries credentials ('user@'); send them in a header instead")  # fmt: skip
    return None


def proxy_header_problem(headers: Iterable[tuple[str, str]]) -> Problem | None:
    """A client must not choose a proxy for the upstream: a 'Proxy' header becomes HTTP_PROXY
    in CGI-style servers (httpoxy)."""
    if any(fold_name(name) == "proxy" for name, _ in headers):
        return Reason.PROXY_HEADER, "the request carries a 'Proxy' header (httpoxy); remove it"
    return None


def absolute_form_problem(host: str, port: int, target_authority: str) -> Problem | None:
    """Inside a tunnel an HTTP/1 request names no target of its own (``target_authority``:
    the authority of its request target, empty for origin form)."""
    if target_authority:
        return (
            Reason.ABSOLUTE_FORM_IN_TUNNEL,
            f"inside a tunnel to {authority(host, port)}, the request names a target of its own "
            f"({target_authority!r}); send origin-form requests (a path) inside a tunnel",
        )
    return None


def _names_host(claimed: str, host: str, port: int, default_port: int) -> bool:
    """Does a Host header (or :authority) name ``host``, and ``port`` when it names one?
    Raises InvalidHost when it is not a valid host."""
    c_host, c_port = split_host_port(claimed, default_port)
    return canonical_host(c_host) == host and (
        ":" not in claimed.rsplit("]", 1)[-1] or c_port == port
    )


def host_header_problem(
    host: str, port: int, scheme: str, host_headers: Sequence[str], http2_authority: str = ""
) -> Problem | None:
    """The Host header must name the host being decided: one header, the same host, and the
    same port when it names one. HTTP/2 and 3: the ``:authority`` (``http2_authority``), or
    the Host header without one, and a Host header beside ``:authority`` must agree too."""
    if len(host_headers) > 1:
        return Reason.HOST_HEADER_MISMATCH, "the request has more than one Host header"
    claimed = http2_authority or (host_headers[0] if host_headers else None)
    if claimed is None:
        return Reason.HOST_HEADER_MISMATCH, "the request has no Host header"
    default_port = 443 if scheme == "https" else 80
    for i, value in enumerate([claimed, *host_headers]):
        try:
            same = _names_host(value, host, port, default_port)
        except InvalidHost:
            if i == 0:
                return Reason.HOST_HEADER_MISMATCH, f"the Host header {value!r} is not a valid host"
            same = False
        if not same:
            return (
                Reason.HOST_HEADER_MISMATCH,
                f"the Host header names {value!r} but the request goes to {authority(host, port)}",
            )
    return None


def sni_problem(sni: str, host: str) -> Problem | None:
    """The TLS SNI a client sent inside a tunnel must name the tunnel's host."""
    try:
        sni_host = canonical_host(sni)
    except InvalidHost:
        sni_host = sni
    if sni_host != host:
        return Reason.SNI_MISMATCH, f"the TLS SNI names {sni!r} but the tunnel goes to {host!r}"
    return None


def upgrade_tokens(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The protocols a request asks to upgrade to, lower case."""
    return [t.strip().lower() for k, v in headers if k.lower() == "upgrade"
            for t in v.split(",") if t.strip()]  # fmt: skip


def upgrade_problem(tokens: Sequence[str]) -> Problem | None:
    """mitmproxy relays any upgraded protocol but WebSocket as raw TCP, past every rule."""
    if tokens and list(tokens) != ["websocket"]:
        return (Reason.UPGRADE_NOT_ALLOWED,
                f"the request asks to upgrade to {', '.join(tokens)!r}; only WebSocket upgrades can be allowed")  # fmt: skip
    return None


def unreadable_form(
    streamed: bool, content_type: str, allowlist: Allowlist, host: str, limit: int
) -> Problem | None:
    """A form body can name a ``_method``; one too large to read (it streams past
    ``limits.max_body_bytes``) cannot be checked on a host whose rules restrict methods."""
    if streamed and is_form(content_type) and allowlist.restricts_methods(host):
        return (Reason.METHOD_NOT_ALLOWED,
                f"the form body is over limits.max_body_bytes ({limit}), so its "
                f"'_method' parameter cannot be checked against the methods allowed for {host!r}")  # fmt: skip
    return None


def undecodable_form(host: str) -> Problem:
    """A form body egress cannot decode within the limit: its ``_method`` cannot be checked."""
    return (Reason.METHOD_NOT_ALLOWED,
            "the form body cannot be decoded within limits.max_body_bytes, so its '_method' "
            f"parameter cannot be checked against the methods allowed for {host!r}")  # fmt: skip
