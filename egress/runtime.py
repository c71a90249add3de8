"""Everything a running proxy holds: config, allowlist, secrets, CA, audit, private files."""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from egress import config as config_mod
from egress import secretindex
from egress.addresses import AddressPolicy
from egress.agentfiles import write_agent_files
from egress.agents import AgentView, address_ranges, load_credentials, read_workload
from egress.audit import AuditWriter
from egress.ca import EphemeralCA, ca_constraints, permits, trust_bundle
from egress.cafile import CaFileLock
from egress.config import Config, SecretSpec
from egress.encodings import SecretForms, value_forms
from egress.hostnames import IPAddress
from egress.identity import Credentials, Unidentified, source_agent
from egress.metrics import Metrics
from egress.policy import Allowlist
from egress.policyset import Policy, build_policy
from egress.reasons import Reason
from egress.resolver import Resolver
from egress.secretindex import SecretIndex
from egress.secrets import ParentHeld, SecretSource, SecretStore, SecretValue, make_source
from egress.tripwires import QuarantineBook
from egress.trust import system_trust_bundle

if TYPE_CHECKING:  # imported where Vault is used: hvac and requests cost ~0.1 s at start-up
    from collections.abc import Callable

    from egress.mintsource import MintedSource, MintRefresher
    from egress.reload import Prepared
    from egress.vault import VaultClient, VaultRefresher, VaultSource

log = logging.getLogger("egress")


@dataclass(frozen=True)
class Tunnel:
    """A CONNECT tunnel: the canonical host it was decided on and the address checked for it."""

    host: str
    port: int
    address: IPAddress
    generation: int = 0  # of the policy it was decided under (a reload: checked again)


@dataclass
class Runtime:
    # The config, agents' views, credentials and resolver in force: one object, replaced
    # whole by a reload (egress.reload); a request keeps the one it started with.
    policy: Policy
    secrets: SecretStore
    ca: EphemeralCA
    audit: AuditWriter
    private_dir: Path  # 0700, only the proxy's user; removed by close()
    ca_path: Path  # where this process wrote its CA certificate for clients
    upstream_trust: Path  # the CA bundle upstream certificates are verified against
    metrics: Metrics = field(default_factory=Metrics)
    vault: VaultRefresher | None = None
    minter: MintRefresher | None = None  # minted tokens (egress.mintsource), parent only
    # In a worker: where a 401 on a minted token is reported (the parent mints).
    stale_sink: Callable[[str], None] | None = None
    ca_lock: CaFileLock | None = None
    # CAs a reload made for names outside the first one's constraints (egress.reload).
    more_cas: list[EphemeralCA] = field(default_factory=list)
    # Agents (docs/agents.md): which agent each client connection proved to be (CONNECT),
    # by client connection id.
    principals: dict[str, str] = field(default_factory=dict)
    # client connections whose only TLS is the one to egress itself (listen.tls): a request
    # on them is plain HTTP as far as the upstream is concerned (addons/flowchecks.py)
    proxy_tls_only: set[str] = field(default_factory=set)
    # each client connection's source address (identity.source_addresses)
    client_addresses: dict[str, str] = field(default_factory=dict)
    # why a client certificate proved no agent, by client connection id (addons/identity.py)
    refusals: dict[str, Unidentified] = field(default_factory=dict)
    # CONNECT tunnels by client connection id
    tunnels: dict[str, Tunnel] = field(default_factory=dict)
    # checked addresses for plain-HTTP requests: (client id, host, port) -> address
    dial: dict[tuple[str, str, int], IPAddress] = field(default_factory=dict)
    dial_agents: dict[tuple[str, str, int], str] = field(default_factory=dict)  # whose dial
    # Tripwires (docs/tripwires.md): the quarantined agents (in a worker, a copy of the
    # parent's book), and where a worker reports a trip (None: handled here).
    quarantine: QuarantineBook = field(default_factory=QuarantineBook)
    trip_sink: Callable[[dict[str, Any]], None] | None = None
    # Set by the tripwire addon: told every recorded decision (agent, reason, flow id,
    # secret), and how to close an agent's connections in this process.
    on_decision: Callable[[str | None, str, str, str | None], None] | None = None
    end_connections: Callable[[str], None] | None = None
    _indexed: tuple[tuple[int, int], SecretIndex] = field(
        default_factory=lambda: ((-1, -1), secretindex.build([])), repr=False
    )
    _index_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def start(
        cls, cfg: Config, audit: AuditWriter | None = None, metrics: Metrics | None = None,
        *, private_ca: bool = False, refresh: bool = True,
    ) -> Runtime:  # fmt: skip
        """Load every secret and make the CA. Raises SecretLoadError or VaultError before
        anything listens.

        ``private_ca`` (egress exec): the CA certificate goes into this process's private
        directory only, never to ``ca.cert_path`` or ``agent.dir``, which another egress may
        be serving. Otherwise ``ca.cert_path`` is held with a lock for the life of the
        process: a second egress on the same path is refused instead of replacing the CA
        the first one's clients trust.

        ``refresh=False``: the Vault refresher thread is made but not started; the caller
        starts it (``rt.vault.start()``) once it has forked its workers (egress.workers)."""
        credentials = load_credentials(cfg)  # first: a missing token stops before Vault
        workload = read_workload(cfg, os.environ)
        sources: dict[str, SecretSource] = {}
        vault_sources: list[VaultSource] = []
        client: VaultClient | None = None
        vault_specs = [s for s in cfg.secrets if s.source.kind == "vault"]
        if vault_specs or cfg.ca_vault_pki is not None:
            from egress.vault import VaultClient, VaultError, VaultSource

            assert cfg.vault is not None
            client = VaultClient(cfg.vault)
            try:
                client.login()
            except VaultError as e:
                needs = (
                    [f"secrets: {', '.join(s.name for s in vault_specs)}"] if vault_specs else []
                )
                needs += ["ca.vault_pki"] if cfg.ca_vault_pki is not None else []
                raise VaultError(
                    f"vault at {client.conn.address}: {e} (needed for {'; '.join(needs)})"
                ) from None
        minted: list[MintedSource] = []
        transport = None
        for spec in cfg.secrets:
            if spec.source.kind == "vault":
                assert client is not None
                inner: SecretSource = VaultSource(spec, client)
                if spec.mint is None:  # a minted secret's inputs are read at each mint
                    vault_sources.append(inner)  # type: ignore[arg-type]
            else:
                inner = make_source(spec)
            if spec.mint is not None:
                from egress.mintsource import MintedSource, https_transport

                transport = transport or https_transport(
                    [system_trust_bundle(), *cfg.upstream_ca_files],
                    cfg.resolve,
                    cfg.dns == "static",
                )
                minted.append(MintedSource(spec, inner, transport))
                inner = minted[-1]
            sources[spec.name] = inner
        store = SecretStore(cfg.secrets, sources)
        try:
            store.load_all()
        except BaseException:
            if client is not None:
                client.abandon()  # a token it logged in for must not outlive a failed start
            raise
        minter = None
        if minted:
            from egress.mintsource import MintRefresher

            minter = MintRefresher(store, minted)
            if refresh:
                minter.start()
        refresher = None
        if client is not None:
            from egress.vault import VaultRefresher

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
            reporting = [a.name for a in cfg.agents if a.mode == "report"]
            if reporting and cfg.mode != "report":
                log.warning("report mode for agent(s) %s: their allowlist denials are logged as "
                            "would_deny and let through; the CA carries no name constraints, for "
                            "every agent, so that it can serve hosts outside the allowlists",
                            ", ".join(reporting))  # fmt: skip
            if cfg.mode == "report":
                log.warning("report mode: allowlist denials are logged as would_deny and let through; the CA "
                            "carries no name constraints so that it can serve hosts outside the allowlist")  # fmt: skip
            if cfg.ca_vault_pki is not None:
                from egress.capki import issue_ca

                assert client is not None
                ca = issue_ca(client, cfg.ca_vault_pki, ca_constraints(cfg), cfg.ca_validity_hours)
            else:
                ca = EphemeralCA.create_with(ca_constraints(cfg), cfg.ca_validity_hours)
            lock = None
            if private_ca:
                ca_path = private / "egress-ca.pem"
                ca.write_cert(ca_path)
            else:
                ca_path = cfg.ca_cert_path
                lock = CaFileLock.take(ca_path, cfg.path)
                lock.write(ca.trust_pem())
                write_agent_files(cfg, ca.trust_pem(), system_trust_bundle())
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            if client is not None:
                client.abandon()
            raise
        if refresher is not None and refresh:
            refresher.start()
        rt = cls(
            policy=build_policy(cfg, credentials, sha256=cfg.sha256),
            secrets=store,
            ca=ca,
            audit=audit or AuditWriter(cfg.audit_path, cfg.audit_format),
            private_dir=private,
            ca_path=ca_path,
            ca_lock=lock,
            upstream_trust=trust,
            metrics=metrics or Metrics(),
            vault=refresher,
            minter=minter,
        )
        rt.audit.workload = workload
        if audit is None and (cfg.audit_syslog is not None or cfg.audit_otlp is not None):
            from egress.auditsinks import make_sinks

            # rt.metrics at the time of the error: a worker counts in its own registry.
            rt.audit.sinks = make_sinks(cfg.audit_syslog, cfg.audit_otlp,
                                        lambda sink: rt.metrics.audit_sink_errors.labels(sink).inc())  # fmt: skip
        # The secret index's automata are built now, before anything listens (and before
        # workers fork, so that they share its pages), not by the first request.
        rt.index()
        return rt

    # The policy in force, by part (a request's own: addons.base.policy_of).

    @property
    def config(self) -> Config:
        return self.policy.config

    @property
    def allowlist(self) -> Allowlist:
        return self.policy.default_view.allowlist

    @property
    def credentials(self) -> Credentials | None:
        return self.policy.credentials

    @property
    def resolver(self) -> Resolver:
        return self.policy.resolver

    def view(self, agent: str | None) -> AgentView | None:
        """The view a request of ``agent`` is decided with; None when agents are configured
        and ``agent`` is not one of them (the caller refuses)."""
        return self.policy.view(agent)

    def client_agent(self, client_id: str) -> str | None:
        """The agent a client connection is: the fixed one, the one its source address
        names (looked up in the policy in force, so a reload applies at once), or the one
        its CONNECT or its client certificate proved."""
        identity = self.config.identity
        if identity is not None and identity.fixed is not None:
            return identity.fixed
        if identity is not None and identity.source_addresses:
            return source_agent(self.client_addresses.get(client_id), self.policy.sources)
        return self.principals.get(client_id)

    def client_view(self, client_id: str) -> AgentView | None:
        """The view of a connection (hooks that see a connection, not a request)."""
        return self.view(self.client_agent(client_id))

    def forms(self) -> list[SecretForms]:
        """Every secret's encoded forms (current and previous values), recomputed only when a
        value changes."""
        return list(self.index().forms)

    def index(self) -> SecretIndex:
        """Every form of every loaded secret, for one-pass searches (egress.secretindex);
        rebuilt only when a value or the policy changes. The event loop and worker threads
        both call it: the versions and the index built from them are stored as one pair,
        and one thread builds at a time, so no caller keeps an index older than the store's
        values."""
        key, index = self._indexed
        if key == (self.policy.generation, self.secrets.version):
            return index
        with self._index_lock:
            # Read first: a change meanwhile rebuilds again.
            policy, key = self.policy, (self.policy.generation, self.secrets.version)
            if self._indexed[0] != key:
                specs = policy.config.secrets
                self._indexed = (key, secretindex.build(
                    [f for s, v in self.secrets.known() for f in value_forms(s.name, v, s.placeholder)],
                    specs,
                    {s.name: self.secrets.get(s.name) for s in specs},
                ))  # fmt: skip
            return self._indexed[1]

    def forms_by_name(self) -> dict[str, list[SecretForms]]:
        return self.index().by_name

    def listening_on(self, host: str, port: int) -> None:
        """Record the proxy's own listener: egress never dials itself."""
        own = (ipaddress.ip_address(host), port)
        resolver = self.policy.resolver
        resolver.policy = AddressPolicy(resolver.policy.allowed, (*resolver.policy.own, own))

    # CAs

    @property
    def cas(self) -> list[EphemeralCA]:
        return [self.ca, *self.more_cas]

    def ca_for(self, host: str) -> EphemeralCA:
        """The CA whose leaf a client accepts for ``host``: the oldest whose constraints
        permit it (clients that read the CA bundle before a reload trust only that one), else
        the newest."""
        for ca in self.cas:
            if permits(ca, host):
                return ca
        return self.cas[-1]

    def ca_bundle(self) -> bytes:
        return trust_bundle(self.cas)

    # reload (egress.reload)

    def install(self, prepared: Prepared) -> None:
        """Put a prepared config in force, in one step on the event loop: its secrets, its
        CA if it needs one, its policy. What can fail (writing the CA bundle and the agent's
        files) is done first, so that a failure changes nothing in force."""
        cfg = prepared.config
        cas = [*self.cas, prepared.new_ca] if prepared.new_ca is not None else self.cas
        bundle = trust_bundle(cas)
        # The agent's files name its placeholders and the CAs: rewritten (atomically) for an
        # agent that starts after the reload; one already running keeps what it read.
        if self.ca_lock is not None:
            if prepared.new_ca is not None:
                self.ca_lock.replace(bundle)
            write_agent_files(cfg, bundle, system_trust_bundle())
        sources: dict[str, SecretSource] = {}
        for spec in cfg.secrets:
            src = prepared.sources.get(spec.name) or self.secrets.sources[spec.name]
            src.spec = spec  # a carried source: its value is the same, its hosts may not be
            sources[spec.name] = src
        vault_sources = [src for spec in cfg.secrets if spec.source.kind == "vault"
                         and spec.mint is None and (src := sources[spec.name])]  # fmt: skip
        if self.vault is not None:
            with self.vault.paused():
                self.secrets.replace(cfg.secrets, sources, prepared.values, prepared.problems)
                self.vault.adopt(vault_sources)  # type: ignore[arg-type]
        else:
            self.secrets.replace(cfg.secrets, sources, prepared.values, prepared.problems)
        self.apply_policy(cfg, prepared.credentials, prepared.new_ca)

    def apply_policy(
        self, cfg: Config, credentials: Credentials | None, new_ca: EphemeralCA | None,
        generation: int | None = None,
    ) -> None:  # fmt: skip
        """The policy of ``cfg`` in force (the parent and, told by it, each worker)."""
        if new_ca is not None:
            self.more_cas.append(new_ca)
        old = self.policy
        generation = old.generation + 1 if generation is None else generation
        self.policy = build_policy(cfg, credentials, generation=generation, sha256=cfg.sha256,
                                   own=old.resolver.policy.own)  # fmt: skip

        # A connection that proved an agent that is gone, or whose token changed, proves
        # nothing any more: its next request is refused (407) and it reconnects.
        # (A client certificate's agent: its client_id changed, or identity did.)
        def proof(c: Config, digests: dict[str, bytes], agent: str) -> object:
            spec = c.agent(agent)
            return (c.identity, digests.get(agent), spec.client_id if spec else None)

        before = old.credentials.digests if old.credentials else {}
        after = credentials.digests if credentials else {}
        for client, agent in list(self.principals.items()):
            if agent not in self.policy.views or proof(old.config, before, agent) != proof(
                cfg, after, agent
            ):
                del self.principals[client]
                self.refusals[client] = Unidentified(
                    Reason.PROXY_AUTH_REQUIRED,
                    "the config changed since this connection proved its agent: connect again",
                )

    def apply_secrets(
        self, specs: tuple[SecretSpec, ...], values: dict[str, SecretValue | None]
    ) -> None:
        """A worker's side of a reload: the parent's secret specs and values."""
        sources = {s.name: self.secrets.sources.get(s.name) or ParentHeld(s) for s in specs}
        kept = {k: v for k, v in values.items() if v is not None}
        problems = {k: "not loaded in the parent" for k, v in values.items() if v is None}
        self.secrets.replace(specs, sources, kept, problems)

    def redact(self, text: str) -> str:
        """Replace every loaded secret value in ``text`` with ``[secret:<name>]``: for text that
        echoes what a client sent (denial bodies, audited paths, error details)."""
        return secretindex.redact(text, self.index())

    def mint_stale(self, name: str) -> None:
        """An upstream refused a minted token (401): mint it again (at most once per
        ``min_refresh_interval_seconds``), here or, in a worker, in the parent."""
        if self.stale_sink is not None:
            self.stale_sink(name)
        elif self.minter is not None:
            self.minter.force(name)

    def close(self) -> None:
        if self.minter is not None:
            self.minter.stop()
        if self.vault is not None:
            assert self.config.vault is not None
            self.vault.stop(revoke=self.config.vault.revoke_on_shutdown)
            self.vault.client.close()
        shutil.rmtree(self.private_dir, ignore_errors=True)
        if self.ca_lock is not None:
            self.ca_lock.release()
        self.audit.close()


def address_policy(cfg: Config) -> AddressPolicy:
    """Address rules under allow and upstream.allow_private are the only ways into private
    ranges (an agent's own address rules: AgentView.private)."""
    return AddressPolicy(allowed=address_ranges(cfg.rules, cfg))


_shared: dict[str, Runtime] = {}


def shared(config_path: str) -> Runtime:
    """One Runtime per config path, for addons loaded into a plain mitmdump with -s."""
    if config_path not in _shared:
        rt = Runtime.start(config_mod.load_or_default(config_path or None))
        atexit.register(rt.close)
        _shared[config_path] = rt
    return _shared[config_path]
