"""Where else audit records go (docs/audit.md: Sinks): syslog (RFC 5424 over UDP, TCP or a
local socket) and OpenTelemetry (OTLP logs over HTTP), each as egress's JSON or as OCSF.

The record written to ``audit.path`` stays the record of truth; a sink is a copy for a
security team's pipeline. A sink never holds up a request: records are sent from a
bounded queue by a background thread (OTLP: the SDK's batch processor), and what cannot be
sent (the collector is down, the queue is full) is dropped, counted
(``egress_audit_sink_errors_total{sink}``) and logged once per outage. Each process (the
parent and each worker) opens its own connection the first time it sends.

Libraries: the OpenTelemetry SDK and its OTLP/HTTP exporter (the reference implementation,
maintained by the project); syslog is a socket and a 10-line RFC 5424 header, which the
standard library's SysLogHandler gets wrong (RFC 3164 format, a NUL, no TCP framing).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from egress import __version__
from egress.audit import to_line
from egress.config.model import OtlpConfig, SyslogConfig
from egress.ocsf import to_ocsf

log = logging.getLogger("egress")

QUEUE_MAX = 10_000  # records waiting for a slow syslog server, per process
# A field longer than this is cut in a sink's copy (audit.path keeps it whole): an agent's
# path of 64 KiB of escaped bytes would otherwise make megabyte messages, over a UDP
# datagram's limit, times the queue. A record then stays under ~32 KiB in any format.
FIELD_MAX = 1024

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}  # fmt: skip


def bounded(record: dict[str, Any]) -> dict[str, Any]:
    """The record with every string field cut to FIELD_MAX characters, marked."""
    if all(not isinstance(v, str) or len(v) <= FIELD_MAX for v in record.values()):
        return record
    return {k: (f"{v[:FIELD_MAX]}...[{len(v) - FIELD_MAX} more characters cut]"
                if isinstance(v, str) and len(v) > FIELD_MAX else v)
            for k, v in record.items()}  # fmt: skip


def render(record: dict[str, Any], fmt: str) -> str:
    """One line of JSON: egress's record, or its OCSF form."""
    return to_line(to_ocsf(record) if fmt == "ocsf" else record)


def severity(record: dict[str, Any]) -> int:
    """Syslog severity: 3 err, 4 warning, 5 notice, 6 informational."""
    if record.get("event") == "reload":
        return 4 if record.get("outcome") == "rejected" else 5
    return {"allow": 6, "deny": 4, "error": 3}.get(str(record.get("decision")), 5)


def _token(text: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or "-"."""
    out = "".join(ch for ch in text if 33 <= ord(ch) <= 126)[:limit]
    return out or "-"


def rfc5424(record: dict[str, Any], facility: int, app: str, host: str, fmt: str) -> bytes:
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``: no structured data, the
    record as the message (ASCII JSON: every character over 0x7F is escaped, so no BOM)."""
    pri = facility * 8 + severity(record)
    stamp = str(record.get("time") or "") or datetime.datetime.now(datetime.UTC).isoformat()
    head = (f"<{pri}>1 {_token(stamp, 64)} {_token(host, 255)} {_token(app, 48)} "
            f"{os.getpid()} {_token(str(record.get('event') or ''), 32)} -")  # fmt: skip
    return (head + " " + render(record, fmt)).encode("ascii", "backslashreplace")


class _Outage:
    """Counts failures and logs the first of each outage, and the recovery."""

    def __init__(self, name: str, on_error: Callable[[str], None]):
        self.name, self.on_error, self.failing = name, on_error, False

    def failed(self, why: str) -> None:
        self.on_error(self.name)
        if not self.failing:
            self.failing = True
            log.warning("audit %s: %s; records are dropped until it answers (audit.path keeps "
                        "them all)", self.name, why)  # fmt: skip

    def ok(self) -> None:
        if self.failing:
            self.failing = False
            log.warning("audit %s: sending again", self.name)


class SyslogSink:
    name = "syslog"

    def __init__(self, cfg: SyslogConfig, on_error: Callable[[str], None]):
        self.cfg = cfg
        self.outage = _Outage(self.name, on_error)
        self.facility = FACILITIES[cfg.facility]
        self.host = socket.gethostname()
        self._pid = -1
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None

    def send(self, record: dict[str, Any]) -> None:
        if self._pid != os.getpid():  # first record of this process (a forked worker too)
            self._pid = os.getpid()
            self._queue = queue.Queue(QUEUE_MAX)
            self._thread = threading.Thread(target=self._run, name="egress-syslog", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(rfc5424(bounded(record), self.facility, self.cfg.app_name, self.host,
                                           self.cfg.format))  # fmt: skip
        except queue.Full:
            self.outage.failed(f"more than {QUEUE_MAX} records waiting")

    def _connect(self) -> socket.socket:
        c = self.cfg
        if c.protocol == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.connect(c.address)
            return s
        host, port = c.host, c.port
        kind = socket.SOCK_STREAM if c.protocol == "tcp" else socket.SOCK_DGRAM
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, kind)
        s.settimeout(5)
        s.connect((host, port))
        return s

    def _run(self) -> None:
        sock: socket.socket | None = None
        while True:
            data = self._queue.get()
            if data is None:
                break
            if self.cfg.protocol == "tcp":
                data = f"{len(data)} ".encode() + data  # RFC 6587 octet counting
            for attempt in (1, 2):  # a closed TCP connection: reconnect once
                try:
                    sock = sock or self._connect()
                    sock.sendall(data) if self.cfg.protocol == "tcp" else sock.send(data)
                    self.outage.ok()
                    break
                except OSError as e:
                    if e.errno == errno.EMSGSIZE:  # this message only: not an outage
                        self.outage.on_error(self.name)
                        break
                    with contextlib.suppress(OSError):
                        if sock is not None:
                            sock.close()
                    sock = None
                    if attempt == 2:
                        self.outage.failed(
                            f"{self.cfg.describe()}: {e.strerror or type(e).__name__}"
                        )
                        time.sleep(0.5)  # while it is down, do not spin on each record
                except Exception as e:  # noqa: BLE001 (this thread must outlive any failure)
                    self.outage.failed(f"{self.cfg.describe()}: {type(e).__name__}")
                    time.sleep(0.5)
                    break
        if sock is not None:
            sock.close()

    def close(self, timeout: float = 2.0) -> None:
        if self._thread is not None and self._pid == os.getpid():
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            self._thread.join(timeout)


class OtlpSink:
    name = "otlp"

    def __init__(self, cfg: OtlpConfig, on_error: Callable[[str], None]):
        self.cfg = cfg
        self.outage = _Outage(self.name, on_error)
        self._pid = -1
        self._provider: Any = None
        self._logger: Any = None

    def _start(self) -> None:
        import requests
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogExportResult
        from opentelemetry.sdk.resources import Resource

        session = requests.Session()
        session.trust_env = False  # egress's own proxy variables never route its audit
        exporter = OTLPLogExporter(
            endpoint=self.cfg.endpoint, headers=dict(self.cfg.headers), timeout=self.cfg.timeout_seconds,
            certificate_file=str(self.cfg.ca_file) if self.cfg.ca_file else None, session=session,
        )  # fmt: skip
        outage = self.outage
        export = exporter.export

        def counted(batch: Any) -> Any:
            try:
                result = export(batch)
            except Exception as e:  # noqa: BLE001 (a sink never stops egress)
                result, why = LogExportResult.FAILURE, type(e).__name__
            else:
                why = f"{self.cfg.endpoint} did not take {len(batch)} record(s)"
            if result == LogExportResult.SUCCESS:
                outage.ok()
            else:  # counted per record, as the metric says
                outage.failed(why)
                for _ in range(len(batch) - 1):
                    outage.on_error(outage.name)
            return result

        exporter.export = counted  # type: ignore[method-assign]
        resource = Resource.create({"service.name": "egress", "service.version": __version__,
                                    "host.name": socket.gethostname(),
                                    "process.pid": os.getpid()})  # fmt: skip
        self._provider = LoggerProvider(resource=resource)
        self._provider.add_log_record_processor(
            BatchLogRecordProcessor(exporter, schedule_delay_millis=500, max_queue_size=QUEUE_MAX)
        )
        self._logger = self._provider.get_logger("egress.audit", __version__)

    def send(self, record: dict[str, Any]) -> None:
        from opentelemetry._logs import SeverityNumber

        if self._pid != os.getpid():  # first record of this process (a forked worker too)
            self._pid = os.getpid()
            self._start()
        record = bounded(record)
        sev = severity(record)
        number = {3: SeverityNumber.ERROR, 4: SeverityNumber.WARN}.get(sev, SeverityNumber.INFO)
        # Protobuf takes only valid UTF-8: a path's undecodable bytes (\udcXX) are escaped.
        attributes = {f"egress.{k}": v.encode("utf-8", "backslashreplace").decode("utf-8")
                      if isinstance(v, str) else v
                      for k, v in record.items() if isinstance(v, str | int | float | bool)}  # fmt: skip
        if isinstance(record.get("secrets"), list):
            attributes["egress.secrets"] = [str(s) for s in record["secrets"]]
        self._logger.emit(
            timestamp=_ns(record.get("time")), severity_number=number, severity_text=number.name,
            event_name="egress.audit", body=render(record, self.cfg.format), attributes=attributes,
        )  # fmt: skip

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, for ``timeout`` seconds at most (the SDK's flush does not
        bound itself: it runs in a thread, left behind if it overruns)."""
        if self._provider is not None and self._pid == os.getpid():
            provider, self._provider = self._provider, None

            def flush() -> None:
                with contextlib.suppress(Exception):
                    provider.force_flush(int(timeout * 1000))
                    provider.shutdown()

            t = threading.Thread(target=flush, name="egress-otlp-close", daemon=True)
            t.start()
            t.join(timeout)


def _ns(iso: object) -> int:
    if isinstance(iso, str) and iso:
        with contextlib.suppress(ValueError):
            return int(
                datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1e9
            )
    return time.time_ns()


def make_sinks(
    syslog: SyslogConfig | None, otlp: OtlpConfig | None, on_error: Callable[[str], None]
) -> list[SyslogSink | OtlpSink]:
    sinks: list[SyslogSink | OtlpSink] = []
    if syslog is not None:
        sinks.append(SyslogSink(syslog, on_error))
    if otlp is not None:
        sinks.append(OtlpSink(otlp, on_error))
    return sinks
