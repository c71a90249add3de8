"""The vault section's validation, and VAULT_* fallbacks: pure, no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress import config
from egress.errors import ConfigError
from egress.trust import system_trust_bundle
from egress.vault import VaultError, connection_settings

BASE = "allow: [a.test]\nsecrets:\n  - {name: t, hosts: [a.test], source: {vault: {path: app/t, key: token}}}\n"

BAD = [
    ("vault:\n  adress: https://v\n", "vault.adress: unknown key: did you mean 'address'?"),
    ("vault:\n  address: v.example:8200\n", "vault.address: 'v.example:8200' must be a URL"),
    (
        "vault:\n  auth: {method: ldap}\n",
        "vault.auth.method: 'ldap' is not one of token, approle, kubernetes, jwt",
    ),
    (
        "vault:\n  auth: {method: approle, role_id: r}\n",
        "vault.auth.secret_id_file: is required with method 'approle'",
    ),
    (
        "vault:\n  auth: {method: jwt, role: r}\n",
        "vault.auth.jwt_file: is required with method 'jwt'",
    ),
    (
        "vault:\n  auth: {method: kubernetes}\n",
        "vault.auth.role: is required with method 'kubernetes'",
    ),
    (
        "vault:\n  auth: {method: token, role: r}\n",
        "vault.auth.role: does not go with method 'token'",
    ),
    ("vault:\n  client_cert: c.pem\n", "vault.client_key: client_cert and client_key go together"),
    ("vault:\n  max_stale_seconds: -1\n", "vault.max_stale_seconds: must be at least 0"),
    ("vault:\n  timeout_seconds: fast\n", "vault.timeout_seconds: must be a number, not a string"),
    ("vault:\n  timeout_seconds: 0\n", "vault.timeout_seconds: must be more than 0"),
]


@pytest.mark.parametrize(("extra", "expected"), BAD, ids=[b[1].split(":")[0] for b in BAD])
def test_bad_vault_section(tmp_path: Path, extra: str, expected: str) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(BASE + extra)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert f"{path}: {expected}" in str(e.value)


BAD_SOURCES = [
    ("{vault: {path: a}}", "secrets[0].source.vault.key: is required"),
    (
        "{vault: {path: a, key: k, engine: kv3}}",
        "secrets[0].source.vault.engine: 'kv3' is not one of kv2, kv1, read",
    ),
    (
        "{vault: {path: a, key: k, engine: read, mount: m}}",
        "secrets[0].source.vault.mount: goes with kv2/kv1 only",
    ),
    ("{vault: {path: a, key: k}, key: k}", "secrets[0].source.key: goes inside 'vault:'"),
]


@pytest.mark.parametrize(("source", "expected"), BAD_SOURCES)
def test_bad_vault_source(tmp_path: Path, source: str, expected: str) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(
        f"allow: [a.test]\nsecrets:\n  - {{name: t, hosts: [a.test], source: {source}}}\n"
    )
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert expected in str(e.value)


@pytest.mark.parametrize(
    ("source", "api_path"),
    [("{path: app/t, key: k}", "secret/data/app/t"), ("{engine: kv1, path: app/t, key: k}", "kv/app/t"),
     ("{mount: team-kv, path: /app/t/, key: k}", "team-kv/data/app/t"),
     ("{engine: read, path: database/creds/ro, key: password}", "database/creds/ro")],
)  # fmt: skip
def test_vault_paths(tmp_path: Path, source: str, api_path: str) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(
        f"allow: [a.test]\nsecrets:\n  - {{name: t, hosts: [a.test], source: {{vault: {source}}}}}\n"
    )
    cfg = config.load(path)
    assert cfg.secrets[0].source.vault_path == api_path
    assert cfg.vault is not None and cfg.vault.auth.method == "token"  # no vault section: defaults


def test_config_wins_over_vault_env(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(BASE + "vault:\n  address: https://from-config:8200\n  ca_file: ca.pem\n")
    cfg = config.load(path).vault
    assert cfg is not None
    env = {"VAULT_ADDR": "https://from-env:8200", "VAULT_CACERT": "/env/ca.pem", "VAULT_NAMESPACE": "team",
           "VAULT_CLIENT_CERT": "/env/c.pem", "VAULT_CLIENT_KEY": "/env/k.pem"}  # fmt: skip
    c = connection_settings(cfg, env)
    assert (c.address, c.verify, c.namespace, c.cert) == (
        "https://from-config:8200",
        str(tmp_path / "ca.pem"),
        "team",
        ("/env/c.pem", "/env/k.pem"),
    )


def test_vault_env_fills_what_config_leaves_out(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(BASE)
    cfg = config.load(path).vault
    assert cfg is not None
    c = connection_settings(cfg, {"VAULT_ADDR": "https://v:8200/"})
    # No CA file anywhere: the system store, as for upstreams.
    assert (c.address, c.verify, c.cert, c.timeout) == (
        "https://v:8200",
        str(system_trust_bundle()),
        None,
        5.0,
    )
    with pytest.raises(VaultError, match=r"vault.address is not set and \$VAULT_ADDR is empty"):
        connection_settings(cfg, {})


def test_the_refresher_thread_survives_unexpected_errors() -> None:
    """If the background thread died, secrets would silently stop being renewed."""
    import threading
    import time

    from egress.vault import VaultRefresher

    class Flaky(VaultRefresher):
        TICK = 0.01

        def __init__(self) -> None:  # no Vault needed: only the loop is under test
            self._stop, self.errors, self.ticks = threading.Event(), 0, 0
            self._thread = threading.Thread(target=self._run, daemon=True)

        def tick(self) -> None:
            self.ticks += 1
            if self.ticks <= 2:
                raise TypeError("unexpected answer")

    r = Flaky()
    r._thread.start()
    deadline = time.monotonic() + 5
    while r.ticks < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    r._stop.set()
    r._thread.join()
    assert r.ticks >= 5 and r.errors == 2
