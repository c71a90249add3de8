"""The audit addon: one record per decided request or refused tunnel, never a secret value."""

from __future__ import annotations

import time
from typing import Any

from egress.addons.base import EgressAddon, RefuseConnection, meta
from egress.addons.protocol import ProtocolViolation
from mitmproxy import connection, http
from mitmproxy.proxy.layer import NextLayer

from egress.audit import AuditRecord, now_iso, redact_path
from egress.reasons import Reason, http_status
from egress.runtime import Runtime

# mitmproxy's error text can quote whole upstream heads: enough to say what went wrong.
MAX_DETAIL = 300


class AuditLog(EgressAddon):
    """One record per flow that egress decided, whatever failed after: flows still open
    when their client connection closes (a crash inside mitmproxy ends a connection without
    an error hook) are recorded then."""

    def __init__(self, runtime: Runtime | None = None):
        super().__init__(runtime)
        self._open: dict[str, dict[str, http.HTTPFlow]] = {}

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.method != "CONNECT":  # tunnels are audited at http_connect
            self._open.setdefault(flow.client_conn.id, {})[flow.id] = flow

    def egress_protocol_violation(self, data: ProtocolViolation) -> None:
        """A refusal below HTTP (a head over the limit, an HTTP/2 stream flood)."""
        peer = data.client.peername
        tunnel = self.runtime.tunnels.get(data.client.id)
        decision = "deny" if http_status(data.reason) < 500 else "error"
        self.runtime.metrics.requests.labels(decision, data.reason.value).inc()
        self.runtime.audit.write(
            AuditRecord(
                time=now_iso(), event="protocol", flow_id=data.client.id,
                client=f"{peer[0]}:{peer[1]}" if peer else "", method="", scheme="",
                host=tunnel.host if tunnel else "", port=tunnel.port if tunnel else 0, path="",
                decision=decision, reason=data.reason.value, rule=None,
                status=http_status(data.reason), detail=data.detail,
                agent=self.runtime.client_agent(data.client.id),
            )
        )  # fmt: skip

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        ws = flow.websocket
        if (
            ws is not None
            and ws.close_code == 1009
            and "message_too_large" in (ws.close_reason or "")
        ):
            limit = self.runtime.config.limits.max_websocket_message_bytes
            record_websocket(flow, self.runtime, Reason.MESSAGE_TOO_LARGE,
                             f"a WebSocket message over limits.max_websocket_message_bytes ({limit}) "
                             "closed the connection (1009)")  # fmt: skip

    def http_connect(self, flow: http.HTTPFlow) -> None:
        # Allowed tunnels are audited per request inside them; refused ones here.
        if flow.response is not None:
            self._write(flow, event="connect")

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        self._write(flow, event="connect")

    def client_connected(self, client: connection.Client) -> None:
        self.runtime.metrics.open_connections.inc()

    def client_disconnected(self, client: connection.Client) -> None:
        self.runtime.metrics.open_connections.dec()
        for flow in self._open.pop(client.id, {}).values():
            m = meta(flow)
            if m.get("audited"):
                continue
            if flow.response is None or m.get("decision") == "allow":
                m.update(decision="error", reason=Reason.INTERNAL_ERROR.value,
                         detail="the connection ended before this flow completed")  # fmt: skip
            self._write(flow, event="request")

    def next_layer(self, nextlayer: NextLayer) -> None:
        refused = nextlayer.layer
        if not isinstance(refused, RefuseConnection):
            return
        peer = nextlayer.context.client.peername
        decision = "deny" if http_status(refused.reason) < 500 else "error"
        self.runtime.metrics.requests.labels(decision, refused.reason.value).inc()
        self.runtime.audit.write(
            AuditRecord(
                time=now_iso(), event="tunnel", flow_id=nextlayer.context.client.id,
                client=f"{peer[0]}:{peer[1]}" if peer else "", method="", scheme=refused.scheme,
                host=self.runtime.redact(refused.host), port=refused.port, path="",
                decision=decision,
                reason=refused.reason.value, rule=refused.rule, status=None,
                detail=self.runtime.redact(refused.detail),
                agent=self.runtime.client_agent(nextlayer.context.client.id),
            )
        )  # fmt: skip

    def response(self, flow: http.HTTPFlow) -> None:
        self._write(flow, event="request")

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            m = meta(flow)
            if m.get("decision") is None:
                # Refused by the HTTP parser before egress decided anything.
                cause = flow.error.msg if flow.error else ""
                m.update(decision="deny", reason=Reason.MALFORMED_REQUEST.value, status=400,
                         detail=cause[:MAX_DETAIL])  # fmt: skip
            elif m.get("decision") == "allow":
                cause = flow.error.msg if flow.error else ""
                m.update(decision="error", reason=Reason.UPSTREAM_ERROR.value,
                         detail=cause[:MAX_DETAIL] + ("..." if len(cause) > MAX_DETAIL else ""))  # fmt: skip
            self._write(flow, event="request")

    def _write(self, flow: http.HTTPFlow, event: str) -> None:
        m = meta(flow)
        if m.get("audited"):
            return
        m["audited"] = True
        self._open.get(flow.client_conn.id, {}).pop(flow.id, None)
        try:
            self._write_record(flow, event, m)
        except Exception as e:  # noqa: BLE001 (a flow is never left without its record)
            self.runtime.audit.write(
                AuditRecord(
                    time=now_iso(), event=event, flow_id=flow.id, client="", method="",
                    scheme="", host="", port=0, path="", decision="error",
                    reason=Reason.INTERNAL_ERROR.value, status=None,
                    detail=f"the audit record could not be built ({type(e).__name__}); "
                    f"egress decided {m.get('decision')!r} with {m.get('reason')!r}",
                )
            )  # fmt: skip

    def _write_record(self, flow: http.HTTPFlow, event: str, m: dict[str, Any]) -> None:
        req = flow.request
        resp = flow.response
        end = (resp.timestamp_end if resp and resp.timestamp_end else None) or time.time()
        peer = flow.client_conn.peername
        # A client may put a real secret value in the path itself: never record it. The
        # policy addon has redacted the query already (m["path"]); only a flow it never
        # decided needs it done here.
        if event == "connect":
            path = ""
        else:
            path = self.runtime.redact(m["path"] if "path" in m else redact_path(req.path))
        detail = self.runtime.redact(m["detail"]) if m.get("detail") else None
        record = AuditRecord(
            time=now_iso(req.timestamp_start),
            event=event,
            flow_id=flow.id,
            client=f"{peer[0]}:{peer[1]}" if peer else "",
            method=req.method,
            scheme=m.get("scheme", req.scheme),
            host=self.runtime.redact(m.get("host", req.host)),
            port=m.get("port", req.port),
            path=path,
            decision=m.get("decision", "error"),
            reason=m.get("reason", Reason.UPSTREAM_ERROR.value),
            rule=m.get("rule"),
            would_deny=m.get("would_deny"),
            secrets=list(m.get("secrets", [])),
            scrubbed=m.get("scrubbed", 0),
            status=resp.status_code if resp else m.get("status", 502),
            bytes_in=m.get("bytes_in", len(req.raw_content or b"")),
            bytes_out=len(resp.raw_content or b"") if resp else 0,
            duration_ms=round((end - req.timestamp_start) * 1000, 2),
            detail=detail,
            agent=m.get("agent"),
            dlp=list(m["dlp"]) if m.get("dlp") else None,
        )
        self.runtime.audit.write(record)
        if self.runtime.on_decision is not None:
            self.runtime.on_decision(record.agent, record.reason, record.flow_id, m.get("secret"))
        for finding in record.dlp or ():
            self.runtime.metrics.dlp_findings.labels(finding["detector"], finding["action"]).inc()
        if self.runtime.config.agents:
            self.runtime.metrics.agent_requests.labels(record.agent or "unidentified",
                                                       record.decision).inc()  # fmt: skip
        self.runtime.metrics.record(record.decision, record.reason, record.secrets, record.scrubbed,
                                    (record.duration_ms or 0) / 1000)  # fmt: skip


addons = [AuditLog()]


def record_websocket(flow: http.HTTPFlow, runtime: Runtime, reason: Reason, detail: str | None,
                     secret: str | None = None,
                     dlp: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
    """A decision on a WebSocket message, after the handshake's own record (``dlp``: its
    data-loss findings, which may let it through: reason ``allowed``)."""
    m, peer = meta(flow), flow.client_conn.peername
    if reason is Reason.ALLOWED:
        decision = "allow"
    else:
        decision = "deny" if http_status(reason) < 500 else "error"
    runtime.metrics.requests.labels(decision, reason.value).inc()
    runtime.audit.write(
        AuditRecord(
            time=now_iso(), event="websocket", flow_id=flow.id,
            client=f"{peer[0]}:{peer[1]}" if peer else "", method=flow.request.method,
            scheme=m.get("scheme", flow.request.scheme), host=m.get("host", flow.request.host),
            port=m.get("port", flow.request.port), path=m.get("path", ""), decision=decision,
            reason=reason.value, rule=m.get("rule"), secrets=[secret] if secret else [],
            status=None, detail=runtime.redact(detail) if detail else None, agent=m.get("agent"),
            dlp=dlp or None,
        )
    )  # fmt: skip
    for finding in dlp or ():
        runtime.metrics.dlp_findings.labels(finding["detector"], finding["action"]).inc()
    if runtime.on_decision is not None:
        runtime.on_decision(m.get("agent"), reason.value, flow.id, secret)
