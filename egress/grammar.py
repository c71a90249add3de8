"""What the HTTP grammar lets a request say, checked before anything is decided.

egress decides on a request's method, target, scheme and authority; the upstream (or the
next proxy, or the HTTP/1.1 serialisation of an HTTP/2 request) parses them again. Any byte
the grammar forbids in those fields (CR, LF, NUL, SP, HTAB, other controls, bytes over
0x7F, '#') can make the second parser see a different request, or two: such a request is
refused, on every HTTP version and in every mode. Pure functions over bytes.

Header names are compared the way CGI/WSGI-style servers read them (case-insensitive, with
'_' and '-' the same character), see ``fold_name``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

Field = tuple[bytes, bytes]

_TCHAR = frozenset((string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~").encode())
# The same set as one compiled class: a match per name instead of a generator per byte.
_TOKEN = re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in sorted(_TCHAR)) + b"]+")
# Bytes never allowed in a request target. Controls, space and DEL break request lines;
# '#' starts a fragment, which a client never sends; '\\' is a path separator to some
# stacks; bytes over 0x7F must be percent-encoded; '"', '<', '>' and '`' are not URI
# characters and no real client leaves them unencoded.
_TARGET_FORBIDDEN = re.compile(rb'[\x00-\x20\x7f-\xff#\\"<>`]')
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# Field values: any control but HTAB (RFC 9110 5.5); obs-text (0x80-0xFF) is allowed.
_VALUE_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_AUTHORITY_FORBIDDEN = re.compile(rb"[\x00-\x20\x7f-\xff@/\\?#]")
# Headers that have no meaning in HTTP/2 (RFC 9113 8.2.2): an HTTP/1.1 upstream would read
# them as framing or hop-by-hop instructions that egress did not decide on.
H2_CONNECTION_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)


def fold_name(name: str | bytes) -> str:
    """A header name as CGI/WSGI servers see it: case-insensitive, '_' and '-' alike
    (``X_Api_Key`` and ``x-api-key`` both become HTTP_X_API_KEY)."""
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return text.lower().replace("_", "-")


def _show(data: bytes, limit: int = 60) -> str:
    text = repr(data[:limit])[2:-1]
    return text + ("..." if len(data) > limit else "")


def method_problem(method: bytes) -> str | None:
    if not method:
        return "the method is empty"
    if not _TOKEN.fullmatch(method):
        return (
            f"the method {_show(method)!r} holds bytes a method cannot have (only token characters)"
        )
    if method != method.upper():
        # Methods are case-sensitive; rules name them in upper case, and 'get' is not GET to
        # every upstream.
        return f"the method {_show(method)!r} is not in upper case"
    return None


def target_problem(method: bytes, target: bytes) -> str | None:
    """The request target as sent (origin form: path and query). Absolute form is refused
    here: the proxy's own parser has already split an absolute-form request it accepts."""
    if target == b"*":
        if method == b"OPTIONS":
            return None
        return "the target '*' is only valid with OPTIONS"
    if not target.startswith(b"/"):
        return (
            f"the request target {_show(target)!r} does not start with '/' "
            "(absolute-form or authority-form targets are not accepted here; send a path)"
        )
    if target.startswith(b"//"):
        return (
            f"the request target {_show(target)!r} starts with '//', which URL libraries read as "
            "another host (a network-path reference); send a single leading '/'"
        )
    bad = _TARGET_FORBIDDEN.search(target)
    if bad:
        return (
            f"the request target holds the byte {_show(bad.group(0))!r} at offset {bad.start()}, "
            "which a URL cannot carry unencoded; percent-encode it"
        )
    path = target.split(b"?", 1)[0]
    if _BAD_PERCENT.search(path):
        return "the path holds a '%' that does not start a %XX escape"
    return None


def scheme_problem(scheme: bytes, tls: bool) -> str | None:
    if scheme not in (b"http", b"https"):
        return f"the scheme {_show(scheme)!r} is not http or https"
    if tls and scheme != b"https":
        return "the request arrived over TLS but names the scheme 'http'"
    return None


def authority_problem(authority: bytes) -> str | None:
    if not authority:
        return None
    bad = _AUTHORITY_FORBIDDEN.search(authority)
    if bad:
        return f"the authority {_show(authority)!r} holds the byte {_show(bad.group(0))!r}"
    return None


def header_problem(fields: Iterable[Field], http2: bool) -> str | None:
    te: list[bytes] = []
    for name, value in fields:
        if not _TOKEN.fullmatch(name):
            return f"the header name {_show(name)!r} holds bytes a header name cannot have"
        if _VALUE_FORBIDDEN.search(value):
            return f"the header {_show(name)!r} holds CR, LF, NUL or another control byte (or is folded)"
        lname = name.lower()
        if http2 and lname.decode("latin-1") in H2_CONNECTION_HEADERS:
            return f"the HTTP/2 request carries the connection-specific header {_show(name)!r}"
        if lname == b"transfer-encoding":
            te.append(value)
        if lname == b"host" and authority_problem(value):
            return authority_problem(value)
    if te and [v.strip().lower() for v in te] != [b"chunked"]:
        joined = b", ".join(te)
        return (
            f"the request's Transfer-Encoding is {_show(joined)!r}; only 'chunked' is accepted "
            "(other codings are neither decoded nor inspected)"
        )
    return None


def request_problem(
    method: bytes,
    scheme: bytes,
    authority: bytes,
    target: bytes,
    fields: Sequence[Field],
    *,
    http2: bool,
    tls: bool,
) -> str | None:
    """Why this request cannot be decided safely, or None. Same rules on every version."""
    return (
        method_problem(method)
        or scheme_problem(scheme, tls)
        or authority_problem(authority)
        or target_problem(method, target)
        or header_problem(fields, http2)
    )


def te_offers(values: Iterable[str]) -> list[str]:
    """The transfer codings a client's TE header asks the upstream for (besides trailers)."""
    return [
        t.split(";", 1)[0].strip().lower()
        for v in values
        for t in v.split(",")
        if t.strip() and t.split(";", 1)[0].strip().lower() != "trailers"
    ]
