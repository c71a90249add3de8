"""Everything a running proxy holds: config, allowlist, secrets, CA, audit, private files."""

from __future__ import annotations

import atexit
import ipaddress
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from egress import config as config_mod
from egress.addresses import AddressPolicy
from egress.agentfiles import write_agent_files
from egress.audit import AuditWriter
from egress.ca import EphemeralCA
from egress.config import Config
from egress.encodings import SecretForms, make_forms, scrub
from egress.hostnames import IPAddress
from egress.metrics import Metrics
from egress.policy import Allowlist
from egress.resolver import Resolver
from egress.secrets import SecretSource, SecretStore, make_source
from egress.trust import system_trust_bundle
from egress.vault import VaultClient, VaultError, VaultRefresher, VaultSource

log = logging.getLogger("egress")


@dataclass(frozen=True)
class Tunnel:
    """A CONNECT tunnel: the canonical host it was decided on and the address checked for it."""

    host: str
    port: int
    address: IPAddress


@dataclass
class Runtime:
    config: Config
    allowlist: Allowlist
    secrets: SecretStore
    ca: EphemeralCA
    audit: AuditWriter
    private_dir: Path  # 0700, only the proxy's user; removed by close()
    upstream_trust: Path  # the CA bundle upstream certificates are verified against
    resolver: Resolver
    metrics: Metrics = field(default_factory=Metrics)
    vault: VaultRefresher | None = None
    # CONNECT tunnels by client connection id
    tunnels: dict[str, Tunnel] = field(default_factory=dict)
    # checked addresses for plain-HTTP requests: (client id, host, port) -> address
    dial: dict[tuple[str, str, int], IPAddress] = field(default_factory=dict)
    _forms: list[SecretForms] = field(default_factory=list, repr=False)
    _forms_version: int = -1

    @classmethod
    def start(
        cls, cfg: Config, audit: AuditWriter | None = None, metrics: Metrics | None = None
    ) -> Runtime:
        """Load every secret and make the CA. Raises SecretLoadError or VaultError before
        anything listens."""
        sources: dict[str, SecretSource] = {}
        vault_sources: list[VaultSource] = []
        client: VaultClient | None = None
        vault_specs = [s for s in cfg.secrets if s.source.kind == "vault"]
        if vault_specs:
            assert cfg.vault is not None
            client = VaultClient(cfg.vault)
            try:
                client.login()
            except VaultError as e:
                names = ", ".join(s.name for s in vault_specs)
                raise VaultError(
                    f"vault at {client.conn.address}: {e} (needed for secrets: {names})"
                ) from None
        for spec in cfg.secrets:
            if spec.source.kind == "vault":
                assert client is not None
                vault_sources.append(VaultSource(spec, client))
                sources[spec.name] = vault_sources[-1]
            else:
                sources[spec.name] = make_source(spec)
        store = SecretStore(cfg.secrets, sources)
        try:
            store.load_all()
        except BaseException:
            if client is not None:
                client.abandon()  # a token it logged in for must not outlive a failed start
            raise
        refresher = None
        if client is not None:
            assert cfg.vault is not None
            refresher = VaultRefresher(client, store, vault_sources, cfg.vault)
        for name, problem in store.problems.items():
            log.warning("optional secret %s is not loaded: %s; requests that need it get 503",
                        name, problem)  # fmt: skip
        private = Path(tempfile.mkdtemp(prefix="egress-private-"))  # mkdtemp makes it 0700
        try:
            trust = system_trust_bundle()
            if cfg.upstream_ca_files:
                # ssl_verify_upstream_trusted_ca replaces the default bundle: combine them.
                combined = private / "upstream-trust.pem"
                combined.write_bytes(
                    b"\n".join(
                        [trust.read_bytes(), *(f.read_bytes() for f in cfg.upstream_ca_files)]
                    )
                )
                trust = combined
            if cfg.mode == "report":
                log.warning("report mode: allowlist denials are logged as would_deny and let through; the CA "
                            "carries no name constraints so that it can serve hosts outside the allowlist")  # fmt: skip
            ca = EphemeralCA.create(
                cfg.rules, cfg.ca_validity_hours, constrained=cfg.mode != "report"
            )
            ca.write_cert(cfg.ca_cert_path)
            write_agent_files(cfg, ca.cert_pem(), system_trust_bundle())
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise
        if refresher is not None:
            refresher.start()
        return cls(
            config=cfg,
            allowlist=Allowlist(cfg.rules),
            secrets=store,
            ca=ca,
            audit=audit or AuditWriter(cfg.audit_path),
            private_dir=private,
            upstream_trust=trust,
            resolver=Resolver(cfg.resolve, address_policy(cfg), static_only=cfg.dns == "static"),
            metrics=metrics or Metrics(),
            vault=refresher,
        )

    def forms(self) -> list[SecretForms]:
        """Every secret's encoded forms (current and previous values), recomputed only when a
        value changes."""
        version = (
            self.secrets.version
        )  # read first: a rotation meanwhile forces a rebuild next time
        if self._forms_version != version:
            self._forms = [make_forms(s.name, v, s.placeholder) for s, v in self.secrets.known()]
            self._forms_version = version
        return self._forms

    def listening_on(self, host: str, port: int) -> None:
        """Record the proxy's own listener: egress never dials itself."""
        own = (ipaddress.ip_address(host), port)
        self.resolver.policy = AddressPolicy(
            self.resolver.policy.allowed, (*self.resolver.policy.own, own)
        )

    def redact(self, text: str) -> str:
        """Replace every loaded secret value in ``text`` with ``[secret:<name>]``: for text that
        echoes what a client sent (denial bodies, audited paths, error details)."""
        data = text.encode("utf-8", "surrogateescape")
        forms = self.forms()
        for f in forms:
            for secret, _, _ in f.pairs:
                data = data.replace(secret, f"[secret:{f.name}]".encode())
        data, _ = scrub(data, forms)  # what is left: values inside larger base64 blobs
        return data.decode("utf-8", "surrogateescape")

    def close(self) -> None:
        if self.vault is not None:
            assert self.config.vault is not None
            self.vault.stop(revoke=self.config.vault.revoke_on_shutdown)
            self.vault.client.close()
        shutil.rmtree(self.private_dir, ignore_errors=True)
        self.audit.close()


def address_policy(cfg: Config) -> AddressPolicy:
    """Address rules under allow and upstream.allow_private are the only ways into private ranges."""
    nets = [
        r.host.network for r in cfg.rules if r.host.kind == "address" and r.host.network is not None
    ]
    return AddressPolicy(allowed=(*nets, *cfg.allow_private))


_shared: dict[str, Runtime] = {}


def shared(config_path: str) -> Runtime:
    """One Runtime per config path, for addons loaded into a plain mitmdump with -s."""
    if config_path not in _shared:
        rt = Runtime.start(config_mod.load_or_default(config_path or None))
        atexit.register(rt.close)
        _shared[config_path] = rt
    return _shared[config_path]
