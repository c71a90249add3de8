"""The audit addon: one record per decided request or refused tunnel, never a secret value."""

from __future__ import annotations

import time

from egress.addons.base import EgressAddon, RefuseConnection, meta
from mitmproxy import connection, http
from mitmproxy.proxy.layer import NextLayer

from egress.audit import AuditRecord, now_iso, redact_path
from egress.reasons import Reason, http_status


class AuditLog(EgressAddon):
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
            )
        )  # fmt: skip

    def response(self, flow: http.HTTPFlow) -> None:
        self._write(flow, event="request")

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            m = meta(flow)
            if m.get("decision") == "allow":
                m.update(decision="error", reason=Reason.UPSTREAM_ERROR.value,
                         detail=flow.error.msg if flow.error else None)  # fmt: skip
            self._write(flow, event="request")

    def _write(self, flow: http.HTTPFlow, event: str) -> None:
        m = meta(flow)
        if m.get("audited"):
            return
        m["audited"] = True
        req = flow.request
        resp = flow.response
        end = (resp.timestamp_end if resp and resp.timestamp_end else None) or time.time()
        peer = flow.client_conn.peername
        # A client may put a real secret value in the path itself: never record it.
        path = (
            "" if event == "connect" else self.runtime.redact(m.get("path", redact_path(req.path)))
        )
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
        )
        self.runtime.audit.write(record)
        self.runtime.metrics.record(record.decision, record.reason, record.secrets, record.scrubbed,
                                    (record.duration_ms or 0) / 1000)  # fmt: skip


addons = [AuditLog()]
