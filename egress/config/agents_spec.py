"""The ``agents:`` and ``identity:`` sections: agents as principals (docs/agents.md).

identity:
  proxy_authorization: true     # explicit mode: each agent sends its own proxy credential
  # or, a sidecar serving one agent:
  # fixed: researcher
agents:
  - name: researcher
    token: {env: EGRESS_AGENT_RESEARCHER}     # or {file: ...}, or {sha256: <hex>}
    allow: [{host: api.github.com}]           # on top of the shared allow:
    secrets: [github_token]                   # the secrets injected for it
    mode: enforce                             # default: the top-level mode
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from egress.config.checker import Checker, file_path
from egress.config.model import (
    AGENT_NAME,
    AgentSpec,
    GroupSpec,
    IdentityConfig,
    ListenTls,
    LockedLayer,
    Rule,
    TokenSpec,
)
from egress.config.rules import covers, parse_rule
from egress.hostnames import HostPattern, IPNetwork, parse_host_pattern

_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _rules(c: Checker, node: Any, key: str) -> list[Rule]:
    rules: list[Rule] = []
    if node is not None and not isinstance(node, list):
        c.err(f"{key}.allow", "must be a list of rules, like the top-level allow:")
        return rules
    for j, rule_node in enumerate(node or []):
        rule = parse_rule(c, rule_node, j, scope=f"{key}.")
        if rule is not None:
            rules.append(rule)
    return rules


def _name(c: Checker, m: dict[str, Any], key: str, taken: list[str], what: str) -> str | None:
    """An agent's or a group's name: valid, and not taken by an earlier one."""
    name = c.typed(m, key, "name", str, None)
    if name is None:
        return None
    if not AGENT_NAME.match(name):
        c.err(f"{key}.name", f"{name!r} must be 1-63 lower-case letters, digits, '.', '_' or "
              "'-', starting and ending with a letter or digit (it appears in audit records "
              "and metrics labels)")  # fmt: skip
        return None
    if name in taken:
        c.err(f"{key}.name", f"{name!r} is defined twice: give each {what} its own name")
        return None
    return name


def parse_groups(c: Checker, node: Any) -> list[GroupSpec]:
    """``groups:``: rules and secrets shared by the agents that name the group."""
    if node is None:
        return []
    if not isinstance(node, list) or not node:
        c.err("groups", "must be a non-empty list of groups, each with a name")
        return []
    groups: list[GroupSpec] = []
    for g, item in enumerate(node):
        key = f"groups[{g}]"
        m = c.mapping(item, key, ("name", "allow", "secrets"), ("name",))
        if m is None or "name" not in m:
            continue
        name = _name(c, m, key, [x.name for x in groups], "group")
        if name is None:
            continue
        rules = _rules(c, m.get("allow"), key)
        grants = c.str_list(m, key, "secrets", allow_empty=True) or []
        groups.append(GroupSpec(g, name, tuple(rules), frozenset(grants)))
    return groups


def parse_locked(c: Checker, node: Any) -> LockedLayer:
    """``locked:``: what no agent's or group's rules can change."""
    if node is None:
        return LockedLayer()
    m = c.mapping(node, "locked", ("deny", "hosts"))
    if m is None:
        return LockedLayer()

    def patterns(name: str) -> list[HostPattern] | None:
        # locked.hosts: [] is meaningful: agents and groups may name no host at all.
        texts = c.str_list(m, "locked", name, allow_empty=name == "hosts")
        if texts is None:
            return None
        out: list[HostPattern] = []
        for j, text in enumerate(texts):
            try:
                out.append(parse_host_pattern(text))
            except ValueError as e:
                c.err(f"locked.{name}[{j}]", str(e))
        return out

    return LockedLayer(tuple(patterns("deny") or ()), _opt_tuple(patterns("hosts")))


def _opt_tuple(items: list[HostPattern] | None) -> tuple[HostPattern, ...] | None:
    return None if items is None else tuple(items)


def check_locked(c: Checker, locked: LockedLayer, agents: list[AgentSpec],
                 groups: list[GroupSpec]) -> None:  # fmt: skip
    """``locked.hosts``: an agent's or a group's rule naming a host outside it is refused."""
    if locked.hosts is None:
        return
    own = [r for a in agents for r in a.rules if r.scope.startswith("agents[")]
    for rule in own + [r for g in groups for r in g.rules]:
        if not any(covers(p, rule.host) for p in locked.hosts):
            c.err(f"{rule.label}.host", f"{rule.host.text!r} is outside locked.hosts "
                  f"({', '.join(p.text for p in locked.hosts)}): the admin's layer allows no "
                  "agent further; ask the admin to add it there")  # fmt: skip


def parse_agents(
    c: Checker, node: Any, base: Path, default_mode: str, groups: list[GroupSpec] | None = None
) -> list[AgentSpec]:
    """The agents, their groups' and their own rules included; secret grants are checked by
    ``check_grants`` once the secrets are known."""
    groups = groups or []
    if node is None:
        return []
    if not isinstance(node, list) or not node:
        c.err("agents", "must be a non-empty list of agents, each with a name")
        return []
    agents: list[AgentSpec] = []
    for i, item in enumerate(node):
        key = f"agents[{i}]"
        m = c.mapping(item, key, ("name", "token", "client_id", "source_addresses", "groups",
                                  "allow", "secrets", "mode"), ("name",))  # fmt: skip
        if m is None or "name" not in m:
            continue
        name = _name(c, m, key, [a.name for a in agents], "agent")
        if name is None:
            continue
        member: list[GroupSpec] = []
        by_name = {g.name: g for g in groups}
        for j, gname in enumerate(c.str_list(m, key, "groups") or []):
            if gname in by_name:
                if by_name[gname] not in member:
                    member.append(by_name[gname])
            else:
                near = difflib.get_close_matches(gname, list(by_name), n=1)
                hint = f"did you mean {near[0]!r}?" if near else (
                    f"groups: {', '.join(by_name)}" if by_name else "no group is defined under groups:"
                )  # fmt: skip
                c.err(f"{key}.groups[{j}]", f"{gname!r} is not a group: {hint}")
        rules = [r for g in member for r in g.rules] + _rules(c, m.get("allow"), key)
        grants = set(c.str_list(m, key, "secrets", allow_empty=True) or [])
        for g in member:
            grants |= g.secrets
        mode = c.choice(m, key, "mode", ("enforce", "report"), default_mode) or default_mode
        token = _parse_token(c, m.get("token"), f"{key}.token", base) if "token" in m else None
        client_id = c.typed(m, key, "client_id", str, None)
        if client_id is not None and (problem := check_client_id(client_id)):
            c.err(f"{key}.client_id", problem)
        sources = _source_networks(c, m, key) if "source_addresses" in m else ()
        agents.append(AgentSpec(i, name, tuple(rules), frozenset(grants), mode, token,
                                tuple(g.name for g in member), client_id, sources))  # fmt: skip
    return agents


def _parse_token(c: Checker, node: Any, key: str, base: Path) -> TokenSpec | None:
    m = c.mapping(node, key, ("sha256", "env", "file"))
    if m is None:
        return None
    given = [k for k in ("sha256", "env", "file") if k in m]
    if len(given) != 1:
        c.err(key, "give exactly one of sha256 (the token's SHA-256, so the config holds no "
              "usable credential), env or file")  # fmt: skip
        return None
    kind = given[0]
    value = c.typed(m, key, kind, str, None)
    if value is None:
        return None
    if kind == "sha256":
        if not _SHA256.match(value):
            c.err(f"{key}.sha256", "must be 64 lower-case hex digits: the output of "
                  "`printf %s \"$TOKEN\" | sha256sum`")  # fmt: skip
            return None
        return TokenSpec("sha256", sha256=value)
    if kind == "env":
        if not _ENV.match(value):
            c.err(f"{key}.env", f"{value!r} is not an environment variable name")
            return None
        return TokenSpec("env", env=value)
    return TokenSpec("file", file=file_path(base, value))


def _source_networks(c: Checker, m: dict[str, Any], key: str) -> tuple[IPNetwork, ...]:
    """An agent's source_addresses: addresses or CIDR ranges (host bits must be zero)."""
    out: list[IPNetwork] = []
    for j, text in enumerate(c.str_list(m, key, "source_addresses") or []):
        try:
            net = ipaddress.ip_network(str(text), strict=True)
        except ValueError as e:
            c.err(f"{key}.source_addresses[{j}]", f"{text!r} is not an address or a range such "
                  f"as 10.0.0.5 or 10.0.1.0/28 ({e})")  # fmt: skip
            continue
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
            c.err(f"{key}.source_addresses[{j}]", f"{text!r}: write an IPv4-mapped range as IPv4")
            continue
        why = _not_an_agent_source(net)
        if why:
            c.err(f"{key}.source_addresses[{j}]", f"{text!r} {why}: give each agent its own "
                  "routed address (e.g. 10.236.0.2, a /32)")  # fmt: skip
            continue
        out.append(net)
    return tuple(out)


WORKLOAD_FIELDS = ("pod", "namespace", "service_account", "node")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _workload_env(c: Checker, node: Any) -> tuple[tuple[str, str], ...]:
    """identity.workload_env: which environment variable holds each field of the sidecar's
    workload (the Downward API's fieldRef: metadata.name, metadata.namespace,
    spec.serviceAccountName, spec.nodeName)."""
    k = "identity.workload_env"
    m = c.mapping(node, k, WORKLOAD_FIELDS)
    if m is None:
        return ()
    if not m:
        c.err(k, f"name at least one of {', '.join(WORKLOAD_FIELDS)}")
    out = []
    for name in WORKLOAD_FIELDS:
        var = c.typed(m, k, name, str, None)
        if var is None:
            continue
        if not _ENV_NAME.match(var):
            c.err(f"{k}.{name}", f"{var!r} is not an environment variable name")
            continue
        out.append((name, var))
    return tuple(out)


def _not_an_agent_source(net: IPNetwork) -> str | None:
    """Why a range cannot stand for agents (None: it can). Link-local addresses are per
    link (any agent can take another's on its own veth, and the node answers it there);
    loopback is the node's own processes; the unspecified, multicast and wide ranges are no
    one's; a zone would only be dropped."""
    a = net.network_address
    if a.is_loopback or a.is_unspecified or a.is_multicast:
        return "is loopback, unspecified or multicast: no agent's"
    link_local = ipaddress.ip_network("fe80::/10" if net.version == 6 else "169.254.0.0/16")
    if a.is_link_local or net.overlaps(link_local):  # type: ignore[arg-type]
        return "is link-local: the same address exists on every link"
    if net.prefixlen < (16 if net.version == 4 else 48):
        return f"is too wide (/{net.prefixlen})"
    return None


def check_client_id(text: str) -> str | None:
    """What is wrong with an agent's client_id (None: nothing): a SPIFFE ID, or the common
    name of a certificate that carries none (egress.identity.certificate_identity)."""
    from egress.identity import spiffe_problem

    if text.startswith("spiffe:"):
        problem = spiffe_problem(text)
        return f"{text!r} is not a SPIFFE ID: {problem}" if problem else None
    if not text or len(text) > 256 or not text.isprintable() or text != text.strip():
        return (f"{text!r} must be a SPIFFE ID (spiffe://trust-domain/path) or a certificate's "
                "common name: printable, at most 256 characters, no surrounding spaces")  # fmt: skip
    return None


CHOOSE = ("choose one: 'proxy_authorization: true', 'client_certificates: true', "
          "'source_addresses: true' or 'fixed: <agent>'")  # fmt: skip


def parse_identity(
    c: Checker, node: Any, agents: list[AgentSpec], listen_mode: str,
    listen_tls: ListenTls | None = None,
) -> IdentityConfig | None:  # fmt: skip
    """How requests are attributed to agents. With agents, one way must be chosen; without,
    there is nothing to choose."""
    if node is None:
        if agents:
            c.err("identity", "with agents: say how egress tells them apart: "
                  "'proxy_authorization: true' (each agent sends its own token as its proxy "
                  "credential), 'client_certificates: true' (each agent's TLS client "
                  "certificate, listen.tls) or 'fixed: <agent>' (a sidecar serving one agent)")  # fmt: skip
        return None
    m = c.mapping(node, "identity", ("proxy_authorization", "client_certificates",
                                     "source_addresses", "fixed", "workload_env"))  # fmt: skip
    if m is None:
        return None
    workload = _workload_env(c, m["workload_env"]) if "workload_env" in m else ()
    if not agents:
        if set(m) - {"workload_env"}:
            c.err(
                "identity", "there are no agents: to attribute requests, define them under agents:"
            )
            return None
        return IdentityConfig(False, None, workload_env=workload)
    proxy_auth = c.typed(m, "identity", "proxy_authorization", bool, False)
    certs = c.typed(m, "identity", "client_certificates", bool, False)
    by_source = c.typed(m, "identity", "source_addresses", bool, False)
    fixed = c.typed(m, "identity", "fixed", str, None)
    names = [a.name for a in agents]
    if [bool(proxy_auth), bool(certs), bool(by_source), fixed is not None].count(True) != 1:
        c.err("identity", CHOOSE)
        return None
    for a in agents:
        if a.source_networks and not by_source:
            c.err(f"agents[{a.index}].source_addresses", "is read only with "
                  "identity.source_addresses: remove it, or identify agents by their addresses")  # fmt: skip
    if by_source:
        if listen_mode != "transparent":
            c.err("identity.source_addresses", "is for transparent mode on a shared node; in "
                  "explicit mode agents prove who they are (proxy_authorization or "
                  "client_certificates): an address is not a credential")  # fmt: skip
        owned: list[tuple[IPNetwork, str]] = []
        for a in agents:
            if not a.source_networks:
                c.err(f"agents[{a.index}].source_addresses", f"agent {a.name!r} needs its "
                      "source addresses (identity.source_addresses)")  # fmt: skip
            for net in a.source_networks:
                for other, who in owned:
                    if who != a.name and net.version == other.version and net.overlaps(other):  # type: ignore[arg-type]
                        c.err(f"agents[{a.index}].source_addresses", f"{net} overlaps {other} "
                              f"of agent {who!r}: one address, one agent")  # fmt: skip
                owned.append((net, a.name))
    for a in agents:
        if a.client_id is not None and not certs:
            c.err(f"agents[{a.index}].client_id", "is read only with identity.client_certificates: "
                  "remove it, or identify agents by their client certificates")  # fmt: skip
    if certs:
        if listen_mode == "transparent":
            c.err("identity.client_certificates", "transparent mode receives the agent's TLS to "
                  "its destination, never to egress: use 'fixed: <agent>' in a sidecar")  # fmt: skip
        elif listen_tls is None or listen_tls.client_ca_file is None:
            c.err("identity.client_certificates", "agents present certificates over TLS to "
                  "egress: set listen.tls (cert_file, key_file) and listen.tls.client_ca_file, "
                  "the CA bundle (e.g. SPIFFE's) that issues them")  # fmt: skip
        seen: dict[str, str] = {}
        for a in agents:
            if a.client_id is None:
                c.err(f"agents[{a.index}].client_id", f"agent {a.name!r} needs a client_id: the "
                      "SPIFFE ID (or common name) of its client certificate")  # fmt: skip
            elif a.client_id in seen:
                c.err(f"agents[{a.index}].client_id", f"{a.client_id!r} is agent "
                      f"{seen[a.client_id]!r}'s already: one certificate identity, one agent")  # fmt: skip
            else:
                seen[a.client_id] = a.name
    if fixed is not None and fixed not in names:
        near = difflib.get_close_matches(fixed, names, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"agents: {', '.join(names)}"
        c.err("identity.fixed", f"{fixed!r} is not an agent: {hint}")
    if fixed is not None and len(agents) > 1:
        c.err("identity.fixed", f"a fixed identity serves one agent, but {len(agents)} are "
              "defined: remove the others, or use 'proxy_authorization: true'")  # fmt: skip
    if proxy_auth:
        if listen_mode == "transparent":
            c.err("identity.proxy_authorization", "transparent mode carries no proxy credential "
                  "(the agent does not know it is proxied): use 'fixed: <agent>' in a sidecar")  # fmt: skip
        for a in agents:
            if a.token is None:
                c.err(f"agents[{a.index}].token", f"agent {a.name!r} needs a token: its proxy "
                      "credential (identity.proxy_authorization)")  # fmt: skip
    if workload and fixed is None:
        c.err("identity.workload_env", "names the one workload a sidecar serves: with agents, "
              "only with 'fixed: <agent>'")  # fmt: skip
    return IdentityConfig(bool(proxy_auth), fixed, bool(certs), bool(by_source), workload)


def check_grants(
    c: Checker, agents: list[AgentSpec], secret_names: list[str], groups: Sequence[GroupSpec] = ()
) -> None:
    """Each agent's and group's secrets: names of defined secrets."""
    owners = [(f"groups[{g.index}]", g.secrets) for g in groups]
    group_grants = {n for g in groups for n in g.secrets}
    owners += [(f"agents[{a.index}]", a.secrets - group_grants) for a in agents]
    for key, names in owners:
        for name in sorted(names):
            if name not in secret_names:
                near = difflib.get_close_matches(name, secret_names, n=1)
                hint = f"did you mean {near[0]!r}?" if near else (
                    f"secrets: {', '.join(secret_names)}" if secret_names else "none is defined"
                )  # fmt: skip
                c.err(f"{key}.secrets", f"{name!r} is not a secret: {hint}")
