"""The audit log: one JSON object per line per decision. Never holds a secret value.

Query values are redacted (a query may carry a token), header and body values are never
recorded, and secrets are named, never shown. See docs/audit.md for the schema.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import select
import stat
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import parse_qsl, quote

REDACTED = "REDACTED"


# A query of only these characters has nothing to decode ('%', '+') or encode (quote
# leaves them as they are): its keys are the text before each '=', as parse_qsl reads them.
_PLAIN_QUERY = re.compile(r"[A-Za-z0-9_.~=&-]*")


def redact_path(path: str) -> str:
    """Keep the path and the query keys; replace every query value."""
    base, sep, query = path.partition("?")
    if not sep:
        return base
    if _PLAIN_QUERY.fullmatch(query):
        keys = [field.partition("=")[0] for field in query.split("&") if field]
    else:
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
    agent: str | None = None  # the agent that sent it (docs/agents.md); None: no agents
    # Outbound data-loss findings (docs/dlp.md): detector, where, action, rule; never a value.
    dlp: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as ``dataclasses.asdict`` gives it (the fields in their order, a copy
        of the list), built directly: asdict's generic deep copy cost more than the rest of
        the record (tests/test_audit_writer.py holds the two equal)."""
        return {
            "time": self.time, "event": self.event, "flow_id": self.flow_id,
            "client": self.client, "method": self.method, "scheme": self.scheme,
            "host": self.host, "port": self.port, "path": self.path,
            "decision": self.decision, "reason": self.reason, "rule": self.rule,
            "would_deny": self.would_deny, "secrets": list(self.secrets),
            "scrubbed": self.scrubbed, "status": self.status, "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out, "duration_ms": self.duration_ms, "detail": self.detail,
            "agent": self.agent, "dlp": self.dlp,
        }  # fmt: skip

    def to_json(self) -> str:
        return to_line(self.to_dict())


# json.dumps(record, separators=(",", ":"), ensure_ascii=True) builds this encoder per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def to_line(record: dict[str, Any]) -> str:
    """One JSON object on one line under every line-splitting convention: every character
    over 0x7F is escaped (U+2028, U+2029, NEL and the rest that str.splitlines() and
    JavaScript split on), and so are lone surrogates from bytes that were not UTF-8."""
    return _encode(record)


def now_iso(ts: float | None = None) -> str:
    dt = (
        datetime.datetime.fromtimestamp(ts, datetime.UTC)
        if ts
        else datetime.datetime.now(datetime.UTC)
    )
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# How long a process waits for another to finish its line on a shared pipe.
SHARED_LOCK_SECONDS = 5.0


class AuditWriter:
    """Writes records to stdout, stderr or an append-only file (mode 0600).

    Each line goes out in one ``os.write`` of the whole line: on a file opened with
    O_APPEND, Linux appends a single write as one unit, so processes and threads appending
    to one file never interleave parts of their lines (on a pipe, the same holds for lines
    up to PIPE_BUF, 4096 bytes). A short write (a full disk, a non-blocking pipe) is
    continued until the line is complete; threads of one writer take turns. A pipe takes a
    longer write in pieces that another process's write can come between, so on anything
    but a regular file the processes of one egress (workers forked from one parent) also
    take turns, through a lock made before they fork."""

    def __init__(self, target: str, fmt: str = "egress"):
        self.target = target
        # "ocsf": each line is the record's OCSF form (egress.ocsf); listeners and sinks
        # get egress's own record and render it themselves.
        self.format = fmt
        # Copies for a security team's pipeline (egress.auditsinks): never holding up a write.
        self.sinks: list[Any] = []
        # identity.workload_env: the sidecar's pod, namespace... added to every record.
        self.workload: dict[str, str] | None = None
        # Called with each record after it is written (egress exec's one-line denials).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._lock = threading.Lock()
        # A worker forked while another thread held the lock would otherwise never write.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _new_lock(ref))
        self._own = False
        # stdout/stderr: anything already buffered in the stream goes out before a line;
        # a stream with no file descriptor (replaced by a test, say) is written through.
        self._stream: IO[str] | None = None
        self._fd: int | None = None
        if target in ("stdout", "stderr"):
            self._stream = sys.stdout if target == "stdout" else sys.stderr
            try:
                self._fd = self._stream.fileno()
            except (AttributeError, OSError, ValueError):
                self._fd = None
        else:
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._own = True
        self._between_processes = None
        if self._fd is not None and not stat.S_ISREG(os.fstat(self._fd).st_mode):
            import multiprocessing  # a semaphore that forked workers share

            self._between_processes = multiprocessing.Lock()

    def write(self, record: AuditRecord | dict[str, Any]) -> None:
        data = record.to_dict() if isinstance(record, AuditRecord) else record
        if self.workload:
            data = {**data, "workload": dict(self.workload)}
        if self.format == "ocsf":
            from egress.ocsf import to_ocsf

            line = to_line(to_ocsf(data)) + "\n"
        else:
            line = to_line(data) + "\n"
        with self._lock:
            if self._fd is None:
                assert self._stream is not None
                self._stream.write(line)
                self._stream.flush()
            else:
                if self._stream is not None:
                    self._stream.flush()
                shared = self._between_processes
                # Bounded wait: a worker killed while writing must not stop the others.
                held = shared.acquire(timeout=SHARED_LOCK_SECONDS) if shared else False
                try:
                    write_all(self._fd, line.encode("ascii"))  # to_line escapes all but ASCII
                finally:
                    if held:
                        shared.release()
        for listener in self.listeners:
            listener(data)
        for sink in self.sinks:
            try:
                sink.send(data)
            except Exception as e:  # noqa: BLE001 (a copy that fails never fails the record)
                sink.outage.failed(type(e).__name__)

    def close_sinks(self) -> None:
        """Send what the sinks hold (bounded waits): at exit, of the parent or a worker."""
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.close()

    def close(self) -> None:
        self.close_sinks()
        if self._own and self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _new_lock(ref: weakref.ReferenceType[AuditWriter]) -> None:
    writer = ref()
    if writer is not None:
        writer._lock = threading.Lock()


def write_all(fd: int, data: bytes) -> None:
    """One ``os.write`` of ``data`` and, only if it was cut short, more until all is out."""
    view = memoryview(data)
    while True:
        try:
            written = os.write(fd, view)
        except BlockingIOError:  # a non-blocking pipe that is full: wait until it drains
            select.select([], [fd], [])
            continue
        if written == len(view):
            return
        view = view[written:]
