"""Minted tokens end to end: a real ``egress run`` mints from real token endpoints on
loopback (tests/token_server.py: authlib's OAuth server, a Google jwt-bearer endpoint, a
GitHub App stand-in that checks the app JWT) and injects the token where the agent sends
its placeholder. The resource API accepts only live tokens it issued, so its 200 is the
proof of injection; its echo of the request headers comes back scrubbed.

Covered: OAuth client credentials, refresh token with rotation kept in a file across a
restart, Google service account, GitHub App (repositories and permissions as configured);
proactive refresh of short-lived tokens, a token endpoint outage (served until shortly
before expiry, then 503 secret_unavailable, then recovery), a 401 from the upstream
asking for exactly one new token (rate-limited), and canaries for every credential.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml

from tests.canary import CANARIES
from tests.conftest import RunningProxy, base_config, proxy_env, start_proxy, write_config

pytest.importorskip("authlib")
from tests.token_server import TokenServer  # noqa: E402

AUTH, API_HOST, GITHUB = "auth.egress.test", "api.mint.test", "github.egress.test"
PH = "egress-minted-placeholder-0001"


@pytest.fixture
def server(test_ca: trustme.CA) -> Iterator[TokenServer]:
    srv = TokenServer(test_ca)
    srv.start()
    try:
        yield srv
    finally:
        CANARIES.update(srv.secret_values())
        srv.stop()


def mint_config(
    tmp: Path, ca_file: Path, srv: TokenServer, secret: dict[str, Any]
) -> dict[str, Any]:
    cfg = base_config(tmp, ca_file, srv.port)
    cfg["allow"].append({"host": API_HOST, "ports": [srv.port]})
    for name in (AUTH, API_HOST, GITHUB):
        cfg["upstream"]["resolve"][name] = "127.0.0.1"
    cfg["secrets"].append({"name": "minted", "hosts": [API_HOST], "placeholder": PH, **secret})
    return cfg


def start(tmp: Path, cfg: dict[str, Any], **env: str) -> RunningProxy:
    return start_proxy(write_config(tmp, cfg), tmp, env=proxy_env(**env))


def call(p: RunningProxy, srv: TokenServer, scheme: str = "Bearer") -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(p.ca))
    with httpx.Client(proxy=p.url, verify=ctx, timeout=20) as c:
        return c.get(srv.whoami_url, headers={"Authorization": f"{scheme} {PH}"})


def stop_clean(p: RunningProxy) -> None:
    assert p.stop() == 0, p.stderr_path.read_text()
    assert "Traceback" not in p.stderr_path.read_text()


def assert_nothing_leaked(p: RunningProxy, srv: TokenServer, *extra: str) -> None:
    out = p.outputs()
    for value in (*srv.secret_values(), *extra):
        assert value not in out, "a credential reached egress's output"


def client_credentials(srv: TokenServer, **mint: Any) -> dict[str, Any]:
    srv.add_client("egress-cc", "cc-client-secret-0123456789", scopes=("read",))
    CANARIES.add("cc-client-secret-0123456789")
    return {"source": {"env": {"client_id": "MINT_ID", "client_secret": "MINT_SECRET"}},
            "mint": {"type": "oauth_client_credentials", "token_url": srv.token_url,
                     "scopes": ["read"], **mint}}  # fmt: skip


CC_ENV = {"MINT_ID": "egress-cc", "MINT_SECRET": "cc-client-secret-0123456789"}


def test_client_credentials_injected_and_scrubbed(
    tmp_path: Path, test_ca_file: Path, server: TokenServer
) -> None:
    p = start(
        tmp_path, mint_config(tmp_path, test_ca_file, server, client_credentials(server)), **CC_ENV
    )
    try:
        r = call(p, server)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_kind"] == "client_credentials" and body["client_id"] == "egress-cc"
        # The API echoes the Authorization it received: the agent sees the placeholder.
        assert body["echo_headers"]["authorization"] == f"Bearer {PH}"
        assert server.counts["client_credentials"] == 1  # minted once, at start
        sent = server.requests[0]
        assert sent.headers["authorization"].startswith("Basic ") and sent.body["scope"] == "read"
        assert call(p, server, "token").status_code == 200  # `token <placeholder>` too
        assert server.counts["client_credentials"] == 1  # cached, not minted per request
        assert p.audit()[-1]["secrets"] == ["minted"]
    finally:
        stop_clean(p)
    assert_nothing_leaked(p, server)


def test_short_tokens_are_minted_again_before_they_expire(
    tmp_path: Path, test_ca_file: Path, server: TokenServer
) -> None:
    server.token_ttl = 2
    p = start(
        tmp_path, mint_config(tmp_path, test_ca_file, server, client_credentials(server)), **CC_ENV
    )
    try:
        for _ in range(4):  # 4.5 s: two token lifetimes
            assert call(p, server).status_code == 200
            time.sleep(1.5)
        assert server.counts["client_credentials.issued"] >= 3
        assert server.counts["api.rejected"] == 0  # never an expired token sent
    finally:
        stop_clean(p)


def test_outage_serves_until_expiry_then_503_then_recovers(
    tmp_path: Path, test_ca_file: Path, server: TokenServer
) -> None:
    server.token_ttl = 4
    cfg = mint_config(
        tmp_path,
        test_ca_file,
        server,
        client_credentials(server, retry_seconds=1, expiry_margin_seconds=1),
    )
    p = start(tmp_path, cfg, **CC_ENV)
    try:
        server.outage = True
        assert call(p, server).status_code == 200  # the current token is still good
        deadline = time.monotonic() + 15
        while (r := call(p, server)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert r.status_code == 503 and r.headers["x-egress-reason"] == "secret_unavailable", r.text
        assert server.counts["api.rejected"] == 0  # dropped before it expired: never sent stale
        server.outage = False
        deadline = time.monotonic() + 15
        while (r := call(p, server)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert r.status_code == 200
        log = p.stderr_path.read_text()
        assert "token endpoint" in log and "503" in log
    finally:
        stop_clean(p)
    assert_nothing_leaked(p, server)


def test_a_401_asks_for_one_new_token(
    tmp_path: Path, test_ca_file: Path, server: TokenServer
) -> None:
    cfg = mint_config(
        tmp_path, test_ca_file, server, client_credentials(server, min_refresh_interval_seconds=30)
    )
    p = start(tmp_path, cfg, **CC_ENV)
    try:
        assert call(p, server).status_code == 200
        server.revoke_all_access_tokens()  # revoked long before it expires
        assert call(p, server).status_code == 401  # the agent sees the upstream's answer
        deadline = time.monotonic() + 10
        while server.counts["client_credentials"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert call(p, server).status_code == 200  # its retry carries the new token
        server.revoke_all_access_tokens()
        for _ in range(5):  # a flood of 401s within min_refresh_interval_seconds
            assert call(p, server).status_code == 401
        time.sleep(1)
        assert server.counts["client_credentials"] == 2  # one at start, one forced
    finally:
        stop_clean(p)


def test_refresh_token_rotation_survives_a_restart(
    tmp_path: Path, test_ca_file: Path, server: TokenServer
) -> None:
    server.add_client("egress-rt", "rt-client-secret-9876543210")
    first = server.issue_refresh_token("egress-rt")
    CANARIES.update({first, "rt-client-secret-9876543210"})
    store = tmp_path / "refresh-token"
    secret = {"source": {"env": {"client_id": "RT_ID", "client_secret": "RT_SECRET", "refresh_token": "RT_TOKEN"}},
              "mint": {"type": "oauth_refresh_token", "token_url": server.token_url, "client_auth": "post",
                       "store": str(store)}}  # fmt: skip
    env = {"RT_ID": "egress-rt", "RT_SECRET": "rt-client-secret-9876543210", "RT_TOKEN": first}
    for run in (1, 2):  # the second start must use the rotated token: the first is revoked
        d = tmp_path / f"run{run}"
        d.mkdir()
        p = start(d, mint_config(d, test_ca_file, server, secret), **env)
        try:
            assert call(p, server).status_code == 200
            rotated = store.read_text().strip()
            assert rotated and rotated != first and oct(store.stat().st_mode & 0o777) == "0o600"
            assert server.requests[-1].body.get("client_secret") == "rt-client-secret-9876543210"
        finally:
            stop_clean(p)
        assert_nothing_leaked(p, server, first, rotated)
    assert (
        server.counts["refresh_token.issued"] == 2 and server.counts["refresh_token.rejected"] == 0
    )


def test_google_service_account(tmp_path: Path, test_ca_file: Path, server: TokenServer) -> None:
    info = server.add_service_account()
    key_file = tmp_path / "sa.yaml"
    key_file.write_text(yaml.safe_dump({"sa": json.dumps(info)}))
    key_file.chmod(0o600)
    CANARIES.add(info["private_key"])
    secret = {"source": {"file": str(key_file), "key": "sa"},
              "mint": {"type": "google_service_account", "token_url": server.token_url,
                       "scopes": ["https://www.googleapis.com/auth/devstorage.read_only"]}}  # fmt: skip
    p = start(tmp_path, mint_config(tmp_path, test_ca_file, server, secret))
    try:
        r = call(p, server)
        assert r.status_code == 200 and r.json()["token_kind"] == "jwt_bearer", r.text
        claims = server.requests[-1].claims
        assert (
            claims["aud"] == "https://oauth2.googleapis.com/token"
            and claims["iss"] == info["client_email"]
        )
        assert server.requests[-1].jwt_header["kid"] == info["private_key_id"]
    finally:
        stop_clean(p)
    assert_nothing_leaked(p, server)


def test_github_app_installation_token(
    tmp_path: Path, test_ca_file: Path, server: TokenServer
) -> None:
    pem = server.add_github_app(4242, 77, permissions={"contents": "write", "metadata": "read"},
                                repositories=["octo/hello", "octo/world"])  # fmt: skip
    key_file = tmp_path / "app.yaml"
    key_file.write_text(yaml.safe_dump({"key": pem}))
    key_file.chmod(0o600)
    secret = {"source": {"file": str(key_file), "key": "key"},
              "mint": {"type": "github_app", "app_id": 4242, "installation_id": 77,
                       "api_url": server.github_api_url, "repositories": ["octo/hello"],
                       "permissions": {"contents": "read"}}}  # fmt: skip
    p = start(tmp_path, mint_config(tmp_path, test_ca_file, server, secret))
    try:
        r = call(p, server, "token")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_kind"] == "github_app" and body["permissions"] == {"contents": "read"}
        assert body["repositories"] == ["octo/hello"]
        sent = server.requests[-1]
        assert sent.body == {"repositories": ["octo/hello"], "permissions": {"contents": "read"}}
        assert sent.claims["iss"] == "4242" and sent.claims["exp"] - sent.claims["iat"] <= 600
    finally:
        stop_clean(p)
    assert_nothing_leaked(p, server)


def test_start_fails_clearly_when_the_endpoint_refuses(
    tmp_path: Path, test_ca_file: Path, server: TokenServer
) -> None:
    cfg = mint_config(tmp_path, test_ca_file, server, client_credentials(server))
    with pytest.raises(AssertionError) as e:
        start(tmp_path, cfg, MINT_ID="egress-cc", MINT_SECRET="wrong-secret-value-000000")
    text = str(e.value)
    assert "secret 'minted'" in text and "answered 401 (invalid_client)" in text, text
    assert "wrong-secret-value-000000" not in text
