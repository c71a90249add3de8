"""Inspecting a request body that streams (over ``limits.max_body_bytes``), chunk by chunk.

The body is never held whole: each chunk is inspected together with the last ``WINDOW``
bytes before it, and those bytes are held back until the next chunk (or the end) has been
seen, so a value split across chunks, however the client or the network cut them, is
inspected in one piece before any of it is forwarded. A value longer than the window (a
private key, a value inside a long base64 blob) can still be found only in part: the
window is sized for what the detectors match (the longest, with its encoding, is a few
hundred bytes; a private key's header and first line fit).

On a ``block`` finding nothing more is forwarded: the held-back bytes, which hold the value,
are dropped, and the caller ends the request before it completes. ``mask`` replaces values
in the held-back bytes before they go. A streamed body is read as text: JSON paths and
joined fields are for buffered bodies only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from egress.dlp.fields import Field
from egress.dlp.finding import Finding
from egress.dlp.policy import Decision, DlpRule, decide, strongest
from egress.dlp.scan import Masker, Scanner

WINDOW = 8 * 1024


class StreamInspector:
    """A mitmproxy ``stream`` callable: chunk in, what may go upstream out."""

    def __init__(
        self,
        scanner: Scanner,
        rules: tuple[DlpRule, ...],
        masker: Masker,
        ignore: Callable[[str], bool],
        neutral: Callable[[str], str],
        window: int = WINDOW,
    ):
        self._scanner, self._rules, self._masker = scanner, rules, masker
        self._ignore, self._neutral = ignore, neutral
        self._window = window
        self._held = b""
        self._offset = 0  # bytes of the body before self._held
        self._seen: set[tuple[str, str]] = set()
        self.decisions: list[Decision] = []
        self._masked: list[Finding] = []  # every value masked so far: masked wherever it recurs
        self.blocked = False

    def __repr__(self) -> str:
        return f"StreamInspector({len(self.decisions)} findings, blocked={self.blocked})"

    def _inspect(self, data: bytes) -> list[Decision]:
        text = data.decode("utf-8", "surrogateescape")
        result = self._scanner.scan(
            [Field("body", text, "body")], self._ignore, neutral=self._neutral
        )
        fresh: list[Finding] = []
        for f in result.findings:
            key = (f.detector, f.value)
            if key not in self._seen:
                self._seen.add(key)
                at = None if f.offset is None else self._offset + f.offset
                fresh.append(dataclasses.replace(f, where="body (streamed)", offset=at))
        decisions = decide(fresh, self._rules)
        self.decisions.extend(decisions)
        return decisions

    def __call__(self, chunk: bytes) -> bytes:
        if self.blocked:
            return b""
        data = self._held + chunk
        decisions = self._inspect(data) if data else []
        action = strongest(decisions)
        if action == "block" or (
            action == "mask"
            and any(not d.finding.in_place for d in decisions if d.action == "mask")
        ):
            self.blocked, self._held = True, b""
            return b""
        self._masked += [d.finding for d in decisions if d.action == "mask"]
        if self._masked:
            # Its Content-Length has gone upstream: each token takes its value's length.
            data = self._masker.replace(data, self._masked, same_length=True)
            # Whatever a mask left (an escaped spelling it does not know) must not go.
            if any(d.action != "report" for d in self._recheck(data)):
                self.blocked, self._held = True, b""
                return b""
        if not chunk:  # the end of the body: everything that is left goes
            self._held = b""
            return data
        keep = min(self._window, len(data))
        out, self._held = data[: len(data) - keep], data[len(data) - keep :]
        self._offset += len(out)
        return out

    def _recheck(self, data: bytes) -> list[Decision]:
        text = data.decode("utf-8", "surrogateescape")
        result = self._scanner.scan(
            [Field("body", text, "body")], self._ignore, neutral=self._neutral
        )
        return decide(result.findings, self._rules)
