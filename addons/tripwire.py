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
from typing import Any

from egress.addons.audit import record_websocket
from egress.addons.base import EgressAddon, decoded_body, deny, fail_closed, meta
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


class Tripwires(EgressAddon):
    def __init__(self, runtime: Any = None):
        super().__init__(runtime)
        self._clients: dict[str, str | None] = {}  # client connection id -> its agent
        self._canaries: tuple[TripwireConfig, SecretIndex] | None = None
        self._master: Any = None

    def load(self, loader: Any) -> None:
        super().load(loader)
        self._master = loader.master

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

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        index = self._canary_index()
        if index is None or flow.response is not None or flow.request.raw_content is None:
            return
        body = decoded_body(flow.request, self.runtime.config.max_body_bytes)
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
        if key and "quarantine" in cfg.actions and rt.quarantine.add(entry):
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
        manager = getattr(self._master, "addons", None)
        proxyserver = manager.get("proxyserver") if manager is not None else None
        handlers = list(getattr(proxyserver, "connections", {}).values())
        for handler in handlers:
            client = getattr(handler, "client", None)
            if client is None or (key != EVERYONE and self._clients.get(client.id) != key):
                continue
            for conn in list(getattr(handler, "transports", {})):
                try:
                    handler.close_connection(conn)
                except Exception:  # noqa: BLE001 (closing one must not stop the others)
                    log.debug("egress: could not close a connection of a tripped agent")
