"""What an upstream would route: the readings of a path, and the method a request overrides to.

A path rule is a promise about where a request lands on the upstream, but upstream stacks
read a path in different ways before they route it: servlet containers (Tomcat, Jetty,
Spring) cut ``;parameters`` from each segment and then resolve dot segments; nginx
percent-decodes, merges slashes and resolves dot segments; some stacks decode twice, treat
a backslash as a slash, or fold Unicode compatibility forms (a fullwidth full stop is a
dot after NFKC). egress computes every such reading of a path: the path passes a rule only
if every reading matches it, and a path whose readings hold a dot segment, an encoded
slash, a NUL or bytes that are not UTF-8 is refused as one egress cannot judge.

Method overrides: frameworks (Rails, Laravel, Symfony, Express's method-override, ASP.NET)
run a POST as the method named by ``X-HTTP-Method-Override``, ``X-HTTP-Method``,
``X-Method-Override`` or a ``_method`` parameter in the query or form body. A rule's
methods must allow every method a request can become.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote_to_bytes

from egress.grammar import fold_name

DECODE_ROUNDS = 3  # stacks that decode twice exist; three rounds cover them with margin
OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
OVERRIDE_PARAM = "_method"
_PHP_NAME = str.maketrans({".": "_", " ": "_", "[": "_"})
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")
_PARAMS = re.compile(r";[^/]*")
# Bounded repetitions: the body is the agent's, and an unbounded pattern would backtrack
# quadratically on a long line that repeats the part header.
_MULTIPART_METHOD = re.compile(
    rb'content-disposition:[^\r\n]{0,256}?\bname="?[_. \[]method"?[^\r\n]{0,256}\r?\n'
    rb"(?:[^\r\n]{1,1024}\r?\n){0,16}\r?\n([^\r\n]{0,64})",
    re.IGNORECASE,
)


def _decode(text: str) -> str | None:
    """One round of percent-decoding; None when the bytes are not UTF-8."""
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        return None


# Paths repeat (an agent calls the same endpoints again and again): the readings of recent
# paths are kept. Paths are the agent's, so the cache is bounded in entries and takes only
# short paths; longer ones are worked out every time.
READINGS_CACHE_ENTRIES = 1024
READINGS_CACHE_MAX_CHARS = 256


def path_readings(path: str) -> tuple[list[str], str | None]:
    """Every reading of ``path`` (no query) an upstream stack may route on, and why the
    path cannot be judged (or None)."""
    if type(path) is str and len(path) <= READINGS_CACHE_MAX_CHARS:
        readings, why = _readings_cached(path)
        return list(readings), why
    return _path_readings(path)


def _readings_tuple(path: str) -> tuple[tuple[str, ...], str | None]:
    readings, why = _path_readings(path)
    return tuple(readings), why


_readings_cached = functools.lru_cache(maxsize=READINGS_CACHE_ENTRIES)(_readings_tuple)


def _path_readings(path: str) -> tuple[list[str], str | None]:
    decoded = [path]
    for _ in range(DECODE_ROUNDS):
        nxt = _decode(decoded[-1])
        if nxt is None:
            return [], "the path decodes to bytes that are not UTF-8"
        if nxt == decoded[-1]:
            break
        decoded.append(nxt)
    else:
        if "%" in decoded[-1] and _decode(decoded[-1]) != decoded[-1]:
            return [], f"the path is percent-encoded more than {DECODE_ROUNDS} times over"
    readings: list[str] = []
    for text in decoded:
        for variant in (text, unicodedata.normalize("NFKC", text)):
            readings += [variant, _PARAMS.sub("", variant)]
    readings = list(dict.fromkeys(readings))
    for reading in readings[1:]:  # the raw path is checked by the grammar and the rule
        if "\x00" in reading:
            return [], "the path holds an encoded NUL"
        if "\\" in reading:
            return [], "the path holds a backslash (a separator to some stacks), possibly encoded"
    for reading in readings:
        if _DOT_SEGMENT.search(reading):
            return (
                [],
                "the path holds a '.' or '..' segment (possibly encoded, or hidden by ';params')",
            )
    raw_segments = path.count("/")
    if any(r.count("/") != raw_segments for r in readings):
        return [], "the path holds an encoded slash"
    merged = [re.sub("/{2,}", "/", r) for r in readings]
    return list(dict.fromkeys(readings + merged)), None


def override_methods(
    headers: Iterable[tuple[str, str]], path: str, body: bytes | None = None,
    content_type: str = "",
) -> list[str]:  # fmt: skip
    """The methods a request names in override headers or ``_method`` parameters."""
    out = [
        v.strip().upper()
        for k, v in headers
        if fold_name(k) in OVERRIDE_HEADERS
        for v in v.split(",")
        if v.strip()
    ]
    query = path.partition("?")[2]
    # A key that reads as '_method' spells "method" in the query, or percent-encodes some
    # of it (no other character lower-cases to those letters): skip parsing other queries.
    if "%" in query or "method" in query.lower():
        out += [v.strip().upper() for k, v in parse_qsl(query, keep_blank_values=True)
                if _param_name(k) == OVERRIDE_PARAM]  # fmt: skip
    if body:
        out += body_override_methods(body, content_type)
    return list(dict.fromkeys(out))


def _param_name(name: str) -> str:
    """A parameter name as PHP reads it (Laravel, Symfony): '.', ' ' and '[' become '_'."""
    return name.strip().lower().translate(_PHP_NAME)


def body_override_methods(body: bytes, content_type: str) -> list[str]:
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct == "application/x-www-form-urlencoded":
        text = body.decode("latin-1")
        return [v.strip().upper() for k, v in parse_qsl(text, keep_blank_values=True)
                if _param_name(k) == OVERRIDE_PARAM]  # fmt: skip
    if ct == "multipart/form-data":
        return [
            m.group(1).decode("latin-1").strip().upper() for m in _MULTIPART_METHOD.finditer(body)
        ]
    return []


def is_form(content_type: str) -> bool:
    """Can this body carry a ``_method`` form parameter?"""
    ct = content_type.split(";", 1)[0].strip().lower()
    return ct in ("application/x-www-form-urlencoded", "multipart/form-data")
