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

from collections.abc import Sequence

from egress import b64scan
from egress.encodings import SecretForms
from egress.secretindex import SecretIndex

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
    def __init__(self, index: SecretIndex | Sequence[SecretForms]):
        if not isinstance(index, SecretIndex):
            index = SecretIndex(index)
        plan = index.stream_plan()  # what every stream of these values shares
        self.index = index
        self.steps = plan.steps  # (value index, form, same-length mask), longest first
        self.embedded = plan.embedded
        self.count = 0
        self.carry = b""
        self.sent_tail = b""  # the last bytes sent: base64 context for masking
        # What may still begin a secret: prefixes of every flat form; prefixes of each
        # base64 core, alone or after one character mixed with the preceding byte.
        self.plan = plan
        self.firsts = plan.firsts
        self.mixed_firsts = plan.mixed_firsts
        self.longest = plan.longest
        self.begins = plan.begins
        self.intoken = plan.intoken_bytes
        # A form wrapped across lines can be longer than itself: room for a break per 8.
        self.window = self.longest + (self.longest // 8 + 2) * 4

    def _scrub(self, data: bytes) -> bytes:
        context = self.sent_tail
        if not self.index.candidates(context + data):
            # Nearly every chunk: no form and no base64 core of any value, found in one
            # pass where the chunk has no line breaks (flat forms and cores together).
            return data
        # One pass for all values; the values found are replaced in the per-value order.
        data, n = self.index.replace_in_order(data, self.steps)
        self.count += n
        context = self.sent_tail
        masked, n = self.index.mask_embedded(context + data, frozen=len(context))
        self.count += n
        return masked[len(context) :]

    def holdback(self, data: bytes) -> int:
        """How many trailing bytes of ``data`` could be the start of a secret form."""
        return max(self._flat_holdback(data), self._wrapped_holdback(data))

    def _flat_holdback(self, data: bytes) -> int:
        """The longest suffix of ``data`` that begins a flat form, judged on the bytes as
        they are: a JSON form can hold an escaped line break (a value with a backslash and
        an 'n' in it), which the view without line breaks would remove."""
        tail = data[-(self.plan.longest_flat - 1) :] if self.plan.longest_flat > 1 else b""
        for m in self.plan.flat_begins.finditer(tail):
            if self.plan.is_flat_prefix(tail[m.start() :]):
                return len(tail) - m.start()
        return 0

    def _wrapped_holdback(self, data: bytes) -> int:
        """The longest suffix of ``data`` that could begin a form or a base64 core with line
        breaks inside."""
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
            if head in self.firsts and (
                self.plan.is_prefix(candidate) or self.plan.is_prefix(b64scan.standard(candidate))
            ):
                return len(tail) - where[i]
            # A base64 core after one character that also carries the preceding byte's bits;
            # a lone last character may be that one.
            if (
                self.mixed_firsts
                and head in b64scan.ALPHABET_BYTES
                and (
                    len(candidate) == 1
                    or (
                        candidate[1:2] in self.mixed_firsts
                        and self.plan.is_mixed_prefix(b64scan.standard(candidate[1:]))
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
