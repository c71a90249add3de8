"""A secret inside base64: at any alignment, in either alphabet, wrapped across lines.

A secret embedded in a larger base64 blob (a Basic token, a JSON document, a file's
content from a code host's API) shows up as the base64 of the secret at one of three byte
alignments, with its first and last character mixed with the neighbouring bytes, in the
standard alphabet, the URL-safe one, or both mixed (lenient decoders take any mix). Code
hosts and MIME wrap base64 at 60, 64 or 76 columns with ``\\n`` or ``\\r\\n``, and JSON
carries those line breaks escaped (``\\\\n``).

Finding: the characters that depend only on the secret (its *core* at each alignment) are
searched for with line breaks allowed between any two of them. Masking: around each hit
the enclosing run of base64 is decoded at the alignment that holds the secret, the secret's
bytes are replaced by a mask of the same length, and the same groups are encoded again, so
the run keeps its length, alphabet, padding and line breaks: usable on streamed bodies
whose length was already sent. All scanning is C-speed (regex and bytes searches); Python
work is done per hit, never per byte.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

STD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ALPHABET = frozenset(STD + URL + b"=")
ALPHABET_BYTES = frozenset(bytes([c]) for c in ALPHABET)
# Decoders take either alphabet, and many (Python's urlsafe_b64decode, Go's and Node's
# lenient ones) take both in one string: search and mask in a view where the URL-safe
# characters read as standard ones.
_TO_STD = bytes.maketrans(b"-_", b"+/")
# Line breaks base64 is wrapped with: raw, or escaped inside a JSON string.
BREAKS = (b"\r\n", b"\n", b"\\r\\n", b"\\n", b"\r", b"\\r")
_SEP = rb"(?:\r\n|\n|\\r\\n|\\n)?"
_SEP_SPLIT = re.compile(rb"(\r\n|\n|\\r\\n|\\n)")
_RUN = re.compile(rb"[A-Za-z0-9+/_-]+(?:(?:\r\n|\n|\\r\\n|\\n)[A-Za-z0-9+/_-]+)*={0,2}")
_CONTEXT = 40  # bytes around a hit that hold its whole base64 groups, line breaks included


def strip_breaks(data: bytes) -> bytes:
    for b in (b"\\r", b"\\n", b"\r", b"\n"):
        data = data.replace(b, b"")
    return data


@dataclass(frozen=True, repr=False)
class Embedded:
    """One secret value's base64 signature, and the mask that replaces it."""

    raw: bytes
    mask: bytes  # same length as raw
    cores: tuple[bytes, ...]  # pure characters at each alignment, standard alphabet
    # (core, whether a mixed character precedes it) for the stream scrubber's hold-back
    heads: tuple[tuple[bytes, bool], ...] = ()
    _patterns: dict[bytes, re.Pattern[bytes]] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        return "Embedded(<redacted>)"

    def pattern(self, core: bytes) -> re.Pattern[bytes]:
        """The core with line breaks allowed between any two characters, each character in
        either alphabet: compiled when the core is first found (rarely), not at load."""
        compiled = self._patterns.get(core)
        if compiled is None:
            compiled = re.compile(_SEP.join(_char_class(ch) for ch in core))
            self._patterns[core] = compiled
        return compiled


def embedded(raw: bytes, mask: bytes) -> Embedded:
    cores: list[bytes] = []
    heads: list[tuple[bytes, bool]] = []
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + raw + b"\0\0")
        first_bit, end_bit = 8 * shift, 8 * (shift + len(raw))
        start = -(-first_bit // 6)  # first character made only of secret bits
        stop = end_bit // 6  # one past the last such character
        core = enc[start:stop]
        if len(core) < 6 or core in cores:
            continue
        cores.append(core)
        heads.append((core, first_bit % 6 != 0))
    return Embedded(raw, mask, tuple(cores), tuple(heads))


def _char_class(ch: int) -> bytes:
    """A core character as a pattern that also matches its URL-safe spelling."""
    return {ord("+"): rb"[+\-]", ord("/"): rb"[/_]"}.get(ch, re.escape(bytes([ch])))


def standard(data: bytes) -> bytes:
    """``data`` with the URL-safe alphabet's characters read as the standard ones: where
    cores (always in the standard alphabet) are searched."""
    return data.translate(_TO_STD)


def _decode(text: bytes, urlsafe: bool) -> bytes | None:
    try:
        return (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(text)
    except (binascii.Error, ValueError):
        return None


def _encode(data: bytes, urlsafe: bool) -> bytes:
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data)


def _groups(body: bytes, skip: int) -> bytes | None:
    """The characters from ``skip`` on that decode to whole bytes (a last partial group is
    kept: its whole bytes decode right even when the run goes on past it)."""
    region = body[skip:]
    if len(region) % 4 == 1:
        region = region[:-1]
    return region if len(region) >= 4 else None


def _decode_groups(region: bytes, urlsafe: bool) -> bytes | None:
    return _decode(region + b"=" * (-len(region) % 4), urlsafe)


def _mask_compact(compact: bytes, targets: list[Embedded]) -> tuple[bytes, int]:
    """Mask every target inside one run of base64 characters (no line breaks), at each of
    the four positions a group can start at (the run may begin mid-blob, and values may
    sit at different alignments of one run): the alignment holding the longest value
    first, so that a short value found in another alignment's garbage never claims the
    run before a real one is masked. Only the characters that carry a masked byte's bits
    change."""
    urlsafe = b"-" in compact or b"_" in compact

    def decoded(skip: int) -> tuple[bytes, bytes] | None:
        region = _groups(compact.rstrip(b"="), skip)
        plain = _decode_groups(region, urlsafe) if region else None
        return (region, plain) if region is not None and plain is not None else None

    order = []
    for skip in range(4):
        got = decoded(skip)
        if got is not None:
            found = [len(t.raw) for t in targets if t.raw in got[1]]
            if found:
                order.append((max(found), -skip))
    total = 0
    for _, neg_skip in sorted(order, reverse=True):
        skip = -neg_skip
        got = decoded(skip)  # again: an earlier alignment's mask may have changed the run
        if got is None:
            continue
        region, plain = got
        masked, count = plain, 0
        for t in targets:
            n = masked.count(t.raw)
            if n:
                masked = masked.replace(t.raw, t.mask)
                count += n
        total += count
        changed = [i for i, (x, y) in enumerate(zip(plain, masked, strict=True)) if x != y]
        if not changed:
            continue  # a value whose mask is itself (one that begins its placeholder)
        first, last = changed[0], changed[-1]
        lo, hi = first * 4 // 3, min(len(region), -(-(last + 1) * 4 // 3))
        new = _encode(masked, urlsafe)[lo:hi]
        at = skip + lo
        compact = compact[:at] + new + compact[at + len(new) :]
    return compact, total


def _mask_run(run: bytes, targets: list[Embedded]) -> tuple[bytes, int]:
    parts = _SEP_SPLIT.split(run)  # line, sep, line, sep, ..., line
    lines, seps = parts[0::2], parts[1::2]
    compact, count = _mask_compact(b"".join(lines), targets)
    if not count:
        return run, 0
    out, pos = [], 0
    for i, line in enumerate(lines):
        out.append(compact[pos : pos + len(line)])
        pos += len(line)
        if i < len(seps):
            out.append(seps[i])
    return b"".join(out), count


def hits(data: bytes, targets: list[Embedded]) -> list[tuple[int, int]]:
    """Spans of ``data`` that hold a target's core (line breaks allowed inside)."""
    compact = strip_breaks(data) if (b"\n" in data or b"\r" in data or b"\\" in data) else data
    compact = standard(compact)
    found: list[tuple[int, int]] = []
    for t in targets:
        for core in t.cores:
            if core in compact:
                pattern = t.pattern(core)
                found += [m.span() for m in pattern.finditer(data)]
    return sorted(found)


def mask(data: bytes, targets: list[Embedded], frozen: int = 0) -> tuple[bytes, int]:
    """Mask every target found in base64 in ``data``. Bytes before ``frozen`` were already
    sent: they are read for context but never changed."""
    spans = hits(data, targets)
    if not spans:
        return data, 0
    total = 0
    sent = data[:frozen]
    # Masks keep every length: edit one buffer in place (a copy of the whole body per hit
    # made a body of many hits cost quadratic time).
    buf = bytearray(data)
    for a, b in spans:
        lo, hi = max(0, a - _CONTEXT), min(len(buf), b + _CONTEXT)
        window = bytes(buf[lo:hi])
        new_window = bytearray(window)
        changed = 0
        for m in _RUN.finditer(window):
            if m.end() <= a - lo or m.start() >= b - lo:
                continue  # a run that does not overlap the hit
            new_run, n = _mask_run(m.group(0), targets)
            if n:
                new_window[m.start() : m.end()] = new_run
                changed += n
        if changed:
            buf[lo:hi] = new_window
            total += changed
    # Sent bytes cannot change (the hold-back keeps every character a secret's bits reach
    # unsent); only their neighbours' bits were read from them.
    return sent + bytes(buf[frozen:]), total


def find(data: bytes, raws: list[tuple[str, bytes, tuple[bytes, ...]]]) -> str | None:
    """The name of the first secret whose value is in ``data`` inside base64 (any alignment,
    either alphabet, wrapped or not). ``raws``: (name, value, cores)."""
    compact = strip_breaks(data)
    normal = standard(compact)
    for name, raw, cores in raws:
        if not any(c in normal for c in cores):
            continue
        for m in _RUN.finditer(compact):
            token = m.group(0)
            if not any(c in standard(token) for c in cores):
                continue
            body = token.rstrip(b"=")
            urlsafe = b"-" in body or b"_" in body
            for skip in range(4):
                region = _groups(body, skip)
                plain = _decode_groups(region, urlsafe) if region else None
                if plain is not None and raw in plain:
                    return name
    return None
