"""Which agent sent each request (docs/agents.md), decided before the allowlist.

With ``agents:`` configured every request is an agent's or is refused: a sidecar's fixed
agent, the agent whose proxy credential a CONNECT (and every plain-HTTP proxy request)
presents, or the agent whose client certificate the connection's TLS to egress verified
(identity.client_certificates: every request on that connection is that agent's). A tunnel
is one agent's: the credential of its CONNECT holds for every request inside it, and a
Proxy-Authorization header inside the tunnel is not read (egress strips it before the
upstream). With ``listen.tls``, a proxy request that did not come over TLS is refused
(407), agents or not. Without agents and without ``listen.tls`` this addon does nothing.
"""

from __future__ import annotations

from egress.addons.base import EgressAddon, deny, fail_closed, meta, policy_of
from egress.addons.tls import is_proxy_tls
from mitmproxy import connection, http, tls
from OpenSSL import SSL

from egress.config import Config
from egress.identity import (
    Identified,
    Unidentified,
    authenticate,
    certificate_agent,
    certificate_identity,
)
from egress.reasons import Reason

CHALLENGE = 'Basic realm="egress", charset="UTF-8"'


class AgentIdentity(EgressAddon):
    def client_connected(self, client: connection.Client) -> None:
        # identity.source_addresses reads it (Runtime.client_agent), in the policy in force.
        if client.peername:
            self.runtime.client_addresses[client.id] = str(client.peername[0])

    @fail_closed
    def tls_established_client(self, data: tls.TlsData) -> None:
        rt = self.runtime
        client = data.conn
        if not is_proxy_tls(data.context):
            rt.proxy_tls_only.discard(client.id)  # TLS towards an upstream's name
            return
        rt.proxy_tls_only.add(client.id)  # only the TLS to egress itself, so far
        cfg = rt.config
        if not (cfg.identity and cfg.identity.client_certificates):
            return
        try:
            found = _certificate_agent(data.ssl_conn, cfg)
        except Exception as e:  # noqa: BLE001 (an unreadable certificate proves no one)
            found = Unidentified(Reason.PROXY_AUTH_FAILED,
                                 f"the client certificate could not be read ({type(e).__name__})")  # fmt: skip
        if isinstance(found, Identified):
            rt.principals[client.id] = found.agent
            rt.refusals.pop(client.id, None)
        else:
            rt.refusals[client.id] = found

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        rt = self.runtime
        if flow.response is not None or self._refuse_plaintext(flow):
            return
        if not policy_of(flow, rt).config.agents:
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
        if flow.response is not None:
            return
        if flow.client_conn.id not in rt.tunnels and self._refuse_plaintext(flow):
            return
        if not policy_of(flow, rt).config.agents:
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
        if identity.client_certificates:
            return self._certificate_holder(flow)
        if identity.source_addresses:
            address = self.runtime.client_addresses.get(flow.client_conn.id, "unknown")
            self._refuse(flow, Unidentified(
                Reason.PROXY_AUTH_REQUIRED,
                f"the connection's source address {address} is no agent's "
                "(identity.source_addresses)"))  # fmt: skip
            return None
        assert policy.credentials is not None
        result = authenticate(flow.request.headers.get("proxy-authorization"), policy.credentials)
        if isinstance(result, Unidentified):
            self._refuse(flow, result)
            return None
        assert isinstance(result, Identified)
        meta(flow)["agent"] = result.agent
        return result.agent

    def _certificate_holder(self, flow: http.HTTPFlow) -> str | None:
        """The agent the connection's client certificate proved (at its TLS handshake)."""
        rt = self.runtime
        client_id = flow.client_conn.id
        agent = rt.principals.get(client_id)
        if agent is not None:
            meta(flow)["agent"] = agent
            return agent
        why = rt.refusals.get(client_id) or Unidentified(
            Reason.PROXY_AUTH_REQUIRED,
            "no client certificate: this egress knows agents by the certificates they present "
            "over TLS (HTTPS_PROXY=https://..., with the agent's certificate and key)",
        )
        self._refuse(flow, why)
        return None

    def _refuse_plaintext(self, flow: http.HTTPFlow) -> bool:
        """listen.tls: a proxy request must come over TLS (a credential or a request sent in
        the clear is refused, never served)."""
        if self.runtime.config.listen_tls is None or flow.client_conn.tls_established:
            return False
        self._refuse(flow, Unidentified(
            Reason.PROXY_AUTH_REQUIRED,
            "this egress takes agents over TLS only (listen.tls): HTTPS_PROXY=https://..."))  # fmt: skip
        return True

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
        self.runtime.refusals.pop(client.id, None)
        self.runtime.client_addresses.pop(client.id, None)
        self.runtime.proxy_tls_only.discard(client.id)


def _certificate_agent(conn: SSL.Connection | None, cfg: Config) -> Identified | Unidentified:
    """The agent of the leaf OpenSSL verified: from the TLS connection itself, never from
    mitmproxy's parsed copy of what the client sent (which skips a certificate it cannot
    parse, so that the next one the client sent, unverified, would take the leaf's place)."""
    peer = conn.get_peer_certificate() if conn is not None else None
    if peer is None:
        return Unidentified(Reason.PROXY_AUTH_REQUIRED, "no client certificate was presented: "
                            "give the agent's certificate and key to its proxy client")  # fmt: skip
    found = certificate_identity(peer.to_cryptography())
    if isinstance(found, Unidentified):
        return found
    return certificate_agent(found, {a.client_id: a.name for a in cfg.agents if a.client_id})


addons = [AgentIdentity()]
