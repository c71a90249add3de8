"""What egress does with a finding: the ``dlp:`` rules, and the strongest action wins.

A rule names detectors (or the groups ``credentials``, ``personal``, ``all``), an action,
and optionally the hosts, agents and surfaces it is limited to. Every rule that covers a
finding applies and the strongest action is taken: ``block`` over ``mask`` over
``report``, so adding a rule can only make egress stricter. A request whose fields are
encoded deeper than egress decodes cannot be shown to be clean: every ``block`` or
``mask`` rule that applies to it blocks it (detector ``too_deeply_encoded``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from egress.dlp.finding import Finding
from egress.hostnames import HostPattern

Action = Literal["block", "mask", "report"]
ACTIONS: tuple[Action, ...] = ("block", "mask", "report")
_RANK = {"report": 0, "mask": 1, "block": 2}
SURFACES = ("body", "url", "headers")
TOO_DEEP = "too_deeply_encoded"


@dataclass(frozen=True)
class DlpRule:
    index: int
    name: str | None
    detectors: frozenset[str]  # expanded detector names
    action: Action
    hosts: tuple[HostPattern, ...] | None  # None: every host
    agents: frozenset[str] | None  # None: every agent (and none)
    surfaces: frozenset[str]

    @property
    def label(self) -> str:
        return self.name or f"dlp.rules[{self.index}]"

    def applies(self, host: str, agent: str | None) -> bool:
        if self.hosts is not None and not any(h.matches(host) for h in self.hosts):
            return False
        return self.agents is None or (agent is not None and agent in self.agents)


@dataclass(frozen=True)
class InboundRule:
    """``dlp.inbound[i]``: responses from these hosts are read for prompt injection
    (egress.dlp.inbound); ``report`` flags, ``block`` withholds."""

    index: int
    action: Action  # report | block
    hosts: tuple[HostPattern, ...] | None
    agents: frozenset[str] | None

    @property
    def label(self) -> str:
        return f"dlp.inbound[{self.index}]"

    def applies(self, host: str, agent: str | None) -> bool:
        if self.hosts is not None and not any(h.matches(host) for h in self.hosts):
            return False
        return self.agents is None or (agent is not None and agent in self.agents)


@dataclass(frozen=True)
class DlpConfig:
    rules: tuple[DlpRule, ...]
    restore_masked: bool = False
    phone_regions: tuple[str, ...] = ()
    inbound: tuple[InboundRule, ...] = ()

    def active(self, host: str, agent: str | None) -> tuple[DlpRule, ...]:
        return tuple(r for r in self.rules if r.applies(host, agent))

    def inbound_for(self, host: str, agent: str | None) -> tuple[InboundRule, ...]:
        return tuple(r for r in self.inbound if r.applies(host, agent))


@dataclass(frozen=True)
class Decision:
    finding: Finding
    action: Action
    rule: DlpRule

    def to_dict(self) -> dict[str, object]:
        return {**self.finding.to_dict(), "action": self.action, "rule": self.rule.label}


def surfaces_of(rules: tuple[DlpRule, ...], strict: bool = False) -> frozenset[str]:
    """The surfaces some rule inspects (``strict``: with block or mask)."""
    return frozenset(s for r in rules if not strict or r.action != "report" for s in r.surfaces)


def decide(findings: list[Finding], rules: tuple[DlpRule, ...]) -> list[Decision]:
    """Each finding some rule covers, with the strongest action of the rules that do."""
    out: list[Decision] = []
    for f in findings:
        best: DlpRule | None = None
        for r in rules:
            if f.surface not in r.surfaces:
                continue
            covers = f.detector in r.detectors or (f.detector == TOO_DEEP and r.action != "report")
            if covers and (best is None or _RANK[r.action] > _RANK[best.action]):
                best = r
        if best is not None:
            action: Action = "block" if f.detector == TOO_DEEP else best.action
            out.append(Decision(f, action, best))
    return out


def too_deep(surface: str, where: str) -> Finding:
    return Finding(TOO_DEEP, "evasion", "ENCODED", where, surface, "nested encodings", None, "")


def strongest(decisions: list[Decision]) -> Action | None:
    return max((d.action for d in decisions), key=_RANK.__getitem__, default=None)
