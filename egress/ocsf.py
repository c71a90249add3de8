"""Audit records in the Open Cybersecurity Schema Framework (OCSF 1.8.0), for a SIEM that
takes OCSF without a parser (docs/audit.md: OCSF).

A decision on a request (``request``, ``connect``, ``websocket``) is an HTTP Activity
(class 4002); a connection closed before any HTTP request (``tunnel``, ``protocol``) is a
Network Activity (class 4001: Refuse or Fail). Both carry the ``security_control`` profile
(allowed or denied, and by which rule), ``network_proxy`` (egress is the proxy) and
``host`` (the actor: the agent that sent it). A config reload is an
Application Lifecycle event (class 6002, activity Update). What OCSF has no attribute for
(the reason code, the rule, the secrets injected by name, the agent's name as egress knows
it) goes under ``unmapped`` with egress's own names. Absent values are left out: OCSF has no
nulls. tests/test_ocsf.py validates every record against the published schema.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

from egress import __version__

OCSF_VERSION = "1.8.0"
PRODUCT = {"name": "egress", "vendor_name": "egress", "version": __version__}

NETWORK_ACTIVITY = 4001
HTTP_ACTIVITY = 4002
APPLICATION_LIFECYCLE = 6002
# HTTP Activity's activity_id by method; anything else is 99 (Other) with activity_name.
ACTIVITY_BY_METHOD = {
    "CONNECT": 1, "DELETE": 2, "GET": 3, "HEAD": 4, "OPTIONS": 5, "POST": 6, "PUT": 7,
    "TRACE": 8, "PATCH": 9,
}  # fmt: skip
# severity_id: 1 Informational, 2 Low, 3 Medium. A denial is what a security team looks at.
SEVERITY = {"allow": 1, "error": 2, "deny": 3}
UPDATE = 8  # Application Lifecycle: Update
# security_control: allowed or denied and by which rule; network_proxy: egress is the
# proxy; host: the actor (the agent that sent the request).
PROFILES = ["security_control", "network_proxy", "host"]


def epoch_ms(iso: str) -> int:
    """OCSF ``time``: milliseconds since the epoch, from the record's ISO 8601 time."""
    when = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(when.timestamp() * 1000)


def _clean(value: Any) -> Any:
    """Drop None values (OCSF has no nulls) and empty objects, recursively."""
    if isinstance(value, dict):
        out = {k: _clean(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in out.items() if v != {} and v is not None}
    return value


def _endpoint(host: str, port: object) -> dict[str, Any] | None:
    """A network endpoint: an address as ``ip``, a name as ``hostname``; none without
    either (OCSF requires one)."""
    out: dict[str, Any] = {}
    try:
        out["ip"] = str(ipaddress.ip_address(host))
    except ValueError:
        if host:
            out["hostname"] = host
    if not out:
        return None
    if isinstance(port, int) and 0 < port < 65536:
        out["port"] = port
    return out


def to_ocsf(record: dict[str, Any]) -> dict[str, Any]:
    """The OCSF form of one egress audit record (egress.audit)."""
    if record.get("event") == "reload":
        return _reload(record)
    return _http(record)


def _metadata(record: dict[str, Any], profiles: list[str]) -> dict[str, Any]:
    return {
        "version": OCSF_VERSION, "product": PRODUCT, "profiles": profiles,
        "log_name": "audit", "uid": record.get("flow_id") or None,
    }  # fmt: skip


def _http(record: dict[str, Any]) -> dict[str, Any]:
    method = str(record.get("method") or "")
    decision = str(record.get("decision") or "")
    allowed = decision == "allow"
    host, port, scheme = record.get("host") or "", record.get("port"), record.get("scheme") or ""
    path = record.get("path") or ""
    status = record.get("status")
    url: dict[str, Any] | None = None
    if host:
        url = {"hostname": host, "port": port or None, "path": path or None,
               "scheme": scheme if scheme in ("http", "https") else None}  # fmt: skip
        where = f"{host}{f':{port}' if port else ''}{path}"
        url["url_string"] = f"{scheme}://{where}" if scheme in ("http", "https") else where
    # Methods are case-sensitive (RFC 9110): "get" is not GET, and OCSF names only the latter.
    activity = ACTIVITY_BY_METHOD.get(method, 99) if method else 0
    # An HTTP Activity needs something of the request or the response; a connection closed
    # before any request egress could read is a Network Activity: Refuse (denied) or Fail.
    http_like = bool(method) and (url is not None or activity != 99 or isinstance(status, int))
    cls = HTTP_ACTIVITY if http_like else NETWORK_ACTIVITY
    if not http_like:
        activity = {"deny": 5, "error": 4}.get(decision, 6)
    client = str(record.get("client") or "")
    c_host, _, c_port = client.rpartition(":")
    src = _endpoint(
        c_host.strip("[]"), int(c_port) if c_port.isascii() and c_port.isdigit() else None
    )
    if src is None and not host:  # OCSF needs an endpoint: the connection's id stands in
        src = {"uid": str(record.get("flow_id") or "unknown")}
    reason = record.get("reason")
    out = {
        "class_uid": cls,
        "category_uid": 4,
        "activity_id": activity,
        "activity_name": method if http_like and activity == 99 else None,
        "type_uid": cls * 100 + activity,
        "time": epoch_ms(str(record["time"])),
        "severity_id": SEVERITY.get(decision, 0),
        "status_id": 1 if allowed else 2,
        "status_code": reason,
        "status_detail": record.get("detail"),
        "action_id": 1 if allowed else 2,  # Allowed / Denied
        "disposition_id": 1 if allowed else 2,  # Allowed / Blocked
        "message": f"{decision} {method} {(url or {}).get('url_string') or host}: {reason}".strip(),
        "metadata": _metadata(record, PROFILES),
        "firewall_rule": {"uid": record["rule"], "name": record["rule"]}
        if record.get("rule")
        else None,
        "src_endpoint": src,
        "dst_endpoint": _endpoint(host, port),
        "proxy_endpoint": {"name": "egress"},
        "actor": {"user": {"name": record["agent"]}} if record.get("agent") else None,
        "duration": int(record["duration_ms"]) if record.get("duration_ms") is not None else None,
        "traffic": {
            # OCSF counts from the source's side: bytes_out is what the agent sent (egress's
            # bytes_in, the request body), bytes_in what came back to it.
            "bytes_out": record.get("bytes_in") or 0,
            "bytes_in": record.get("bytes_out") or 0,
        },  # fmt: skip
        "unmapped": {
            "event": record.get("event"),
            "reason": reason,
            "rule": record.get("rule"),
            "would_deny": record.get("would_deny"),
            "secrets": record.get("secrets") or None,
            "scrubbed": record.get("scrubbed") or None,
            "agent": record.get("agent"),
            "workload": record.get("workload"),
            "dlp": record.get("dlp") or None,
        },  # fmt: skip
    }
    if http_like:
        out["http_request"] = {"http_method": method if 0 < activity < 99 else None, "url": url}
        out["http_response"] = {"code": status} if isinstance(status, int) else None
    if record.get("would_deny"):
        out["is_alert"] = False  # report mode: would have been denied, was let through
    return _clean(out)


def _reload(record: dict[str, Any]) -> dict[str, Any]:
    outcome = record.get("outcome")
    ok = outcome in ("applied", "unchanged")
    return _clean({
        "class_uid": APPLICATION_LIFECYCLE,
        "category_uid": 6,
        "activity_id": UPDATE,
        "type_uid": APPLICATION_LIFECYCLE * 100 + UPDATE,
        "time": epoch_ms(str(record["time"])),
        "severity_id": 1 if ok else 3,
        "status_id": 1 if ok else 2,
        "status_code": record.get("reason") or outcome,
        "status_detail": record.get("detail"),
        "message": f"config reload ({record.get('trigger')}): {outcome}",
        "metadata": _metadata(record, []),
        "app": {"name": "egress", "vendor_name": "egress", "version": __version__},
        "unmapped": {
            "event": "reload", "trigger": record.get("trigger"), "outcome": outcome,
            "old_sha256": record.get("old_sha256"), "new_sha256": record.get("new_sha256"),
            "generation": record.get("generation"), "changes": record.get("changes") or None,
            "workload": record.get("workload"),
        },  # fmt: skip
    })  # fmt: skip
