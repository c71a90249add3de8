"""Checks of a request's head that the allowlist addon runs before it decides: the HTTP
grammar, proxy-only headers, and the request's identity (Host, :authority, SNI)."""

from __future__ import annotations

from mitmproxy import http

from egress.grammar import fold_name, request_problem, te_offers
from egress.request_checks import (
    PROXY_ONLY_HEADERS,
    Problem,
    absolute_form_problem,
    host_header_problem,
    proxy_header_problem,
    sni_problem,
)


def grammar_problem(flow: http.HTTPFlow, proxy_tls_only: bool = False) -> str | None:
    """Bytes the HTTP grammar forbids in the method, target, scheme, authority or headers
    would be read differently by the next parser (an HTTP/1.1 upstream reading an HTTP/2
    request, for one): refuse rather than forward. The same rules on every version.
    ``proxy_tls_only``: the connection's TLS is the one to egress itself (listen.tls), not
    to the upstream's name: its requests are plain HTTP requests."""
    req = flow.request
    tls = flow.client_conn.tls_established and not proxy_tls_only
    return request_problem(
        req.data.method, req.data.scheme, req.data.authority, req.data.path,
        req.headers.fields, http2=req.is_http2, tls=tls,
    )  # fmt: skip


def proxy_header(flow: http.HTTPFlow) -> Problem | None:
    """A client must not choose a proxy for the upstream (httpoxy). Credentials and options
    meant for a proxy never go upstream either."""
    headers = flow.request.headers
    if not names_proxy_or_te(headers.fields):
        return None  # nothing below applies: skip decoding and folding every header name
    problem = proxy_header_problem(headers.items(multi=True))
    if problem is not None:
        return problem
    for name in [n for n in headers if fold_name(n) in PROXY_ONLY_HEADERS]:
        headers.pop(name, None)  # also Proxy_Authorization, which CGI servers read alike
    te = headers.get_all("te")
    if te_offers(te):
        # TE asks the upstream for transfer codings (gzip, chunked) that egress would neither
        # decode nor scrub; it is hop-by-hop, so only 'trailers' may go on.
        headers.pop("te")
        if any("trailers" in v.lower() for v in te):
            headers["te"] = "trailers"
    return None


def has_header(fields: tuple[tuple[bytes, bytes], ...], *names: bytes) -> bool:
    """Is one of ``names`` (ASCII, lower case) the name of a header in ``fields``? The test
    mitmproxy's Headers apply (the name's bytes in lower case), without decoding every
    name; for upgrade_tokens' str comparison the same, as no non-ASCII character
    lower-cases to an ASCII-only string but the Kelvin sign (to 'k')."""
    for name, _ in fields:
        if name.lower() in names:
            return True
    return False


def names_proxy_or_te(fields: tuple[tuple[bytes, bytes], ...]) -> bool:
    """Does a header name start with 'proxy' or equal 'te' (ASCII case-insensitive)? Every
    name proxy_header acts on does: a folded name (fold_name) equal to 'proxy' or a
    PROXY_ONLY_HEADERS entry is ASCII, and no non-ASCII character lower-cases to ASCII but
    the Kelvin sign (to 'k'); mitmproxy matches 'te' on the bytes' ASCII lower case."""
    for name, _ in fields:
        low = name.lower()
        if low[:5] == b"proxy" or low == b"te":
            return True
    return False


def identity_problem(flow: http.HTTPFlow, host: str, port: int, in_tunnel: bool) -> Problem | None:
    """The Host header (or :authority) and the TLS SNI must name the host being decided."""
    req = flow.request
    if in_tunnel and req.http_version.startswith("HTTP/1"):
        problem = absolute_form_problem(host, port, req.authority)
        if problem is not None:
            return problem
    http2_authority = req.authority if req.is_http2 or req.is_http3 else ""
    problem = host_header_problem(host, port, req.scheme, req.headers.get_all("host"),
                                  http2_authority)  # fmt: skip
    if problem is not None:
        return problem
    sni = flow.client_conn.sni if in_tunnel and req.scheme == "https" else None
    return sni_problem(sni, host) if sni else None
