"""The encodings a detector looks through: percent, base64 at any alignment, hex, nested.

Each field's text is searched as sent and in every *view* decoded from it, recursively up
to ``MAX_DEPTH`` levels (base64 of hex of a percent-encoded value is found):

- percent-decoded, when the text holds ``%XX`` escapes;
- each run of 12+ base64 characters (standard or URL-safe; lines of 40+ wrapped with
  line breaks, raw or JSON-escaped, joined) decoded from each of its four alignments, so a
  value inside a larger blob is found wherever it starts;
- each run of 8+ hex pairs, with or without delimiters (``0x``, ``\\x``, ``%``, ``:``,
  spaces, commas), decoded.

Decoded bytes that are UTF-8 text are read as text; other bytes like ``strings(1)``: the
runs of 6+ printable ASCII characters, one per line. Random bytes (an image, a hash read as hex) leave almost nothing to search, so a
base64 PNG costs little and matches nothing; text inside binary is still found.

Every view is bounded: at most ``MAX_VIEWS`` per field and ``budget`` characters decoded in
all (a multiple of the input). A field that needs more is reported as not fully inspected,
which the caller treats as a finding of its own (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_plus

MAX_DEPTH = 3
MAX_VIEWS = 256
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")
# Wrapped base64 (PEM, MIME): lines of 40+ characters joined before decoding.
# One line of wrapped base64, anchored at both ends: each line is tried once, so the search
# is linear (a run with no line break after it is not retried from every position).
_B64_LINE = re.compile(r"^[A-Za-z0-9+/_-]{4,}={0,2}\r?$", re.MULTILINE)
# A snake_case or CONSTANT_CASE name is not base64 worth decoding: base64 of 12+ bytes
# with a single case and no digit is vanishingly rare.
_ONE_CASE_NAME = re.compile(r"[a-z_-]+|[A-Z_-]+")
_HEX_RUN = re.compile(
    r"(?:(?:0[xX]|\\[xX]|%|&#[xX])?[0-9A-Fa-f]{2}(?:[\s,:;-]{0,2}|(?=0[xX]|\\[xX]|%)))"
    r"{8,}"
)
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\ufffd]")
_PRINTABLE_RUN = re.compile(r"[^\x00-\x08\x0e-\x1f\x7f\ufffd]{6,}")
_NOT_HEX = re.compile(r"0[xX]|\\[xX]|&#[xX]|[^0-9A-Fa-f]")
_BREAKS = re.compile(r"\\[rn]|[\r\n]")
_URLSAFE = str.maketrans("-_", "+/")


@dataclass
class Budget:
    """Characters that decoding may still produce for one request."""

    left: int
    exhausted: bool = field(default=False)

    def take(self, n: int) -> bool:
        if n > self.left:
            self.exhausted = True
            return False
        self.left -= n
        return True


def printable_runs(data: bytes) -> str:
    """``data`` as text when it is UTF-8 text; otherwise its runs of 6+ printable
    characters (ASCII or UTF-8), one per line (empty when there are none)."""
    text = data.decode("utf-8", "replace")
    if not _UNPRINTABLE.search(text):
        return text  # zero-width characters and look-alikes are folded by the caller
    return "\n".join(_PRINTABLE_RUN.findall(text))


def _base64_decodings(run: str) -> Iterator[tuple[int, str]]:
    compact = _BREAKS.sub("", run).rstrip("=").translate(_URLSAFE)
    for skip in range(4):
        body = compact[skip:]
        if len(body) % 4 == 1:
            body = body[:-1]
        if len(body) < 12:
            return
        body += "=" * (-len(body) % 4)
        try:
            decoded = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            continue
        text = printable_runs(decoded)
        if text:
            yield skip, text


def _hex_decoding(run: str) -> str:
    digits = _NOT_HEX.sub("", run)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        return printable_runs(bytes.fromhex(digits))
    except ValueError:
        return ""


def _wrapped_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(start, block) of each run of 2+ consecutive lines of base64, all but the last 40+
    characters long (PEM, MIME), as one string."""
    if "\\n" in text:  # JSON-escaped line breaks, in a body read as text (offsets approximate)
        text = text.replace("\\r\\n", "\n").replace("\\n", "\n")
    block: list[str] = []
    start = end = -1
    for m in _B64_LINE.finditer(text):
        line = m.group().rstrip("\r")
        if block and m.start() == end + 1 and len(block[-1]) >= 40:
            block.append(line)
        else:
            if len(block) > 1:
                yield start, "".join(block)
            block, start = [line], m.start()
        end = m.end()
    if len(block) > 1:
        yield start, "".join(block)


def _classes() -> tuple[bytes, bytes]:
    """bytes.translate tables: base64 characters to 'b', hex digits and what may separate
    them to 'h', anything else to '.': a run worth a regular expression is then one C-speed
    substring search away."""
    b64 = bytearray(b"." * 256)
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-":
        b64[c] = ord("b")
    hexes = bytearray(b"." * 256)
    for c in b"0123456789ABCDEFabcdefxX\\%&#;:, \t\r\n-":
        hexes[c] = ord("h")
    return bytes(b64), bytes(hexes)


_B64_CLASS, _HEX_CLASS = _classes()


def decoded(text: str, plus: bool = False) -> Iterator[tuple[str, str]]:
    """(how, text) for each view one decoding step away from ``text`` (``plus``: a form or
    a query, where '+' is a space)."""
    if "%" in text and _PERCENT.search(text) or plus and "+" in text:
        once = (unquote_plus if plus else unquote)(text, errors="surrogateescape")
        if once != text:
            yield "percent-decoded", once
    data = text.encode("utf-8", "surrogatepass")
    if b"b" * 12 in data.translate(_B64_CLASS):
        yield from _base64_views(text)
    if b"h" * 16 in data.translate(_HEX_CLASS):
        for m in _HEX_RUN.finditer(text):
            view = _hex_decoding(m.group())
            if view:
                yield f"hex at {m.start()}", view


def _base64_views(text: str) -> Iterator[tuple[str, str]]:
    for m in _B64_RUN.finditer(text):
        if _ONE_CASE_NAME.fullmatch(m.group()):
            continue
        for skip, view in _base64_decodings(m.group()):
            yield f"base64 at {m.start() + skip}", view
    if "\n" in text:
        for start, block in _wrapped_blocks(text):
            for skip, view in _base64_decodings(block):
                yield f"base64 at {start + skip}", view


def views(text: str, budget: Budget, plus: bool = False) -> Iterator[tuple[str, str]]:
    """``text`` as sent and every view decoded from it, breadth first, within ``budget``."""
    yield "as sent", text
    level: list[tuple[str, str]] = [("", text)]
    seen = {text}
    count = 0
    for _ in range(MAX_DEPTH):
        following: list[tuple[str, str]] = []
        for how, current in level:
            for step, view in decoded(current, plus and not how):
                if view in seen:
                    continue
                count += 1
                if count > MAX_VIEWS or not budget.take(len(view)):
                    budget.exhausted = True
                    return
                seen.add(view)
                label = f"{how}, {step}" if how else step
                yield label, view
                following.append((label, view))
        if not following:
            return
        level = following
    # Anything still decodable past the last level is deeper than egress looks.
    for _, current in level:
        if next(decoded(current), None) is not None:
            budget.exhausted = True
            return
