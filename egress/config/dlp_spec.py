"""The ``dlp:`` block: outbound data-loss rules (docs/dlp.md)."""

from __future__ import annotations

import difflib
from typing import Any

from egress.config.checker import Checker
from egress.dlp.policy import ACTIONS, SURFACES, DlpConfig, DlpRule, InboundRule
from egress.hostnames import HostPattern, parse_host_pattern

GROUPS = ("all", "credentials", "personal")


def _detectors(c: Checker, m: dict[str, Any], key: str) -> frozenset[str]:
    from egress.dlp.catalogue import catalogue

    by_kind: dict[str, set[str]] = {"credential": set(), "personal": set()}
    for d in catalogue():
        by_kind[d.kind].add(d.name)
    names = sorted(by_kind["credential"] | by_kind["personal"])
    chosen: set[str] = set()
    for j, item in enumerate(c.str_list(m, key, "detectors") or []):
        if item == "all":
            chosen |= set(names)
        elif item == "credentials":
            chosen |= by_kind["credential"]
        elif item == "personal":
            chosen |= by_kind["personal"]
        elif item in names:
            chosen.add(item)
        else:
            near = difflib.get_close_matches(item, [*GROUPS, *names], n=1)
            hint = f"did you mean {near[0]!r}?" if near else "docs/dlp.md lists the detectors"
            c.err(f"{key}.detectors[{j}]", f"{item!r} is not a detector or group "
                  f"({', '.join(GROUPS)}): {hint}")  # fmt: skip
    return frozenset(chosen)


def _rule(c: Checker, node: Any, i: int, agent_names: set[str] | None) -> DlpRule | None:
    key = f"dlp.rules[{i}]"
    m = c.mapping(node, key, ("name", "detectors", "action", "hosts", "agents", "surfaces"),
                  ("detectors", "action"))  # fmt: skip
    if m is None or "detectors" not in m:
        return None
    start = len(c.problems)
    name = c.typed(m, key, "name", str, None)
    detectors = _detectors(c, m, key)
    action = c.choice(m, key, "action", ACTIONS, "block")
    hosts, agents = _hosts_and_agents(c, m, key, agent_names)
    surfaces = c.str_list(m, key, "surfaces") or list(SURFACES)
    for j, s in enumerate(surfaces):
        if s not in SURFACES:
            c.err(f"{key}.surfaces[{j}]", f"{s!r} is not one of {', '.join(SURFACES)}")
    if len(c.problems) > start or action is None:
        return None
    return DlpRule(i, name, detectors, action, hosts, agents, frozenset(surfaces))  # type: ignore[arg-type]


def _hosts_and_agents(c: Checker, m: dict[str, Any], key: str, agent_names: set[str] | None,
                      ) -> tuple[tuple[HostPattern, ...] | None, frozenset[str] | None]:  # fmt: skip
    hosts: list[HostPattern] | None = None
    if "hosts" in m:
        hosts = []
        for j, h in enumerate(c.str_list(m, key, "hosts") or []):
            try:
                hosts.append(parse_host_pattern(h))
            except ValueError as e:
                c.err(f"{key}.hosts[{j}]", str(e))
    agents = None
    if "agents" in m:
        agents = c.str_list(m, key, "agents") or []
        for j, a in enumerate(agents):
            if agent_names is None:
                c.err(f"{key}.agents[{j}]", "there are no agents: define them under agents:, "
                      "or leave agents: out to apply the rule to every request")  # fmt: skip
            elif a not in agent_names:
                near = difflib.get_close_matches(a, sorted(agent_names), n=1)
                hint = (
                    f"did you mean {near[0]!r}?"
                    if near
                    else f"agents: {', '.join(sorted(agent_names))}"
                )
                c.err(f"{key}.agents[{j}]", f"{a!r} is not an agent: {hint}")
    return (tuple(hosts) if hosts is not None else None,
            frozenset(agents) if agents is not None else None)  # fmt: skip


def _inbound(c: Checker, node: Any, i: int, agent_names: set[str] | None) -> InboundRule | None:
    key = f"dlp.inbound[{i}]"
    m = c.mapping(node, key, ("hosts", "agents", "action"))
    if m is None:
        return None
    start = len(c.problems)
    action = c.choice(m, key, "action", ("report", "block"), "report")
    hosts, agents = _hosts_and_agents(c, m, key, agent_names)
    if len(c.problems) > start or action is None:
        return None
    return InboundRule(i, action, hosts, agents)  # type: ignore[arg-type]


def parse_dlp(c: Checker, node: Any, agent_names: set[str] | None) -> DlpConfig | None:
    if node is None:
        return None
    m = c.mapping(node, "dlp", ("rules", "restore_masked", "phone_regions", "inbound"))
    if m is None:
        return None
    raw = m.get("rules", [])
    raw_inbound = m.get("inbound", [])
    if not isinstance(raw, list) or not isinstance(raw_inbound, list) or not (raw or raw_inbound):
        c.err("dlp.rules" if "rules" in m or "inbound" not in m else "dlp.inbound",
              "must be a non-empty list: give rules (detectors, action), inbound rules, or both")  # fmt: skip
        return None
    rules = [r for i, item in enumerate(raw) if (r := _rule(c, item, i, agent_names))]
    inbound = [r for i, item in enumerate(raw_inbound) if (r := _inbound(c, item, i, agent_names))]
    names = [r.name for r in rules if r.name]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        c.err("dlp.rules", f"two rules are named {dup!r}: names must be unique")
    regions: list[str] = []
    for j, region in enumerate(c.str_list(m, "dlp", "phone_regions", allow_empty=True) or []):
        import phonenumbers

        if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            c.err(f"dlp.phone_regions[{j}]", f"{region!r} is not a region code such as US, GB, DE")
        else:
            regions.append(region.upper())
    restore = c.typed(m, "dlp", "restore_masked", bool, False)
    return DlpConfig(tuple(rules), bool(restore), tuple(regions), tuple(inbound))
