"""The egress config file: schema, validation and the typed objects the rest of egress uses.

Validation collects every problem in the file and reports each as
``<file>: <key path>: <what is wrong>``; unknown keys are errors with a suggestion.
Paths in the file are relative to the file's own folder.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import yaml

from egress.errors import ConfigError, ConfigProblem, InvalidHost
from egress.grammar import fold_name
from egress.hostnames import HostPattern, IPNetwork, canonical_host, is_ip, parse_host_pattern

SCHEMES = ("https", "http")
DEFAULT_PORTS = {"https": 443, "http": 80}
SURFACES = ("headers", "query", "body")
_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]*$")
_SECRET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Placeholders use URL-unreserved characters only, so that they survive every surface
# (header, query, form and JSON body) unencoded and can be found by a plain byte search.
_PLACEHOLDER = re.compile(r"^[A-Za-z0-9._~-]{8,256}$")
EMBEDDED_DEFAULT = "<embedded default config>"


@dataclass(frozen=True)
class Rule:
    index: int  # position under allow:, for messages ("allow[3]")
    host: HostPattern
    ports: tuple[int, ...]
    schemes: tuple[str, ...]
    methods: tuple[str, ...] | None  # None: any method
    paths: tuple[str, ...] | None  # None: any path
    websocket: bool = False  # allow WebSocket upgrades

    @property
    def label(self) -> str:
        return f"allow[{self.index}]"


VAULT_ENGINES = ("kv2", "kv1", "read")
VAULT_AUTH_METHODS = ("token", "approle", "kubernetes", "jwt")
K8S_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 (a path)


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "env" | "file" | "vault"
    env: str | None = None
    file: Path | None = None
    key: str | None = None
    mount: str | None = None  # vault: the secrets engine's mount (kv2/kv1)
    path: str | None = None  # vault: path under the mount, or the full read path
    engine: str = "kv2"  # vault: kv2 | kv1 | read

    def describe(self) -> str:
        if self.kind == "env":
            return f"env:{self.env}"
        if self.kind == "vault":
            return f"vault:{self.vault_path}#{self.key}"
        return f"file:{self.file}#{self.key}"

    @property
    def vault_path(self) -> str:
        """The path as Vault's API sees it (for messages and policies)."""
        if self.engine == "kv2":
            return f"{self.mount}/data/{self.path}"
        if self.engine == "kv1":
            return f"{self.mount}/{self.path}"
        return str(self.path)


@dataclass(frozen=True)
class VaultAuth:
    method: str  # token | approle | kubernetes | jwt
    mount: str
    token_file: Path | None = None  # token: a file holding the token
    token_env: str | None = None  # token: the variable holding it (default VAULT_TOKEN)
    role_id: str | None = None  # approle
    secret_id_file: Path | None = None  # approle
    role: str | None = None  # kubernetes, jwt
    jwt_file: Path | None = None  # kubernetes, jwt: re-read at every login


@dataclass(frozen=True)
class VaultConfig:
    address: str | None  # None: $VAULT_ADDR
    namespace: str | None  # None: $VAULT_NAMESPACE
    ca_file: Path | None  # None: $VAULT_CACERT, else the system store
    client_cert: Path | None  # None: $VAULT_CLIENT_CERT
    client_key: Path | None  # None: $VAULT_CLIENT_KEY
    timeout_seconds: float
    auth: VaultAuth
    refresh_seconds: int  # re-read interval for KV secrets
    retry_seconds: int  # retry interval while Vault fails
    max_stale_seconds: int  # serve the last good value this long during an outage
    revoke_on_shutdown: bool


@dataclass(frozen=True)
class SecretSpec:
    index: int
    name: str
    source: SourceSpec
    hosts: tuple[HostPattern, ...]
    placeholder: str
    env: str | None
    surfaces: frozenset[str]
    body_max_bytes: int
    allow_http: bool
    required: bool
    require_placeholder: bool = True  # its auth headers carry the placeholder or are absent
    auth_headers: tuple[str, ...] = ("authorization", "x-api-key")
    allow_unscrubbable: bool = False  # pass responses egress cannot scrub on its flows

    def bound_to(self, host: str) -> bool:
        return any(p.matches(host) for p in self.hosts)


@dataclass(frozen=True)
class AdminConfig:
    host: str
    port: int
    drain_seconds: int  # on SIGTERM: not ready, keep serving this long, then stop


@dataclass(frozen=True)
class Limits:
    """What one client may make the proxy hold or do (docs/config.md: limits)."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_head_bytes: int = 64 * 1024
    max_websocket_message_bytes: int = 10 * 1024 * 1024
    max_streams_per_connection: int = 10_000
    max_stream_resets: int = 100
    stream_reset_window_seconds: int = 10


@dataclass(frozen=True)
class Config:
    path: str  # the file it came from, or EMBEDDED_DEFAULT
    listen_host: str
    listen_port: int
    ca_cert_path: Path
    ca_validity_hours: int
    upstream_ca_files: tuple[Path, ...]
    resolve: dict[str, tuple[str, ...]]  # static answers, in order
    allow_private: tuple[IPNetwork, ...]  # private/special ranges names may resolve into
    dns: str  # "system": getaddrinfo after upstream.resolve; "static": upstream.resolve only
    rules: tuple[Rule, ...]
    secrets: tuple[SecretSpec, ...]
    audit_path: str  # "stdout", "stderr" or a file path
    vault: VaultConfig | None = None
    mode: str = "enforce"  # "report": allowlist denials are logged as would_deny and let through
    admin: AdminConfig | None = None  # health, readiness and metrics listener
    agent_dir: Path | None = None  # where files for the agent are written (sidecar)
    agent_proxy_url: str | None = None  # written into the agent's env file as HTTPS_PROXY etc.
    # "transparent": connections redirected by the kernel, decided on SNI / Host
    listen_mode: str = "explicit"
    limits: Limits = Limits()

    @property
    def max_body_bytes(self) -> int:
        return self.limits.max_body_bytes


def auto_placeholder(prefix: str, length: int) -> str:
    """A placeholder made at start-up: the prefix, then random URL-safe characters."""
    body = token_urlsafe(length)[: max(length - len(prefix), 0)]
    return prefix + body


def default_placeholder(name: str) -> str:
    # Names hold no '-', so "egress-<name>-placeholder" is never a substring of another
    # secret's default placeholder.
    return f"egress-{name}-placeholder"


class _Checker:
    """Walks the parsed YAML and records problems with their key paths."""

    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []

    def err(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(key, message))

    def mapping(
        self, node: Any, key: str, known: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        if node is None:
            node = {}
        if not isinstance(node, dict):
            self.err(key, f"must be a mapping, not {_kind(node)}")
            return None
        for k in node:
            if k not in known:
                near = difflib.get_close_matches(str(k), known, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(known)}"
                self.err(_join(key, str(k)), f"unknown key: {hint}")
        for k in required:
            if k not in node:
                self.err(_join(key, k), "is required")
        return node

    def typed(
        self, node: dict[str, Any], key: str, name: str, kind: type | tuple[type, ...], default: Any
    ) -> Any:
        if name not in node or node[name] is None and default is None:
            return default
        value = node[name]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.err(_join(key, name), f"must be an integer, not {_kind(value)}")
            return default
        wrong_bool = isinstance(value, bool) and kind is not bool
        if kind is not int and (wrong_bool or not isinstance(value, kind)):
            names = {str: "string", bool: "boolean"}
            what = "number" if isinstance(kind, tuple) else names.get(kind, kind.__name__)
            self.err(_join(key, name), f"must be a {what}, not {_kind(value)}")
            return default
        return value

    def choice(
        self, node: dict[str, Any], key: str, name: str, choices: tuple[str, ...], default: str
    ) -> str | None:
        """A string that must be one of ``choices``; None (with a problem recorded) otherwise."""
        value = self.typed(node, key, name, str, default)
        if value not in choices:
            self.err(_join(key, name), f"{value!r} is not one of {', '.join(choices)}")
            return None
        return value

    def str_list(
        self, node: dict[str, Any], key: str, name: str, allow_empty: bool = False
    ) -> list[str] | None:
        if name not in node:
            return None
        value = node[name]
        if isinstance(value, str | int) and not isinstance(value, bool):
            value = [value]
        if value == [] and allow_empty:
            return []
        if not isinstance(value, list) or not value:
            self.err(_join(key, name), "must be a non-empty list")
            return None
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str | int) or isinstance(item, bool):
                self.err(
                    f"{_join(key, name)}[{i}]", f"must be a string or number, not {_kind(item)}"
                )
            else:
                out.append(str(item))
        return out


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _path(base: Path, text: str) -> Path:
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else base / p


def _parse_rule(c: _Checker, node: Any, i: int) -> Rule | None:
    key = f"allow[{i}]"
    if isinstance(node, str):
        node = {"host": node}
    m = c.mapping(
        node, key, ("host", "ports", "schemes", "methods", "paths", "websocket"), ("host",)
    )
    if m is None or "host" not in m:
        return None
    ok = True
    try:
        host = parse_host_pattern(m["host"])
    except ValueError as e:
        c.err(f"{key}.host", str(e))
        ok = False
    schemes = c.str_list(m, key, "schemes") or ["https"]
    for j, s in enumerate(schemes):
        if s not in SCHEMES:
            c.err(f"{key}.schemes[{j}]", f"{s!r} is not a scheme egress proxies: use https or http")
            ok = False
    ports: list[int] = []
    raw_ports = c.str_list(m, key, "ports")
    if raw_ports is None:
        ports = sorted({DEFAULT_PORTS[s] for s in schemes if s in DEFAULT_PORTS})
    else:
        for j, p in enumerate(raw_ports):
            if not p.isdigit() or not 0 < int(p) < 65536:
                c.err(f"{key}.ports[{j}]", f"{p!r} is not a port number (1-65535)")
                ok = False
            else:
                ports.append(int(p))
    methods = c.str_list(m, key, "methods")
    if methods is not None:
        methods = [x.upper() for x in methods]
        for j, x in enumerate(methods):
            if not _METHOD.match(x):
                c.err(f"{key}.methods[{j}]", f"{x!r} is not an HTTP method")
                ok = False
    paths = c.str_list(m, key, "paths")
    for j, p in enumerate(paths or []):
        if not p.startswith("/") or "?" in p or "#" in p or re.search(r"[\s\x00-\x1f]", p):
            c.err(f"{key}.paths[{j}]", f"{p!r} must be a path prefix starting with '/' (no query)")
            ok = False
    if not ok:
        return None
    return Rule(
        index=i,
        host=host,
        ports=tuple(ports),
        schemes=tuple(schemes),
        methods=tuple(methods) if methods is not None else None,
        paths=tuple(paths) if paths is not None else None,
        websocket=c.typed(m, key, "websocket", bool, False),
    )


def _parse_vault_source(c: _Checker, node: Any, key: str) -> SourceSpec | None:
    m = c.mapping(node, key, ("mount", "path", "key", "engine"), ("path", "key"))
    if m is None:
        return None
    engine = c.choice(m, key, "engine", VAULT_ENGINES, "kv2")
    if engine is None:
        return None
    path = c.typed(m, key, "path", str, None)
    secret_key = c.typed(m, key, "key", str, None)
    mount = c.typed(m, key, "mount", str, None)
    if engine == "read" and mount is not None:
        c.err(f"{key}.mount", "goes with kv2/kv1 only; for engine 'read' give the full path")
    if path is not None and (not path.strip("/") or path != path.strip()):
        c.err(f"{key}.path", f"{path!r} is not a Vault path")
        return None
    if path is None or secret_key is None:
        return None
    if engine != "read":
        mount = (mount or ("secret" if engine == "kv2" else "kv")).strip("/")
    return SourceSpec(
        kind="vault", key=secret_key, mount=mount, path=path.strip("/"), engine=engine
    )


def _parse_source(c: _Checker, node: Any, key: str, base: Path) -> SourceSpec | None:
    m = c.mapping(node, key, ("env", "file", "key", "vault"))
    if m is None:
        return None
    kinds = [k for k in ("env", "file", "vault") if k in m]
    if len(kinds) != 1:
        c.err(
            key, "give exactly one of 'env: VAR', 'file: PATH' (with 'key: NAME') or 'vault: {...}'"
        )
        return None
    if kinds[0] == "vault":
        if "key" in m:
            c.err(f"{key}.key", "goes inside 'vault:' for a Vault source")
        return _parse_vault_source(c, m["vault"], f"{key}.vault")
    if kinds[0] == "env":
        var = c.typed(m, key, "env", str, None)
        if "key" in m:
            c.err(f"{key}.key", "only goes with 'file'")
        if var is None or not _ENV_NAME.match(var):
            c.err(f"{key}.env", "must name an environment variable")
            return None
        return SourceSpec(kind="env", env=var)
    path = c.typed(m, key, "file", str, None)
    secret_key = c.typed(m, key, "key", str, None)
    if secret_key is None:
        c.err(f"{key}.key", "is required with 'file': the key of the secret in that file")
    if path is None or secret_key is None:
        return None
    return SourceSpec(kind="file", file=_path(base, path), key=secret_key)


def _parse_secret(
    c: _Checker, node: Any, i: int, base: Path, rules: list[Rule]
) -> SecretSpec | None:
    key = f"secrets[{i}]"
    known = (
        "name", "source", "hosts", "placeholder", "placeholder_prefix", "placeholder_length", "env",
        "inject", "body_max_bytes", "allow_http", "required", "require_placeholder", "auth_headers",
        "allow_unscrubbable",
    )  # fmt: skip
    m = c.mapping(node, key, known, ("name", "source", "hosts"))
    if m is None:
        return None
    start = len(c.problems)
    name = c.typed(m, key, "name", str, None)
    if name is not None and not _SECRET_NAME.match(name):
        c.err(f"{key}.name", f"{name!r}: use letters, digits and '_' (starting with a letter)")
    source = _parse_source(c, m.get("source"), f"{key}.source", base) if "source" in m else None
    hosts: list[HostPattern] = []
    for j, h in enumerate(c.str_list(m, key, "hosts") or []):
        try:
            pattern = parse_host_pattern(h)
        except ValueError as e:
            c.err(f"{key}.hosts[{j}]", str(e))
            continue
        if not any(_covers(r.host, pattern) for r in rules):
            c.err(
                f"{key}.hosts[{j}]",
                f"{pattern.text!r} is not allowed by any rule under 'allow': "
                f"add '- host: {pattern.text}' there, or bind the secret to an allowed host",
            )
        hosts.append(pattern)
    placeholder = c.typed(m, key, "placeholder", str, None)
    prefix = c.typed(m, key, "placeholder_prefix", str, "")
    length = c.typed(m, key, "placeholder_length", int, 40)
    if ("placeholder_prefix" in m or "placeholder_length" in m) and placeholder != "auto":
        c.err(
            f"{key}.placeholder",
            "placeholder_prefix and placeholder_length go with 'placeholder: auto'",
        )
    if placeholder == "auto":
        if not 16 <= length <= 256 or len(prefix) > length - 16:
            c.err(
                f"{key}.placeholder_length",
                "must be 16-256 and leave at least 16 random characters after the prefix",
            )
        placeholder = auto_placeholder(prefix, length)
    if placeholder is None and name is not None:
        placeholder = default_placeholder(name)
    elif placeholder is not None and not _PLACEHOLDER.match(placeholder):
        c.err(
            f"{key}.placeholder",
            "must be 8-256 characters from A-Z a-z 0-9 . _ ~ - (so that it survives every "
            "request surface unencoded)",
        )
    env = c.typed(m, key, "env", str, None)
    if env is not None and not _ENV_NAME.match(env):
        c.err(f"{key}.env", f"{env!r} is not an environment variable name")
    surfaces = c.str_list(m, key, "inject") or ["headers"]
    for j, s in enumerate(surfaces):
        if s not in SURFACES:
            near = difflib.get_close_matches(s, SURFACES, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"use {', '.join(SURFACES)}"
            c.err(f"{key}.inject[{j}]", f"{s!r} is not a surface: {hint}")
    body_max = c.typed(m, key, "body_max_bytes", int, 1024 * 1024)
    if body_max is not None and body_max <= 0:
        c.err(f"{key}.body_max_bytes", "must be positive")
    allow_http = c.typed(m, key, "allow_http", bool, False)
    required = c.typed(m, key, "required", bool, True)
    auth_headers = [
        fold_name(h) for h in c.str_list(m, key, "auth_headers") or ["authorization", "x-api-key"]
    ]
    if len(c.problems) > start or name is None or source is None or placeholder is None:
        return None
    return SecretSpec(
        index=i,
        name=name,
        source=source,
        hosts=tuple(hosts),
        placeholder=placeholder,
        env=env,
        surfaces=frozenset(surfaces),
        body_max_bytes=body_max,
        allow_http=allow_http,
        required=required,
        require_placeholder=c.typed(m, key, "require_placeholder", bool, True),
        auth_headers=tuple(auth_headers),
        allow_unscrubbable=c.typed(m, key, "allow_unscrubbable", bool, False),
    )


def _covers(rule: HostPattern, pattern: HostPattern) -> bool:
    """Does an allow rule's host pattern allow every host the secret pattern names?"""
    if pattern.kind == "wildcard":
        return rule.kind == "wildcard" and pattern.text.endswith(rule.text[1:])
    if pattern.kind == "address":
        assert pattern.network is not None
        return (
            rule.kind == "address"
            and rule.network is not None
            and pattern.network.version == rule.network.version
            and pattern.network.subnet_of(rule.network)  # type: ignore[arg-type]
        )
    return rule.matches(pattern.text)


def _check_secret_set(c: _Checker, secrets: list[SecretSpec]) -> None:
    seen_names: dict[str, int] = {}
    seen_env: dict[str, int] = {}
    for s in secrets:
        if s.name.lower() in seen_names:
            c.err(
                f"secrets[{s.index}].name",
                f"{s.name!r} is already used by secrets[{seen_names[s.name.lower()]}]",
            )
        seen_names.setdefault(s.name.lower(), s.index)
        if s.env:
            if s.env in seen_env:
                c.err(
                    f"secrets[{s.index}].env",
                    f"{s.env!r} is already used by secrets[{seen_env[s.env]}]",
                )
            seen_env.setdefault(s.env, s.index)
        for o in secrets:
            if o is not s and s.placeholder in o.placeholder:
                c.err(
                    f"secrets[{s.index}].placeholder",
                    f"is contained in the placeholder of secrets[{o.index}] ({o.name}): "
                    "placeholders must not overlap",
                )


def _opt_path(c: _Checker, m: dict[str, Any], key: str, name: str, base: Path) -> Path | None:
    text = c.typed(m, key, name, str, None)
    return _path(base, text) if text else None


def _parse_vault(c: _Checker, node: Any, base: Path) -> VaultConfig | None:
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
    cert = _opt_path(c, m, "vault", "client_cert", base)
    ckey = _opt_path(c, m, "vault", "client_key", base)
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
        ca_file=_opt_path(c, m, "vault", "ca_file", base),
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


def _parse_vault_auth(c: _Checker, node: Any, base: Path) -> VaultAuth | None:
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
        return VaultAuth(method, mount, token_file=_opt_path(c, m, key, "token_file", base),
                         token_env=c.typed(m, key, "token_env", str, None))  # fmt: skip
    if method == "approle":
        for k in ("role_id", "secret_id_file"):
            if k not in m:
                c.err(f"{key}.{k}", "is required with method 'approle'")
        return VaultAuth(method, mount, role_id=c.typed(m, key, "role_id", str, None),
                         secret_id_file=_opt_path(c, m, key, "secret_id_file", base))  # fmt: skip
    if "role" not in m:
        c.err(f"{key}.role", f"is required with method {method!r}")
    jwt_file = _opt_path(c, m, key, "jwt_file", base)
    if jwt_file is None:
        if method == "jwt":
            c.err(f"{key}.jwt_file", "is required with method 'jwt'")
        jwt_file = Path(K8S_TOKEN_FILE)
    return VaultAuth(method, mount, role=c.typed(m, key, "role", str, None), jwt_file=jwt_file)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_port(c: _Checker, m: dict[str, Any], key: str, default_port: int) -> tuple[str, int]:
    """A listener's host (an IP address, default loopback) and port (0 picks a free one)."""
    host = c.typed(m, key, "host", str, "127.0.0.1")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        c.err(f"{key}.host", f"{host!r} must be an IP address (e.g. 127.0.0.1)")
    port = c.typed(m, key, "port", int, default_port)
    if not 0 <= port < 65536:
        c.err(f"{key}.port", f"{port} is not a port number (0 picks a free port)")
    return host, port


def parse(data: Any, file: str, base: Path) -> Config:
    """Validate parsed YAML. Raises ConfigError listing every problem."""
    c = _Checker()
    top = c.mapping(
        data,
        "",
        (
            "mode",
            "listen",
            "admin",
            "agent",
            "ca",
            "upstream",
            "allow",
            "secrets",
            "vault",
            "audit",
            "limits",
        ),
    )
    if top is None:
        raise ConfigError(file, c.problems)

    listen = c.mapping(top.get("listen"), "listen", ("host", "port", "mode")) or {}
    listen_mode = c.choice(listen, "listen", "mode", ("explicit", "transparent"), "explicit")
    transparent = listen_mode == "transparent"
    listen_host, listen_port = _host_port(c, listen, "listen", 15001 if transparent else 8080)
    if transparent and _is_ip(listen_host) and not ipaddress.ip_address(listen_host).is_loopback:
        # The kernel's REDIRECT (nat OUTPUT) sends to loopback; any other address would let
        # other machines use the proxy, and its secrets, by connecting to it directly.
        c.err("listen.host", f"{listen_host!r}: in transparent mode egress listens on loopback "
              "only (127.0.0.1 or ::1), where the redirect rules send the agent's traffic")  # fmt: skip

    ca = c.mapping(top.get("ca"), "ca", ("cert_path", "validity_hours")) or {}
    cert_path = _path(base, c.typed(ca, "ca", "cert_path", str, "egress-ca.pem"))
    validity = c.typed(ca, "ca", "validity_hours", int, 24)
    if not 1 <= validity <= 24 * 31:
        c.err("ca.validity_hours", f"{validity} must be between 1 and 744 (31 days)")

    up = (
        c.mapping(top.get("upstream"), "upstream", ("ca_files", "resolve", "allow_private", "dns"))
        or {}
    )
    dns = c.choice(up, "upstream", "dns", ("system", "static"), "system") or "system"
    ca_files: list[Path] = []
    for j, f in enumerate(c.str_list(up, "upstream", "ca_files", allow_empty=True) or []):
        p = _path(base, f)
        if not p.is_file():
            c.err(f"upstream.ca_files[{j}]", f"{str(p)!r} does not exist or is not a file")
        elif b"-----BEGIN CERTIFICATE-----" not in p.read_bytes():
            c.err(f"upstream.ca_files[{j}]", f"{str(p)!r} holds no PEM certificate")
        ca_files.append(p)
    resolve: dict[str, tuple[str, ...]] = {}
    res = c.mapping(up.get("resolve"), "upstream.resolve", tuple(up.get("resolve") or ()))
    for name, addrs in (res or {}).items():
        k = f"upstream.resolve.{name}"
        try:
            canon = canonical_host(str(name))
            if is_ip(canon):
                raise InvalidHost("give a host name here, not an address")
        except InvalidHost as e:
            c.err(k, str(e))
            continue
        answers = addrs if isinstance(addrs, list) else [addrs]
        try:
            resolve[canon] = tuple(str(ipaddress.ip_address(str(a))) for a in answers)
        except ValueError:
            c.err(k, f"{addrs!r} is not an IP address (or a list of them)")
        if not answers:
            c.err(k, "give at least one address")
    allow_private: list[IPNetwork] = []
    for j, cidr in enumerate(c.str_list(up, "upstream", "allow_private", allow_empty=True) or []):
        try:
            allow_private.append(ipaddress.ip_network(cidr))
        except ValueError:
            c.err(
                f"upstream.allow_private[{j}]",
                f"{cidr!r} is not an address range such as 10.1.0.0/16",
            )

    rules: list[Rule] = []
    allow = top.get("allow")
    if allow is None:
        allow = []
    if not isinstance(allow, list):
        c.err("allow", f"must be a list of rules, not {_kind(allow)}")
        allow = []
    for i, node in enumerate(allow):
        rule = _parse_rule(c, node, i)
        if rule is not None:
            rules.append(rule)

    secrets: list[SecretSpec] = []
    raw_secrets = top.get("secrets") or []
    if not isinstance(raw_secrets, list):
        c.err("secrets", f"must be a list, not {_kind(raw_secrets)}")
        raw_secrets = []
    for i, node in enumerate(raw_secrets):
        spec = _parse_secret(c, node, i, base, rules)
        if spec is not None:
            secrets.append(spec)
    _check_secret_set(c, secrets)

    audit = c.mapping(top.get("audit"), "audit", ("path",)) or {}
    audit_path = c.typed(audit, "audit", "path", str, "stdout")
    if audit_path not in ("stdout", "stderr"):
        audit_path = str(_path(base, audit_path))

    limits_node = c.mapping(top.get("limits"), "limits", tuple(Limits.__dataclass_fields__)) or {}
    limit_values: dict[str, int] = {}
    for name, f in Limits.__dataclass_fields__.items():
        value = c.typed(limits_node, "limits", name, int, f.default)
        if value is not None and value <= 0:
            c.err(f"limits.{name}", "must be positive")
        limit_values[name] = value if value is not None else f.default
    limits = Limits(**limit_values)

    mode = c.choice(top, "", "mode", ("enforce", "report"), "enforce") or "enforce"
    agent = c.mapping(top.get("agent"), "agent", ("dir", "proxy_url")) or {}
    agent_dir = _opt_path(c, agent, "agent", "dir", base)
    agent_proxy_url = c.typed(agent, "agent", "proxy_url", str, None)
    if agent_proxy_url is not None and not re.match(r"^http://[^\s'\"]+$", agent_proxy_url):
        c.err(
            "agent.proxy_url",
            f"{agent_proxy_url!r} must be an http:// URL such as http://127.0.0.1:8080",
        )
    admin = None
    if "admin" in top:
        a = c.mapping(top["admin"], "admin", ("host", "port", "drain_seconds")) or {}
        admin_host, admin_port = _host_port(c, a, "admin", 9901)
        drain = c.typed(a, "admin", "drain_seconds", int, 5)
        if drain < 0:
            c.err("admin.drain_seconds", "must be 0 or more")
        admin = AdminConfig(admin_host, admin_port, drain)
    vault = _parse_vault(c, top.get("vault"), base)
    if "vault" not in top and any(s.source.kind == "vault" for s in secrets):
        vault = _parse_vault(c, {}, base)  # all from VAULT_* variables, token auth

    if c.problems:
        raise ConfigError(file, c.problems)
    return Config(
        path=file,
        listen_host=listen_host,
        listen_port=listen_port,
        listen_mode=listen_mode or "explicit",
        ca_cert_path=cert_path,
        ca_validity_hours=validity,
        upstream_ca_files=tuple(ca_files),
        resolve=resolve,
        allow_private=tuple(allow_private),
        dns=dns,
        rules=tuple(rules),
        secrets=tuple(secrets),
        audit_path=audit_path,
        limits=limits,
        mode=mode,
        admin=admin,
        agent_dir=agent_dir,
        agent_proxy_url=agent_proxy_url,
        vault=vault if "vault" in top or any(s.source.kind == "vault" for s in secrets) else None,
    )


def _load_yaml(text: str, file: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(file, [ConfigProblem("", f"{where}invalid YAML: {problem}")]) from None


def load(path: str | os.PathLike[str]) -> Config:
    """Load and validate a config file."""
    p = Path(path)
    file = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            file, [ConfigProblem("", f"cannot read the file: {e.strerror}")]
        ) from None
    data = _load_yaml(text, file)
    if data is None:
        raise ConfigError(file, [ConfigProblem("", "the file is empty")])
    return parse(data, file, p.resolve().parent)


def load_default() -> Config:
    """The embedded default config: common developer hosts, secrets from a local file."""
    text = resources.files("egress").joinpath("data/default.yaml").read_text(encoding="utf-8")
    return parse(_load_yaml(text, EMBEDDED_DEFAULT), EMBEDDED_DEFAULT, Path.cwd())


def load_or_default(path: str | None) -> Config:
    return load(path) if path else load_default()
