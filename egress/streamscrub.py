"""Scrubbing a streamed body chunk by chunk, without delay where no secret can be pending.

A streamed body's length was sent before its body (or it is chunked and must not be cut
short), so every secret form is replaced by a mask of the same length, and a secret split
across chunks must still be found. The scrubber holds back only the bytes that could still
be the start of a secret form: the longest suffix that is a prefix of a form (line breaks
allowed inside base64), never more. A server-sent event that ends in a blank line, or a
JSON line that ends in '}', therefore goes out at once: nothing in it can be completed by
the next chunk.
"""

from __future__ import annotations

import re

from egress import b64scan
from egress.encodings import SecretForms, stream_forms

_LINE_BREAK_STARTS = (b"\r", b"\n", b"\\r", b"\\n")
# The first bytes of a line break, raw or JSON-escaped, longest first.
_BREAK_STARTS = (b"\\r\\", b"\\r", b"\\", b"\r")
# No base64 line ever holds an empty line: what precedes one is complete.
_BLANK_LINES = (b"\n\n", b"\r\n\r\n", b"\\n\\n", b"\\r\\n\\r\\n")


def _without_breaks(tail: bytes) -> tuple[bytes, list[int]]:
    """``tail`` without line breaks (raw or JSON-escaped), and where each byte came from."""
    out, where, i = bytearray(), [], 0
    while i < len(tail):
        for br in (b"\\r", b"\\n", b"\r", b"\n"):
            if tail.startswith(br, i):
                i += len(br)
                break
        else:
            out.append(tail[i])
            where.append(i)
            i += 1
    return bytes(out), where


class StreamScrubber:
    def __init__(self, forms: list[SecretForms]):
        self.pairs = stream_forms(forms)
        self.embedded = [f.embedded for f in forms]
        self.count = 0
        self.carry = b""
        self.sent_tail = b""  # the last bytes sent: base64 context for masking
        # What may still begin a secret: prefixes of every flat form; prefixes of each
        # base64 core, alone or after one character mixed with the preceding byte.
        self.prefixes: set[bytes] = set()
        self.mixed_prefixes: set[bytes] = set()
        intoken = set(b64scan.ALPHABET) | set(b"\r\n\\")
        longest = 1
        for secret, _ in self.pairs:
            intoken.update(secret)
            longest = max(longest, len(secret))
            self.prefixes.update(secret[:i] for i in range(1, len(secret)))
        for e in self.embedded:
            for core, mixed in e.heads:
                longest = max(longest, len(core) + 2)
                target = self.mixed_prefixes if mixed else self.prefixes
                target.update(core[:i] for i in range(1, len(core) + 1))
        self.firsts = {p[:1] for p in self.prefixes}
        self.mixed_firsts = {p[:1] for p in self.mixed_prefixes}
        self.longest = longest
        flat_class = b"".join(re.escape(c) for c in sorted(self.firsts))
        mixed_class = b"".join(re.escape(c) for c in sorted(self.mixed_firsts))
        alternatives = [b"[" + flat_class + b"]"] if flat_class else []
        if mixed_class:
            alternatives.append(b"[A-Za-z0-9+/_=-](?=[" + mixed_class + b"])")
        self.begins = re.compile(b"|".join(alternatives) or b"(?!)")
        self.intoken = bytes(sorted(intoken))
        # A form wrapped across lines can be longer than itself: room for a break per 8.
        self.window = longest + (longest // 8 + 2) * 4

    def _scrub(self, data: bytes) -> bytes:
        for secret, mask in self.pairs:
            n = data.count(secret)
            if n:
                data = data.replace(secret, mask)
                self.count += n
        context = self.sent_tail
        masked, n = b64scan.mask(context + data, self.embedded, frozen=len(context))
        self.count += n
        return masked[len(context) :]

    def holdback(self, data: bytes) -> int:
        """How many trailing bytes of ``data`` could be the start of a secret form."""
        tail = data[-self.window :]
        for blank in _BLANK_LINES:
            at = tail.rfind(blank)
            if at >= 0:
                tail = tail[at + len(blank) :]
        tail = tail[len(tail.rstrip(self.intoken)) :]  # the trailing run of form bytes
        if not tail:
            return 0
        # Line breaks may sit anywhere inside wrapped base64: decide on the text without
        # them, and map each position back to the tail.
        # A line break cut in two by the chunk boundary ends the tail: judge what precedes it.
        cut = next((len(p) for p in _BREAK_STARTS if tail.endswith(p)), 0)
        body = tail[: len(tail) - cut]
        if b"\n" in body or b"\r" in body or b"\\" in body:
            compact, where = _without_breaks(body)
        else:
            compact, where = body, range(len(body))
        if not compact:
            return 0
        start = max(0, len(compact) - self.longest)
        # Only positions where a form or a base64 core can begin (one character later for a
        # core behind a mixed character), found in C; the last position always qualifies.
        starts = sorted({m.start() for m in self.begins.finditer(compact, start)}
                        | {len(compact) - 1})  # fmt: skip
        for i in starts:
            if tail.startswith(_LINE_BREAK_STARTS, where[i]):
                continue
            candidate = compact[i:]
            head = candidate[:1]
            if head in self.firsts and candidate in self.prefixes:
                return len(tail) - where[i]
            # A base64 core after one character that also carries the preceding byte's bits;
            # a lone last character may be that one.
            if (
                self.mixed_prefixes
                and head in b64scan.ALPHABET_BYTES
                and (
                    len(candidate) == 1
                    or (
                        candidate[1:2] in self.mixed_firsts and candidate[1:] in self.mixed_prefixes
                    )
                )
            ):
                return len(tail) - where[i]
        return 0

    def __call__(self, chunk: bytes) -> list[bytes]:
        """Returns chunks to send: never an empty chunk mid-body, which mitmproxy would send
        as the end of a chunked body."""
        data = self._scrub(self.carry + chunk)
        if chunk == b"":  # end of the body
            self.carry = b""
            return [data] if data else []
        keep = self.holdback(data)
        out, self.carry = data[: len(data) - keep], data[len(data) - keep :]
        if out:
            self.sent_tail = (self.sent_tail + out)[-64:]
        return [out] if out else []
