"""The policy in force: everything a request is decided with, as one object.

A reload (egress.reload) builds a new ``Policy`` beside the one in force and swaps the
runtime's reference in one assignment; a request takes the policy in force when its first
hook runs and keeps it to the end (addons.base.policy_of), so a reload never changes the
rules under a request in flight, and no request sees half of one policy and half of the
next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from egress.addresses import AddressPolicy
from egress.agents import AgentView, address_ranges, agent_views, locked_networks
from egress.config import Config
from egress.hostnames import IPNetwork
from egress.identity import Credentials
from egress.resolver import Resolver


@dataclass(frozen=True, eq=False)
class Policy:
    config: Config
    default_view: AgentView  # the view without agents (no agents configured)
    views: Mapping[str, AgentView]  # each agent's
    credentials: Credentials | None  # agents' proxy-token digests (identity)
    resolver: Resolver  # static answers, private ranges and locked ranges of this config
    generation: int = 0  # 0 at start, +1 at each reload that took effect
    sha256: str = ""  # of the config's files (egress.reload.config_sha256)
    # identity.source_addresses: each agent's networks (no two overlap)
    sources: tuple[tuple[IPNetwork, str], ...] = ()

    def view(self, agent: str | None) -> AgentView | None:
        """The view a request of ``agent`` is decided with; None when agents are configured
        and ``agent`` is not one of them (the caller refuses)."""
        if not self.config.agents:
            return self.default_view
        return self.views.get(agent or "")

    def __repr__(self) -> str:
        return f"Policy(generation={self.generation}, config={self.config.path!r})"


def build_policy(
    cfg: Config, credentials: Credentials | None, *, generation: int = 0, sha256: str = "",
    own: tuple[tuple[object, int], ...] = (),
) -> Policy:  # fmt: skip
    """The policy of ``cfg``. ``own``: the proxy's own listeners, which it never dials
    (carried from the policy it replaces)."""
    default_view, views = agent_views(cfg)
    resolver = Resolver(
        cfg.resolve,
        AddressPolicy(allowed=address_ranges(cfg.rules, cfg), own=own),  # type: ignore[arg-type]
        static_only=cfg.dns == "static",
        locked=locked_networks(cfg),
    )
    sources = tuple((net, a.name) for a in cfg.agents for net in a.source_networks)
    return Policy(cfg, default_view, views, credentials, resolver, generation, sha256, sources)
