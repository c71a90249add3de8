"""Finding a secret however deeply an agent encoded it: the outbound leak guard's eyes.

An agent that obtained a real secret value (from a file, or through any gap) may try to
send it to a host the secret is not bound to, encoded so that a plain search misses it:
percent-encoded twice, hex with delimiters (``73:33:63``, ``\\x73\\x33``, ``0x73, 0x33``),
split across JSON string values, base64 wrapped across lines. The guard searches every
form of every secret (egress.encodings: raw, base64 at any alignment and wrapped, hex,
percent, JSON) in each *view* of the data:

- as sent;
- percent-decoded, up to three rounds (``+`` read as a space in the first);
- the JSON string values (not the keys), decoded and joined in document order;
- with white space and line breaks (raw or escaped) removed;
- reduced to its hex digits (``0x``, ``\\x``, ``%`` and every other delimiter removed).

Every view is computed with C-speed operations (bytes methods, regular expressions,
``codecs.escape_decode``, ``json.loads``), once per request for all secrets, and searched
for all of them in one pass (egress.secretindex). This is not a
proof against every encoding an agent can invent (a reversed or XORed value is not found);
docs/threat-model.md says so. The primary defence is that the agent never receives a real
value: responses are scrubbed.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from egress.encodings import Pause, no_pause

if TYPE_CHECKING:
    from egress.secretindex import SecretIndex

PERCENT_ROUNDS = 3
# One token at a time, left to right, so that a quote is never read as the end of one
# string and the start of another: a string literal (with a following ':' if it is a key),
# or a run of anything else.
# Possessive runs: one step per run of plain characters instead of one per character (4x
# faster), and no backtracking into a string that has no closing quote.
_JSON_TOKEN = re.compile(rb'"((?:[^"\\\n]++|\\.)*+)"(\s*:)?|([^"]+|")')
# bytes.translate and bytes.replace: single C passes whatever the input (a regular
# expression with one match per byte of '%41%41...' builds a result piece by piece).
_WHITE = b" \t\r\n\v\f"
_NOT_HEX = bytes(sorted(set(range(256)) - set(b"0123456789abcdefABCDEF")))
_HEX_PREFIXES = (b"0x", b"0X", b"\\x", b"\\X", b"\\u00", b"&#x", b"&#X")


def percent_decode(data: bytes, plus: bool = False) -> bytes:
    """Percent-decoding in C: '%XX' becomes '\\xXX' for codecs.escape_decode (a malformed
    escape becomes '?', which cannot complete a secret)."""
    if plus:
        data = data.replace(b"+", b" ")
    if b"%" not in data:
        return data
    escaped = data.replace(b"\\", b"\\\\").replace(b"%", b"\\x")
    return codecs.escape_decode(escaped, "replace")[0]


def json_values(data: bytes) -> bytes:
    """The JSON string values in ``data``, decoded and joined (keys left out)."""
    if b'"' not in data:
        return b""
    literals = [lit for lit, key, other in _JSON_TOKEN.findall(data) if not key and not other]
    if not literals:
        return b""
    try:
        values = json.loads(b"[" + b",".join(b'"' + lit + b'"' for lit in literals) + b"]")
    except ValueError:
        return b"".join(literals)
    return "".join(values).encode("utf-8", "surrogatepass")


def hex_digits(data: bytes) -> bytes:
    for prefix in _HEX_PREFIXES:
        data = data.replace(prefix, b"")
    return data.translate(None, _NOT_HEX).lower()


def without_white_space(data: bytes) -> bytes:
    return (
        data.replace(b"\\r", b"").replace(b"\\n", b"").replace(b"\\t", b"").translate(None, _WHITE)
    )


def views(data: bytes) -> Iterator[tuple[str, bytes]]:
    yield "as sent", data
    current = data
    for i in range(PERCENT_ROUNDS):
        decoded = percent_decode(current, plus=i == 0)
        if decoded == current:
            break
        current = decoded
        yield f"percent-decoded {i + 1}x", current
    for base, label in (
        (data, ""),
        (current, ", percent-decoded") if current is not data else (b"", ""),
    ):
        if not base:
            continue
        yield f"JSON values joined{label}", json_values(base)
        # A stray quote before the document pairs every later quote the other way round.
        quote = base.find(b'"')
        if quote >= 0:
            yield f"JSON values joined{label}", json_values(base[quote + 1 :])
        yield f"white space removed{label}", without_white_space(base)
        yield f"hex digits{label}", hex_digits(base)


def find_deep(
    data: bytes,
    index: SecretIndex,
    allowed: frozenset[int] | None = None,
    pause: Pause = no_pause,
) -> tuple[str, str] | None:
    """(secret name, how it was encoded) for the first secret value in ``allowed`` (every
    value in ``index`` by default) found in any view. ``pause`` runs between passes, each a
    single C-speed call (see encodings.scrub)."""
    if not data or not index.forms or (allowed is not None and not allowed):
        return None
    distinct: dict[bytes, str] = {}
    for how, view in views(data):
        if view:
            distinct.setdefault(view, how)  # a view no different from another: searched once
        pause()
    # One pass over all views, joined by a byte no form and no base64 core holds (secret
    # values refuse NUL): nearly always nothing, and then that is all.
    if not index.candidates(b"\0".join(distinct), allowed, pause):
        return None
    for view, how in distinct.items():
        found = index.find(view, allowed, pause)
        if found:
            return found[0], found[1] if how == "as sent" else f"{found[1]}, {how}"
        pause()
    return None
