"""The addons, driven by mitmproxy's own test harness with real flow objects."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest
from egress.addons.base import RefuseConnection
from egress.addons.inject import SecretInjector
from egress.addons.policy import Allowlist
from mitmproxy import options
from mitmproxy.proxy import events, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from egress.config import parse
from egress.runtime import Runtime, Tunnel

SECRET = "addon-secret-value-777"


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv("EGRESS_ADDON_T", SECRET)
    cfg = parse(
        {"ca": {"cert_path": "ca.pem"},
         "allow": ["api.test", {"host": "web.test", "schemes": ["http"]}],
         "upstream": {"resolve": {"api.test": "127.0.0.2", "web.test": "10.9.9.9"}, "allow_private": ["127.0.0.2/32"]},
         "secrets": [{"name": "t", "source": {"env": "EGRESS_ADDON_T"}, "hosts": ["api.test"]}]},
        "t.yaml", tmp_path,
    )  # fmt: skip
    runtime = Runtime.start(cfg)
    yield runtime
    runtime.close()


def tunnel_flow(
    rt: Runtime, sni: str = "api.test", host_header: str = "api.test"
) -> tflow.HTTPFlow:
    """A request inside a CONNECT tunnel to api.test (checked address 127.0.0.2)."""
    f = tflow.tflow()
    rt.tunnels[f.client_conn.id] = Tunnel("api.test", 443, ipaddress.ip_address("127.0.0.2"))
    f.client_conn.sni = sni
    f.request.scheme, f.request.host, f.request.port = "https", "api.test", 443
    f.request.headers["host"] = host_header
    return f


def connect_flow(host: str, port: int = 443) -> tflow.HTTPFlow:
    f = tflow.tflow()
    f.request.method = "CONNECT"
    f.request.host, f.request.port = host, port
    f.request.authority = f"{host}:{port}"
    return f


@pytest.mark.parametrize(
    ("host", "port", "status", "reason"),
    [("api.test", 443, None, None), ("API.test.", 443, None, None), ("evil.test", 443, 403, "host_not_allowed"),
     ("api.test", 8443, 403, "port_not_allowed"), ("a..b", 443, 400, "invalid_host")],
)  # fmt: skip
async def test_http_connect(
    rt: Runtime, host: str, port: int, status: int | None, reason: str | None
) -> None:
    addon = Allowlist(rt)
    with taddons.context(addon):
        f = connect_flow(host, port)
        await addon.http_connect(f)
        if status is None:
            assert f.response is None
            assert rt.tunnels[f.client_conn.id] == Tunnel(
                "api.test", 443, ipaddress.ip_address("127.0.0.2")
            )
        else:
            assert f.response is not None and f.response.status_code == status
            assert f.response.headers["x-egress-reason"] == reason
            assert f.client_conn.id not in rt.tunnels


async def test_request_in_tunnel_must_name_the_tunnel_host(rt: Runtime) -> None:
    addon = Allowlist(rt)
    with taddons.context(addon):
        f = tunnel_flow(rt, sni="api.test", host_header="web.test")
        await addon.requestheaders(f)
        assert (
            f.response is not None
            and f.response.headers["x-egress-reason"] == "host_header_mismatch"
        )


async def test_sni_must_name_the_tunnel_host(rt: Runtime) -> None:
    addon = Allowlist(rt)
    with taddons.context(addon):
        f = tunnel_flow(rt, sni="web.test", host_header="api.test")
        await addon.requestheaders(f)
        assert f.response is not None and f.response.headers["x-egress-reason"] == "sni_mismatch"


async def test_server_connect_guard_and_resolve(rt: Runtime) -> None:
    addon = Allowlist(rt)
    with taddons.context(addon):
        f = tflow.tflow()
        server = f.server_conn
        server.address, server.sni, server.error = ("evil.test", 443), None, None
        await addon.server_connect(
            server_hooks.ServerConnectionHookData(client=f.client_conn, server=server)
        )
        assert server.error and "host_not_allowed" in server.error
        server.address, server.error = ("api.test", 443), None
        await addon.server_connect(
            server_hooks.ServerConnectionHookData(client=f.client_conn, server=server)
        )
        assert server.error is None
        assert server.address == ("127.0.0.2", 443) and server.sni == "api.test"


async def test_injector_on_a_real_flow(rt: Runtime) -> None:
    policy, injector = Allowlist(rt), SecretInjector(rt)
    with taddons.context(policy, injector):
        f = tunnel_flow(rt, sni="api.test", host_header="api.test")
        f.request.headers["authorization"] = "Bearer egress-t-placeholder"
        await policy.requestheaders(f)
        injector.requestheaders(f)
        await injector.request(f)
        assert f.response is None
        assert f.request.headers["authorization"] == f"Bearer {SECRET}"
        assert f.metadata["egress"]["secrets"] == ["t"]


async def test_no_secret_index_is_built_on_the_request_path(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index's automata are built once per set of secret values (Runtime.start, then
    each rotation): a CONNECT, a request in its tunnel and the injection build none. (A
    dict of forms handed to host_leak made it build a whole index per CONNECT: ~9 ms of
    event-loop CPU each with 100 secrets.)"""
    from egress import secretindex

    built = []
    real_init = secretindex.SecretIndex.__init__
    monkeypatch.setattr(secretindex.SecretIndex, "__init__",
                        lambda self, *a, **k: (built.append(1), real_init(self, *a, **k))[1])  # fmt: skip
    policy, injector = Allowlist(rt), SecretInjector(rt)
    with taddons.context(policy, injector):
        c = connect_flow("api.test")
        await policy.http_connect(c)
        assert c.response is None
        for _ in range(3):
            f = tunnel_flow(rt, sni="api.test", host_header="api.test")
            f.request.headers["authorization"] = "Bearer egress-t-placeholder"
            await policy.requestheaders(f)
            injector.requestheaders(f)
            await injector.request(f)
            assert f.request.headers["authorization"] == f"Bearer {SECRET}"
    assert built == []


async def test_injector_skips_denied_flows(rt: Runtime) -> None:
    policy, injector = Allowlist(rt), SecretInjector(rt)
    with taddons.context(policy, injector):
        f = tflow.tflow()
        f.client_conn.timestamp_tls_setup = None  # a plain-HTTP proxy request: no TLS
        f.request.scheme, f.request.host, f.request.port = "http", "evil.test", 80
        f.request.headers["host"] = "evil.test"
        f.request.headers["authorization"] = "Bearer egress-t-placeholder"
        await policy.requestheaders(f)
        injector.requestheaders(f)
        await injector.request(f)
        assert f.response is not None and f.response.status_code == 403
        assert f.request.headers["authorization"] == "Bearer egress-t-placeholder"


async def test_connect_to_a_name_that_resolves_privately_is_refused(rt: Runtime) -> None:
    addon = Allowlist(rt)
    with taddons.context(addon):
        f = connect_flow("web.test", 80)
        await addon.http_connect(f)
        assert (
            f.response is not None and f.response.headers["x-egress-reason"] == "resolved_private"
        )
        assert "10.9.9.9 (private)" in f.response.get_text()


async def test_dns_rebinding_cannot_swap_the_checked_address(rt: Runtime) -> None:
    """The first answer is checked and remembered; a later lookup would say 10.9.9.9 (private),
    but the connection goes to the address that was checked, with no second lookup."""
    from egress.resolver import Resolver

    class Rebinding(Resolver):
        calls = 0

        async def lookup(self, host: str) -> list:
            Rebinding.calls += 1
            return [ipaddress.ip_address("127.0.0.2" if Rebinding.calls == 1 else "10.9.9.9")]

    rt.policy = dataclasses.replace(rt.policy, resolver=Rebinding({}, rt.resolver.policy))
    addon = Allowlist(rt)
    with taddons.context(addon):
        f = connect_flow("api.test")
        await addon.http_connect(f)
        assert f.response is None
        server = f.server_conn
        server.address, server.sni, server.error = ("api.test", 443), None, None
        await addon.server_connect(
            server_hooks.ServerConnectionHookData(client=f.client_conn, server=server)
        )
    assert server.error is None and server.address == ("127.0.0.2", 443)
    assert Rebinding.calls == 1


async def test_a_failing_check_refuses_the_flow(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mitmproxy carries on after an addon error: egress hooks must refuse instead."""
    addon = Allowlist(rt)

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(rt.allowlist, "decide", broken)
    with taddons.context(addon):
        f = tunnel_flow(rt, sni="api.test", host_header="api.test")
        await addon.requestheaders(f)
    assert f.response is not None and f.response.status_code == 500
    assert f.response.headers["x-egress-reason"] == "internal_error"


async def test_trailers_are_scrubbed(rt: Runtime) -> None:
    from egress.addons.scrub import ResponseScrubber
    from mitmproxy import http as mhttp

    addon = ResponseScrubber(rt)
    with taddons.context(addon):
        f = tflow.tflow(resp=True)
        f.metadata["egress"] = {"decision": "allow"}
        f.response.trailers = mhttp.Headers(grpc_message=f"bad token Bearer {SECRET}")
        await addon.response(f)
    assert SECRET not in str(f.response.trailers)
    assert f.response.trailers["grpc-message"] == "bad token Bearer egress-t-placeholder"


def client_hello(sni: str | None) -> bytes:
    """The ClientHello a real TLS client (Python's ssl) sends, with or without SNI."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = sni is not None
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def redirected(original: tuple[str, int], data: bytes) -> NextLayer:
    """The first bytes of a connection the kernel redirected to egress's transparent port."""
    client = tflow.tclient_conn()
    client.proxy_mode = ProxyMode.parse("transparent")
    client.sockname = original
    client.timestamp_tls_setup = None  # nothing of TLS has happened yet
    client.sni = None
    context = Context(client, options.Options())
    context.server.address = original
    nl = NextLayer(context)
    nl.events.append(events.DataReceived(client, data))
    return nl


@pytest.mark.parametrize(
    ("sni", "original", "reason", "dialled"),
    [
        ("api.test", "127.0.0.2", None, "127.0.0.2"),
        # the agent picked another address: egress dials the one it resolved for the name
        ("api.test", "203.0.113.9", None, "127.0.0.2"),
        ("API.test.", "127.0.0.2", None, "127.0.0.2"),
        ("evil.test", "127.0.0.2", "host_not_allowed", None),
        (None, "127.0.0.2", "ip_literal", None),  # no SNI: decided on the address
    ],
)  # fmt: skip
async def test_transparent_tls_is_decided_on_the_client_hello(
    rt: Runtime, sni: str | None, original: str, reason: str | None, dialled: str | None
) -> None:
    addon = Allowlist(rt)
    with taddons.context(addon):
        nl = redirected((original, 443), client_hello(sni))
        await addon.next_layer(nl)
        tunnel = rt.tunnels.get(nl.context.client.id)
        if reason is None:
            assert tunnel == Tunnel("api.test", 443, ipaddress.ip_address(dialled))
            assert not isinstance(nl.layer, RefuseConnection)
        else:
            assert tunnel is None
            assert isinstance(nl.layer, RefuseConnection) and nl.layer.tls_alert
            assert nl.layer.reason.value == reason


async def test_transparent_waits_for_the_whole_client_hello(rt: Runtime) -> None:
    addon = Allowlist(rt)
    with taddons.context(addon):
        hello = client_hello("api.test")
        nl = redirected(("127.0.0.2", 443), hello[:20])
        await addon.next_layer(nl)
        assert nl.layer is None and nl.context.client.id not in rt.tunnels


async def test_transparent_connection_is_never_dialled_before_its_decision(rt: Runtime) -> None:
    """With connection_strategy=eager mitmproxy would dial the agent's original destination
    before the ClientHello: refused."""
    addon = Allowlist(rt)
    with taddons.context(addon):
        nl = redirected(("127.0.0.2", 443), b"")
        server = nl.context.server
        await addon.server_connect(
            server_hooks.ServerConnectionHookData(client=nl.context.client, server=server)
        )
        assert server.error and "connection_strategy=lazy" in server.error


async def test_transparent_refuses_an_endless_client_hello(rt: Runtime) -> None:
    """A handshake header that announces 16 MiB: refused once 64 KiB are buffered."""
    addon = Allowlist(rt)
    with taddons.context(addon):
        header = bytes([22, 3, 1, 0x40, 0x00, 1, 0xFF, 0xFF, 0xFF])  # record, then ClientHello
        nl = redirected(("127.0.0.2", 443), header + b"\x00" * (64 * 1024))
        await addon.next_layer(nl)
        assert isinstance(nl.layer, RefuseConnection)
        assert nl.layer.reason.value == "malformed_request"
        nl = redirected(("127.0.0.2", 443), header + b"\x00" * 1000)
        await addon.next_layer(nl)
        assert nl.layer is None  # below the cap: wait for more
