"""Findings: what in a config widens what an agent can reach or leak, each with a stable
id, a severity, where it is written and a concrete fix.

Each check is one small function over the parsed config (and the reach matrix); the
domain knowledge (which hosts take user content, relay data or front other sites; which
wildcards are broad) comes from ``egress.review.domains`` and its data files.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from egress.addresses import BLOCKED_CLASSES, METADATA, AddressPolicy
from egress.config import DEFAULT_PORTS, Config, Rule, SecretSpec
from egress.config.rules import covers
from egress.hostnames import IPNetwork, parse_host_pattern
from egress.policy import path_matches
from egress.review import domains
from egress.review.model import Finding, ReachEntry
from egress.review.reach import location, reach_entries

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Kind:
    """One finding id: its default severity and what it is about (SARIF rules, docs)."""

    id: str
    severity: str
    summary: str


KINDS: dict[str, Kind] = {k.id: k for k in (
    Kind("report_mode", "high", "The allowlist is not enforced (mode: report)"),
    Kind("wildcard_broad", "high", "A wildcard spans a registrable domain shared by many tenants"),
    Kind("exfiltration_host", "high", "An allowed host relays or publishes whatever it is sent"),
    Kind("domain_fronting", "medium", "An allowed host is on a CDN reported to allow domain fronting"),
    Kind("write_to_user_content", "high", "Write methods allowed on a host that stores user content"),
    Kind("secret_on_wildcard", "high", "A secret is bound to a wildcard host"),
    Kind("secret_over_http", "high", "A secret may be injected into plain-HTTP requests"),
    Kind("secret_in_stored_body", "high", "A secret is substituted in bodies sent to a host that stores content"),
    Kind("metadata_reachable", "critical", "A cloud metadata address is reachable"),
    Kind("private_range_opened", "medium", "A private or special address range is opened"),
    Kind("user_content_host", "medium", "An allowed host serves content anyone can publish"),
    Kind("file_upload_api", "medium", "A model provider's file-upload API is allowed"),
    Kind("code_host_write", "medium", "A code host's write API is allowed"),
    Kind("upstream_ca_trusted", "medium", "A CA the config brings is trusted for upstreams"),
    Kind("credential_host_pinned", "low", "A credential's host is sent to an address the config chooses"),
    Kind("secret_in_query", "medium", "A secret is substituted in the query string"),
    Kind("secret_in_body", "medium", "A secret is substituted in request bodies"),
    Kind("no_foreign_credential_check", "medium", "A bound host accepts the agent's own credentials"),
    Kind("scrubbing_relaxed", "medium", "Responses egress cannot scrub are passed (allow_unscrubbable)"),
    Kind("websocket_allowed", "medium", "WebSocket upgrades are allowed"),
    Kind("plain_http", "medium", "Plain HTTP is allowed"),
    Kind("non_default_port", "low", "A port other than 443 (https) or 80 (http) is allowed"),
    Kind("dead_secret", "low", "A secret can never be injected"),
    Kind("dead_rule", "low", "A rule can never let a request out"),
    Kind("rule_duplicate", "low", "Two rules are the same"),
    Kind("rule_shadowed", "info", "A rule allows nothing another rule does not already allow"),
)}  # fmt: skip

# What each domain category (egress.review.domains) means as a finding.
CATEGORY_FINDING = {
    "paste": "exfiltration_host",
    "webhook_relay": "exfiltration_host",
    "tunnel": "exfiltration_host",
    "url_shortener": "exfiltration_host",
    "dynamic_dns": "exfiltration_host",
    "file_drop": "exfiltration_host",
    "dns_over_https": "exfiltration_host",
    "user_content": "user_content_host",
    "raw_content": "user_content_host",
    "object_store": "user_content_host",
    "file_upload_api": "file_upload_api",
    "code_host_write": "code_host_write",
    "domain_fronting": "domain_fronting",
}
# Categories where anything sent is kept for others to read.
STORING = {"paste", "webhook_relay", "user_content", "object_store", "code_host_write",
           "file_upload_api", "file_drop"}  # fmt: skip


def _finding(cfg: Config, kind: str, key: str, subject: str, title: str, explanation: str,
             fix: str, severity: str | None = None) -> Finding:  # fmt: skip
    return Finding(
        id=kind, severity=severity or KINDS[kind].severity, title=title,
        location=location(cfg, key), explanation=explanation, fix=fix, subject=subject,
    )  # fmt: skip


def _writes(rule: Rule) -> bool:
    return rule.methods is None or bool(WRITE_METHODS & set(rule.methods))


def _methods_text(rule: Rule) -> str:
    return "any method" if rule.methods is None else ", ".join(rule.methods)


Check = Callable[[Config, list[ReachEntry]], Iterator[Finding]]


def check_mode(cfg: Config, reach: list[ReachEntry]) -> Iterator[Finding]:
    if cfg.mode == "report":
        yield _finding(cfg, "report_mode", "mode", "mode",
                       "mode: report lets every request the allowlist refuses through",
                       "In report mode denials are only logged (would_deny), and the CA is made "
                       "without name constraints: the allowlist protects nothing.",
                       "Set mode: enforce once `egress learn` has drafted the rules you need.")  # fmt: skip
        return
    for agent in cfg.agents:
        if agent.mode == "report":
            yield _finding(cfg, "report_mode", f"agents[{agent.index}].mode", "report",
                           f"agent {agent.name!r} is in report mode: every request its allowlist "
                           "refuses goes through",
                           "Its denials are only logged (would_deny), and the CA, one for every "
                           "agent, is made without name constraints.",
                           f"Set agents[{agent.index}].mode: enforce once `egress learn` has "
                           "drafted the rules it needs.")  # fmt: skip


def check_wildcards(cfg: Config, reach: list[ReachEntry]) -> Iterator[Finding]:
    for rule in cfg.all_rules:
        broad = domains.broad_wildcard(rule.host.text)
        if broad is None:
            continue
        yield _finding(cfg, "wildcard_broad", f"{rule.label}.host", rule.host.text,
                       f"{rule.host.text} allows every host under {broad.registrable}",
                       broad.reason,
                       f"List the exact hosts the agent needs under {broad.registrable} instead "
                       f"of {rule.host.text} (`egress learn` drafts them from an audit log).")  # fmt: skip


def check_domain_facts(cfg: Config, reach: list[ReachEntry]) -> Iterator[Finding]:
    for rule in cfg.all_rules:
        if rule.host.kind == "address":
            continue
        seen: set[str] = set()
        for fact in _facts(rule.host.text, rule.methods, rule.paths):
            kind = CATEGORY_FINDING.get(fact.category)
            if kind is None or kind in seen:
                continue
            seen.add(kind)
            severity = None
            if kind == "code_host_write" and not all(
                _guarded(cfg, rule, h) for h in ("authorization", *fact.credential_headers)
            ):
                # No secret refuses other credentials here: the agent writes with any token
                # it is handed (to a repository of someone else's choosing).
                severity = "high"
            where = f" ({', '.join(fact.paths)})" if fact.paths else ""
            title = domains.categories().get(fact.category, fact.category)
            explanation = f"{fact.reason} Source: {fact.source.rstrip('.')}."
            if kind == "domain_fronting":
                explanation += FRONTING_NOTE
            if severity == "high":
                explanation += (" No secret bound to this host refuses other credentials, so "
                                "the agent can write with a token of its own.")  # fmt: skip
            yield _finding(cfg, kind, f"{rule.label}.host", rule.host.text,
                           f"{rule.host.text}{where}: {title} ({fact.matched})",
                           explanation, _fact_fix(rule, fact), severity)  # fmt: skip
            if fact.category in STORING - {"code_host_write", "file_upload_api"} and _writes(rule):
                yield _write_finding(cfg, rule, fact)


def _guarded(cfg: Config, rule: Rule, header: str) -> bool:
    """Does a secret bound to every host of ``rule`` refuse any ``header`` but its placeholder?"""
    return any(s.require_placeholder and header in s.auth_headers
               and any(covers(h, rule.host) for h in s.hosts) for s in cfg.secrets)  # fmt: skip


def _write_finding(cfg: Config, rule: Rule, fact: domains.HostFact) -> Finding:
    """Write methods on a host that keeps what it is sent. Where publishing there takes an
    account (a site list such as LOTS, not an anonymous paste or bucket) and a secret bound
    to the host refuses every credential but its placeholder, the agent can write only as
    that secret's account: still a channel, but not to a place of the agent's choosing."""
    # Every header the host's service takes credentials in, by our data for the host.
    needed = {"authorization", "cookie"}.union(
        *(f.credential_headers for f in domains.facts_for(rule.host.text))
    )
    guards = [s.name for s in cfg.secrets if s.require_placeholder
              and needed <= set(s.auth_headers)
              and any(covers(h, rule.host) for h in s.hosts)]  # fmt: skip
    account_only = fact.category == "user_content" and fact.source.startswith("MISP") and guards
    explanation = "An agent can upload data there for anyone to fetch later."
    if account_only:
        explanation = (
            f"Publishing there takes an account, and egress refuses every credential (Authorization "
            f"and Cookie) on "
            f"{rule.host.text} but the placeholder of {', '.join(guards)}: the agent can write "
            "only as that account, which someone watching it may notice, but it can write."
        )
    return _finding(cfg, "write_to_user_content", f"{rule.label}.methods", rule.host.text,
                    f"{_methods_text(rule)} allowed on {rule.host.text}, which stores what it "
                    "is sent", explanation,
                    f"Restrict {rule.label} to methods: [GET, HEAD] (or to the paths that "
                    "must write), or remove it.",
                    "medium" if account_only else None)  # fmt: skip


FRONTING_NOTE = (
    " egress refuses a Host header that differs from the host it decided on, which stops "
    "classic fronting through it; the finding stands because such a CDN may route on other "
    "headers or paths, and its shared names serve every customer."
)


def _facts(host: str, methods: tuple[str, ...] | None, paths: tuple[str, ...] | None
           ) -> list[domains.HostFact]:  # fmt: skip
    """The domain facts that hold for the hosts a rule names. A list of whole sites (the
    LOTS list names ``github.com``, meaning its subdomains too) gives way where our own
    data judges the name more precisely (``api.github.com``: code host write API, gists)."""
    found = domains.facts_for(host, methods, paths)
    if not any(f.source.startswith("egress/") for f in domains.facts_for(host)):
        return found
    out = []
    for fact in found:
        site_list = fact.source.startswith("MISP") and fact.category == "user_content"
        under = not fact.matched.startswith(".") and host.lstrip("*.") != fact.matched
        if not (site_list and under):
            out.append(fact)
    return out


def _fact_fix(rule: Rule, fact: domains.HostFact) -> str:
    if fact.write_only:
        return f"Restrict {rule.label} to methods: [GET, HEAD] unless the agent must write there."
    if fact.paths:
        return (f"Restrict {rule.label} to the paths the agent needs (paths: [...]) so that "
                f"{', '.join(fact.paths)} stays refused.")  # fmt: skip
    return f"Remove {rule.label} unless the agent needs {rule.host.text}; prefer a narrower host."


def check_secrets(cfg: Config, reach: list[ReachEntry]) -> Iterator[Finding]:
    for spec in cfg.secrets:
        key = f"secrets[{spec.index}]"
        mine = [e for e in reach if e.secret == spec.name]
        for j, h in enumerate(spec.hosts):
            if h.kind == "address" and h.network is not None and h.network.num_addresses > 1:
                yield _finding(cfg, "secret_on_wildcard", f"{key}.hosts[{j}]", spec.name,
                               f"secret {spec.name} is injected on {h.network.num_addresses:,} "
                               f"addresses ({h.text})",
                               "Every address in the range receives the real credential, "
                               "including ones rented or reassigned to someone else later.",
                               f"Bind {spec.name} to the exact names (or single addresses) that "
                               "need it.")  # fmt: skip
            if h.kind == "wildcard":
                yield _finding(cfg, "secret_on_wildcard", f"{key}.hosts[{j}]", spec.name,
                               f"secret {spec.name} is injected on every host under {h.text}",
                               "Any subdomain, including ones created later or run by someone "
                               "else, receives the real credential.",
                               f"Bind {spec.name} to the exact hosts that need it.")  # fmt: skip
        if any("http" in e.schemes for e in mine):
            yield _finding(cfg, "secret_over_http", f"{key}.allow_http", spec.name,
                           f"secret {spec.name} may be injected into plain-HTTP requests",
                           "Over plain HTTP anyone on the path reads the real credential, and the "
                           "host is only what the request claims.",
                           f"Remove allow_http from {key} and use https.")  # fmt: skip
        for surface in ("query", "body"):
            if surface not in spec.surfaces:
                continue
            stored = [
                e.host for e in mine
                if any(f.category in STORING for f in _facts(e.host, e.methods, e.paths))
            ]  # fmt: skip
            if surface == "body" and stored:
                yield _finding(cfg, "secret_in_stored_body", f"{key}.inject", spec.name,
                               f"secret {spec.name} is substituted in bodies sent to "
                               f"{', '.join(dict.fromkeys(stored))}, which stores content",
                               "An agent that writes the placeholder into a comment, gist or file "
                               "makes egress publish the real credential there.",
                               f"Inject {spec.name} in headers only, or bind it to hosts that do "
                               "not store what they are sent.")  # fmt: skip
                continue
            yield _finding(cfg, f"secret_in_{surface}", f"{key}.inject", spec.name,
                           f"secret {spec.name} is substituted in the request {surface}",
                           "The upstream may log or echo the " + surface + ", and the agent chooses "
                           "where in it the placeholder goes.",
                           f"Inject {spec.name} in headers if the API accepts it there.")  # fmt: skip
        if spec.require_placeholder and mine and "authorization" not in spec.auth_headers:
            yield _finding(cfg, "no_foreign_credential_check", f"{key}.auth_headers", spec.name,
                           f"{spec.name}'s hosts accept an Authorization header the agent brings",
                           "auth_headers leaves out authorization, so the agent can log in to a "
                           "bound host with a bearer token or Basic login of its own.",
                           f"Add authorization to {key}.auth_headers.")  # fmt: skip
        if not spec.require_placeholder and mine:
            yield _finding(cfg, "no_foreign_credential_check", f"{key}.require_placeholder",
                           spec.name,
                           f"{spec.name}'s hosts accept credentials the agent brings itself",
                           "With require_placeholder: false the agent can log in to a bound host "
                           "with an account of its own and write there.",
                           f"Remove require_placeholder: false from {key}.")  # fmt: skip
        if spec.allow_unscrubbable and mine:
            yield _finding(cfg, "scrubbing_relaxed", f"{key}.allow_unscrubbable", spec.name,
                           f"responses egress cannot scrub pass on {spec.name}'s flows",
                           "A response in an encoding egress cannot decode may carry the real "
                           "value back to the agent.",
                           f"Remove allow_unscrubbable from {key}.")  # fmt: skip
        if not mine:
            yield _finding(cfg, "dead_secret", key, spec.name,
                           f"secret {spec.name} can never be injected",
                           "No rule allows its hosts over a scheme it is injected on, so its "
                           "placeholder only ever gets requests refused.",
                           f"Bind {spec.name} to an allowed https host, or remove it.")  # fmt: skip


def _opened(cfg: Config) -> list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    nets = [(f"{r.label}.host", r.host.network) for r in cfg.all_rules
            if r.host.kind == "address" and r.host.network is not None]  # fmt: skip
    nets += [(f"upstream.allow_private[{j}]", n) for j, n in enumerate(cfg.allow_private)]
    return nets


# IPv6 ranges that carry an IPv4 address, and where: egress judges such an address by the
# IPv4 address inside it too (egress.addresses.embedded_ipv4), so the review must as well.
_EMBEDDINGS = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), 96),  # IPv4-mapped: bits 96-127
    (ipaddress.IPv6Network("64:ff9b::/96"), 96),  # NAT64
    (ipaddress.IPv6Network("64:ff9b:1::/48"), 96),  # local-use NAT64
    (ipaddress.IPv6Network("2002::/16"), 16),  # 6to4: bits 16-47
    (ipaddress.IPv6Network("2001::/32"), 32),  # Teredo: the server, bits 32-63
)
_TEREDO = ipaddress.IPv6Network("2001::/32")


def ipv4_views(net: IPNetwork) -> list[ipaddress.IPv4Network]:
    """The IPv4 ranges an opened range reaches: itself, or what its IPv6 addresses embed."""
    if isinstance(net, ipaddress.IPv4Network):
        return [net]
    views = []
    for prefix, start in _EMBEDDINGS:
        if not net.overlaps(prefix):
            continue
        inner = net if net.prefixlen >= prefix.prefixlen else prefix
        bits = min(32, max(0, inner.prefixlen - start))
        value = (int(inner.network_address) >> (96 - start)) & 0xFFFFFFFF
        views.append(ipaddress.IPv4Network((value, bits), strict=False))
    if net.overlaps(_TEREDO):
        # Teredo's client address: the last 32 bits, inverted.
        inner = net if net.prefixlen >= _TEREDO.prefixlen else _TEREDO
        bits = min(32, max(0, inner.prefixlen - 96))
        value = ~int(inner.network_address) & 0xFFFFFFFF
        views.append(ipaddress.IPv4Network((value, bits), strict=False))
    return views


def _overlaps(net: IPNetwork, targets: tuple[IPNetwork, ...]) -> bool:
    views: list[IPNetwork] = [net, *ipv4_views(net)]
    return any(v.version == t.version and v.overlaps(t) for v in views for t in targets)


def check_addresses(cfg: Config, reach: list[ReachEntry]) -> Iterator[Finding]:
    for key, net in _opened(cfg):
        embedded = list(dict.fromkeys(str(v) for v in ipv4_views(net) if v != net))
        via = f" (it embeds IPv4 {', '.join(embedded)})" if embedded else ""
        if _overlaps(net, METADATA):
            yield _finding(cfg, "metadata_reachable", key, str(net),
                           f"{net} includes a cloud metadata address{via}",
                           "The metadata service hands out the machine's own cloud credentials "
                           "to anyone who asks.",
                           f"Narrow {net} so that it leaves out {', '.join(map(str, METADATA))}.")  # fmt: skip
        classes = [name for name, nets in BLOCKED_CLASSES
                   if name != "metadata" and _overlaps(net, nets)]  # fmt: skip
        if classes:
            size = max(
                [net.num_addresses] + [2 ** (32 - int(v.prefixlen)) for v in ipv4_views(net)]
            )
            broad = size > 256
            yield _finding(cfg, "private_range_opened", key, str(net),
                           f"{net} opens {', '.join(classes)} addresses{via}",
                           "Hosts there are inside your network, out of the internet's reach; an "
                           "agent may reach internal services"
                           + (f" across {size:,} addresses." if broad else "."),
                           f"Name the one service the agent needs (a /32 or /128) instead of {net}.",
                           "high" if broad else None)  # fmt: skip


def check_rule_shape(cfg: Config, reach: list[ReachEntry]) -> Iterator[Finding]:
    for rule in cfg.all_rules:
        odd = [p for p in rule.ports if p not in {DEFAULT_PORTS[s] for s in rule.schemes}]
        if odd:
            yield _finding(cfg, "non_default_port", f"{rule.label}.ports", rule.host.text,
                           f"{rule.host.text} is allowed on port(s) {', '.join(map(str, odd))}",
                           "Services on other ports are often admin, debug or internal "
                           "interfaces rather than the public API.",
                           f"Check that {rule.label} needs port(s) {odd}; remove the others.")  # fmt: skip
        if "http" in rule.schemes:
            yield _finding(cfg, "plain_http", f"{rule.label}.schemes", rule.host.text,
                           f"{rule.host.text} is allowed over plain HTTP",
                           "Plain HTTP can be read and changed on the way, and its host is only "
                           "the request's claim in transparent mode.",
                           f"Use schemes: [https] in {rule.label} if the host serves https.")  # fmt: skip
        if rule.websocket:
            yield _finding(cfg, "websocket_allowed", f"{rule.label}.websocket", rule.host.text,
                           f"WebSocket upgrades are allowed to {rule.host.text}",
                           "After the upgrade, messages flow both ways for as long as the "
                           "connection lasts; egress checks them for secrets only, not for "
                           "method or path.",
                           f"Remove websocket: true from {rule.label} unless the API needs it.")  # fmt: skip
        dead = _why_dead(cfg, rule)
        if dead:
            yield _finding(cfg, "dead_rule", rule.label, rule.host.text,
                           f"{rule.label} ({rule.host.text}) can never let a request out",
                           dead, f"Remove {rule.label}, or fix upstream.resolve / "
                           "upstream.allow_private so that its host can be reached.")  # fmt: skip


def _why_dead(cfg: Config, rule: Rule) -> str | None:
    """Why every request this rule allows is refused anyway, from the config alone: its
    name's static answers (upstream.resolve) are all addresses egress does not dial, or
    ``dns: static`` gives it no answer at all."""
    if rule.host.kind == "address":
        return None
    policy = AddressPolicy(allowed=tuple(n for _, n in _opened(cfg)))
    names = [n for n in cfg.resolve if rule.host.matches(n)]
    if rule.host.kind == "wildcard" and cfg.dns != "static":
        names = []  # other names under it resolve through DNS: one static answer decides nothing
    verdicts = []
    for name in names:
        refused = [(a, policy.blocked(ipaddress.ip_address(a))) for a in cfg.resolve[name]]
        if not all(why for _, why in refused):
            return None  # one name under the rule is dialled: the rule is alive
        listed = ", ".join(f"{a} ({why})" for a, why in refused)
        verdicts.append(f"upstream.resolve answers {name} with {listed} only")
    if verdicts:
        return ("; ".join(verdicts) + ": addresses egress does not dial unless an address rule "
                "or upstream.allow_private opens them.")  # fmt: skip
    if cfg.dns == "static" and not names:
        return (f"upstream.dns is static and upstream.resolve has no answer for "
                f"{rule.host.text}: egress cannot resolve it.")  # fmt: skip
    return None


def _rule_covers(a: Rule, b: Rule) -> bool:
    """Does rule ``a`` allow every request rule ``b`` allows?"""
    if not covers(a.host, b.host):
        return False
    if not set(b.ports) <= set(a.ports) or not set(b.schemes) <= set(a.schemes):
        return False
    if a.methods is not None and (b.methods is None or not set(b.methods) <= set(a.methods)):
        return False
    if b.websocket and not a.websocket:
        return False
    if a.paths is None:
        return True
    if b.paths is None:
        return False
    return all(any(path_matches(p, q) for p in a.paths) for q in b.paths)


def check_redundant_rules(cfg: Config, reach: list[ReachEntry]) -> Iterator[Finding]:
    for b in cfg.all_rules:
        for a in cfg.all_rules:
            if a is b or not _rule_covers(a, b):
                continue
            same = _rule_covers(b, a)
            if same and a.index > b.index:
                continue  # report a duplicate once, on the later rule
            kind = "rule_duplicate" if same else "rule_shadowed"
            yield _finding(cfg, kind, b.label, b.host.text,
                           f"{b.label} ({b.host.text}) is {'the same as' if same else 'covered by'} "
                           f"{a.label} ({a.host.text})",
                           "It allows nothing the other rule does not, so narrowing it changes "
                           "nothing; a reviewer may read it as a limit that does not exist.",
                           f"Remove {b.label}, or narrow {a.label} if {b.label} says what you meant.")  # fmt: skip
            break


def _shown(cfg: Config, path: Path) -> str:
    """A file the config names, as it would be written there: relative to the config's
    folder when inside it (reports must not depend on where the checkout is)."""
    folder = Path(cfg.path).resolve().parent
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def check_upstream(cfg: Config, reach: list[ReachEntry]) -> Iterator[Finding]:
    """upstream.ca_files and upstream.resolve decide who egress believes a host is. With
    both, a credential can be handed to a server the config (not the host's owner) chose."""
    for j, path in enumerate(cfg.upstream_ca_files):
        yield _finding(cfg, "upstream_ca_trusted", f"upstream.ca_files[{j}]", _shown(cfg, path),
                       f"certificates signed by {path.name} are trusted for every upstream",
                       "Whoever holds that CA's key can stand in for any allowed host, the "
                       "hosts credentials are bound to included.",
                       "Trust it only if it is your own internal CA, and keep it out of "
                       "configs that reach public hosts.")  # fmt: skip
    for name, addrs in cfg.resolve.items():
        riders = sorted({e.secret for e in reach if parse_host_pattern(e.host).matches(name)
                         or e.host == name})  # fmt: skip
        if not riders:
            continue
        yield _finding(cfg, "credential_host_pinned", f"upstream.resolve.{name}", name,
                       f"{name}, where {', '.join(riders)} is injected, is sent to "
                       f"{', '.join(addrs)}",
                       "egress connects to the address the config gives instead of what DNS "
                       "says; the certificate is still checked"
                       + (", but against CAs this config adds (upstream.ca_files)."
                          if cfg.upstream_ca_files else "."),
                       f"Remove upstream.resolve.{name} unless that address is the real host.",
                       "high" if cfg.upstream_ca_files else None)  # fmt: skip


CHECKS: tuple[Check, ...] = (
    check_mode, check_wildcards, check_domain_facts, check_secrets, check_addresses,
    check_rule_shape, check_redundant_rules, check_upstream,
)  # fmt: skip


def evaluate(cfg: Config, reach: list[ReachEntry] | None = None) -> list[Finding]:
    reach = reach_entries(cfg) if reach is None else reach
    found = [f for check in CHECKS for f in check(cfg, reach)]
    unique = {(f.id, f.location.file, f.location.key, f.subject): f for f in found}
    return sorted(unique.values(), key=Finding.sort_key)


def secret_of(cfg: Config, name: str) -> SecretSpec | None:
    return next((s for s in cfg.secrets if s.name == name), None)
