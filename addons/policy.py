"""Allowlist enforcement: tunnels at CONNECT, requests at their headers, connections at dial.

Decisions are taken before anything leaves the proxy: a denied CONNECT is answered with 403
before any TLS and before any upstream connection (mitmproxy dials eagerly right after the
``http_connect`` hook); a request is decided when its headers arrive; and every upstream
dial is checked once more in ``server_connect`` so that no path can reach a denied
destination.
"""

from __future__ import annotations

import ipaddress

from egress.addons.base import (
    EgressAddon,
    RefuseConnection,
    decoded_body,
    deny,
    fail_closed,
    meta,
    policy_of,
)
from egress.addons.flowchecks import grammar_problem, has_header, identity_problem, proxy_header
from mitmproxy import connection, http
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import layers, server_hooks
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.proxy.mode_specs import TransparentMode

from egress.agents import AgentView
from egress.audit import redact_path
from egress.errors import InvalidHost
from egress.hostnames import IPAddress, canonical_host, split_host_port
from egress.injection import Denial, host_leak
from egress.messages import how_to_allow
from egress.policy import Decision
from egress.reasons import Reason
from egress.request_checks import (
    authority,
    undecodable_form,
    unreadable_form,
    upgrade_problem,
    upgrade_tokens,
    userinfo_problem,
)
from egress.resolver import Refused
from egress.routing import body_override_methods, is_form, override_methods
from egress.runtime import Tunnel

# Real ClientHellos are a few hundred bytes to a few KiB (post-quantum key shares included);
# the length field allows 16 MiB, which egress would otherwise buffer per connection.
MAX_CLIENT_HELLO = 64 * 1024


class Allowlist(EgressAddon):
    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        rt = self.runtime
        if flow.response is not None:  # refused already (AgentIdentity)
            return
        view = self._view(flow)
        if view is None:
            return
        port = flow.request.port
        try:
            host = canonical_host(flow.request.host)
        except InvalidHost as e:
            deny(flow, rt, Reason.INVALID_HOST, str(e))
            return
        m = meta(flow)
        m.update(host=host, port=port, scheme="https", url=f"{host}:{port}")
        leak = self._host_leak(flow.request.host, host)
        if leak is not None:
            deny(flow, rt, leak.reason, leak.detail, secret=leak.secret)
            return
        d = view.allowlist.decide_connect(host, port)
        if not d.allowed and self._enforce(flow, d, view):
            hint = how_to_allow(d.reason, host, port, "https", "CONNECT", "/", d.rule)
            deny(flow, rt, d.reason, d.detail, rule=d.rule_label, hint=hint)
            return
        picked = await policy_of(flow, rt).resolver.pick(host, port, allowed=view.private)
        if isinstance(picked, Refused):
            deny(flow, rt, picked.reason, picked.detail, rule=d.rule_label)
            return
        m.update(decision="allow", reason=Reason.ALLOWED.value, rule=d.rule_label)
        rt.tunnels[flow.client_conn.id] = Tunnel(host, port, picked.address,
                                                 policy_of(flow, rt).generation)  # fmt: skip

    def _host_leak(self, raw: str, host: str) -> Denial | None:
        rt = self.runtime
        # The runtime's index: built once per set of secret values, never per connection.
        return host_leak([raw, host], host, list(rt.config.secrets), rt.index())

    def _enforce(self, flow: http.HTTPFlow, d: Decision, view: AgentView) -> bool:
        """In report mode (the config's, or the agent's own) an allowlist denial is recorded
        as would_deny and not enforced. Identity, address and secret checks are enforced in
        both modes."""
        if view.enforces(d, meta(flow).get("host", "")):
            return True
        meta(flow).update(would_deny=d.reason.value, detail=d.detail)
        return False

    def _view(self, flow: http.HTTPFlow) -> AgentView | None:
        """The view this request is decided with (egress.runtime.AgentView); refused when
        agents are configured and no agent was identified (AgentIdentity runs first, so
        this is a last guard, never the usual path)."""
        view = policy_of(flow, self.runtime).view(meta(flow).get("agent"))
        if view is None:
            deny(flow, self.runtime, Reason.PROXY_AUTH_REQUIRED,
                 "this egress serves several agents and no agent was identified")  # fmt: skip
        return view

    @fail_closed
    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """An allowed tunnel whose upstream could not be reached: replace mitmproxy's 502
        (which suggests changing connection_strategy) with ours, naming the reason."""
        m = meta(flow)
        if m.get("decision") != "allow" or flow.response is None:
            return
        error = flow.server_conn.error or ""
        if error.startswith("egress "):  # refused by server_connect: keep its reason
            code, _, detail = error[len("egress ") :].partition(": ")
            deny(flow, self.runtime, Reason(code), detail, rule=m.get("rule"))
            self.runtime.tunnels.pop(flow.client_conn.id, None)
            return
        cause = flow.response.get_text(strict=False) or ""
        cause = cause.split(" If you plan", 1)[0]  # mitmproxy's hint does not apply here
        deny(flow, self.runtime, Reason.UPSTREAM_ERROR, cause or "the upstream could not be reached",
             rule=m.get("rule"))  # fmt: skip
        self.runtime.tunnels.pop(flow.client_conn.id, None)

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        rt = self.runtime
        req = flow.request
        m = meta(flow)
        view = self._view(flow)
        if view is None:
            return
        tunnel = rt.tunnels.get(flow.client_conn.id)
        scheme = req.scheme
        transparent = is_transparent(flow.client_conn)
        if transparent:
            m["transparent"] = True
        malformed = grammar_problem(flow, flow.client_conn.id in self.runtime.proxy_tls_only)
        if malformed is not None:
            host, port = (tunnel.host, tunnel.port) if tunnel else (req.host, req.port)
            m.update(host=host, port=port, scheme=scheme, path=redact_path(req.path))
            deny(flow, rt, Reason.MALFORMED_REQUEST, malformed)
            return
        try:
            if tunnel is not None:
                host, port = tunnel.host, tunnel.port
            elif transparent:
                # Plain HTTP redirected by the kernel: the Host header is all there is to
                # decide on. The connection is pinned to the first allowed host.
                port = flow.client_conn.sockname[1]
                claimed = req.host_header or ""
                host = canonical_host(split_host_port(claimed, port)[0]) if claimed else ""
                if not host:
                    m.update(host="", port=port, scheme=scheme)
                    deny(flow, rt, Reason.HOST_HEADER_MISMATCH,
                         "the request has no Host header; in transparent mode it names the host")  # fmt: skip
                    return
            else:
                userinfo = userinfo_problem(req.authority)
                if userinfo is not None:
                    m.update(host=req.host, port=req.port, scheme=scheme)
                    deny(flow, rt, *userinfo)
                    return
                host, port = canonical_host(req.host), req.port
        except InvalidHost as e:
            m.update(host=req.host, port=req.port, scheme=scheme)
            deny(flow, rt, Reason.INVALID_HOST, str(e))
            return
        m.update(host=host, port=port, scheme=scheme, path=redact_path(req.path),
                 url=f"{scheme}://{authority(host, port)}{req.path}")  # fmt: skip
        problem = proxy_header(flow) or identity_problem(
            flow, host, port, tunnel is not None or transparent
        )
        if problem is not None:
            deny(flow, rt, *problem)
            return
        if tunnel is None:  # a name egress is about to resolve (a tunnel's was checked)
            leak = self._host_leak(req.host_header or req.host, host)
            if leak is not None:
                deny(flow, rt, leak.reason, leak.detail, secret=leak.secret)
                return
        upgrade = (
            upgrade_tokens(req.headers.items(multi=True))
            if has_header(req.headers.fields, b"upgrade")
            else []
        )
        problem = upgrade_problem(upgrade)
        if problem is not None:
            deny(flow, rt, *problem)
            return
        websocket = upgrade == ["websocket"]
        overrides = override_methods(req.headers.items(multi=True), req.path)
        d = view.allowlist.decide(scheme, host, port, req.method, req.path, websocket, overrides)
        if not d.allowed and self._enforce(flow, d, view):
            hint = how_to_allow(d.reason, host, port, scheme, req.method, req.path, d.rule)
            deny(flow, rt, d.reason, d.detail, rule=d.rule_label, hint=hint)
            return
        policy = policy_of(flow, rt)
        if tunnel is not None and tunnel.generation != policy.generation:
            # Opened under an earlier policy: its address must pass this one's ranges too.
            refused = policy.resolver.recheck(host, tunnel.address, port, view.private)
            if refused is not None:
                deny(flow, rt, refused.reason, refused.detail, rule=d.rule_label)
                return
        if tunnel is None and transparent:
            picked = await policy.resolver.pick(host, port, prefer=_original_ip(flow.client_conn),
                                                allowed=view.private)  # fmt: skip
            if isinstance(picked, Refused):
                deny(flow, rt, picked.reason, picked.detail, rule=d.rule_label)
                return
            rt.tunnels[flow.client_conn.id] = Tunnel(host, port, picked.address, policy.generation)
        elif tunnel is None:  # a plain-HTTP proxy request: check where it would go, once
            picked = await policy.resolver.pick(host, port, allowed=view.private)
            if isinstance(picked, Refused):
                deny(flow, rt, picked.reason, picked.detail, rule=d.rule_label)
                return
            rt.dial[(flow.client_conn.id, host, port)] = picked.address
            if view.name is not None:
                rt.dial_agents[(flow.client_conn.id, host, port)] = view.name
        if websocket:
            # No permessage-deflate: what the agent sends is checked as sent, and nothing is
            # inflated past what went over the wire.
            req.headers.pop("sec-websocket-extensions", None)
        problem = unreadable_form(bool(req.stream), req.headers.get("content-type", ""),
                                  view.allowlist, host, rt.config.max_body_bytes)  # fmt: skip
        if problem is not None:
            deny(flow, rt, *problem, rule=d.rule_label)
            return
        m.update(decision="allow", reason=Reason.ALLOWED.value, rule=d.rule_label)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        """A form body's ``_method`` parameter is a method override too (Rails, Laravel)."""
        m, req, rt = meta(flow), flow.request, self.runtime
        if flow.response is not None or m.get("decision") != "allow" or not req.raw_content:
            return
        content_type = req.headers.get("content-type", "")
        view = self._view(flow)
        if view is None:
            return
        if not is_form(content_type) or not view.allowlist.restricts_methods(m["host"]):
            return
        body = decoded_body(req, rt.config.max_body_bytes)
        if body is None:
            deny(flow, rt, *undecodable_form(m["host"]), rule=m.get("rule"))
            return
        in_body = body_override_methods(body, content_type)
        if not in_body:
            return
        overrides = [*override_methods(req.headers.items(multi=True), req.path), *in_body]
        d = view.allowlist.decide(m["scheme"], m["host"], m["port"], req.method, req.path,
                                  False, overrides)  # fmt: skip
        if not d.allowed and self._enforce(flow, d, view):
            hint = how_to_allow(d.reason, m["host"], m["port"], m["scheme"], in_body[0], req.path,
                                d.rule)  # fmt: skip
            deny(flow, rt, d.reason, d.detail, rule=d.rule_label, hint=hint)

    @fail_closed
    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Last guard before a TCP connection: the destination must be allowed, and the
        connection goes to the address checked for it (never a second resolution), with TLS
        verified against the name."""
        rt = self.runtime
        server = data.server
        if server.address is None:
            return
        raw_host, port = server.address
        tunnel = rt.tunnels.get(data.client.id)
        if is_transparent(data.client):
            if tunnel is None:
                # Redirected connections are decided on their first bytes (SNI or Host); a
                # dial before that (connection_strategy=eager) would go to the agent's choice.
                server.error = (
                    f"egress {Reason.INTERNAL_ERROR.value}: a redirected connection must be "
                    "decided before egress dials (set connection_strategy=lazy)"
                )
                return
            # The kernel's original destination is never dialled as such: the decided name
            # and the address checked for it are.
            raw_host, port = tunnel.host, tunnel.port
        elif tunnel is not None and (str(raw_host), port) == (str(tunnel.address), tunnel.port):
            raw_host = tunnel.host  # a reconnect inside the tunnel: decide on its name again
        try:
            host = canonical_host(str(raw_host))
        except InvalidHost as e:
            server.error = f"egress {Reason.INVALID_HOST.value}: {e}"
            return
        # The agent of the connection (its CONNECT, or the fixed one), else the agent of the
        # plain-HTTP request this dial is for.
        agent = rt.client_agent(data.client.id) or rt.dial_agents.get((data.client.id, host, port))
        view = rt.view(agent)
        if view is None:
            server.error = f"egress {Reason.PROXY_AUTH_REQUIRED.value}: no agent was identified"
            return
        d = view.allowlist.decide_connect(host, port)
        if not d.allowed and view.enforces(d, host):
            server.error = f"egress {d.reason.value}: {d.detail}"
            return
        if tunnel is not None and (tunnel.host, tunnel.port) == (host, port):
            address = tunnel.address
        elif (data.client.id, host, port) in rt.dial:
            address = rt.dial[(data.client.id, host, port)]
        else:
            picked = await rt.resolver.pick(host, port, allowed=view.private)
            if isinstance(picked, Refused):
                server.error = f"egress {picked.reason.value}: {picked.detail}"
                return
            address = picked.address
        # The upstream certificate is verified against the canonical name, whatever SNI the
        # client sent; see EgressTls.tls_start_server.
        server.sni = host
        server.address = (str(address), port)

    @fail_closed
    async def next_layer(self, nextlayer: NextLayer) -> None:
        """Inside an allowed tunnel only HTTP is spoken: mitmproxy would relay any other
        bytes as raw TCP, past every HTTP rule. Close such connections instead. A redirected
        (transparent) TLS connection is decided here, on its ClientHello."""
        context = nextlayer.context
        if (
            # the first bytes of a redirected connection, not yet decided
            is_transparent(context.client)
            and not context.client.tls_established
            and context.client.id not in self.runtime.tunnels
            and starts_like_tls_record(nextlayer.data_client())
            and not isinstance(nextlayer.layer, layers.TCPLayer | layers.UDPLayer)
        ):
            await self._decide_transparent_tls(nextlayer)
        elif isinstance(nextlayer.layer, layers.TCPLayer | layers.UDPLayer):
            tunnel = self.runtime.tunnels.get(context.client.id)
            if tunnel is not None:
                host, port = tunnel.host, tunnel.port
            elif is_transparent(context.client):  # say where the agent was going
                host, port = str(_original_ip(context.client)), context.client.sockname[1]
            else:
                host, port = "", 0
            nextlayer.layer = RefuseConnection(context, host=host, port=port)

    async def _decide_transparent_tls(self, nextlayer: NextLayer) -> None:
        """Decide on the SNI (or, without one, the original destination address) with the
        rules of a CONNECT; refuse with a TLS access_denied alert, before any upstream
        connection and before the handshake."""
        rt, context = self.runtime, nextlayer.context
        original, port = _original_ip(context.client), context.client.sockname[1]

        def refuse(reason: Reason, detail: str, host: str, rule: str | None = None) -> None:
            nextlayer.layer = RefuseConnection(context, reason, detail, host=host, port=port,
                                               scheme="https", rule=rule, tls_alert=True)  # fmt: skip

        data = nextlayer.data_client()
        try:
            hello = parse_client_hello(data)
        except ValueError:
            refuse(
                Reason.MALFORMED_REQUEST, "the TLS ClientHello could not be parsed", str(original)
            )
            return
        if hello is None and len(data) > MAX_CLIENT_HELLO:
            refuse(Reason.MALFORMED_REQUEST,
                   f"the TLS ClientHello is over {MAX_CLIENT_HELLO} bytes", str(original))  # fmt: skip
            return
        if hello is None:
            nextlayer.layer = None  # the ClientHello is not complete yet: ask again
            return
        try:
            host = canonical_host(hello.sni) if hello.sni else str(original)
        except InvalidHost as e:
            refuse(Reason.INVALID_HOST, str(e), hello.sni or "")
            return
        leak = self._host_leak(hello.sni or host, host)
        if leak is not None:
            refuse(leak.reason, leak.detail, rt.redact(host))
            return
        view = rt.client_view(context.client.id)
        if view is None:
            refuse(Reason.PROXY_AUTH_REQUIRED, "no agent was identified", host)
            return
        d = view.allowlist.decide_connect(host, port)
        if not d.allowed and view.enforces(d, host):
            hint = how_to_allow(d.reason, host, port, "https", "CONNECT", "/", d.rule)
            refuse(d.reason, f"{d.detail}. {hint}" if hint else d.detail, host, d.rule_label)
            return
        picked = await rt.resolver.pick(host, port, prefer=original, allowed=view.private)
        if isinstance(picked, Refused):
            refuse(picked.reason, picked.detail, host, d.rule_label)
            return
        rt.tunnels[context.client.id] = Tunnel(host, port, picked.address, rt.policy.generation)

    def client_disconnected(self, client: connection.Client) -> None:
        rt = self.runtime
        rt.tunnels.pop(client.id, None)
        for key in [k for k in rt.dial if k[0] == client.id]:
            del rt.dial[key]
            rt.dial_agents.pop(key, None)

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Keep clients on TCP through the proxy: an Alt-Svc advertising HTTP/3 would invite
        # them to try QUIC around it.
        if flow.response is not None:
            headers = flow.response.headers
            if has_header(headers.fields, b"alt-svc", b"sec-websocket-extensions"):
                headers.pop("alt-svc", None)
                # egress never offers permessage-deflate; an upstream that claims it anyway
                # gets no inflater (its compressed frames then fail as protocol errors).
                headers.pop("sec-websocket-extensions", None)
            switched = flow.response.status_code == 101
            if switched and upgrade_tokens(flow.request.headers.items(multi=True)) != ["websocket"]:
                # Whatever the request said, never switch protocols to anything but WebSocket.
                meta(flow).update(decision="deny", reason=Reason.UPGRADE_NOT_ALLOWED.value,
                                  detail="the upstream switched protocols without an allowed WebSocket upgrade")  # fmt: skip
                flow.kill()


def is_transparent(client: connection.Client) -> bool:
    """Did the kernel redirect this connection to egress (no proxy settings on the agent)?"""
    return isinstance(client.proxy_mode, TransparentMode)


def _original_ip(client: connection.Client) -> IPAddress:
    """The destination the agent's connection was addressed to, before the redirect."""
    return ipaddress.ip_address(str(client.sockname[0]).split("%", 1)[0])


addons = [Allowlist()]
