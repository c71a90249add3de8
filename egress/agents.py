"""Agents as principals (docs/agents.md): what each agent may do, and how it is known.

Pure construction from the config: each agent's view (the shared rules and its groups' and
its own, its granted secrets, its mode, its private ranges, the locked layer) and the
digests of the agents' proxy credentials. egress.runtime holds them for a running proxy;
egress.checkcmd decides with them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from egress.config import Config, Rule
from egress.errors import CredentialLoadError
from egress.hostnames import HostPattern, IPNetwork
from egress.identity import Credentials, token_digest
from egress.policy import Allowlist, Decision
from egress.reasons import Reason


@dataclass(frozen=True)
class AgentView:
    """What one agent may do: the shared rules and its own, the secrets granted to it, its
    mode. Without agents: one view with every rule and every secret (``granted`` None)."""

    name: str | None
    allowlist: Allowlist
    granted: frozenset[str] | None
    mode: str
    # The private ranges its requests may reach (address rules and upstream.allow_private);
    # None: the resolver's own policy (no agents).
    private: tuple[IPNetwork, ...] | None = None
    # With locked.hosts: the hosts this agent may be let through to in report mode (those
    # and the shared rules' hosts); None: no such ceiling.
    ceiling: tuple[HostPattern, ...] | None = None

    def enforces(self, d: Decision, host: str) -> bool:
        """Is this allowlist denial enforced? Always in enforce mode; in report mode, the
        admin's locked hosts, and hosts outside locked.hosts and the shared rules."""
        if self.mode != "report" or d.reason is Reason.HOST_LOCKED:
            return True
        return self.ceiling is not None and not any(p.matches(host) for p in self.ceiling)


def address_ranges(rules: tuple[Rule, ...], cfg: Config) -> tuple[IPNetwork, ...]:
    nets = [
        r.host.network for r in rules if r.host.kind == "address" and r.host.network is not None
    ]
    return (*nets, *cfg.allow_private)


def agent_views(cfg: Config) -> tuple[AgentView, dict[str, AgentView]]:
    """(the view without agents, each agent's view). An agent's address rules open private
    ranges for its own requests only."""
    locked = cfg.locked.deny
    ceiling = None
    if cfg.locked.hosts is not None:
        ceiling = cfg.locked.hosts + tuple(r.host for r in cfg.rules)
    default = AgentView(None, Allowlist(cfg.rules, locked), None, cfg.mode)
    views = {}
    for a in cfg.agents:
        rules = cfg.rules + a.rules
        views[a.name] = AgentView(
            a.name,
            Allowlist(rules, locked),
            a.secrets,
            a.mode,
            address_ranges(rules, cfg),
            ceiling,
        )
    return default, views


def load_credentials(
    cfg: Config, before: Config | None = None, kept: Credentials | None = None
) -> Credentials | None:
    """Each agent's token digest (identity.proxy_authorization); the tokens themselves are
    not kept. Raises CredentialLoadError naming the agent and the source.

    A reload (``before``, ``kept``: the config and digests in force) keeps the digest of an
    agent whose ``token: {env: ...}`` did not change: egress removed that variable from its
    environment at start. Files are read again: a rotated token file takes effect."""
    if cfg.identity is None or not cfg.identity.proxy_authorization:
        return None
    digests: dict[str, bytes] = {}
    for a in cfg.agents:
        t = a.token
        assert t is not None  # the config requires one
        was = before.agent(a.name) if before is not None else None
        if t.kind == "env" and was is not None and was.token == t and kept is not None:
            if a.name in kept.digests:
                digests[a.name] = kept.digests[a.name]
                continue
        where = f"agents[{a.index}].token ({t.describe()})"
        if t.kind == "sha256":
            assert t.sha256 is not None
            digests[a.name] = bytes.fromhex(t.sha256)
            continue
        if t.kind == "env":
            value = os.environ.get(t.env or "")
            if not value:
                raise CredentialLoadError(f"{cfg.path}: {where}: the variable is not set or empty")
        else:
            try:
                value = (t.file or Path()).read_text().strip()
            except OSError as e:
                raise CredentialLoadError(f"{cfg.path}: {where}: {e.strerror}") from None
            if not value:
                raise CredentialLoadError(f"{cfg.path}: {where}: the file is empty")
        digests[a.name] = token_digest(value)
    return Credentials(digests)


def locked_networks(cfg: Config) -> tuple[IPNetwork, ...]:
    """locked.deny's address patterns: no name may lead egress to them."""
    return tuple(
        p.network for p in cfg.locked.deny if p.kind == "address" and p.network is not None
    )


# An RFC 1123 subdomain: what Kubernetes allows for pod, namespace, service account and node
# names (a namespace is the stricter label, which this also admits).
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def read_workload(cfg: Config, environ: Mapping[str, str]) -> dict[str, str] | None:
    """identity.workload_env's values (a sidecar's pod, namespace, service account, node,
    from the Downward API), for every audit record; None when not configured. A variable
    that is unset, empty or not a plain name stops the start, naming the key and the fix."""
    pairs = cfg.identity.workload_env if cfg.identity is not None else ()
    if not pairs:
        return None
    fields = {"pod": "metadata.name", "namespace": "metadata.namespace",
              "service_account": "spec.serviceAccountName", "node": "spec.nodeName"}  # fmt: skip
    out: dict[str, str] = {}
    for name, var in pairs:
        value = environ.get(var, "")
        if not value:
            raise CredentialLoadError(
                f"identity.workload_env.{name}: ${var} is not set; in the pod, set it from the "
                f"Downward API (env: - name: {var}, valueFrom: {{fieldRef: {{fieldPath: "
                f"{fields[name]}}}}})"
            )
        if len(value) > 253 or not _K8S_NAME.fullmatch(value):
            raise CredentialLoadError(f"identity.workload_env.{name}: ${var} is not a "
                                      "Kubernetes name (RFC 1123: lowercase letters, digits, "
                                      "'-' and '.', at most 253 characters)")  # fmt: skip
        out[name] = value
    return out
