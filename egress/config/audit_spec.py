"""The ``audit`` section: where the records go, in which schema, and the sinks that get a
copy (docs/audit.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egress.config.checker import Checker, file_path, opt_file_path
from egress.config.model import OtlpConfig, SyslogConfig

FORMATS = ("egress", "ocsf")
FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", *(f"local{i}" for i in range(8)),
)  # fmt: skip
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class AuditSection:
    path: str
    format: str
    syslog: SyslogConfig | None
    otlp: OtlpConfig | None


def parse_audit(c: Checker, node: Any, base: Path) -> AuditSection:
    m = c.mapping(node, "audit", ("path", "format", "syslog", "otlp")) or {}
    path = c.typed(m, "audit", "path", str, "stdout")
    if path not in ("stdout", "stderr"):
        path = str(file_path(base, path))
    fmt = c.choice(m, "audit", "format", FORMATS, "egress") or "egress"
    syslog = _syslog(c, m["syslog"]) if "syslog" in m else None
    otlp = _otlp(c, m["otlp"], base) if "otlp" in m else None
    return AuditSection(path, fmt, syslog, otlp)


def _syslog(c: Checker, node: Any) -> SyslogConfig | None:
    key = "audit.syslog"
    m = c.mapping(node, key, ("address", "protocol", "facility", "app_name", "format"),
                  required=("address",))  # fmt: skip
    if m is None:
        return None
    protocol = c.choice(m, key, "protocol", ("udp", "tcp", "unix"), "udp") or "udp"
    address = c.typed(m, key, "address", str, "") or ""
    if protocol == "unix":
        if not address.startswith("/"):
            c.err(f"{key}.address", f"{address!r}: with protocol unix, the path of a socket "
                  "such as /dev/log")  # fmt: skip
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            c.err(f"{key}.address", f"{address!r} must be host:port, such as 127.0.0.1:514 "
                  "(protocol unix takes a socket path)")  # fmt: skip
    facility = c.choice(m, key, "facility", FACILITIES, "local0") or "local0"
    app = c.typed(m, key, "app_name", str, "egress")
    if app is not None and not re.fullmatch(r"[!-~]{1,48}", app):
        c.err(f"{key}.app_name", "1-48 printable ASCII characters, no spaces (RFC 5424)")
    fmt = c.choice(m, key, "format", FORMATS, "egress") or "egress"
    return SyslogConfig(address, protocol, facility, app or "egress", fmt)


def _otlp(c: Checker, node: Any, base: Path) -> OtlpConfig | None:
    key = "audit.otlp"
    m = c.mapping(node, key, ("endpoint", "headers", "timeout_seconds", "ca_file", "format"),
                  required=("endpoint",))  # fmt: skip
    if m is None:
        return None
    endpoint = c.typed(m, key, "endpoint", str, "") or ""
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", endpoint):
        c.err(f"{key}.endpoint", f"{endpoint!r} must be an http(s) URL, such as "
              "http://otel-collector:4318/v1/logs")  # fmt: skip
    headers_node = m.get("headers") or {}
    headers: list[tuple[str, str]] = []
    if not isinstance(headers_node, dict):
        c.err(f"{key}.headers", "must be a mapping of header names to values")
    else:
        for name, value in headers_node.items():
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                c.err(f"{key}.headers", f"{name!r} is not a header name")
            elif not isinstance(value, str) or any(ch in value for ch in "\r\n\0"):
                c.err(f"{key}.headers.{name}", "must be a string on one line")
            else:
                headers.append((name, value))
    timeout = c.typed(m, key, "timeout_seconds", (int, float), 5.0)
    if not 0 < timeout <= 60:
        c.err(f"{key}.timeout_seconds", "must be more than 0 and at most 60")
        timeout = 5.0
    ca_file = opt_file_path(c, m, key, "ca_file", base)
    fmt = c.choice(m, key, "format", FORMATS, "egress") or "egress"
    return OtlpConfig(endpoint, tuple(headers), float(timeout), ca_file, fmt)
