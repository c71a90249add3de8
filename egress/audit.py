"""The audit log: one JSON object per line per decision. Never holds a secret value.

Query values are redacted (a query may carry a token), header and body values are never
recorded, and secrets are named, never shown. See docs/audit.md for the schema.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any
from urllib.parse import parse_qsl, quote

REDACTED = "REDACTED"


def redact_path(path: str) -> str:
    """Keep the path and the query keys; replace every query value."""
    base, sep, query = path.partition("?")
    if not sep:
        return base
    pairs = parse_qsl(query, keep_blank_values=True, errors="surrogateescape")
    keys = [quote(k, safe="", errors="surrogateescape") for k, _ in pairs]
    return base + "?" + "&".join(f"{k}={REDACTED}" for k in keys)


@dataclass
class AuditRecord:
    time: str
    event: str  # "request" or "connect"
    flow_id: str
    client: str
    method: str
    scheme: str
    host: str
    port: int
    path: str
    decision: str  # "allow" | "deny" | "error"
    reason: str  # a reason code from egress.reasons
    rule: str | None = None  # "allow[3]"
    would_deny: str | None = None  # report mode: the reason enforce mode would have denied with
    secrets: list[str] = field(default_factory=list)  # names injected
    scrubbed: int = 0  # secret values replaced by placeholders in the response
    status: int | None = None
    bytes_in: int = 0  # request body bytes from the client
    bytes_out: int = 0  # response body bytes to the client
    duration_ms: float | None = None
    detail: str | None = None

    def to_json(self) -> str:
        return to_line(asdict(self))


def to_line(record: dict[str, Any]) -> str:
    """One JSON object on one line under every line-splitting convention: every character
    over 0x7F is escaped (U+2028, U+2029, NEL and the rest that str.splitlines() and
    JavaScript split on), and so are lone surrogates from bytes that were not UTF-8."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True)


def now_iso(ts: float | None = None) -> str:
    dt = (
        datetime.datetime.fromtimestamp(ts, datetime.UTC)
        if ts
        else datetime.datetime.now(datetime.UTC)
    )
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditWriter:
    """Writes records to stdout, stderr or an append-only file (mode 0600)."""

    def __init__(self, target: str):
        self.target = target
        # Called with each record after it is written (egress exec's one-line denials).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._lock = threading.Lock()
        self._own = False
        self._stream: IO[str]
        if target == "stdout":
            self._stream = sys.stdout
        elif target == "stderr":
            self._stream = sys.stderr
        else:
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._stream = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
            self._own = True

    def write(self, record: AuditRecord | dict[str, Any]) -> None:
        line = record.to_json() if isinstance(record, AuditRecord) else to_line(record)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
        if self.listeners:
            data = asdict(record) if isinstance(record, AuditRecord) else record
            for listener in self.listeners:
                listener(data)

    def close(self) -> None:
        if self._own:
            self._stream.close()
