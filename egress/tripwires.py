"""Tripwires: what egress does when an agent is caught trying to leak (docs/tripwires.md).

A trigger is a canary credential seen going out (a planted value bound to no host, in any
encoding, to any host), or a request refused as ``secret_to_unbound_host``,
``foreign_credential`` or ``dlp_blocked``. Each trigger the config names fires the
configured responses: end the agent's connections, quarantine it (every further request
refused, ``agent_quarantined``, until an operator clears it), and revoke the Vault lease of
a secret whose real value was seen going out, so the leaked value dies (its refresher
reads a new one).

Pure state and decisions; the addon (addons/tripwire.py) hooks them into flows, and the
parent process (egress.workers) holds the one quarantine book every worker follows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from egress.audit import now_iso
from egress.reasons import Reason

TRIGGERS = ("canary", "secret_to_unbound_host", "foreign_credential", "dlp_blocked")
ACTIONS = ("end_connections", "quarantine", "revoke_leaked_secret")
# A refusal's reason code -> the trigger it is
REASON_TRIGGERS = {
    Reason.SECRET_TO_UNBOUND_HOST.value: "secret_to_unbound_host",
    Reason.FOREIGN_CREDENTIAL.value: "foreign_credential",
    Reason.DLP_BLOCKED.value: "dlp_blocked",
    Reason.CANARY_TRIPPED.value: "canary",
}
# Without agents, the proxy serves one (a sidecar, egress exec): it is quarantined whole.
EVERYONE = "*"


@dataclass(frozen=True)
class Canary:
    name: str
    value: str = field(repr=False)  # a planted fake: never a working credential
    env: str | None = None  # the variable egress exec and the agent's env file plant it in

    def __repr__(self) -> str:
        return f"Canary({self.name!r}, <redacted>)"


@dataclass(frozen=True)
class TripwireConfig:
    canaries: tuple[Canary, ...] = ()
    triggers: frozenset[str] = frozenset(TRIGGERS)
    actions: frozenset[str] = frozenset(ACTIONS)
    # SHA-256 (hex) of the token an operator sends to clear a quarantine on the admin
    # listener; None: only a restart clears one.
    operator_token_sha256: str | None = None


@dataclass(frozen=True)
class Quarantine:
    agent: str  # an agent's name, or EVERYONE
    trigger: str
    since: float
    flow_id: str
    secret: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"agent": self.agent, "trigger": self.trigger, "since": self.since,
                "flow_id": self.flow_id, "secret": self.secret}  # fmt: skip

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Quarantine:
        return cls(str(d["agent"]), str(d["trigger"]), float(d["since"]), str(d["flow_id"]),
                   d.get("secret"))  # fmt: skip


class QuarantineBook:
    """The quarantined agents of this process. The first trip of an agent is the one
    kept (what it did first is what the operator needs to see)."""

    def __init__(self) -> None:
        self._entries: dict[str, Quarantine] = {}
        # In a worker: its own trips the parent has not confirmed yet (a broadcast already
        # on its way must not erase them).
        self._unconfirmed: dict[str, Quarantine] = {}

    def __repr__(self) -> str:
        return f"QuarantineBook({sorted(self._entries)})"

    def add(self, entry: Quarantine, unconfirmed: bool = False) -> bool:
        """True when the agent was not quarantined before (``unconfirmed``: a worker's own
        trip, kept until the parent's book holds it)."""
        if entry.agent in self._entries:
            return False
        self._entries[entry.agent] = entry
        if unconfirmed:
            self._unconfirmed[entry.agent] = entry
        return True

    def of(self, agent: str | None) -> Quarantine | None:
        """The quarantine that stops ``agent``'s requests (None: it may go on)."""
        return self._entries.get(EVERYONE) or (self._entries.get(agent) if agent else None)

    def clear(self, agent: str | None = None) -> list[str]:
        """Clear one agent (None: all); the agents cleared."""
        self._unconfirmed.clear()
        if agent is None:
            cleared = sorted(self._entries)
            self._entries.clear()
            return cleared
        return [agent] if self._entries.pop(agent, None) is not None else []

    def entries(self) -> list[Quarantine]:
        return sorted(self._entries.values(), key=lambda q: q.since)

    def to_wire(self) -> list[dict[str, Any]]:
        return [q.to_wire() for q in self.entries()]

    def replace(self, wire: list[dict[str, Any]]) -> None:
        """The parent's book; this worker's unconfirmed trips stay until it holds them."""
        entries = {q.agent: q for q in map(Quarantine.from_wire, wire)}
        for agent in [a for a in self._unconfirmed if a in entries]:
            del self._unconfirmed[agent]
        self._entries = {**self._unconfirmed, **entries}


def quarantine_key(agent: str | None, agents_configured: bool) -> str:
    """Whom a trip quarantines: the agent that sent it or, without agents, everyone (the
    one agent this proxy serves). A request no agent proved quarantines nobody: it was
    refused already, and an unidentified client cannot be told from the others."""
    if not agents_configured:
        return EVERYONE
    return agent or ""


def new_quarantine(agent_key: str, trigger: str, flow_id: str, secret: str | None) -> Quarantine:
    return Quarantine(agent_key, trigger, time.time(), flow_id, secret)


def revoke_leaked(rt: Any, secret: str, trigger: str) -> None:
    """In the process that holds Vault: kill the leaked value (egress.vault)."""
    vault = getattr(rt, "vault", None)

    def handled(name: str, outcome: str) -> None:
        rt.audit.write({"time": now_iso(), "event": "tripwire", "trigger": trigger,
                        "secret": name, "lease": outcome})  # fmt: skip

    if vault is not None:
        vault.on_leak_handled = handled  # set before the refresher thread may call it
    if vault is None or not vault.revoke_leaked(secret):
        handled(secret, "not_vault: rotate it where it comes from")
