"""Vault secrets against a real OpenBao server: auth methods, engines, rotation, outage."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.canary import CANARIES
from tests.conftest import (
    API,
    OTHER,
    RunningProxy,
    base_config,
    egress_cmd,
    proxy_env,
    start_proxy,
    write_config,
)  # fmt: skip
from tests.upstream import Upstream
from tests.vault_server import VaultServer

GH_VALUE = "vault-gh-token-0000000001"
KV1_VALUE = "vault-kv1-token-000000002"
PH = "egress-api_token-placeholder"
OTHER_PH = "sk-EGRESSPLACEHOLDEROTHER0000"
CANARIES.update({GH_VALUE, KV1_VALUE, "vault-gh-token-ROTATED-0002"})
READ_POLICY = """
path "secret/data/agent/gh" { capabilities = ["read"] }
path "kv/agent/other" { capabilities = ["read"] }
path "secret/data/agent/none" { capabilities = ["read"] }
"""


@pytest.fixture(scope="module")
def seeded(vault: VaultServer) -> VaultServer:
    vault.kv2_put("agent/gh", {"token": GH_VALUE, "unused": "x"})
    vault.kv1_put("agent/other", {"token": KV1_VALUE})
    vault.kv2_put("agent/forbidden", {"token": "nope-nope-nope"})
    vault.policy("egress-read", READ_POLICY)
    return vault


def vault_config(tmp: Path, ca_file: Path, port: int, vault: VaultServer, auth: dict[str, Any],
                 **vault_opts: Any) -> dict[str, Any]:  # fmt: skip
    cfg = base_config(tmp, ca_file, port)
    cfg["vault"] = {"address": vault.address, "ca_file": str(vault.ca_file), "auth": auth,
                    "timeout_seconds": 5, **vault_opts}  # fmt: skip
    cfg["secrets"][0]["source"] = {"vault": {"path": "agent/gh", "key": "token"}}
    cfg["secrets"][1]["source"] = {
        "vault": {"engine": "kv1", "mount": "kv", "path": "agent/other", "key": "token"}
    }
    return cfg


def get(proxy: RunningProxy, url: str, **headers: str) -> httpx.Response:
    import ssl

    with httpx.Client(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca)), timeout=20
    ) as c:
        return c.get(url, headers=headers)


def assert_injects(proxy: RunningProxy, upstream: Upstream, gh: str = GH_VALUE) -> None:
    upstream.recorder.clear()
    r = get(proxy, f"https://{API}:{upstream.port}/v", authorization=f"Bearer {PH}")
    assert r.status_code == 200, r.text
    r2 = get(proxy, f"https://{OTHER}:{upstream.port}/v1", authorization=f"Bearer {OTHER_PH}")
    assert r2.status_code == 200, r2.text
    seen = [req.headers["authorization"] for req in upstream.requests]
    assert seen == [f"Bearer {gh}", f"Bearer {KV1_VALUE}"]
    assert gh not in r.text and KV1_VALUE not in r2.text


def check_injection(tmp: Path, cfg: dict[str, Any], env: dict[str, str] | None, upstream: Upstream,
                    *never: str) -> RunningProxy:  # fmt: skip
    """Start a proxy on ``cfg``, check that both Vault secrets are injected, stop it, and check
    that none of ``never`` is in anything it wrote."""
    p = start_proxy(write_config(tmp, cfg), tmp, env)
    try:
        assert_injects(p, upstream)
    finally:
        assert p.stop() == 0
    no_leak(p, *never)
    return p


def no_leak(proxy: RunningProxy, *values: str) -> None:
    out = proxy.outputs()
    for v in values:
        assert v not in out


def test_token_auth_kv2_and_kv1_ignoring_env_proxies(tmp_path: Path, seeded: VaultServer, upstream: Upstream,
                                                     test_ca_file: Path) -> None:  # fmt: skip
    token = seeded.token(["egress-read"])
    cfg = vault_config(
        tmp_path,
        test_ca_file,
        upstream.port,
        seeded,
        {"method": "token", "token_env": "EGRESS_VAULT_TOKEN"},
    )
    # A proxy in the environment must not capture the proxy's own Vault traffic.
    env = proxy_env(
        EGRESS_VAULT_TOKEN=token, HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9"
    )
    check_injection(tmp_path, cfg, env, upstream, token, GH_VALUE, KV1_VALUE)


def test_approle_login(
    tmp_path: Path, seeded: VaultServer, upstream: Upstream, test_ca_file: Path
) -> None:
    root = seeded.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.auth.approle.create_or_update_approle(
        "egress", token_policies=["egress-read"], token_ttl="10m"
    )
    role_id = root.auth.approle.read_role_id("egress")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("egress")["data"]["secret_id"]
    (tmp_path / "secret-id").write_text(secret_id)
    auth = {"method": "approle", "role_id": role_id, "secret_id_file": str(tmp_path / "secret-id")}
    cfg = vault_config(tmp_path, test_ca_file, upstream.port, seeded, auth)
    check_injection(tmp_path, cfg, None, upstream, secret_id, GH_VALUE)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(key: ec.EllipticCurvePrivateKey, claims: dict[str, Any]) -> str:
    head = (
        b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
        + "."
        + b64url(json.dumps(claims).encode())
    )
    r, s = decode_dss_signature(key.sign(head.encode(), ec.ECDSA(hashes.SHA256())))
    return head + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


@pytest.fixture(scope="module")
def jwt_key(seeded: VaultServer) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    root = seeded.client()
    root.sys.enable_auth_method("jwt")
    root.auth.jwt.configure(jwt_validation_pubkeys=[pem.decode()], path="jwt")
    root.auth.jwt.create_role("egress", role_type="jwt", user_claim="sub", bound_audiences=["vault"], allowed_redirect_uris=[],
                              token_policies=["egress-read"], token_ttl="10m", path="jwt")  # fmt: skip
    return key


@pytest.mark.parametrize("method", ["jwt", "kubernetes"])
def test_workload_identity_login(tmp_path: Path, seeded: VaultServer, upstream: Upstream, test_ca_file: Path,
                                 jwt_key: ec.EllipticCurvePrivateKey, method: str) -> None:  # fmt: skip
    # Kubernetes auth needs a Kubernetes API server; its login request has the same shape as
    # JWT auth's (role + jwt at auth/<mount>/login), so it is checked against the JWT mount.
    now = int(time.time())
    token_file = tmp_path / "sa-token"
    token_file.write_text(make_jwt(jwt_key, {"sub": "system:serviceaccount:agents:egress", "aud": "vault",
                                             "iat": now, "nbf": now - 5, "exp": now + 600}))  # fmt: skip
    auth = {"method": method, "mount": "jwt", "role": "egress", "jwt_file": str(token_file)}
    cfg = vault_config(tmp_path, test_ca_file, upstream.port, seeded, auth)
    check_injection(tmp_path, cfg, None, upstream, token_file.read_text(), GH_VALUE)


def test_client_certificate_listener(tmp_path: Path, seeded: VaultServer, upstream: Upstream,
                                     test_ca_file: Path) -> None:  # fmt: skip
    token = seeded.token(["egress-read"])
    c = vault_config(
        tmp_path, test_ca_file, upstream.port, seeded, {"method": "token", "token_env": "T"}
    )
    c["vault"]["address"] = seeded.mtls_address
    # Without a client certificate the listener refuses the proxy: a clear start-up error.
    r = subprocess.run(egress_cmd("run", "--config", str(write_config(tmp_path, c, "nocert.yaml"))),
                       capture_output=True, text=True, env=proxy_env(T=token), timeout=60)  # fmt: skip
    assert r.returncode == 2 and f"vault at {seeded.mtls_address}" in r.stderr, r.stderr
    c["vault"].update(client_cert=str(seeded.client_cert), client_key=str(seeded.client_key))
    check_injection(tmp_path, c, proxy_env(T=token), upstream, token)


def test_no_vault_call_per_proxied_request(tmp_path: Path, seeded: VaultServer, upstream: Upstream,
                                           test_ca_file: Path) -> None:  # fmt: skip
    token = seeded.token(["egress-read"])
    cfg = vault_config(tmp_path, test_ca_file, upstream.port, seeded, {"method": "token", "token_env": "T"},
                       refresh_seconds=3600)  # fmt: skip
    p = start_proxy(write_config(tmp_path, cfg), tmp_path, proxy_env(T=token))
    try:
        assert_injects(p, upstream)  # warm
        before = seeded.audit_requests()
        for _ in range(10):
            assert_injects(p, upstream)
        assert seeded.audit_requests() == before, "a proxied request caused a Vault call"
    finally:
        assert p.stop() == 0


def test_rotation_is_picked_up_without_restart(tmp_path: Path, seeded: VaultServer, upstream: Upstream,
                                               test_ca_file: Path) -> None:  # fmt: skip
    seeded.kv2_put("agent/gh", {"token": GH_VALUE, "unused": "x"})
    token = seeded.token(["egress-read"])
    cfg = vault_config(tmp_path, test_ca_file, upstream.port, seeded, {"method": "token", "token_env": "T"},
                       refresh_seconds=1)  # fmt: skip
    p = start_proxy(write_config(tmp_path, cfg), tmp_path, proxy_env(T=token))
    rotated = "vault-gh-token-ROTATED-0002"
    try:
        assert_injects(p, upstream)
        seeded.kv2_put("agent/gh", {"token": rotated})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            upstream.recorder.clear()
            r = get(p, f"https://{API}:{upstream.port}/rot", authorization=f"Bearer {PH}")
            assert r.status_code == 200
            if upstream.requests[0].headers["authorization"] == f"Bearer {rotated}":
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the rotated value was never injected")
        # The client never sees either value, old or new (both are scrubbed).
        assert rotated not in r.text
    finally:
        seeded.kv2_put("agent/gh", {"token": GH_VALUE, "unused": "x"})
        assert p.stop() == 0
    no_leak(p, rotated, GH_VALUE)


def test_own_token_is_renewed(
    tmp_path: Path, seeded: VaultServer, upstream: Upstream, test_ca_file: Path
) -> None:
    # A token that would expire 12 s after it is made unless the proxy renews it. The proxy
    # renews at two thirds of the life left, so a shorter TTL leaves a margin (a third of it)
    # that a loaded machine can miss: 4 s (1.3 s of margin) did.
    ttl, made = 12, time.monotonic()
    token = seeded.token(["egress-read"], ttl=f"{ttl}s", renewable=True, explicit_max_ttl="1h")
    cfg = vault_config(tmp_path, test_ca_file, upstream.port, seeded, {"method": "token", "token_env": "T"},
                       refresh_seconds=1, max_stale_seconds=0)  # fmt: skip
    p = start_proxy(write_config(tmp_path, cfg), tmp_path, proxy_env(T=token))
    try:
        # Renewed: Vault records when, and the life left is longer than it would be without
        # (looked up until then, not slept past the unrenewed end: that cost 15 s).
        lookup: dict[str, Any] = {}
        while time.monotonic() < made + ttl + 3:
            lookup = seeded.client().auth.token.lookup(token)["data"]
            unrenewed = made + ttl - time.monotonic()
            if lookup.get("last_renewal_time") and lookup["ttl"] > unrenewed + 1:
                break
            time.sleep(0.25)
        else:
            raise AssertionError("the proxy did not renew its token\n" + p.stderr_path.read_text())
        assert_injects(p, upstream)  # max_stale 0: only fresh reads keep this working
    finally:
        assert p.stop() == 0


STARTUP_ERRORS = [
    # (id, change to the config, expected parts of the error)
    (
        "permission denied",
        {"path": "agent/forbidden"},
        ["api_token", "secret/data/agent/forbidden", "permission denied"],
    ),
    (
        "missing key",
        {"key": "nope"},
        [
            "api_token",
            "secret/data/agent/gh",
            "key 'nope' is not in the secret (keys: token, unused)",
        ],
    ),
    (
        "missing secret",
        {"path": "agent/none"},
        ["api_token", "secret/data/agent/none", "nothing at this path"],
    ),
]


@pytest.mark.parametrize(
    ("change", "parts"), [c[1:] for c in STARTUP_ERRORS], ids=[c[0] for c in STARTUP_ERRORS]
)
def test_startup_errors_name_secret_path_and_vault_message(
    tmp_path: Path,
    seeded: VaultServer,
    upstream: Upstream,
    test_ca_file: Path,
    change: dict,
    parts: list[str],
) -> None:
    token = seeded.token(["egress-read"])
    c = vault_config(
        tmp_path, test_ca_file, upstream.port, seeded, {"method": "token", "token_env": "T"}
    )
    c["secrets"][0]["source"]["vault"].update(change)
    r = subprocess.run(egress_cmd("run", "--config", str(write_config(tmp_path, c))), capture_output=True,
                       text=True, env=proxy_env(T=token), timeout=60)  # fmt: skip
    assert r.returncode == 2
    for part in parts:
        assert part in r.stderr, r.stderr
    assert token not in r.stderr and GH_VALUE not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ["wrong address", "bad token", "unreadable secret_id file"])
def test_startup_errors_for_connection_and_login(
    tmp_path: Path, seeded: VaultServer, upstream: Upstream, test_ca_file: Path, case: str
) -> None:
    auth: dict[str, Any] = {"method": "token", "token_env": "T"}
    if case == "unreadable secret_id file":
        auth = {"method": "approle", "role_id": "x", "secret_id_file": str(tmp_path / "missing")}
    c = vault_config(tmp_path, test_ca_file, upstream.port, seeded, auth)
    if case == "wrong address":
        c["vault"]["address"] = "https://127.0.0.1:9"
    token = "s.not-a-real-token-0000" if case == "bad token" else seeded.token(["egress-read"])
    r = subprocess.run(egress_cmd("run", "--config", str(write_config(tmp_path, c))), capture_output=True,
                       text=True, env=proxy_env(T=token), timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stderr
    expected = {"wrong address": "cannot connect to https://127.0.0.1:9",
                "bad token": "permission denied",
                "unreadable secret_id file": "cannot read the AppRole secret_id file"}[case]  # fmt: skip
    assert expected in r.stderr and "needed for secrets: api_token, other_token" in r.stderr, (
        r.stderr
    )
    assert token not in r.stderr and "Traceback" not in r.stderr


def wait_for_status(proxy: RunningProxy, upstream: Upstream, server: VaultServer, path: str,
                    status: int, seconds: float = 60) -> httpx.Response:  # fmt: skip
    """Ask for ``path`` with the placeholder until the answer has ``status``; fail clearly."""
    deadline = time.monotonic() + seconds
    while True:
        upstream.recorder.clear()
        r = get(proxy, f"https://{API}:{upstream.port}{path}", authorization=f"Bearer {PH}")
        if r.status_code == status:
            return r
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no {status} for {path} within {seconds:.0f} s (last: {r.status_code} {r.text!r})"
                f"\nproxy stderr:\n{proxy.stderr_path.read_text()}\nOpenBao log tail:\n"
                f"{server.log_tail()}"
            )
        time.sleep(0.5)


def test_outage_serves_stale_then_fails_closed_then_recovers(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path, test_ca: trustme.CA
) -> None:
    server = VaultServer(tmp_path / "bao", test_ca)
    try:
        server.start()  # returns once unsealed, active and writable
        server.kv2_put("agent/gh", {"token": GH_VALUE})
        server.kv1_put("agent/other", {"token": KV1_VALUE})
        server.policy("egress-read", READ_POLICY)
        token = server.token(["egress-read"])
        cfg = vault_config(tmp_path, test_ca_file, upstream.port, server, {"method": "token", "token_env": "T"},
                           refresh_seconds=1, retry_seconds=1, max_stale_seconds=4)  # fmt: skip
        p = start_proxy(write_config(tmp_path, cfg), tmp_path, proxy_env(T=token))
        try:
            assert_injects(p, upstream)
            server.stop(crash=True)
            # Within max_stale: the last good value is still injected.
            assert_injects(p, upstream)
            # Past max_stale: fail closed with a 503 naming the secret; never sent upstream.
            r = wait_for_status(p, upstream, server, "/out", 503)
            assert r.headers["x-egress-reason"] == "secret_unavailable"
            assert "api_token" in r.text and upstream.requests == []
            # Requests that need no secret keep working.
            assert get(p, f"https://{API}:{upstream.port}/free").status_code == 200
            # Back with its data (start waits until it is the active leader and writable);
            # the proxy recovers on its next retry.
            server.start()
            wait_for_status(p, upstream, server, "/back", 200)
            assert_injects(p, upstream)
        finally:
            assert p.stop() == 0
        err = p.stderr_path.read_text()
        assert err.count("serving last good values") == 1, err
        assert "stale past max_stale (4 s)" in err and "answering again" in err, err
        no_leak(p, token, GH_VALUE, KV1_VALUE)
    finally:
        server.stop()  # whatever happened: no bao server outlives the test


@pytest.fixture
def postgres() -> Any:
    from tests.postgres_server import PostgresServer, pg_bindir

    if pg_bindir() is None:
        pytest.skip(
            "PostgreSQL server binaries are not installed (apt-get install postgresql; .ci/run does)"
        )
    server = PostgresServer()
    try:
        server.start()  # returns once a password login works; cleans up if it fails
        yield server
    finally:
        server.stop()  # kills what is left of it and waits, whatever happened


def _database_role(seeded: VaultServer, postgres: Any) -> str:
    """The database engine on the real OpenBao, issuing Postgres roles for 6 s leases; a
    token that may read them and renew and revoke its leases."""
    from tests.postgres_server import SUPERUSER_PASSWORD

    root = seeded.client()
    if "database/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("database")
    root.secrets.database.configure(
        name="pg", plugin_name="postgresql-database-plugin", allowed_roles=["agent-ro"],
        connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{postgres.port}/postgres?sslmode=disable",
        username="postgres", password=SUPERUSER_PASSWORD,
    )  # fmt: skip
    root.secrets.database.create_role(
        name="agent-ro", db_name="pg", default_ttl="6s", max_ttl="1h",
        creation_statements=["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
    )  # fmt: skip
    seeded.policy("egress-db", READ_POLICY + """
path "database/creds/agent-ro" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
""")  # fmt: skip
    return seeded.token(["egress-db"])


def test_dynamic_lease_renewed_and_revoked_on_shutdown(
    tmp_path: Path, seeded: VaultServer, upstream: Upstream, test_ca_file: Path, postgres: Any
) -> None:
    token = _database_role(seeded, postgres)
    cfg = vault_config(tmp_path, test_ca_file, upstream.port, seeded, {"method": "token", "token_env": "T"},
                       max_stale_seconds=0)  # fmt: skip
    cfg["secrets"][0]["source"] = {
        "vault": {"engine": "read", "path": "database/creds/agent-ro", "key": "password"}
    }
    # A secret of several parts (an aws_sigv4 secret whose parts are a database login: the
    # shape of Vault's aws/creds answer, two keys under one lease) is one read, one lease.
    cfg["allow"].append({"host": "s3.us-east-1.amazonaws.com"})
    cfg["secrets"].append({"name": "aws_db", "scheme": "aws_sigv4", "hosts": ["s3.us-east-1.amazonaws.com"],
                           "source": {"vault": {"engine": "read", "path": "database/creds/agent-ro",
                                                "keys": {"access_key_id": "username",
                                                         "secret_access_key": "password"}}}})  # fmt: skip
    p = start_proxy(write_config(tmp_path, cfg), tmp_path, proxy_env(T=token))
    try:
        roles = postgres.dynamic_roles()  # made by Vault for this proxy, at start-up
        assert len(roles) == 2  # one per secret: the two-part one read once
        upstream.recorder.clear()
        assert (
            get(p, f"https://{API}:{upstream.port}/db", authorization=f"Bearer {PH}").status_code
            == 200
        )
        password = upstream.requests[0].headers["authorization"].removeprefix("Bearer ")
        (role,) = [
            r for r in roles if postgres.psql("SELECT 1", user=r, password=password).returncode == 0
        ]
        # Past the 6 s lease: the proxy renewed it, so the same credential still works.
        time.sleep(8)
        assert postgres.psql("SELECT 1", user=role, password=password).stdout.strip() == "1"
        valid = postgres.psql(
            "SELECT bool_and(rolvaliduntil > now()) FROM pg_roles WHERE rolname LIKE 'v-%'"
        )
        assert valid.stdout.strip() == "t", valid  # both leases renewed, the two-part one too
        upstream.recorder.clear()
        assert (
            get(p, f"https://{API}:{upstream.port}/db2", authorization=f"Bearer {PH}").status_code
            == 200
        )
        assert upstream.requests[0].headers["authorization"] == f"Bearer {password}"
        assert sorted(postgres.dynamic_roles()) == sorted(roles)  # renewed, never read again
        # SIGTERM: the proxy revokes its leases; Vault drops the database roles.
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(timeout=30) == 0
        assert postgres.dynamic_roles() == []
        assert postgres.psql("SELECT 1", user=role, password=password).returncode != 0
    finally:
        p.stop()
    assert password not in p.outputs()
    assert "revoked the lease of secret aws_db" in p.stderr_path.read_text()
    assert "revoked the lease of secret api_token" in p.stderr_path.read_text()
