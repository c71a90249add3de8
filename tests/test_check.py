"""egress check against the real proxy: the same requests, the same decisions.

The differential table sends every request twice: to ``egress check`` (in process, JSON)
and through the real egress process to a recording upstream on loopback. check's decision
and reason code must be the proxy's (its audit record, and its X-Egress-Reason header when
it answered the request itself). Then --explain, --file, the JSON shape, exit codes and the
secret-free output, as units.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from egress.checkcmd import WEBSOCKET_HEADERS
from egress.cli import main
from egress.decide import STEPS_HTTP, STEPS_HTTPS
from tests.conftest import (
    API,
    OTHER,
    OTHER_SECRET,
    SECRET,
    RunningProxy,
    assert_no_secret,
    base_config,
    egress_cmd,
    proxy_env,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream

PH = "egress-api_token-placeholder"
OTHER_PH = "sk-EGRESSPLACEHOLDEROTHER0000"
OPT_PH = "egress-opt_token-placeholder"
RO = "ro.egress.test"  # GET and POST under /v1/ only
WS = "ws.egress.test"  # WebSocket upgrades allowed; opt_token (never loaded) is bound to it
PRIV = "priv.egress.test"  # resolves to a private address
NODNS = "nodns.egress.test"  # allowed, but no upstream.resolve entry (dns: static)
SIGV4 = ("AWS4-HMAC-SHA256 Credential=" + PH + "/20240101/us-east-1/s3/aws4_request, "
         "SignedHeaders=host, Signature=0123abcd")  # fmt: skip


def check_config(tmp: Path, ca_file: Path, port: int, plain_port: int) -> dict[str, Any]:
    cfg = base_config(tmp, ca_file, port, plain_port)
    cfg["allow"] += [
        {"host": RO, "ports": [port], "methods": ["GET", "POST"], "paths": ["/v1/"]},
        {"host": WS, "ports": [port], "websocket": True},
        {"host": PRIV, "ports": [port]},
        {"host": NODNS, "ports": [port]},
    ]
    cfg["upstream"]["resolve"].update({RO: "127.0.0.1", WS: "127.0.0.1", PRIV: "10.0.0.9"})
    cfg["secrets"].append({"name": "opt_token", "source": {"env": "EGRESS_TEST_OPT_TOKEN"},
                           "hosts": [WS], "required": False})  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def check_upstream(test_ca: trustme.CA) -> Iterator[Upstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(API, OTHER, RO, WS, "127.0.0.1").configure_cert(ctx)
    with Upstream(ctx) as up:
        yield up


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, check_upstream: Upstream,
    plain_upstream: Upstream, test_ca_file: Path,
) -> Iterator[tuple[Path, RunningProxy]]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("check")
    path = write_config(
        tmp, check_config(tmp, test_ca_file, check_upstream.port, plain_upstream.port)
    )
    proxy = start_proxy(path, tmp, env=proxy_env())
    try:
        yield path, proxy
    finally:
        code = proxy.stop()
    assert code == 0, proxy.stderr_path.read_text()
    assert "Traceback" not in proxy.stderr_path.read_text()


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the proxy has: api_token in the environment (other_token is in a file),
    opt_token nowhere."""
    monkeypatch.setenv("EGRESS_TEST_API_TOKEN", SECRET)
    monkeypatch.delenv("EGRESS_TEST_OPT_TOKEN", raising=False)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> list[dict[str, Any]]:
        return json.loads(self.out)


def check(*args: str) -> Result:
    """``egress check`` in process; stdout, stderr and the logging setup restored after."""
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["check", *args])
            except SystemExit as e:  # argparse
                code = int(e.code or 0)
    finally:
        root.handlers[:], root.level = handlers, level
    return Result(code, out.getvalue(), err.getvalue())


# --- the differential table -------------------------------------------------------------


@dataclass
class Case:
    id: str
    method: str
    url: str  # {port}: the TLS upstream's, {plain}: the plain one's
    expect: str  # the reason code both must give
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    websocket: bool = False
    injected: list[str] = field(default_factory=list)
    raw: bool = False  # send the request line by hand (clients rewrite userinfo)


JSON = ("Content-Type", "application/json")
FORM = ("Content-Type", "application/x-www-form-urlencoded")
API_URL, OTHER_URL = f"https://{API}:{{port}}", f"https://{OTHER}:{{port}}"
CASES = [
    Case("allowed", "GET", API_URL + "/ok", "allowed"),
    Case("placeholder in header, bound host", "GET", API_URL + "/h", "allowed",
         [("Authorization", f"Bearer {PH}")], injected=["api_token"]),
    Case("placeholder in query, bound host", "GET", API_URL + f"/q?key={PH}", "allowed", injected=["api_token"]),
    Case("placeholder in body, bound host", "POST", API_URL + "/b", "allowed", [JSON],
         json.dumps({"token": PH}).encode(), injected=["api_token"]),
    Case("host not allowed", "GET", "https://nope.egress.test:{port}/", "host_not_allowed"),
    Case("port not allowed", "GET", f"https://{API}:1/", "port_not_allowed"),
    Case("scheme not allowed", "GET", f"http://{OTHER}:{{port}}/", "scheme_not_allowed"),
    Case("method not allowed", "DELETE", f"https://{RO}:{{port}}/v1/x", "method_not_allowed"),
    Case("path not allowed", "GET", f"https://{RO}:{{port}}/v2/x", "path_not_allowed"),
    Case("path allowed", "GET", f"https://{RO}:{{port}}/v1/x", "allowed"),
    Case("encoded dot segment", "GET", f"https://{RO}:{{port}}/v1/%2e%2e/admin", "path_not_allowed"),
    Case("method override header", "GET", f"https://{RO}:{{port}}/v1/x", "method_not_allowed",
         [("X-HTTP-Method-Override", "DELETE")]),
    Case("method override in query", "GET", f"https://{RO}:{{port}}/v1/x?_method=DELETE", "method_not_allowed"),
    Case("method override in form body", "POST", f"https://{RO}:{{port}}/v1/x", "method_not_allowed",
         [FORM], b"a=1&_method=DELETE"),
    Case("placeholder in header, unbound host", "GET", OTHER_URL + "/h", "placeholder_to_unbound_host",
         [("X-Token", PH)]),
    Case("placeholder in query, unbound host", "GET", OTHER_URL + f"/leak?q={PH}", "placeholder_to_unbound_host"),
    Case("placeholder in body, unbound host", "POST", OTHER_URL + "/b", "placeholder_to_unbound_host",
         [JSON], json.dumps({"t": PH}).encode()),
    Case("placeholder in host name", "GET", f"https://{PH}.{API}:{{port}}/", "placeholder_to_unbound_host"),
    Case("placeholder in query, headers-only secret", "GET", OTHER_URL + f"/q?key={OTHER_PH}",
         "placeholder_surface_not_allowed"),
    Case("placeholder in path", "GET", API_URL + f"/{PH}/x", "placeholder_surface_not_allowed"),
    Case("foreign credential in Authorization", "GET", OTHER_URL + "/", "foreign_credential",
         [("Authorization", "Bearer sk-my-own-key")]),
    Case("foreign credential, folded header name", "GET", OTHER_URL + "/", "foreign_credential",
         [("X_Api_Key", "my-own-key")]),
    Case("placeholder over plain http", "GET", f"http://{API}:{{plain}}/p", "plaintext_injection",
         [("Authorization", f"Bearer {PH}")]),
    Case("plain http allowed", "GET", f"http://{API}:{{plain}}/p", "allowed"),
    Case("websocket allowed", "GET", f"https://{WS}:{{port}}/sock", "allowed", websocket=True),
    Case("websocket not allowed", "GET", API_URL + "/sock", "websocket_not_allowed", websocket=True),
    Case("other upgrade", "GET", API_URL + "/up", "upgrade_not_allowed",
         [("Connection", "Upgrade"), ("Upgrade", "h2c")]),
    # Sent by hand (clients turn userinfo into a header): the grammar refuses the authority
    # before the userinfo check (over https, check refuses it first: userinfo_in_url).
    Case("userinfo in URL", "GET", f"http://user:pw@{API}:{{plain}}/u", "malformed_request", raw=True),
    Case("ip literal", "GET", "https://127.0.0.1:{port}/", "ip_literal"),
    Case("resolves to a private address", "GET", f"https://{PRIV}:{{port}}/", "resolved_private"),
    Case("no address (dns: static)", "GET", f"https://{NODNS}:{{port}}/", "dns_failure"),
    Case("host header mismatch", "GET", API_URL + "/", "host_header_mismatch",
         [("Host", f"{OTHER}:{{port}}")]),
    Case("proxy header", "GET", API_URL + "/", "proxy_header", [("Proxy", "http://evil.test/")]),
    Case("real secret in query, unbound host", "GET", OTHER_URL + f"/x?d={SECRET}", "secret_to_unbound_host"),
    Case("real secret in header, unbound host", "GET", OTHER_URL + "/x", "secret_to_unbound_host",
         [("X-Data", SECRET)]),
    Case("real secret in body, unbound host", "POST", OTHER_URL + "/x", "secret_to_unbound_host",
         [JSON], json.dumps({"d": SECRET}).encode()),
    Case("signed request carries a placeholder", "GET", API_URL + "/s3", "signature_scheme_unsupported",
         [("Authorization", SIGV4)]),
    Case("presigned URL, placeholder in body", "PUT", API_URL + "/s3?X-Amz-Signature=abc",
         "signature_scheme_unsupported", [JSON], json.dumps({"t": PH}).encode()),
    Case("body over the limit, body-injecting secret", "POST", API_URL + "/big", "body_too_large",
         [("Content-Type", "text/plain")], b"x" * 70_000),
    Case("optional secret not loaded", "GET", f"https://{WS}:{{port}}/opt", "secret_unavailable",
         [("Authorization", f"Bearer {OPT_PH}")]),
]  # fmt: skip


def _fill(text: str, up: Upstream, plain: Upstream) -> str:
    return text.replace("{port}", str(up.port)).replace("{plain}", str(plain.port))


def _send(proxy: RunningProxy, case: Case, url: str, headers: list[tuple[str, str]]) -> str | None:
    """Send through the proxy; the X-Egress-Reason of its answer (None when the upstream
    answered, or the proxy gave no HTTP answer)."""
    if case.raw:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            authority = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
            s.sendall(f"{case.method} {url} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        return next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                     if line.startswith("x-egress-reason:")), None)  # fmt: skip
    tls = ssl.create_default_context(cafile=str(proxy.ca))
    with httpx.Client(proxy=proxy.url, verify=tls, timeout=20) as client:
        try:
            r = client.request(case.method, url, headers=headers, content=case.body)
        except (httpx.ProxyError, httpx.TransportError):
            return None  # a refused CONNECT, or a request dropped unsent: the audit says why
    return r.headers.get("x-egress-reason")


def _new_records(proxy: RunningProxy, before: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = proxy.audit()[before:]
        if records:
            time.sleep(0.1)  # anything else this request made is written by now
            return proxy.audit()[before:]
        time.sleep(0.02)
    raise AssertionError("the proxy wrote no audit record for the request")


def test_the_table_covers_what_it_claims() -> None:
    reasons = {c.expect for c in CASES}
    assert len(CASES) >= 25 and len(reasons) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_check_agrees_with_the_proxy(
    world: tuple[Path, RunningProxy], check_upstream: Upstream, plain_upstream: Upstream,
    secret_env: None, tmp_path: Path, case: Case,
) -> None:  # fmt: skip
    cfg, proxy = world
    url = _fill(case.url, check_upstream, plain_upstream)
    headers = [(k, _fill(v, check_upstream, plain_upstream)) for k, v in case.headers]
    args = ["--config", str(cfg), "--method", case.method]
    for k, v in headers:
        args += ["--header", f"{k}: {v}"]
    if case.body is not None:
        (tmp_path / "body").write_bytes(case.body)
        args += ["--data", f"@{tmp_path / 'body'}"]
    if case.websocket:
        args.append("--websocket")
    checked = check(*args, "--format", "json", url)
    assert checked.code == (0 if case.expect == "allowed" else 1), checked.err
    (verdict,) = checked.json()

    before = len(proxy.audit())
    sent = headers + (list(WEBSOCKET_HEADERS) if case.websocket else [])
    answered = _send(proxy, case, url, sent)
    records = _new_records(proxy, before)
    assert len(records) == 1, records
    rec = records[0]

    assert (verdict["decision"], verdict["reason"]) == (rec["decision"], rec["reason"]), (
        verdict["detail"], rec.get("detail"))  # fmt: skip
    assert verdict["reason"] == case.expect
    if answered is not None:
        assert answered == verdict["reason"]
    if rec["decision"] != "allow":
        assert rec["rule"] == verdict["rule"]
    if rec["decision"] != "allow" and rec["event"] != "protocol" and rec["status"] is not None:
        # The same sentence (a refusal below HTTP, or of a body dropped unsent, says more).
        assert rec["detail"] == verdict["detail"]
    assert verdict["secrets"] == rec["secrets"] == case.injected
    if rec["status"] is not None:
        assert verdict["status"] == rec["status"]
    # Every output of check, in every form, is free of secret values.
    explained = check(*args, "--explain", url)
    for out in (checked, explained):
        assert_no_secret(out.out, out.err)


def test_a_config_the_proxy_cannot_start_fails_check_alike(
    tmp_path: Path, check_upstream: Upstream, plain_upstream: Upstream, test_ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A required secret that cannot be loaded: egress run refuses to start; check says so
    with the same message and exit code, and says nothing about the request."""
    cfg = write_config(
        tmp_path, check_config(tmp_path, test_ca_file, check_upstream.port, plain_upstream.port)
    )
    env = proxy_env()
    del env["EGRESS_TEST_API_TOKEN"]
    run = subprocess.run(egress_cmd("run", "--config", str(cfg)), capture_output=True, text=True,
                         env=env, timeout=60)  # fmt: skip
    monkeypatch.delenv("EGRESS_TEST_API_TOKEN", raising=False)
    checked = check("--config", str(cfg), f"https://{API}:{check_upstream.port}/")
    assert run.returncode == checked.code == 2
    assert checked.out == ""
    message = "egress: error: secret 'api_token' (env:EGRESS_TEST_API_TOKEN): $EGRESS_TEST_API_TOKEN is not set"
    assert message in run.stderr.splitlines()
    assert checked.err.strip() == message
    # --no-secrets decides without them: the placeholder checks still run.
    ok = check("--config", str(cfg), "--no-secrets", f"https://{API}:{check_upstream.port}/")
    assert ok.code == 0 and "secrets not loaded (--no-secrets)" in ok.out
    leak = check("--config", str(cfg), "--no-secrets", "--format", "json",
                 f"https://{OTHER}:{check_upstream.port}/?q={PH}")  # fmt: skip
    assert leak.code == 1 and leak.json()[0]["reason"] == "placeholder_to_unbound_host"
    assert leak.json()[0]["secrets_loaded"] is False


# --- units --------------------------------------------------------------------------------


@pytest.fixture
def cfg(tmp_path: Path, test_ca_file: Path, secret_env: None) -> Path:
    return write_config(tmp_path, check_config(tmp_path, test_ca_file, 8443, 8080))


def test_explain_lists_every_check_rule_and_secret_in_order(cfg: Path) -> None:
    r = check("--config", str(cfg), "--explain", "-H", f"Authorization: Bearer {PH}",
              f"https://{API}:8443/x")  # fmt: skip
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    start = lines.index(
        next(line for line in lines if line.startswith("  checks, in the proxy's order"))
    )
    step_lines = lines[start + 1 : start + 1 + len(STEPS_HTTPS)]
    assert [line[10:23].strip() for line in step_lines] == list(STEPS_HTTPS)
    assert all(line.startswith("    pass  ") for line in step_lines)
    assert "    pass  secrets        injects api_token" in r.out
    assert (
        "    allow[0] (api.egress.test): host yes  port yes  scheme yes  method yes  path yes  websocket yes: allows"
        in r.out
    )
    assert "    allow[1] (other.egress.test): host no" in r.out
    assert "    api_token: bound to this host" in r.out and "injected" in r.out
    assert "    other_token: bound to other.egress.test, not to this host" in r.out

    # A denial: the failing step, then every later one not reached.
    r = check("--config", str(cfg), "--explain", "-X", "DELETE", f"https://{RO}:8443/v1/x")
    assert r.code == 1
    assert "    FAIL  allowlist      method_not_allowed: method DELETE is not allowed" in r.out
    assert "    -     secrets        not reached" in r.out
    assert (
        f"    allow[4] ({RO}): host yes  port yes  scheme yes  method no  path yes  websocket yes: does not allow"
        in r.out
    )
    # Plain HTTP runs in its own order, the address last of the allowlist checks.
    r = check("--config", str(cfg), "--explain", "--format", "json", f"http://{API}:8080/p")
    assert [s["check"] for s in r.json()[0]["steps"]] == list(STEPS_HTTP)
    # An address only the running proxy can resolve is a '?', not a pass.
    (tmp := cfg.parent / "sys.yaml").write_text(
        cfg.read_text().replace("dns: static", "dns: system")
    )
    r = check("--config", str(tmp), "--explain", f"https://{NODNS}:8443/")
    assert r.code == 0 and "    ?     address" in r.out
    assert "address: resolved and checked by the running proxy when it connects" in r.out


def test_json_shape(cfg: Path) -> None:
    r = check("--config", str(cfg), "--format", "json", "--explain", f"https://{API}:8443/a",
              f"https://{OTHER}:8443/b?q={PH}", "https://nope.egress.test/")  # fmt: skip
    assert r.code == 1
    items = r.json()
    assert isinstance(items, list) and len(items) == 3
    keys = {"method", "url", "decision", "reason", "status", "rule", "detail", "secrets", "secret",
            "host", "port", "scheme", "websocket", "address", "hint", "secrets_loaded", "config",
            "steps", "rules", "secret_checks"}  # fmt: skip
    assert all(set(i) == keys for i in items)
    ok, leak, nope = items
    assert (ok["decision"], ok["reason"], ok["status"], ok["rule"]) == (
        "allow",
        "allowed",
        200,
        "allow[0]",
    )
    assert ok["address"] == "127.0.0.1" and ok["secrets"] == [] and ok["detail"] is None
    assert (leak["decision"], leak["reason"], leak["status"], leak["secret"]) == (
        "deny",
        "placeholder_to_unbound_host",
        403,
        "api_token",
    )
    assert leak["rule"] == "allow[1]" and "secrets[0].hosts" in leak["detail"]
    assert (nope["reason"], nope["port"], nope["rule"]) == ("host_not_allowed", 443, None)
    assert nope["hint"] == "add a rule under 'allow':\n  - host: nope.egress.test"
    assert {s["result"] for s in nope["steps"]} == {"pass", "fail", "not reached"}
    assert nope["rules"] == [] or all(not r["allows"] for r in nope["rules"])
    assert ok["rules"][0] == {
        "rule": "allow[0]",
        "host": API,
        "allows": True,
        "matches": {
            "host": True,
            "port": True,
            "scheme": True,
            "method": True,
            "path": True,
            "websocket": True,
        },
    }
    assert [s["secret"] for s in leak["secret_checks"]] == ["api_token", "other_token", "opt_token"]
    assert leak["secret_checks"][0] == {
        "secret": "api_token",
        "bound": False,
        "placeholder_in": ["query"],
        "scheme": "static",
        "mint": None,
        "inject": ["body", "headers", "query"],
        "injected": False,
    }
    # Without --explain, no steps.
    r = check("--config", str(cfg), "--format", "json", f"https://{API}:8443/a")
    assert "steps" not in r.json()[0]
    # An error decision (the proxy cannot send it: 5xx).
    r = check("--config", str(cfg), "--format", "json", f"https://{NODNS}:8443/")
    assert (r.json()[0]["decision"], r.json()[0]["status"]) == ("error", 502) and r.code == 1


def test_file_of_requests(cfg: Path, tmp_path: Path) -> None:
    f = tmp_path / "reqs.txt"
    f.write_text(f"# what the agent needs\n\nhttps://{API}:8443/a\n  DELETE https://{RO}:8443/v1/x\n"
                 f"post https://{RO}:8443/v1/y\n")  # fmt: skip
    r = check("--config", str(cfg), "--format", "json", "--file", str(f), f"https://{OTHER}:8443/")
    assert r.code == 1, r.err
    assert [(i["method"], i["url"], i["reason"]) for i in r.json()] == [
        ("GET", f"https://{OTHER}:8443/", "allowed"),
        ("GET", f"https://{API}:8443/a", "allowed"),
        ("DELETE", f"https://{RO}:8443/v1/x", "method_not_allowed"),
        ("POST", f"https://{RO}:8443/v1/y", "allowed"),
    ]
    # --method applies to lines without one.
    r = check("--config", str(cfg), "--format", "json", "-X", "PUT", "--file", str(f))
    assert [i["method"] for i in r.json()] == ["PUT", "DELETE", "POST"]
    # Text: one block per request, in order.
    r = check("--config", str(cfg), "--file", str(f))
    assert [
        line.split()[0] for line in r.out.splitlines() if line and not line.startswith(" ")
    ] == ["ALLOW", "DENY", "ALLOW"]
    bad = tmp_path / "bad.txt"
    bad.write_text("# fine\nGET https://a.test/ extra\n")
    r = check("--config", str(cfg), "--file", str(bad))
    assert r.code == 2 and f"{bad}:2: expected '[METHOD] URL'" in r.err and r.out == ""
    r = check("--config", str(cfg), "--file", str(tmp_path / "missing.txt"))
    assert r.code == 2 and "missing.txt: No such file or directory" in r.err


EXIT_CODES = [
    # (arguments after --config, exit code)
    ([f"https://{API}:8443/a", f"https://{OTHER}:8443/b"], 0),
    ([f"https://{API}:8443/a", "https://nope.egress.test/"], 1),
    ([f"https://{NODNS}:8443/"], 1),  # an error decision is not an allow
    ([], 2),  # no URL
    (["-H", "no colon here", f"https://{API}:8443/a"], 2),
    (["--data", "@/nonexistent/body", f"https://{API}:8443/a"], 2),
]


@pytest.mark.parametrize(("args", "code"), EXIT_CODES, ids=[str(i) for i in range(len(EXIT_CODES))])
def test_exit_codes(cfg: Path, args: list[str], code: int) -> None:
    r = check("--config", str(cfg), *args)
    assert r.code == code, r.out + r.err


def test_a_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("alow: []\n")
    r = check("--config", str(bad), "https://x.test/")
    assert r.code == 2 and "alow: unknown key" in r.err and r.out == ""


def test_request_building(cfg: Path, tmp_path: Path) -> None:
    """--data is POST with a form body unless told otherwise; ws:// and wss:// ask for a
    WebSocket upgrade; @FILE reads the body."""
    r = check(
        "--config", str(cfg), "--format", "json", "-d", "_method=DELETE", f"https://{RO}:8443/v1/x"
    )
    assert (r.json()[0]["method"], r.json()[0]["reason"]) == ("POST", "method_not_allowed")
    r = check("--config", str(cfg), "--format", "json", "-d", "_method=DELETE", "-H",
              "Content-Type: text/plain", f"https://{RO}:8443/v1/x")  # fmt: skip
    assert r.json()[0]["reason"] == "allowed"
    r = check("--config", str(cfg), "--format", "json", f"wss://{WS}:8443/s", f"wss://{API}:8443/s")
    assert [(i["websocket"], i["reason"]) for i in r.json()] == [
        (True, "allowed"),
        (True, "websocket_not_allowed"),
    ]
    (tmp_path / "b.json").write_bytes(json.dumps({"t": PH}).encode())
    r = check("--config", str(cfg), "--format", "json", "-H", "Content-Type: application/json",
              "-d", f"@{tmp_path / 'b.json'}", f"https://{OTHER}:8443/x")  # fmt: skip
    assert r.json()[0]["reason"] == "placeholder_to_unbound_host"
    assert "the body" in r.json()[0]["detail"]


NO_SECRET_REQUESTS = [
    ["--header", f"X-Data: {SECRET}", f"https://{OTHER}:8443/x"],
    [f"https://{OTHER}:8443/exfil/{SECRET}?again={SECRET}"],
    [f"https://{RO}:8443/v2/{SECRET}"],  # quoted in the path denial's detail
    ["-d", json.dumps({"d": OTHER_SECRET}), f"https://{API}:8443/x"],
    ["-H", f"Authorization: Bearer {SECRET}", f"https://{API}:8443/x"],
    [f"https://{SECRET}.{OTHER}:8443/"],
    [f"https://{API}:8443/x?k={OTHER_SECRET}"],
]


@pytest.mark.parametrize(
    "args", NO_SECRET_REQUESTS, ids=[str(i) for i in range(len(NO_SECRET_REQUESTS))]
)
@pytest.mark.parametrize(
    "form", [["--explain"], ["--explain", "--format", "json"], []], ids=["text", "json", "plain"]
)
def test_no_secret_value_in_any_output(cfg: Path, args: list[str], form: list[str]) -> None:
    r = check("--config", str(cfg), *form, *args)
    assert r.code == 1, r.out
    assert_no_secret(r.out, r.err)
    assert "[secret:" in r.out or "secret_to_unbound_host" in r.out or "foreign_credential" in r.out
