"""Request identity in transparent mode: what the upstream parses is what egress decided.

An agent namespace whose outbound 443 the real redirect rules send to egress in
transparent mode, and a real nginx in an upstream namespace serving HTTP/1.1 and HTTP/2 on
one port by ALPN. The agent's connections are made as an unprivileged user (the rules
exempt only egress's UID). The hostile requests of tests/test_request_identity.py, over
HTTP/1.1 and HTTP/2: nginx parses exactly the requests egress allowed, each refusal is
audited, and the agent is offered HTTP/2 only where the upstream speaks it.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningProxy, egress_cmd, start_proxy, write_config
from tests.h2util import h2_exchange
from tests.netns import Pair, call_in, connect_as, missing_tools, run
from tests.nginx_upstream import NginxUpstream, nginx_binary
from tests.rawclient import exchange, status_of
from tests.test_request_identity import (
    IDENTITY_CASES,
    assert_parsed_as_decided,
    header_names,
    header_values,
    methods,
    start,
    targets,
)  # fmt: skip

pytestmark = [
    pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools())),
    pytest.mark.skipif(nginx_binary() is None, reason="needs nginx (.ci/run installs it)"),
]

API = "api.svc.test"
AGENT_UID = 65534
PROXY_PORT = 15001


@dataclass
class World:
    pair: Pair
    proxy: RunningProxy
    nginx: NginxUpstream

    def connect(self, alpn: list[str]) -> ssl.SSLSocket:
        raw = connect_as(self.pair.agent, AGENT_UID, (self.pair.upstream_ip, 443))
        ctx = ssl.create_default_context(cafile=str(self.proxy.ca))
        ctx.set_alpn_protocols(alpn)
        return ctx.wrap_socket(raw, server_hostname=API)


def _reachable_in(ns: str) -> object:
    def reachable(port: int) -> bool:
        def probe() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        return call_in(ns, probe)

    return reachable


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA,
          test_ca_file: Path) -> Iterator[World]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("transparent-identity")
    pair = Pair.make()
    ng: NginxUpstream | None = None
    proxy: RunningProxy | None = None
    try:
        ng = NginxUpstream(tmp / "nginx", test_ca, [API], host="0.0.0.0", both_port=443,
                           prefix=("ip", "netns", "exec", pair.upstream),
                           reachable=_reachable_in(pair.upstream))  # type: ignore[arg-type]  # fmt: skip
        ng.start()
        run(*pair.in_agent(*egress_cmd("redirect", "apply", "--backend", "iptables",
                                       "--proxy-port", str(PROXY_PORT), "--proxy-uid", "0")))  # fmt: skip
        cfg = {
            "listen": {"mode": "transparent", "port": PROXY_PORT},
            "ca": {"cert_path": str(tmp / "egress-ca.pem")},
            "upstream": {"ca_files": [str(test_ca_file)], "resolve": {API: [pair.upstream_ip]},
                         "allow_private": [pair.net], "dns": "static"},
            "allow": [{"host": API, "ports": [443]}],
            "audit": {"path": str(tmp / "audit.jsonl")},
        }  # fmt: skip
        proxy = start_proxy(write_config(tmp, cfg), tmp, prefix=tuple(pair.in_agent()))
        yield World(pair, proxy, ng)
        assert proxy.stop() == 0
    finally:
        if proxy is not None and proxy.proc.poll() is None:
            proxy.proc.kill()
        if ng is not None:
            ng.stop()
        pair.remove()


@pytest.mark.parametrize(
    ("offers", "expected"), [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")]
)
def test_the_agent_is_offered_what_the_upstream_speaks(
    world: World, offers: list[str], expected: str
) -> None:
    with world.connect(offers) as s:
        assert s.selected_alpn_protocol() == expected


def check(world: World, version: str, method: bytes, target: bytes,
          extra: list[tuple[bytes, bytes]]) -> int:  # fmt: skip
    p, ng = world.proxy, world.nginx
    audit_before, parsed_before = len(p.audit()), len(ng.records())
    if version == "h2":
        with world.connect(["h2"]) as s:
            assert s.selected_alpn_protocol() == "h2"
            headers = [(b":method", method), (b":scheme", b"https"), (b":authority", API.encode()),
                       (b":path", target), *extra]  # fmt: skip
            status, resp_headers, _ = h2_exchange(s, [headers], timeout=5)[0]
        refused = bool(resp_headers.get(b"x-egress-reason")) or status in (0, -1)
    else:
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, API.encode())
        head += b"".join(b"%s: %s\r\n" % (k, v) for k, v in extra)
        with world.connect(["http/1.1"]) as s:
            response = exchange(s, head + b"Connection: close\r\n\r\n", timeout=3)
        status = status_of(response)
        refused = b"x-egress-reason: " in response or status == 0
    assert_parsed_as_decided(p, ng, audit_before, parsed_before, refused)
    return status


@pytest.mark.parametrize("version", ["h1", "h2"])
@pytest.mark.parametrize(("method", "target", "extra"), [c[1:] for c in IDENTITY_CASES],
                         ids=[c[0] for c in IDENTITY_CASES])  # fmt: skip
def test_identity_table_in_transparent_mode(
    world: World, version: str, method: bytes, target: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    status = check(world, version, method, target, extra)
    if version == "h2":
        assert status in (400, 0, -1), status


@pytest.mark.parametrize("version", ["h1", "h2"])
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(method=methods, prefix=start, target=targets,
       extra=st.lists(st.tuples(header_names, header_values), max_size=2))  # fmt: skip
def test_generated_requests_in_transparent_mode(
    world: World, version: str, method: bytes, prefix: bytes, target: bytes,
    extra: list[tuple[bytes, bytes]],
) -> None:  # fmt: skip
    check(world, version, method, prefix + target, extra)


def test_a_polite_request_reaches_nginx(world: World) -> None:
    assert check(world, "h2", b"GET", b"/v1/ok", []) == 200
    assert check(world, "h1", b"GET", b"/v1/ok", []) == 200
