"""The ``vault:`` section: address, TLS, auth method and timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from egress.config.checker import Checker, opt_file_path
from egress.config.model import K8S_TOKEN_FILE, VAULT_AUTH_METHODS, VaultAuth, VaultConfig


def parse_vault(c: Checker, node: Any, base: Path) -> VaultConfig | None:
    known = (
        "address", "namespace", "ca_file", "client_cert", "client_key", "timeout_seconds",
        "auth", "refresh_seconds", "retry_seconds", "max_stale_seconds", "revoke_on_shutdown",
    )  # fmt: skip
    m = c.mapping(node, "vault", known)
    if m is None:
        return None
    start = len(c.problems)
    address = c.typed(m, "vault", "address", str, None)
    if address is not None and not address.startswith(("https://", "http://")):
        c.err("vault.address", f"{address!r} must be a URL such as https://vault.example:8200")
    timeout = c.typed(m, "vault", "timeout_seconds", (int, float), 5)
    if timeout <= 0:
        c.err("vault.timeout_seconds", "must be more than 0")
    ints = {}
    for name, default, low in (("refresh_seconds", 300, 1), ("retry_seconds", 5, 1),
                               ("max_stale_seconds", 3600, 0)):  # fmt: skip
        ints[name] = c.typed(m, "vault", name, int, default)
        if ints[name] < low:
            c.err(f"vault.{name}", f"must be at least {low}")
    cert = opt_file_path(c, m, "vault", "client_cert", base)
    ckey = opt_file_path(c, m, "vault", "client_key", base)
    if (cert is None) != (ckey is None):
        c.err(
            "vault.client_key" if cert else "vault.client_cert",
            "client_cert and client_key go together",
        )
    auth = _parse_vault_auth(c, m.get("auth"), base)
    if len(c.problems) > start or auth is None:
        return None
    return VaultConfig(
        address=address.rstrip("/") if address else None,
        namespace=c.typed(m, "vault", "namespace", str, None),
        ca_file=opt_file_path(c, m, "vault", "ca_file", base),
        client_cert=cert,
        client_key=ckey,
        timeout_seconds=float(timeout),
        auth=auth,
        refresh_seconds=ints["refresh_seconds"],
        retry_seconds=ints["retry_seconds"],
        max_stale_seconds=ints["max_stale_seconds"],
        revoke_on_shutdown=c.typed(m, "vault", "revoke_on_shutdown", bool, True),
    )


_AUTH_KEYS = {
    "token": ("token_file", "token_env"),
    "approle": ("role_id", "secret_id_file"),
    "kubernetes": ("role", "jwt_file"),
    "jwt": ("role", "jwt_file"),
}


def _parse_vault_auth(c: Checker, node: Any, base: Path) -> VaultAuth | None:
    key = "vault.auth"
    if node is None:
        node = {"method": "token"}
    m = c.mapping(
        node, key, ("method", "mount", *sorted({k for ks in _AUTH_KEYS.values() for k in ks}))
    )
    if m is None:
        return None
    method = c.choice(m, key, "method", VAULT_AUTH_METHODS, "token")
    if method is None:
        return None
    for k in m:
        if (
            k not in ("method", "mount")
            and k not in _AUTH_KEYS[method]
            and k in {x for v in _AUTH_KEYS.values() for x in v}
        ):
            c.err(
                f"{key}.{k}",
                f"does not go with method {method!r} (it takes {', '.join(_AUTH_KEYS[method])})",
            )
    mount = c.typed(m, key, "mount", str, method).strip("/")
    if method == "token":
        if "token_file" in m and "token_env" in m:
            c.err(key, "give token_file or token_env, not both")
        return VaultAuth(method, mount, token_file=opt_file_path(c, m, key, "token_file", base),
                         token_env=c.typed(m, key, "token_env", str, None))  # fmt: skip
    if method == "approle":
        for k in ("role_id", "secret_id_file"):
            if k not in m:
                c.err(f"{key}.{k}", "is required with method 'approle'")
        return VaultAuth(method, mount, role_id=c.typed(m, key, "role_id", str, None),
                         secret_id_file=opt_file_path(c, m, key, "secret_id_file", base))  # fmt: skip
    if "role" not in m:
        c.err(f"{key}.role", f"is required with method {method!r}")
    jwt_file = opt_file_path(c, m, key, "jwt_file", base)
    if jwt_file is None:
        if method == "jwt":
            c.err(f"{key}.jwt_file", "is required with method 'jwt'")
        jwt_file = Path(K8S_TOKEN_FILE)
    return VaultAuth(method, mount, role=c.typed(m, key, "role", str, None), jwt_file=jwt_file)
