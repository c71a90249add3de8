"""Tripwires (docs/tripwires.md): canaries, quarantine, and the responses to a leak attempt.

Runs right after the agent is identified: a quarantined agent's tunnels, requests and
WebSocket messages are refused (``agent_quarantined``) before anything else is decided;
a canary (a planted fake credential) in any request surface, in any encoding, to any host,
refuses it (``canary_tripped``). The responses fire from the audit log's records (every
decision passes there once): ``on_decision`` is the runtime's hook, so that a refusal by
any addon (the secret guards, the data-loss rules) trips the wire the same way.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from egress.addons.audit import record_websocket
from egress.addons.base import (
    EgressAddon,
    close_client,
    cut_streamed,
    decoded_body,
    deny,
    fail_closed,
    meta,
)
from mitmproxy import connection, http

from egress.audit import now_iso
from egress.deepfind import find_deep
from egress.encodings import make_forms
from egress.reasons import Reason
from egress.secretindex import SecretIndex
from egress.secrets import SecretValue
from egress.tripwires import (
    EVERYONE,
    REASON_TRIGGERS,
    Quarantine,
    TripwireConfig,
    new_quarantine,
    quarantine_key,
    revoke_leaked,
)

log = logging.getLogger("egress")


def _when(q: Quarantine) -> str:
    return now_iso(q.since)


class CanaryStream:
    """A streamed body's canary search (mitmproxy ``stream`` callable): each chunk with the
    8 KiB held back before it, so a canary split across chunks is seen whole before any of
    it is forwarded; once found, nothing more goes (the request is then cut off)."""

    WINDOW = 8 * 1024

    def __init__(self, index: SecretIndex, then: Any = None):
        self._index, self._then = index, then
        self._held = b""
        self.found: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"CanaryStream(found={self.found is not None})"

    def __call__(self, chunk: bytes) -> bytes:
        if self.found is not None:
            return b""
        data = self._held + chunk
        self.found = find_deep(data, self._index) if data else None
        if self.found is not None:
            self._held = b""
            return b""
        if chunk:
            keep = min(self.WINDOW, len(data))
            out, self._held = data[: len(data) - keep], data[len(data) - keep :]
            return self._then(out) if callable(self._then) and out else out
        self._held = b""
        if not callable(self._then):
            return data
        # The end: what was held, then the end itself, for the next inspector to flush.
        return (self._then(data) if data else b"") + self._then(b"")


# Each streamed request's canary search, while it streams (gone with the flow).
_STREAMS: weakref.WeakKeyDictionary[http.HTTPFlow, CanaryStream] = weakref.WeakKeyDictionary()


class Tripwires(EgressAddon):
    def __init__(self, runtime: Any = None):
        super().__init__(runtime)
        self._clients: dict[str, str | None] = {}  # client connection id -> its agent
        self._canaries: tuple[TripwireConfig, SecretIndex] | None = None

    def running(self) -> None:
        rt = self.runtime
        rt_any: Any = rt
        rt_any.on_decision = self.observe
        rt_any.end_connections = self.end_connections

    # --- state -----------------------------------------------------------------------------

    def _config(self) -> TripwireConfig | None:
        return self.runtime.config.tripwires

    def _canary_index(self) -> SecretIndex | None:
        cfg = self._config()
        if cfg is None or not cfg.canaries:
            return None
        if self._canaries is None or self._canaries[0] is not cfg:
            forms = [make_forms(c.name, SecretValue(c.value), "x" * 8) for c in cfg.canaries]
            self._canaries = (cfg, SecretIndex(forms))
        return self._canaries[1]

    def _quarantined(self, flow: http.HTTPFlow) -> Quarantine | None:
        if self._config() is None:
            return None
        agent = meta(flow).get("agent")
        q = self.runtime.quarantine.of(agent)
        return q if q is not None and (q.agent == EVERYONE or q.agent == agent) else None

    def _refuse_quarantined(self, flow: http.HTTPFlow) -> bool:
        q = self._quarantined(flow)
        if q is None:
            return False
        who = "this proxy's agent" if q.agent == EVERYONE else f"agent {q.agent!r}"
        deny(flow, self.runtime, Reason.AGENT_QUARANTINED,
             f"{who} is quarantined since {_when(q)}: a tripwire fired ({q.trigger}, flow "
             f"{q.flow_id}); every request is refused until an operator clears it",
             hint="an operator reviews the audit log, then clears it: POST /tripwires/clear "
                  "on the admin listener with the operator token (docs/tripwires.md)")  # fmt: skip
        return True

    def _track(self, flow: http.HTTPFlow) -> None:
        self._clients[flow.client_conn.id] = meta(flow).get("agent")

    def client_disconnected(self, client: connection.Client) -> None:
        self._clients.pop(client.id, None)

    # --- hooks -----------------------------------------------------------------------------

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            self._track(flow)
            self._refuse_quarantined(flow)

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or self._config() is None:
            return
        self._track(flow)
        if self._refuse_quarantined(flow):
            return
        index = self._canary_index()
        if index is None:
            return
        req = flow.request
        if find_deep(req.path.encode("utf-8", "surrogateescape"), index) is not None:
            # Neither the 403 nor the audit record repeats the URL that holds it.
            m = meta(flow)
            m["path"] = "/[redacted: canary]"
            m["url"] = f"{req.scheme}://{req.pretty_host}:{req.port}{m['path']}"
        head = "\n".join([req.path, *(f"{k}: {v}" for k, v in req.headers.items(multi=True))])
        self._refuse_canary(
            flow, index, head.encode("utf-8", "surrogateescape"), "request target or headers"
        )
        if flow.response is None and req.stream:
            # The body streams (over limits.max_body_bytes): searched chunk by chunk.
            # The data-loss inspector, set after this, runs on what this one lets through.
            req.stream = _STREAMS[flow] = CanaryStream(index)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        stream = _STREAMS.pop(flow, None)
        index = self._canary_index()
        if index is None or flow.response is not None:
            return
        req = flow.request
        if stream is not None and stream.found is not None:
            m = meta(flow)
            m.update(decision="deny", reason=Reason.CANARY_TRIPPED.value, status=None,
                     detail=f"the streamed request body carries canary {stream.found[0]!r} "
                     f"({stream.found[1]}); nothing from it on was sent and the request was "
                     "cut off before its end")  # fmt: skip
            cut_streamed(flow)
            return
        if req.trailers:
            fields = "\n".join(f"{k}: {v}" for k, v in req.trailers.items(multi=True))
            self._refuse_canary(flow, index, fields.encode("utf-8", "surrogateescape"), "trailers")
            if flow.response is not None:
                return
        if req.raw_content is None:
            return
        body = decoded_body(req, self.runtime.config.max_body_bytes)
        if body:
            self._refuse_canary(flow, index, body, "body")

    def _refuse_canary(
        self, flow: http.HTTPFlow, index: SecretIndex, data: bytes, where: str
    ) -> None:
        found = find_deep(data, index)
        if found is None:
            return
        name, how = found
        deny(flow, self.runtime, Reason.CANARY_TRIPPED,
             f"the request's {where} carries canary {name!r} ({how}): a planted credential "
             "no request may send; the tripwire fired")  # fmt: skip

    @fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None or self._config() is None:
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            return
        if self._quarantined(flow) is not None:
            record_websocket(flow, self.runtime, Reason.AGENT_QUARANTINED,
                             "the agent is quarantined: the WebSocket connection was closed")  # fmt: skip
            message.drop()
            flow.kill()
            return
        index = self._canary_index()
        found = find_deep(message.content, index) if index is not None else None
        if found is not None:
            record_websocket(flow, self.runtime, Reason.CANARY_TRIPPED,
                             f"a WebSocket message carried canary {found[0]!r} ({found[1]}); "
                             "the connection was closed")  # fmt: skip
            message.drop()
            flow.kill()

    # --- responses ---------------------------------------------------------------------------

    def observe(self, agent: str | None, reason: str, flow_id: str, secret: str | None) -> None:
        """A decision was recorded: fire the configured responses if it is a trigger."""
        cfg = self._config()
        trigger = REASON_TRIGGERS.get(reason)
        if cfg is None or trigger is None or trigger not in cfg.triggers:
            return
        rt = self.runtime
        key = quarantine_key(agent, bool(rt.config.agents))
        entry = new_quarantine(key, trigger, flow_id, secret)
        actions: list[str] = []
        if (
            key
            and "quarantine" in cfg.actions
            and rt.quarantine.add(entry, rt.trip_sink is not None)
        ):
            actions.append("quarantine")
            rt.metrics.quarantined.set(len(rt.quarantine.entries()))
        if key and "end_connections" in cfg.actions:
            actions.append("end_connections")
        revoke = (
            "revoke_leaked_secret" in cfg.actions and trigger == "secret_to_unbound_host" and secret
        )
        if revoke:
            actions.append("revoke_leaked_secret")
        rt.metrics.tripwires.labels(trigger).inc()
        rt.audit.write({"time": now_iso(), "event": "tripwire", "trigger": trigger, "reason": reason,
                        "agent": agent, "quarantined": key or None, "flow_id": flow_id,
                        "secret": secret, "actions": actions})  # fmt: skip
        log.warning("egress: tripwire %s fired (flow %s%s): %s", trigger, flow_id,
                    f", agent {agent}" if agent else "", ", ".join(actions) or "recorded")  # fmt: skip
        if rt.trip_sink is not None:  # a worker: the parent holds the book and Vault
            rt.trip_sink({"op": "trip", "entry": entry.to_wire() if "quarantine" in actions else None,
                          "end": key if "end_connections" in actions else None,
                          "revoke": secret if revoke else None})  # fmt: skip
        elif revoke and secret:
            revoke_leaked(rt, secret, trigger)
        if "end_connections" in actions:
            self.end_connections(key)

    def end_connections(self, key: str) -> None:
        """Close every client connection of the agent ``key`` (EVERYONE: all), and their
        upstream connections, in this process."""
        close_client(None, lambda cid: key == EVERYONE or self._clients.get(cid) == key)
