"""The reach matrix: where each credential can be injected, and what rides on each rule.

A secret reaches a rule when some host both match (the rule allows requests to it and the
secret is bound to it) over a scheme the secret is injected on: https always, http only
with ``allow_http`` and never in transparent mode. The entry's host is the narrower of the
two patterns: the hosts where both hold.
"""

from __future__ import annotations

from egress.config import Config, Rule, SecretSpec
from egress.hostnames import HostPattern
from egress.review.model import HostEntry, Location, ReachEntry

# The order surfaces are listed in everywhere.
SURFACE_ORDER = ("headers", "query", "body", "websocket", "signature")


def location(cfg: Config, key: str) -> Location:
    """Where a merged key path is written (file, line, key in that file); a key the file
    does not spell out (a default) is placed at its nearest written parent."""
    probe = key
    while probe and probe not in cfg.origins:
        probe = _parent(probe)
    origin = cfg.origins.get(probe)
    if origin is None:
        return Location(cfg.path, None, key)
    return Location(origin.file, origin.line, origin.key + key[len(probe) :])


def _parent(key: str) -> str:
    if key.endswith("]"):
        return key[: key.rindex("[")]
    return key.rsplit(".", 1)[0] if "." in key else ""


def overlap(a: HostPattern, b: HostPattern) -> HostPattern | None:
    """The narrower pattern when every host of it is matched by the other, else None.

    Two host patterns either nest or are disjoint (exact names, ``*.suffix`` wildcards and
    address ranges all nest), so the intersection is always one of the two."""
    if a.kind == "address" or b.kind == "address":
        if a.kind != b.kind or a.network is None or b.network is None:
            return None
        if a.network.version != b.network.version or not a.network.overlaps(b.network):
            return None
        return a if a.network.prefixlen >= b.network.prefixlen else b
    if a.kind == "name":
        return a if b.matches(a.text) else None
    if b.kind == "name":
        return b if a.matches(b.text) else None
    # two wildcards: "*.x.a.com" lies inside "*.a.com"
    if a.text.endswith(b.text[1:]):
        return a
    if b.text.endswith(a.text[1:]):
        return b
    return None


def injection_schemes(cfg: Config, spec: SecretSpec, rule: Rule) -> tuple[str, ...]:
    allowed = (
        ("https", "http") if spec.allow_http and cfg.listen_mode != "transparent" else ("https",)
    )
    return tuple(s for s in rule.schemes if s in allowed)


def credential_kind(spec: SecretSpec) -> str:
    if spec.scheme != "static":
        return spec.scheme
    return f"minted {spec.mint.type}" if spec.mint else "static"


def surfaces(spec: SecretSpec, rule: Rule) -> tuple[str, ...]:
    if spec.scheme in ("aws_sigv4", "hmac", "azure_shared_key"):
        return ("signature",)  # nothing substituted: egress signs the request
    got = set(spec.surfaces)
    if rule.websocket and got & {"headers", "query"}:
        got.add("websocket")  # the upgrade request (headers, URL) carries it
    return tuple(s for s in SURFACE_ORDER if s in got)


def reach_entries(cfg: Config) -> list[ReachEntry]:
    """Each secret on each rule it can ride; with agents, per agent: the secrets granted to
    it on the shared rules and its own (the agent axis)."""
    if not cfg.agents:
        return _reach(cfg, cfg.secrets, cfg.rules, None)
    out: list[ReachEntry] = []
    for agent in cfg.agents:
        granted = [s for s in cfg.secrets if s.name in agent.secrets]
        out += _reach(cfg, granted, cfg.rules + agent.rules, agent.name)
    return out


def _reach(cfg: Config, secrets: tuple[SecretSpec, ...] | list[SecretSpec],
           rules: tuple[Rule, ...], agent: str | None) -> list[ReachEntry]:  # fmt: skip
    out: list[ReachEntry] = []
    for spec in secrets:
        for rule in rules:
            schemes = injection_schemes(cfg, spec, rule)
            if not schemes:
                continue
            for bound in spec.hosts:
                host = overlap(rule.host, bound)
                if host is None:
                    continue
                out.append(ReachEntry(
                    secret=spec.name, host=host.text, rule=rule.label, ports=rule.ports,
                    schemes=schemes, methods=rule.methods, paths=rule.paths,
                    surfaces=surfaces(spec, rule), kind=credential_kind(spec), agent=agent,
                ))  # fmt: skip
    return out


def host_entries(cfg: Config, reach: list[ReachEntry]) -> list[HostEntry]:
    riding: dict[str, list[str]] = {}
    for e in reach:
        names = riding.setdefault(e.rule, [])
        if e.secret not in names:
            names.append(e.secret)
    return [
        HostEntry(
            rule=r.label,
            host=r.host.text,
            ports=r.ports,
            schemes=r.schemes,
            methods=r.methods,
            paths=r.paths,
            websocket=r.websocket,
            secrets=tuple(riding.get(r.label, ())),
            location=location(cfg, r.label),
        )  # fmt: skip
        for r in cfg.all_rules
    ]
