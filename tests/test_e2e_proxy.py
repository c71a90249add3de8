"""End to end: real curl and httpx clients, the real egress process, recording upstreams."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from egress.encodings import mask_text
from tests.conftest import API, DOWN, OTHER, OTHER_SECRET, SECRET, RunningProxy, assert_no_secret
from tests.upstream import Upstream

PH = "egress-api_token-placeholder"
OTHER_PH = "sk-EGRESSPLACEHOLDEROTHER0000"


def client_tls(proxy: RunningProxy) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(proxy.ca))


def curl(proxy: RunningProxy, url: str, *args: str) -> tuple[int, str, str]:
    """Returns (http status or 0, body, stderr)."""
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--proxy", proxy.url, "--cacert", str(proxy.ca),
         "-o", "-", "-w", "\n%{http_code}", *args, url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body, r.stderr


def last_audit(proxy: RunningProxy, **match: Any) -> dict[str, Any]:
    for rec in reversed(proxy.audit()):
        if all(rec.get(k) == v for k, v in match.items()):
            return rec
    raise AssertionError(f"no audit record with {match}: {proxy.audit()[-3:]}")


INJECTION_CASES = [
    # (id, curl args, path, where the upstream must see the secret)
    ("bearer header", ["-H", f"Authorization: Bearer {PH}"], "/h", lambda r: r.headers["authorization"] == f"Bearer {SECRET}"),
    ("custom header", ["-H", f"X-Api-Key: {PH}"], "/h2", lambda r: r.headers["x-api-key"] == SECRET),
    ("basic auth password", ["-u", f"git:{PH}"], "/basic",
     lambda r: r.headers["authorization"] == "Basic " + base64.b64encode(f"git:{SECRET}".encode()).decode()),
    ("query", [], f"/q?key={PH}&x=1", lambda r: r.path == f"/q?key={SECRET}&x=1"),
    ("json body", ["-H", "content-type: application/json", "--data", json.dumps({"token": PH})], "/b",
     lambda r: json.loads(r.body) == {"token": SECRET}),
]  # fmt: skip


@pytest.mark.parametrize("case", INJECTION_CASES, ids=[c[0] for c in INJECTION_CASES])
def test_injection_reaches_upstream_and_client_never_sees_secret(
    proxy: RunningProxy, upstream: Upstream, case: tuple[Any, ...]
) -> None:
    _, args, path, check = case
    status, body, err = curl(proxy, f"https://{API}:{upstream.port}{path}", *args)
    assert status == 200, (body, err)
    assert len(upstream.requests) == 1
    assert check(upstream.requests[0])
    # The echo upstream reflected the secret; the proxy put back what the client sent (inside
    # a Basic token: the placeholder cut or padded to the secret's length, so that the token
    # keeps its shape).
    masked = mask_text(PH, len(SECRET))
    sent = base64.b64encode(f"git:{masked}".encode()).decode() if "-u" in args else PH
    assert sent in body
    assert_no_secret(body, err)
    rec = last_audit(
        proxy, path=path.split("?")[0] + ("?key=REDACTED&x=REDACTED" if "?" in path else "")
    )
    assert rec["decision"] == "allow" and rec["secrets"] == ["api_token"] and rec["status"] == 200


def test_file_source_secret_with_vendor_placeholder(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    status, body, _ = curl(
        proxy, f"https://{OTHER}:{upstream.port}/x", "-H", f"Authorization: Bearer {OTHER_PH}"
    )
    assert status == 200
    assert upstream.requests[0].headers["authorization"] == f"Bearer {OTHER_SECRET}"
    assert_no_secret(body)


def test_httpx_client(proxy: RunningProxy, upstream: Upstream) -> None:
    with httpx.Client(proxy=proxy.url, verify=client_tls(proxy)) as c:
        r = c.get(f"https://{API}:{upstream.port}/httpx", headers={"authorization": f"token {PH}"})
    assert r.status_code == 200
    assert upstream.requests[0].headers["authorization"] == f"token {SECRET}"
    assert_no_secret(r.text, str(r.headers))


def test_request_without_placeholder_is_forwarded_untouched(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    status, _, _ = curl(proxy, f"https://{API}:{upstream.port}/plain", "-H", "X-Other: value")
    assert status == 200
    assert upstream.requests[0].headers["x-other"] == "value"
    assert last_audit(proxy, path="/plain")["secrets"] == []


DENIAL_CASES = [
    # (id, url template, curl args, expected status, reason, upstream connections allowed)
    ("unknown host", "https://denied.egress.test:{port}/", [], 403, "host_not_allowed"),
    ("allowed host, wrong port", "https://" + API + ":1/", [], 403, "port_not_allowed"),
    ("ip literal not in allowlist", "https://127.0.0.1:{port}/", [], 403, "ip_literal"),
    ("placeholder to unbound host", "https://" + OTHER + ":{port}/", ["-H", f"Authorization: Bearer {PH}"], 403,
     "placeholder_to_unbound_host"),
    ("placeholder in path", "https://" + API + f":{{port}}/{PH}/x", [], 403, "placeholder_surface_not_allowed"),
    ("host header mismatch", "https://" + API + ":{port}/", ["-H", f"Host: {OTHER}"], 403, "host_header_mismatch"),
    ("plain http to https-only host", "http://" + OTHER + ":{port}/", [], 403, "scheme_not_allowed"),
]  # fmt: skip


@pytest.mark.parametrize("case", DENIAL_CASES, ids=[c[0] for c in DENIAL_CASES])
def test_denials_never_reach_upstream(
    proxy: RunningProxy, upstream: Upstream, case: tuple[Any, ...]
) -> None:
    _, url, args, status, reason = case
    code, body, err = curl(proxy, url.format(port=upstream.port), "-i", *args)
    # curl reports a refused CONNECT as a failed tunnel; the 403 is in its -i output.
    assert code == status or f"response {status}" in err, (code, body, err)
    assert upstream.requests == []
    if reason in ("host_not_allowed", "port_not_allowed", "scheme_not_allowed", "ip_literal"):
        assert upstream.connections == 0, "a denied destination got a TCP connection"
    rec = proxy.audit()[-1]
    assert rec["decision"] == "deny" and rec["reason"] == reason and rec["status"] == status
    assert_no_secret(body, err)


def test_denial_body_names_reason_rule_config_and_fix(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    with httpx.Client(proxy=proxy.url, verify=client_tls(proxy)) as c:
        r = c.post(f"https://{API}:{upstream.port}/x", headers={"x": "y"}, content=b"")
        assert r.status_code == 200
        # The tunnel to OTHER is allowed; the placeholder of api_token inside it is not.
        r = c.get(f"https://{OTHER}:{upstream.port}/leak", params={"q": PH})
    assert r.status_code == 403
    assert r.headers["x-egress-reason"] == "placeholder_to_unbound_host"
    assert "api_token" in r.text and "secrets[0].hosts" in r.text and str(proxy.config) in r.text
    assert all(req.path != "/leak" for req in upstream.requests)


def test_connect_denial_is_refused_before_tls(proxy: RunningProxy) -> None:
    # Speak to the proxy directly: the CONNECT answer must be the 403 with a readable body.
    import socket

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(
            b"CONNECT evil.example.invalid:443 HTTP/1.1\r\nHost: evil.example.invalid:443\r\n\r\n"
        )
        data = b""
        while b"\r\n\r\n" not in data or b"config:" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403")
    assert b"host_not_allowed" in body and b"- host: evil.example.invalid" in body


def test_plain_http_allowed_by_rule(proxy: RunningProxy, plain_upstream: Upstream) -> None:
    code, body, _ = curl(proxy, f"http://{API}:{plain_upstream.port}/plain")
    assert code == 200
    assert plain_upstream.requests[0].path == "/plain"


def test_no_injection_over_plain_http(proxy: RunningProxy, plain_upstream: Upstream) -> None:
    code, body, _ = curl(
        proxy, f"http://{API}:{plain_upstream.port}/p", "-H", f"Authorization: Bearer {PH}"
    )
    assert code == 403 and "plaintext_injection" in body
    assert plain_upstream.requests == [] and plain_upstream.connections == 0


def test_userinfo_in_url_is_denied(proxy: RunningProxy, plain_upstream: Upstream) -> None:
    # curl turns userinfo into a header, so send the absolute-form request by hand.
    import socket

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        target = f"http://user:pw@{API}:{plain_upstream.port}/u"
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {API}:{plain_upstream.port}\r\n\r\n".encode())
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 4"), data[:200]
    assert plain_upstream.requests == []


def test_alt_svc_is_stripped(proxy: RunningProxy, upstream: Upstream) -> None:
    with httpx.Client(proxy=proxy.url, verify=client_tls(proxy)) as c:
        r = c.get(f"https://{API}:{upstream.port}/altsvc")
    assert r.status_code == 200 and "alt-svc" not in r.headers


def test_audit_log_has_one_line_per_request_and_no_secret(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    before = len(proxy.audit())
    for i in range(3):
        curl(
            proxy,
            f"https://{API}:{upstream.port}/count{i}?token={PH}",
            "-H",
            f"Authorization: Bearer {PH}",
        )
    records = proxy.audit()[before:]
    assert [r["path"] for r in records] == [f"/count{i}?token=REDACTED" for i in range(3)]
    for r in records:
        assert set(r) >= {"time", "flow_id", "client", "method", "scheme", "host", "port", "path",
                          "decision", "reason", "rule", "secrets", "status", "bytes_in", "bytes_out",
                          "duration_ms"}  # fmt: skip
        assert r["scrubbed"] >= 1
    assert_no_secret(proxy.outputs())


def test_unreachable_upstream_gets_a_clear_502(proxy: RunningProxy) -> None:
    code, body, err = curl(proxy, f"https://{DOWN}:1/", "-i")
    assert "response 502" in err
    rec = proxy.audit()[-1]
    assert (rec["event"], rec["host"], rec["decision"], rec["reason"], rec["status"]) == (
        "connect",
        DOWN,
        "error",
        "upstream_error",
        502,
    )
    assert "connection_strategy" not in rec["detail"]


def test_crl_lookalike_path_reaches_upstream(proxy: RunningProxy, upstream: Upstream) -> None:
    # mitmproxy 12's TlsConfig answers ".../mitmproxy-<CA serial>.crl" itself; egress must not.
    from cryptography import x509

    serial = x509.load_pem_x509_certificate(proxy.ca.read_bytes()).serial_number
    status, _, _ = curl(proxy, f"https://{API}:{upstream.port}/mitmproxy-{serial}.crl")
    assert status == 200
    assert [r.path for r in upstream.requests] == [f"/mitmproxy-{serial}.crl"]


def test_body_over_limit_is_refused_before_it_is_sent(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    # Over limits.max_body_bytes (64 KiB) to a host whose secret injects into bodies: the body
    # cannot be scanned, so the request is dropped unsent.
    big = "x" * 100_000 + PH
    with httpx.Client(proxy=proxy.url, verify=client_tls(proxy)) as c:
        with pytest.raises(httpx.TransportError):
            c.post(f"https://{API}:{upstream.port}/big", content=big.encode())
    assert all(req.path != "/big" for req in upstream.requests)
    rec = last_audit(proxy, path="/big")
    assert (rec["decision"], rec["reason"], rec["status"]) == ("deny", "body_too_large", None)
    with httpx.Client(proxy=proxy.url, verify=client_tls(proxy)) as c:
        # Over the secret's own body_max_bytes but buffered: a clear 413.
        r = c.post(
            f"https://{API}:{upstream.port}/mid",
            content=("y" * 2_000_000)[:60_000].encode() + PH.encode(),
        )
        assert r.status_code == 200  # 60 KB is under api_token's body_max_bytes (1 MiB)
        # other_token does not inject into bodies: a large body to its host streams through.
        r = c.post(f"https://{OTHER}:{upstream.port}/big-ok", content=b"y" * 100_000)
    assert r.status_code == 200
    assert [len(req.body) for req in upstream.requests if req.path == "/big-ok"] == [100_000]


def test_real_secret_in_path_to_unbound_host_is_blocked_and_never_audited(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    code, body, err = curl(proxy, f"https://{OTHER}:{upstream.port}/exfil/{SECRET}")
    assert code == 403 and "secret_to_unbound_host" in body
    assert upstream.requests == []
    rec = last_audit(proxy, reason="secret_to_unbound_host")
    assert rec["path"] == "/exfil/[secret:api_token]"
    assert_no_secret(proxy.outputs(), body, err)


def test_report_mode_lets_denials_through_as_would_deny(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    from tests.conftest import base_config, start_proxy, write_config

    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["mode"] = "report"
    cfg["allow"] = [
        r for r in cfg["allow"] if r["host"] != OTHER
    ]  # OTHER is now outside the allowlist
    cfg["secrets"] = cfg["secrets"][:1]
    cfg["allow"][0]["methods"] = ["GET"]  # so that a DELETE to API is one enforce mode would deny
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        code, body, err = curl(p, f"https://{OTHER}:{upstream.port}/would", "-H", "X-Key: value")
        assert code == 200, err
        rec = last_audit(p, path="/would")
        assert (rec["decision"], rec["would_deny"]) == ("allow", "host_not_allowed")
        # A bound secret is never injected into a request enforce mode would deny.
        code, _, _ = curl(
            p,
            f"https://{API}:{upstream.port}/",
            "-X",
            "DELETE",
            "-H",
            f"Authorization: Bearer {PH}",
        )
        assert code == 200
        # Address and secret checks still hold in report mode.
        code, body, _ = curl(
            p, f"https://{OTHER}:{upstream.port}/leak", "-H", f"Authorization: Bearer {PH}"
        )
        assert code == 403 and "placeholder_to_unbound_host" in body
    finally:
        assert p.stop() == 0
    assert [r.path for r in upstream.requests] == ["/would", "/"]
    assert upstream.requests[1].headers["authorization"] == f"Bearer {PH}"  # not injected
    assert last_audit(p, path="/")["would_deny"] == "method_not_allowed"
    assert "report mode" in p.stderr_path.read_text()


def test_redirects_are_not_followed_and_a_followed_one_is_decided_anew(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    target = f"https://denied.egress.test:{upstream.port}/x"
    code, _, _ = curl(proxy, f"https://{API}:{upstream.port}/redirect?to={target}")
    assert code == 302  # the proxy passes the redirect on; it never follows it itself
    code, _, err = curl(proxy, f"https://{API}:{upstream.port}/redirect?to={target}", "-L")
    assert "response 403" in err  # the client followed it: a new request, decided on its own
    assert [r.path for r in upstream.requests] == [f"/redirect?to={target}"] * 2
    assert proxy.audit()[-1]["host"] == "denied.egress.test"
