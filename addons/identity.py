"""Which agent sent each request (docs/agents.md), decided before the allowlist.

With ``agents:`` configured every request is an agent's or is refused: a sidecar's fixed
agent, or the agent whose proxy credential a CONNECT (and every plain-HTTP proxy request)
presents. A tunnel is one agent's: the credential of its CONNECT holds for every request
inside it, and a Proxy-Authorization header inside the tunnel is not read (egress strips it
before the upstream). Without agents this addon does nothing.
"""

from __future__ import annotations

from egress.addons.base import EgressAddon, deny, fail_closed, meta, policy_of
from mitmproxy import connection, http

from egress.identity import Identified, Unidentified, authenticate
from egress.reasons import Reason

CHALLENGE = 'Basic realm="egress", charset="UTF-8"'


class AgentIdentity(EgressAddon):
    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        rt = self.runtime
        if not policy_of(flow, rt).config.agents or flow.response is not None:
            return
        agent = self._identify(flow)
        if agent is None:
            return
        known = rt.principals.get(flow.client_conn.id)
        if known is not None and known != agent:
            # HTTP/2 can carry several CONNECTs on one connection: one agent per connection.
            self._refuse(flow, Unidentified(Reason.PROXY_AUTH_FAILED,
                         f"this connection is agent {known!r}'s; agent {agent!r} needs its own"))  # fmt: skip
            return
        rt.principals[flow.client_conn.id] = agent

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        rt = self.runtime
        if not policy_of(flow, rt).config.agents or flow.response is not None:
            return
        inside = rt.client_agent(flow.client_conn.id)
        if inside is not None:  # a fixed identity, or a request inside an agent's tunnel
            meta(flow)["agent"] = inside
            return
        self._identify(flow)  # a plain-HTTP proxy request: each one shows its credential

    def _identify(self, flow: http.HTTPFlow) -> str | None:
        policy = policy_of(flow, self.runtime)
        identity = policy.config.identity
        assert identity is not None  # the config requires one with agents
        if identity.fixed is not None:
            meta(flow)["agent"] = identity.fixed
            return identity.fixed
        assert policy.credentials is not None
        result = authenticate(flow.request.headers.get("proxy-authorization"), policy.credentials)
        if isinstance(result, Unidentified):
            self._refuse(flow, result)
            return None
        assert isinstance(result, Identified)
        meta(flow)["agent"] = result.agent
        return result.agent

    def _refuse(self, flow: http.HTTPFlow, why: Unidentified) -> None:
        m = meta(flow)
        m.setdefault("host", flow.request.host)
        m.setdefault("port", flow.request.port)
        m.pop("agent", None)
        deny(flow, self.runtime, why.reason, why.detail)
        if flow.response is not None:
            flow.response.headers["proxy-authenticate"] = CHALLENGE

    def client_disconnected(self, client: connection.Client) -> None:
        self.runtime.principals.pop(client.id, None)


addons = [AgentIdentity()]
