"""The ``mint:`` block of a secret: a token egress obtains from a token endpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from egress.config.checker import Checker, file_path
from egress.config.model import MINT_ROLES, MINT_TYPES, MintSpec

_PERMISSION = ("read", "write", "admin")
_REPO = re.compile(r"^[A-Za-z0-9._-]{1,100}(/[A-Za-z0-9._-]{1,100})?$")


def _https(c: Checker, key: str, url: str | None, allow_http: bool) -> None:
    if url is None:
        return
    if not (url.startswith("https://") or (allow_http and url.startswith("http://"))) or " " in url:
        c.err(key, f"{url!r} must be an https:// URL (the long-lived credential travels to it)")


def parse_mint(c: Checker, node: Any, key: str, base: Path) -> MintSpec | None:
    known = ("type", "token_url", "scopes", "audience", "client_auth", "app_id", "installation_id",
             "repositories", "permissions", "api_url", "refresh_before_seconds",
             "expiry_margin_seconds", "min_refresh_interval_seconds", "retry_seconds", "store")  # fmt: skip
    m = c.mapping(node, key, known, ("type",))
    if m is None:
        return None
    start = len(c.problems)
    kind = c.choice(m, key, "type", MINT_TYPES, "oauth_client_credentials")
    token_url = c.typed(m, key, "token_url", str, None)
    _https(c, f"{key}.token_url", token_url, False)
    if kind in ("oauth_client_credentials", "oauth_refresh_token") and token_url is None:
        c.err(f"{key}.token_url", f"is required with type {kind}: the OAuth token endpoint")
    scopes = c.str_list(m, key, "scopes") or []
    if kind == "google_service_account" and not scopes:
        c.err(f"{key}.scopes", "is required with type google_service_account (e.g. "
              "https://www.googleapis.com/auth/cloud-platform)")  # fmt: skip
    client_auth = c.choice(m, key, "client_auth", ("basic", "post"), "basic")
    github = ("app_id", "installation_id", "repositories", "permissions", "api_url")
    app_id = installation_id = None
    repositories: list[str] = []
    permissions: list[tuple[str, str]] = []
    api_url = c.typed(m, key, "api_url", str, "https://api.github.com")
    if kind == "github_app":
        app_id = m.get("app_id")
        if isinstance(app_id, bool) or not isinstance(app_id, int | str) or not str(app_id).strip():
            c.err(f"{key}.app_id", "is required with type github_app: the App's id (or client id)")
        installation_id = c.typed(m, key, "installation_id", int, None)
        if installation_id is None:
            c.err(f"{key}.installation_id", "is required with type github_app")
        repositories = c.str_list(m, key, "repositories") or []
        for j, r in enumerate(repositories):
            if not _REPO.match(r):
                c.err(f"{key}.repositories[{j}]", f"{r!r} is not a repository name")
        node_p = m.get("permissions") or {}
        if not isinstance(node_p, dict):
            c.err(f"{key}.permissions", "must be a mapping of permission: read|write|admin")
            node_p = {}
        for name, level in node_p.items():
            if level not in _PERMISSION:
                c.err(f"{key}.permissions.{name}", f"{level!r} is not one of read, write, admin")
            else:
                permissions.append((str(name), str(level)))
        _https(c, f"{key}.api_url", api_url, False)
    else:
        for k in github:
            if k in m:
                c.err(f"{key}.{k}", "goes with type github_app only")
    if kind == "github_app" and token_url is not None:
        c.err(f"{key}.token_url", "does not go with github_app: the endpoint is made from api_url")
    ints = {}
    for name, default, low in (("refresh_before_seconds", 300, 0), ("expiry_margin_seconds", 30, 1),
                               ("min_refresh_interval_seconds", 30, 1), ("retry_seconds", 5, 1)):  # fmt: skip
        value = c.typed(m, key, name, int, default)
        if value is not None and value < low:
            c.err(f"{key}.{name}", f"must be at least {low}")
        ints[name] = value
    store = c.typed(m, key, "store", str, None)
    if store is not None and kind != "oauth_refresh_token":
        c.err(f"{key}.store", "goes with type oauth_refresh_token only (where the rotated "
              "refresh token is kept)")  # fmt: skip
    if len(c.problems) > start or kind is None or client_auth is None:
        return None
    return MintSpec(
        type=kind, token_url=token_url, scopes=tuple(scopes), audience=c.typed(m, key, "audience", str, None),
        client_auth=client_auth, app_id=str(app_id) if app_id is not None else None,
        installation_id=installation_id, repositories=tuple(repositories),
        permissions=tuple(permissions), api_url=api_url,
        refresh_before_seconds=ints["refresh_before_seconds"],
        expiry_margin_seconds=ints["expiry_margin_seconds"],
        min_refresh_interval_seconds=ints["min_refresh_interval_seconds"],
        retry_seconds=ints["retry_seconds"],
        store=file_path(base, store) if store else None,
    )  # fmt: skip


def mint_roles(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(required, optional) parts a mint type reads with ``keys``; None: one value (``key``)."""
    return MINT_ROLES.get(kind)
