"""Requests that polite clients never send, sent by hand through real tunnels.

Each case must get its answer from the proxy and produce at most the expected number of
upstream requests (zero for every refusal).
"""

from __future__ import annotations

import contextlib
import ssl
import time

import pytest

from tests.conftest import API, OTHER, RunningProxy
from tests.rawclient import connect_tunnel, exchange, status_of
from tests.upstream import Upstream

CRLF = "\r\n"

# (id, raw bytes sent inside a TLS tunnel to API (format: {api}, {other}), status, reason or None)
CASES = [
    ("absolute-form inside tunnel", "GET https://{other}/abs HTTP/1.1\r\nHost: {api}\r\n\r\n", 403, "absolute_form_in_tunnel"),
    ("nested CONNECT", "CONNECT {other} HTTP/1.1\r\nHost: {other}\r\n\r\n", 400, None),
    ("CL and TE together", "POST /s HTTP/1.1\r\nHost: {api}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {api}\r\n\r\n", 400, None),
    ("duplicate Content-Length", "POST /s HTTP/1.1\r\nHost: {api}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400, None),
    ("obsolete line folding", "GET /f HTTP/1.1\r\nHost: {api}\r\nX-A: a\r\n b\r\n\r\n", 400, "malformed_request"),
    ("bare CR in a header value", "GET /c HTTP/1.1\r\nHost: {api}\r\nX-A: a\rb\r\n\r\n", 400, "malformed_request"),
    ("LF in the request line", "GET /l\nX HTTP/1.1\r\nHost: {api}\r\n\r\n", 400, None),
    ("duplicate Host", "GET /d HTTP/1.1\r\nHost: {api}\r\nHost: {other}\r\n\r\n", 403, "host_header_mismatch"),
    ("Host names another server", "GET /h HTTP/1.1\r\nHost: {other}\r\n\r\n", 403, "host_header_mismatch"),
    ("malformed Host", "GET /m HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "malformed_request"),
    ("no Host", "GET /n HTTP/1.0\r\n\r\n", 403, "host_header_mismatch"),
    ("WebSocket upgrade without websocket: true", "GET /ws HTTP/1.1\r\nHost: {api}\r\nUpgrade: websocket\r\n"
     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 403,
     "websocket_not_allowed"),
    ("httpoxy Proxy header", "GET /p HTTP/1.1\r\nHost: {api}\r\nProxy: http://evil.test:8080\r\n\r\n", 403, "proxy_header"),
    ("Upgrade to another protocol", "GET /u HTTP/1.1\r\nHost: {api}\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n", 403,
     "upgrade_not_allowed"),
    ("WebSocket plus another protocol", "GET /u2 HTTP/1.1\r\nHost: {api}\r\nUpgrade: websocket, foo\r\n"
     "Connection: Upgrade\r\n\r\n", 403, "upgrade_not_allowed"),
    ("a polite request, for contrast", "GET /ok HTTP/1.1\r\nHost: {api}\r\n\r\n", 200, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "status", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_raw_requests_inside_a_tunnel(
    proxy: RunningProxy, upstream: Upstream, raw: str, status: int, reason: str | None
) -> None:
    api, other = f"{API}:{upstream.port}", f"{OTHER}:{upstream.port}"
    with connect_tunnel(proxy.port, API, upstream.port, proxy.ca) as s:
        response = exchange(s, raw.format(api=api, other=other).encode())
    assert status_of(response) == status, response[:300]
    if reason:
        assert f"x-egress-reason: {reason}".encode() in response
        assert proxy.audit()[-1]["reason"] == reason
    time.sleep(0.1)
    assert len(upstream.requests) == (1 if status == 200 else 0), [
        r.path for r in upstream.requests
    ]


def test_non_http_bytes_inside_a_tunnel_are_not_relayed(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    with connect_tunnel(proxy.port, API, upstream.port, proxy.ca) as s:
        response = exchange(s, b"\x00\x01\x02 SSH-2.0-not-http\r\n\r\n")
    assert response == b""  # closed, nothing relayed back
    time.sleep(0.2)
    assert upstream.requests == []
    rec = proxy.audit()[-1]
    assert (rec["event"], rec["host"], rec["reason"]) == ("tunnel", API, "non_http_protocol")


def test_sni_must_match_the_connect_target(proxy: RunningProxy, upstream: Upstream) -> None:
    import ssl

    # A client asking for another name in its TLS SNI gets a certificate for the tunnel's
    # host (so it fails verification); one that does not verify is refused per request.
    with pytest.raises(ssl.SSLCertVerificationError):
        connect_tunnel(proxy.port, API, upstream.port, proxy.ca, sni=OTHER)
    s = connect_tunnel(
        proxy.port, API, upstream.port, proxy.ca, sni=None
    )  # no SNI: the tunnel's host
    with s:
        assert (
            status_of(
                exchange(s, f"GET /nosni HTTP/1.1\r\nHost: {API}:{upstream.port}\r\n\r\n".encode())
            )
            == 200
        )


def test_sni_mismatch_with_a_client_that_does_not_verify(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    import socket
    import ssl

    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    s.sendall(
        f"CONNECT {API}:{upstream.port} HTTP/1.1\r\nHost: {API}:{upstream.port}\r\n\r\n".encode()
    )
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with ctx.wrap_socket(s, server_hostname=OTHER) as tls:
        response = exchange(
            tls, f"GET /sni HTTP/1.1\r\nHost: {API}:{upstream.port}\r\n\r\n".encode()
        )
    assert status_of(response) == 403 and b"x-egress-reason: sni_mismatch" in response
    assert upstream.requests == []


def test_http2_each_stream_is_decided_on_its_own_authority(
    tmp_path,
    test_ca,
    test_ca_file,  # noqa: ANN001
) -> None:
    """Connection coalescing: a second host must not ride an HTTP/2 connection that was
    allowed for the first."""
    import ssl as _ssl

    from tests.conftest import base_config, start_proxy, write_config
    from tests.h2util import H2Upstream, h2_requests

    ctx = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(API, OTHER).configure_cert(ctx)
    with H2Upstream(ctx) as up:
        p = start_proxy(
            write_config(tmp_path, base_config(tmp_path, test_ca_file, up.port)), tmp_path
        )
        try:
            s = connect_tunnel(p.port, API, up.port, p.ca, alpn=["h2"])
            assert s.selected_alpn_protocol() == "h2"
            with s:
                status = h2_requests(s, [(f"{API}:{up.port}", "/first"), (f"{OTHER}:{up.port}", "/coalesced"),
                                         (f"{API}:{up.port}", "/third")])  # fmt: skip
            with connect_tunnel(p.port, API, up.port, p.ca, alpn=["h2"]) as s2:
                # A Host header beside a matching :authority must agree with it too.
                status |= h2_requests(
                    s2, [(f"{API}:{up.port}", "/host-too")], extra=[("host", f"{OTHER}:{up.port}")]
                )
        finally:
            assert p.stop() == 0
        host_too = status.pop("/host-too")
        assert host_too in (
            0,
            403,
        )  # refused by egress (403) or by mitmproxy's h2 checks (reset/close)
        assert status == {"/first": 200, "/coalesced": 403, "/third": 200}
        assert [r.path for r in up.recorder.requests] == ["/first", "/third"]
        reasons = [a["reason"] for a in p.audit() if a["path"] == "/coalesced"]
        assert reasons == ["host_header_mismatch"]


def test_proxy_credentials_never_go_upstream(proxy: RunningProxy, upstream: Upstream) -> None:
    raw = (f"GET /pa HTTP/1.1\r\nHost: {API}:{upstream.port}\r\nProxy-Authorization: Basic dTpw\r\n"
           "Proxy-Connection: keep-alive\r\n\r\n")  # fmt: skip
    with connect_tunnel(proxy.port, API, upstream.port, proxy.ca) as s:
        assert status_of(exchange(s, raw.encode())) == 200
    (req,) = upstream.requests
    assert "proxy-authorization" not in req.headers and "proxy-connection" not in req.headers


def test_unicode_digit_port_in_host_is_refused(proxy: RunningProxy, upstream: Upstream) -> None:
    # "²".isdigit() is True in Python; such a port once crashed the check and let the request by.
    raw = f"POST /forbidden HTTP/1.1\r\nHost: {API}:²\r\nContent-Length: 0\r\n\r\n"
    with connect_tunnel(proxy.port, API, upstream.port, proxy.ca) as s:
        response = exchange(s, raw.encode())
    assert status_of(response) == 400 and b"malformed_request" in response
    assert upstream.requests == []


def test_streamed_request_is_decided_before_its_headers_leave(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    # 70 KB is over limits.max_body_bytes: mitmproxy streams it and sends the headers at once,
    # so the credential checks must already have run.
    body = b"x" * 70_000
    raw = (f"POST /big HTTP/1.1\r\nHost: {OTHER}:{upstream.port}\r\nAuthorization: Bearer agents-own-token\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    with connect_tunnel(proxy.port, OTHER, upstream.port, proxy.ca) as s:
        # egress refuses at the headers and closes the connection (a streamed request cannot
        # be answered): the client may still be writing the body when it does.
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            exchange(s, raw)
    time.sleep(0.2)
    assert upstream.requests == []
    assert proxy.audit()[-1]["reason"] == "foreign_credential"


def test_http1_request_trailers_reach_the_upstream_and_are_audited(
    tmp_path,
    test_ca_file,
    nginx,  # noqa: ANN001
) -> None:
    """mitmproxy raised on HTTP/1 trailers after the headers were sent: the flow hung with no
    audit record. Now the trailers are passed on and the flow is decided and audited."""
    from tests.conftest import base_config, start_proxy, write_config

    p = start_proxy(
        write_config(tmp_path, base_config(tmp_path, test_ca_file, nginx.h1_port)), tmp_path
    )
    raw = (f"POST /trailers HTTP/1.1\r\nHost: {API}:{nginx.h1_port}\r\nTransfer-Encoding: chunked\r\n"
           "Trailer: X-Checksum\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: 1234\r\n\r\n")  # fmt: skip
    parsed = len(nginx.records())
    try:
        with connect_tunnel(p.port, API, nginx.h1_port, p.ca) as s:
            response = exchange(s, raw.encode(), timeout=5)
    finally:
        assert p.stop() == 0
    assert status_of(response) == 200, response[:200]
    assert [r["target"] for r in nginx.records_after(parsed)] == ["/trailers"]
    records = [r for r in p.audit() if r["path"] == "/trailers"]
    assert len(records) == 1 and records[0]["decision"] == "allow"


def test_http1_response_trailers_are_scrubbed_and_audited(tmp_path, test_ca, test_ca_file) -> None:  # noqa: ANN001
    import ssl as _ssl

    from tests.conftest import SECRET, base_config, start_proxy, write_config

    ph = "egress-api_token-placeholder"
    from tests.upstream import RawUpstream

    def answer(req: bytes) -> bytes:
        auth = [
            ln.split(b":", 1)[1].strip()
            for ln in req.split(b"\r\n")
            if ln.lower().startswith(b"authorization:")
        ]
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Echo\r\n\r\n"
                b"5\r\nhello\r\n0\r\nX-Echo: " + auth[0] + b"\r\n\r\n")  # fmt: skip

    ctx = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(API).configure_cert(ctx)
    up = RawUpstream(ctx, answer)
    p = start_proxy(write_config(tmp_path, base_config(tmp_path, test_ca_file, up.port)), tmp_path)
    try:
        raw = (f"GET /rt HTTP/1.1\r\nHost: {API}:{up.port}\r\nAuthorization: Bearer {ph}\r\n"
               "Connection: close\r\n\r\n")  # fmt: skip
        with connect_tunnel(p.port, API, up.port, p.ca) as s:
            response = exchange(s, raw.encode(), timeout=5)
    finally:
        assert p.stop() == 0
        up.close()
    assert f"Bearer {SECRET}".encode() in up.seen[0]  # injected
    assert status_of(response) == 200 and b"hell" in response  # streamed: "o" came in its own chunk
    assert SECRET.encode() not in response
    assert f"X-Echo: Bearer {ph}".lower().encode() in response.lower()  # scrubbed trailer
    assert [r["decision"] for r in p.audit() if r["path"] == "/rt"] == ["allow"]


def _hex_label(value: str) -> str:
    return value.encode().hex()


@pytest.mark.parametrize("how", ["CONNECT", "plain HTTP", "Host in a tunnel"])
def test_a_real_value_in_a_host_name_is_refused_before_any_lookup(
    proxy: RunningProxy, upstream: Upstream, how: str
) -> None:
    """DNS is a channel too: a lookup of <value>.allowed.example would carry the value out.
    A secret's real value (here OTHER's, hex-encoded into a label) in a host name is refused
    before egress resolves anything."""
    import socket

    from tests.conftest import OTHER_SECRET

    name = f"{_hex_label(OTHER_SECRET)}.egress.test"
    before = len(proxy.audit())
    if how == "CONNECT":
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            response = exchange(
                s, f"CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n\r\n".encode()
            )
    elif how == "plain HTTP":
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            response = exchange(s, f"GET http://{name}/x HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    else:
        with connect_tunnel(proxy.port, API, upstream.port, proxy.ca) as s:
            response = exchange(s, f"GET /x HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    expected = "host_header_mismatch" if how == "Host in a tunnel" else "secret_to_unbound_host"
    assert f"x-egress-reason: {expected}".encode() in response, response[:300]
    assert OTHER_SECRET.encode().hex().encode() not in response
    record = proxy.audit()[before:][-1]
    assert record["reason"] == expected
    assert _hex_label(OTHER_SECRET) not in record["host"]


def test_request_trailers_are_guarded_like_headers(tmp_path, test_ca_file, nginx) -> None:  # noqa: ANN001
    from tests.conftest import OTHER_SECRET, base_config, start_proxy, write_config

    p = start_proxy(
        write_config(tmp_path, base_config(tmp_path, test_ca_file, nginx.h1_port)), tmp_path
    )
    parsed = len(nginx.records())
    results = []
    try:
        for trailer in (f"X-Leak: {OTHER_SECRET}", "X-Leak: sk-EGRESSPLACEHOLDEROTHER0000",
                        "X-Token: egress-api_token-placeholder"):  # fmt: skip
            raw = (f"POST /trailer-leak HTTP/1.1\r\nHost: {API}:{nginx.h1_port}\r\nTransfer-Encoding: chunked\r\n"
                   f"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n{trailer}\r\n\r\n")  # fmt: skip
            with connect_tunnel(p.port, API, nginx.h1_port, p.ca) as s:
                results.append(exchange(s, raw.encode(), timeout=5))
    finally:
        assert p.stop() == 0
    reasons = [r.split(b"x-egress-reason: ", 1)[1].split(b"\r\n", 1)[0].decode() for r in results]
    assert reasons == ["secret_to_unbound_host", "placeholder_to_unbound_host",
                       "placeholder_surface_not_allowed"]  # fmt: skip
    assert nginx.records_after(parsed) == []
