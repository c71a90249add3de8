"""The config's typed objects: what the rest of egress reads after validation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_urlsafe

from egress.dlp.policy import DlpConfig
from egress.hostnames import HostPattern, IPNetwork
from egress.tripwires import TripwireConfig

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
class Origin:
    """Where a key of the merged config is written: the file (an included one's own name,
    ``preset:github`` for a preset), its 1-based line, and the key path in that file."""

    file: str
    line: int | None
    key: str


@dataclass(frozen=True)
class Rule:
    index: int  # position under allow:, for messages ("allow[3]")
    host: HostPattern
    ports: tuple[int, ...]
    schemes: tuple[str, ...]
    methods: tuple[str, ...] | None  # None: any method
    paths: tuple[str, ...] | None  # None: any path
    websocket: bool = False  # allow WebSocket upgrades
    # Where the rule is written when not in the config file itself ("preset:github:52",
    # "team.yaml:4"): messages then say so, since an included file is not the user's to edit.
    origin: str = field(default="", compare=False)
    # Whose rule it is: "" for the shared allow:, "agents[2]." for an agent's own.
    scope: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return f"{self.scope}allow[{self.index}]"


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
    # A secret of several parts (scheme aws_sigv4): role -> the key holding it in the file
    # or Vault secret, or the variable holding it (env). Empty for a one-value secret.
    keys: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        if self.kind == "env":
            if self.keys:
                return "env:" + ",".join(var for _, var in self.keys)
            return f"env:{self.env}"
        where = f"vault:{self.vault_path}" if self.kind == "vault" else f"file:{self.file}"
        if self.keys:
            return f"{where}#" + ",".join(k for _, k in self.keys)
        return f"{where}#{self.key}"

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


SECRET_SCHEMES = ("static", "aws_sigv4", "hmac", "azure_shared_key")
# The parts of a multi-part secret, per scheme: (required roles, optional roles).
SCHEME_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "aws_sigv4": (("access_key_id", "secret_access_key"), ("session_token",)),
}
# What ``reveal()`` of a multi-part secret gives: its most sensitive part.
SCHEME_PRIMARY = {"aws_sigv4": "secret_access_key"}


@dataclass(frozen=True)
class AwsSpec:
    """How an aws_sigv4 secret re-signs (docs/credentials.md)."""

    regions: tuple[str, ...] | None = None  # None: any region the host allows
    services: tuple[str, ...] | None = None  # None: any service the host allows
    presigned: bool = True  # re-sign presigned (query-form) URLs
    max_presign_seconds: int = 3600
    clock_skew_seconds: int = 300
    # Hosts whose names do not say the region and service (moto, MinIO, R2, a VPC
    # endpoint): host pattern text -> (region, service).
    endpoints: tuple[tuple[HostPattern, str, str], ...] = ()
    # Sign actions that answer with a credential of their own (iam:CreateAccessKey,
    # sts:AssumeRole, ecr:GetAuthorizationToken...): off, since the agent would then hold one.
    allow_credential_actions: bool = False


MINT_TYPES = ("oauth_client_credentials", "oauth_refresh_token", "google_service_account",
              "github_app")  # fmt: skip
# The parts a mint type reads with ``keys`` (required, optional); the others read one value
# (a service-account key file, a GitHub App private key).
MINT_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "oauth_client_credentials": (("client_id", "client_secret"), ()),
    "oauth_refresh_token": (("client_id", "refresh_token"), ("client_secret",)),
}


@dataclass(frozen=True)
class MintSpec:
    """A token egress obtains and injects (docs/credentials.md)."""

    type: str
    token_url: str | None = None
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    client_auth: str = "basic"  # basic | post (client_secret_basic / client_secret_post)
    app_id: str | None = None  # github_app
    installation_id: int | None = None
    repositories: tuple[str, ...] = ()
    permissions: tuple[tuple[str, str], ...] = ()
    api_url: str = "https://api.github.com"
    refresh_before_seconds: int = 300
    expiry_margin_seconds: int = 30
    min_refresh_interval_seconds: int = 30
    retry_seconds: int = 5
    store: Path | None = None  # oauth_refresh_token: where the rotated refresh token is kept


@dataclass(frozen=True)
class HmacSpec:
    """How an hmac secret signs (egress.hmacsign, docs/credentials.md)."""

    header: str  # where the agent puts the placeholder and egress writes the signature
    algorithm: str = "sha256"  # sha1 | sha256 | sha512
    key_encoding: str = "raw"  # raw | hex | base64
    message: str = "{body}"
    value: str = "{hex}"
    timestamp_header: str | None = None  # egress sets it (Unix seconds) and may sign it


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
    # egress exec/env write the placeholder into a netrc for its exact hosts (pip, uv):
    # opt-in, since requests then replaces a caller's own Authorization header there.
    netrc: bool = False
    # static: a value swapped for the placeholder; aws_sigv4: requests signed with the
    # placeholder access key id are re-signed with the real credentials.
    scheme: str = "static"
    aws: AwsSpec | None = None
    hmac: HmacSpec | None = None
    azure_account: str | None = None  # azure_shared_key: the storage account it signs for
    # More variables for the agent (egress exec/env): (name, value) with no secret in it,
    # e.g. AWS_SECRET_ACCESS_KEY set to a dummy the agent's SDK signs with.
    agent_env: tuple[tuple[str, str], ...] = ()
    # A token egress mints from the source's long-lived credential (scheme static only).
    mint: MintSpec | None = None
    # placeholder: auto: (prefix, length) of the random placeholder made at load; a reload
    # that keeps them keeps the placeholder (egress.reload.carry_placeholders).
    placeholder_auto: tuple[str, int] | None = None

    def bound_to(self, host: str) -> bool:
        return any(p.matches(host) for p in self.hosts)


@dataclass(frozen=True)
class TokenSpec:
    """Where an agent's proxy credential is: its SHA-256 written in the config (the config
    then holds nothing an agent could use), or an env variable or file holding the token."""

    kind: str  # "sha256" | "env" | "file"
    sha256: str | None = None  # 64 lower-case hex digits
    env: str | None = None
    file: Path | None = None

    def describe(self) -> str:
        return {"sha256": "sha256 in the config", "env": f"env:{self.env}",
                "file": f"file:{self.file}"}[self.kind]  # fmt: skip


@dataclass(frozen=True)
class AgentSpec:
    """One agent egress serves (docs/agents.md): its own rules on top of the shared allow:,
    the secrets granted to it, its mode, and how it proves who it is."""

    index: int
    name: str
    # Its groups' rules (labelled groups[g].allow[j]) and its own (agents[i].allow[j]),
    # on top of the shared allow:.
    rules: tuple[Rule, ...]
    secrets: frozenset[str]  # names of the secrets injected for it (its groups' too)
    mode: str  # "enforce" | "report"
    token: TokenSpec | None  # its proxy credential (identity.proxy_authorization)
    groups: tuple[str, ...] = ()
    client_id: str | None = None  # its client certificate's identity (identity.client_certificates)
    source_networks: tuple[IPNetwork, ...] = ()  # its addresses (identity.source_addresses)


@dataclass(frozen=True)
class GroupSpec:
    """Rules and secrets several agents share (agents[i].groups)."""

    index: int
    name: str
    rules: tuple[Rule, ...]  # labelled groups[g].allow[j]
    secrets: frozenset[str]


@dataclass(frozen=True)
class LockedLayer:
    """What the admin fixes for every agent (docs/agents.md#the-locked-layer):
    ``deny``: hosts no rule can open (reason host_locked); ``hosts``: the only hosts an
    agent's or a group's rules may name (a config naming others is refused)."""

    deny: tuple[HostPattern, ...] = ()
    hosts: tuple[HostPattern, ...] | None = None


@dataclass(frozen=True)
class IdentityConfig:
    """How egress tells which agent sent a request."""

    proxy_authorization: bool  # explicit mode: Proxy-Authorization: Basic <agent>:<token>
    fixed: str | None  # every request is this agent's (a sidecar serves one)
    # explicit mode over TLS (listen.tls): the agent is the client certificate's SPIFFE ID
    # (else its subject's common name), matched against each agent's client_id
    client_certificates: bool = False
    # transparent mode on a shared node: the agent is the one whose source_addresses hold the
    # connection's source address (the network must prevent spoofing: docs/agents.md)
    source_addresses: bool = False
    # a sidecar's workload from the Downward API, in every audit record: (field, variable)
    # pairs, e.g. (("pod", "POD_NAME"), ("namespace", "POD_NAMESPACE")); read at start
    workload_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ListenTls:
    """listen.tls: agents reach egress over TLS (HTTPS_PROXY=https://...)."""

    cert_file: Path  # egress's own certificate for the name agents connect to (and chain)
    key_file: Path
    client_ca_file: Path | None = None  # verifies agents' client certificates
    # SHA-256 of the three files' bytes when loaded: a reload with rotated files is a change
    # (addons/tls.py builds a new TLS context), not "the same config"
    sha256: str = ""

    @property
    def files(self) -> tuple[Path, ...]:
        return (
            self.cert_file,
            self.key_file,
            *([self.client_ca_file] if self.client_ca_file else []),
        )


AGENT_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class AdminConfig:
    host: str
    port: int
    drain_seconds: int  # on SIGTERM: not ready, keep serving this long, then stop


@dataclass(frozen=True)
class SyslogConfig:
    """audit.syslog: RFC 5424 to a syslog server (egress.auditsinks)."""

    address: str  # "host:port" (udp, tcp) or a socket path (unix)
    protocol: str = "udp"  # udp | tcp (RFC 6587 octet counting) | unix (datagram)
    facility: str = "local0"
    app_name: str = "egress"
    format: str = "egress"  # the message: egress's JSON record or its OCSF form

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def describe(self) -> str:
        return f"syslog {self.protocol}:{self.address}"


@dataclass(frozen=True)
class OtlpConfig:
    """audit.otlp: OpenTelemetry logs over OTLP/HTTP (egress.auditsinks)."""

    endpoint: str  # e.g. http://otel-collector:4318/v1/logs
    headers: tuple[tuple[str, str], ...] = ()
    timeout_seconds: float = 5.0
    ca_file: Path | None = None  # for an https endpoint with a private CA
    format: str = "egress"  # the log record's body: egress's JSON record or its OCSF form

    def __repr__(self) -> str:  # headers may carry a collector's API key
        return f"OtlpConfig(endpoint={self.endpoint!r}, headers=<{len(self.headers)} redacted>)"


@dataclass(frozen=True)
class CaPki:
    """ca.vault_pki: egress's CA (its key made in memory, as always) is signed by a Vault or
    OpenBao PKI issuer, so that agents trust that issuer's certificate, one for every
    replica of a gateway and across restarts (docs/gateway.md: The CA)."""

    mount: str  # the pki secrets engine's mount, e.g. "pki"
    issuer: str = "default"  # the issuer on that mount (a name, an ID or "default")

    @property
    def sign_path(self) -> str:
        return f"{self.mount}/issuer/{self.issuer}/sign-self-issued"

    @property
    def issuer_path(self) -> str:
        return f"{self.mount}/issuer/{self.issuer}/json"


@dataclass(frozen=True)
class ReloadConfig:
    """Live reload (docs/reload.md): SIGHUP always; a poll of the config's files with
    ``watch``."""

    watch: bool = True
    interval_seconds: float = 2.0


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
    workers: int | None = None  # proxy processes on the one port; None: one per usable CPU
    agent_dir: Path | None = None  # where files for the agent are written (sidecar)
    agent_proxy_url: str | None = None  # written into the agent's env file as HTTPS_PROXY etc.
    # "transparent": connections redirected by the kernel, decided on SNI / Host
    listen_mode: str = "explicit"
    limits: Limits = Limits()
    # Agents as principals (docs/agents.md): empty, one implicit principal with every rule
    # and secret, as before; otherwise every request is an agent's, identified as
    # ``identity`` says, and gets the shared rules, its own rules and its granted secrets.
    agents: tuple[AgentSpec, ...] = ()
    identity: IdentityConfig | None = None
    groups: tuple[GroupSpec, ...] = ()
    locked: LockedLayer = LockedLayer()
    reload: ReloadConfig = ReloadConfig()
    # audit.format (the records written to audit_path) and the sinks (docs/audit.md)
    audit_format: str = "egress"
    audit_syslog: SyslogConfig | None = None
    audit_otlp: OtlpConfig | None = None
    ca_vault_pki: CaPki | None = None  # None: a self-signed CA (egress.ca)
    listen_tls: ListenTls | None = None  # None: agents connect in plain HTTP (loopback, a pod)
    dlp: DlpConfig | None = None  # outbound data-loss rules (docs/dlp.md); None: no inspection
    tripwires: TripwireConfig | None = None  # canaries and leak responses (docs/tripwires.md)
    # The files it was read from (the config file, then each included file in include
    # order; presets too) and the SHA-256 of their bytes one after the other: what a reload
    # watches and what its audit record names (egress.reload).
    files: tuple[Path, ...] = field(default=(), compare=False, repr=False)
    sha256: str = field(default="", compare=False)
    # Where each key path of the merged config came from (file, line, key in that file):
    # for `egress review` findings and for errors in included files.
    origins: dict[str, Origin] = field(default_factory=dict, compare=False, repr=False)

    @property
    def max_body_bytes(self) -> int:
        return self.limits.max_body_bytes

    @property
    def all_rules(self) -> tuple[Rule, ...]:
        """The shared rules and every agent's and group's, each once: what the CA's name
        constraints must cover and what a review reviews."""
        seen: dict[str, Rule] = {r.label: r for r in self.rules}
        for a in self.agents:
            for r in a.rules:
                seen.setdefault(r.label, r)
        for g in self.groups:
            for r in g.rules:
                seen.setdefault(r.label, r)
        return tuple(seen.values())

    def agent(self, name: str) -> AgentSpec | None:
        return next((a for a in self.agents if a.name == name), None)


def auto_placeholder(prefix: str, length: int) -> str:
    """A placeholder made at start-up: the prefix, then random URL-safe characters."""
    body = token_urlsafe(length)[: max(length - len(prefix), 0)]
    return prefix + body


def default_placeholder(name: str) -> str:
    # Names hold no '-', so "egress-<name>-placeholder" is never a substring of another
    # secret's default placeholder.
    return f"egress-{name}-placeholder"
