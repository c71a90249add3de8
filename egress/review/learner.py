"""The pass behind ``egress learn`` (egress/review/learn.py says what it drafts and why):
``Learner`` reads audit records one at a time, keeps bounded evidence per destination,
and drafts the rules (wildcards too) that would have allowed what it saw.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from publicsuffixlist import PublicSuffixList

from egress.config import Config
from egress.hostnames import is_ip
from egress.policy import Allowlist
from egress.review.auditrecords import (
    ALLOWLIST_REASONS,
    SECRET_REASONS,
    SENT_ERRORS,
    blocked_class,
    canonical,
    clean_code,
    clean_method,
    is_reload,
    is_websocket,
    loads,
    override_methods,
)
from egress.review.drafting import (
    MIN_CHILDREN,
    Blocked,
    DestEvidence,
    RuleDraft,
    allows,
    judged_readings,
    method_key,
    rules_for,
)
from egress.review.topk import SpaceSaving, most_first

WILDCARD_MIN_HOSTS = 3
MAX_DESTINATIONS = 1024
MAX_PATHS = 128
MAX_METHODS = 16
MAX_BLOCKED = 64
MAX_BLOCKED_DESTINATIONS = 4096
MAX_OVERFLOW_DOMAINS = 256
MAX_OVERFLOW_HOSTS = 256

Dest = tuple[str, str, int]  # scheme, host, port


@dataclass
class ProposedRule:
    rule: RuleDraft
    requests: int  # requests seen that it allows (of those drafted)
    hosts: tuple[str, ...]  # the hosts seen (more than one for a wildcard)
    reasons: dict[str, int]  # would_deny / deny reason (or "allowed") -> count
    findings: list[tuple[str, str, str]] = field(default_factory=list)  # id, severity, title


@dataclass
class Refused:
    """Requests refused for a secret reason: never drafted."""

    scheme: str
    host: str
    port: int
    reason: str
    count: int


@dataclass
class Draft:
    source: str
    config: str | None  # the config drafted against (None: a whole allowlist)
    config_rules: int  # how many rules that config has
    records: int
    skipped: int
    drafted: int  # requests the draft is drawn from
    already_allowed: int  # requests the config already allows (with a config)
    rules: list[ProposedRule]
    refused: list[Refused]  # secret-refused, never proposed (most first)
    connects: list[tuple[str, int, str, int]]  # refused CONNECTs: host, port, reason, count
    other: dict[str, int]  # requests refused for other reasons (identity, limits...)
    notes: list[str]
    scored: str  # "" when scored, else why not


class Learner:
    """Feed audit lines, then ``draft``. Memory bounded by the parameters."""

    def __init__(
        self, cfg: Config | None, max_destinations: int = MAX_DESTINATIONS,
        max_paths: int = MAX_PATHS, max_blocked: int = MAX_BLOCKED,
        min_children: int = MIN_CHILDREN,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.allowlist = Allowlist(cfg.rules) if cfg else None
        self.max_destinations, self.max_paths, self.max_blocked = (
            max_destinations, max_paths, max_blocked,
        )  # fmt: skip
        self.min_children = min_children
        self.records = self.skipped = self.drafted = self.already_allowed = 0
        self.dropped = 0  # requests to destinations past the cap
        # Past the cap, a subdomain of a registrable domain is still drafted, into one
        # evidence per (scheme, port, registrable domain): it can only become a wildcard.
        self.overflow: dict[tuple[str, int, str], _Overflow] = {}
        self.evidence: dict[Dest, DestEvidence] = {}
        # reason -> count, per destination and evidence key (method set, websocket)
        self.reasons: dict[Dest, dict[tuple[str, bool], dict[str, int]]] = {}
        self.blocked: dict[Dest, list[Blocked]] = {}
        self.blocked_overflow: set[Dest] = set()
        self.blocked_everything = False  # too many refused destinations to track
        self.refused = SpaceSaving(256)
        self.connects = SpaceSaving(256)
        self.other: dict[str, int] = {}
        self.blocked_addresses = SpaceSaving(64)  # (address, class): never proposed
        self._decided: dict[tuple[Any, ...], bool] = {}

    def feed(self, line: str | bytes) -> None:
        rec = loads(line)
        if type(rec) is not dict or not all(
            type(rec.get(k)) is str for k in ("event", "decision", "reason", "host")
        ):
            if not is_reload(rec):  # a reload record decides nothing (docs/reload.md)
                self.skipped += 1
            return
        self.records += 1
        event, decision = rec["event"], rec["decision"]
        reason = clean_code(rec["reason"])
        would = rec.get("would_deny")
        host = canonical(rec["host"])
        port, scheme = rec.get("port"), rec.get("scheme")
        if host is None or type(port) is not int or not 0 < port < 65536:
            self._other(reason if decision != "allow" else "invalid_host")
            return
        if event in ("connect", "tunnel"):
            if decision == "deny" and reason in ALLOWLIST_REASONS:
                self.connects.add((host, port, reason))
            return
        method, path = clean_method(rec.get("method")), rec.get("path")
        if (
            event != "request" or scheme not in ("https", "http") or method is None
            or type(path) is not str or not path.startswith("/")
        ):  # fmt: skip
            if decision != "allow":
                self._other(reason)
            return
        dest = (scheme, host, port)
        if decision == "deny" and reason in SECRET_REASONS:
            self.refused.add((scheme, host, port, reason))
            self._block(dest, Blocked(host, method, (), reason), path)
            return
        if not (
            decision == "allow"
            or (decision == "error" and reason in SENT_ERRORS)
            or (decision == "deny" and reason in ALLOWLIST_REASONS)
        ):
            self._other(reason)
            return
        cls = blocked_class(host)
        if cls:
            self.blocked_addresses.add((host, cls))
            return
        websocket = is_websocket(rec)
        methods = [method]
        if "method_not_allowed" in (reason, would):
            methods += override_methods(rec.get("detail"))
        if self.allowlist is not None and self._allowed(dest, methods, path, websocket):
            self.already_allowed += 1
            return
        ev = self.evidence.get(dest)
        if ev is None:
            if len(self.evidence) >= self.max_destinations:
                self._overflow(dest, methods, path, websocket, would, reason)
                return
            ev = self.evidence[dest] = DestEvidence(MAX_METHODS, self.max_paths, self.max_blocked)
            self.reasons[dest] = {}
        self.drafted += 1
        ev.count += 1
        key = ev.add_request(methods, path, websocket)
        if key is not None:
            _count(self.reasons[dest], key, would, reason)

    def _overflow(
        self, dest: Dest, methods: list[str], path: str, websocket: bool, would: Any, reason: str
    ) -> None:
        scheme, host, port = dest
        reg = None if is_ip(host) else _psl().privatesuffix(host)
        if not reg or reg == host:
            self.dropped += 1
            return
        key = (scheme, port, reg)
        ov = self.overflow.get(key)
        if ov is None:
            if len(self.overflow) >= MAX_OVERFLOW_DOMAINS:
                self.dropped += 1
                return
            ov = self.overflow[key] = _Overflow(
                DestEvidence(MAX_METHODS, self.max_paths, self.max_blocked), host.split(".", 1)[1]
            )
        ov.add_host(host)
        ov.ev.count += 1
        key = ov.ev.add_request(methods, path, websocket)
        if key is not None:
            _count(ov.reasons, key, would, reason)
        self.drafted += 1

    def _other(self, reason: str) -> None:
        self.other[reason] = self.other.get(reason, 0) + 1

    def _block(self, dest: Dest, b: Blocked, path: str) -> None:
        readings = judged_readings(path)
        if readings is None:
            return  # no rule with paths allows it; a rule without paths is never generalised to
        items = self.blocked.get(dest)
        if items is None:
            if len(self.blocked) >= MAX_BLOCKED_DESTINATIONS:
                self.blocked_everything = True
                return
            items = self.blocked[dest] = []
        b = Blocked(b.host, b.method, tuple(readings), b.reason)
        if b in items:
            return
        if len(items) >= self.max_blocked:
            self.blocked_overflow.add(dest)
            return
        items.append(b)

    def _allowed(self, dest: Dest, methods: list[str], path: str, websocket: bool) -> bool:
        assert self.allowlist is not None
        key = (dest, tuple(methods), path.split("?", 1)[0], websocket)
        got = self._decided.get(key)
        if got is None:
            scheme, host, port = dest
            got = self.allowlist.decide(
                scheme, host, port, methods[0], path, websocket, methods[1:]
            ).allowed
            if len(self._decided) > 16_384:
                self._decided.clear()
            self._decided[key] = got
        return got

    # -----------------------------------------------------------------------------------
    # Drafting

    def draft(self, source: str) -> Draft:
        proposed: list[ProposedRule] = []
        notes: list[str] = []
        taken: set[Dest] = set()
        wildcards, unplaced = self._wildcards()
        dropped, drafted = self.dropped + unplaced, self.drafted - unplaced
        for wc in wildcards:
            proposed += wc
            for p in wc:
                taken |= {(p.rule.scheme, h, p.rule.port) for h in p.hosts}
        for dest, ev in self.evidence.items():
            if dest in taken:
                continue
            scheme, host, port = dest
            ev.blocked_overflow = dest in self.blocked_overflow or self.blocked_everything
            blocked = self.blocked.get(dest, [])
            rules = rules_for(ev, host, port, scheme, blocked, ev.exact_covers, self.min_children)
            for rule in rules:
                n = sum(ev.key_counts.get(k, 0) for k in rule.sources)
                why = _merge([self.reasons[dest].get(k, {}) for k in rule.sources])
                proposed.append(ProposedRule(rule, n, (host,), why))
            if not rules and ev.unjudgeable:
                notes.append(
                    f"{ev.unjudgeable} request(s) to {scheme}://{host}:{port} left out: a path "
                    "egress cannot judge or no rule can name; only a rule without paths "
                    "allows those"
                )
        proposed.sort(key=_rule_order)
        if dropped:
            notes.append(
                f"{dropped} request(s) to destinations past the first "
                f"{self.max_destinations} were not drafted: learn from a shorter log"
            )
        if self.blocked_addresses.counts:
            seen = self.blocked_addresses.top(8)
            n = sum(self.blocked_addresses.counts.values())
            notes.append(
                f"{n} request(s) to addresses in a blocked class not proposed (a rule naming "
                "one opens it to the agent): " + ", ".join(f"{h} ({c})" for h, c in seen)
            )
        if self.blocked_everything:
            notes.append(
                "more destinations were refused for secret reasons than are tracked: "
                "nothing was generalised"
            )
        refused = [Refused(s, h, p, r, self.refused.counts[(s, h, p, r)])
                   for s, h, p, r in self.refused.top(50)]  # fmt: skip
        connects = [(h, p, r, self.connects.counts[(h, p, r)]) for h, p, r in self.connects.top(50)]
        return Draft(
            source=source, config=self.cfg.path if self.cfg else None,
            config_rules=len(self.cfg.rules) if self.cfg else 0, records=self.records,
            skipped=self.skipped, drafted=drafted, already_allowed=self.already_allowed,
            rules=proposed, refused=refused, connects=connects,
            other=most_first(self.other),
            notes=notes, scored="",
        )  # fmt: skip

    def _wildcards(self) -> tuple[list[list[ProposedRule]], int]:
        """Wildcard rules where the evidence supports one (see the module docstring), and
        how many requests past the destination cap no wildcard could take."""
        unplaced = 0
        if self.blocked_everything:
            return [], sum(ov.ev.count for ov in self.overflow.values())
        groups: dict[tuple[str, int, str], list[str]] = {}
        for scheme, host, port in self.evidence:
            if is_ip(host):
                continue
            reg = _psl().privatesuffix(host)
            if reg and reg != host:
                groups.setdefault((scheme, port, reg), []).append(host)
        out: list[list[ProposedRule]] = []
        for scheme, port, reg in sorted(set(groups) | set(self.overflow)):
            remaining = sorted(set(groups.get((scheme, port, reg), [])))
            ov = self.overflow.get((scheme, port, reg))
            if ov is not None:
                members = [h for h in remaining if h.endswith("." + ov.parent)]
                rules = []
                if len(members) + len(ov.hosts) >= WILDCARD_MIN_HOSTS:
                    rules = self._wildcard(scheme, port, reg, ov.parent, members, ov)
                if rules:
                    out.append(rules)
                    remaining = [h for h in remaining if h not in members]
                else:
                    unplaced += ov.ev.count
            while len(remaining) >= WILDCARD_MIN_HOSTS:
                base, members = _best_parent(remaining, reg)
                if base is None:
                    break
                remaining = [h for h in remaining if h not in members]
                rules = self._wildcard(scheme, port, reg, base, members)
                if rules:
                    out.append(rules)
        return out, unplaced

    def _wildcard(
        self, scheme: str, port: int, reg: str, base: str, members: list[str],
        ov: _Overflow | None = None,
    ) -> list[ProposedRule]:  # fmt: skip
        pattern = "*." + base
        suffix = "." + base
        member_set = set(members) | (ov.hosts if ov else set())
        # A secret-refused host the wildcard would match but that was never seen allowed, or
        # a member with more refusals than are kept.
        for s, h, p in self.blocked:
            if s == scheme and p == port and h.endswith(suffix) and h not in member_set:
                return []
        if any((scheme, h, port) in self.blocked_overflow for h in member_set):
            return []
        merged = DestEvidence(MAX_METHODS, self.max_paths, self.max_blocked)
        blocked: list[Blocked] = []
        reasons: dict[tuple[str, bool], dict[str, int]] = {}
        sources = [(h, self.evidence[(scheme, h, port)], self.reasons[(scheme, h, port)])
                   for h in members]  # fmt: skip
        if ov is not None:
            sources.append(("", ov.ev, ov.reasons))
            blocked += [b for (s, h, p), bs in self.blocked.items() if s == scheme and p == port
                        and h in ov.hosts and h not in members for b in bs]  # fmt: skip
        for h, ev, why in sources:
            merged.merge(ev)
            blocked += self.blocked.get((scheme, h, port), [])
            for key, counts in why.items():
                reasons[key] = _merge([reasons.get(key, {}), counts])

        def covers(b: Blocked) -> bool:
            ev = self.evidence.get((scheme, b.host, port))
            return ev is not None and ev.exact_covers(b)  # past the cap: no exact evidence

        rules = rules_for(merged, pattern, port, scheme, blocked, covers, self.min_children)
        for r in rules:
            for b in blocked:
                if allows(r, b) and not covers(b):
                    return []  # the wildcard would newly allow a refused request: per host
        seen = sorted(member_set)
        shown = ", ".join(seen[:5]) + (f" and {len(seen) - 5} more" if len(seen) > 5 else "")
        count = f"more than {len(seen)}" if ov and ov.more else str(len(seen))
        note = (
            f"wildcard: {count} distinct subdomains of {reg} were seen ({shown}); "
            f"{pattern} also allows every other subdomain: list the hosts instead if that is "
            "too broad"
        )
        out = []
        for r in rules:
            r.notes.insert(0, note)
            n = sum(merged.key_counts.get(k, 0) for k in r.sources)
            why = _merge([reasons.get(k, {}) for k in r.sources])
            out.append(ProposedRule(r, n, tuple(seen), why))
        return out


def _count(
    reasons: dict[tuple[str, bool], dict[str, int]], key: tuple[str, bool], would: Any,
    reason: str,
) -> None:  # fmt: skip
    why = clean_code(would) if type(would) is str else reason
    counts = reasons.setdefault(key, {})
    counts[why] = counts.get(why, 0) + 1


def _merge(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return most_first(out)


class _Overflow:
    """What was seen under one registrable domain past the destination cap: one evidence,
    a bounded sample of the hosts, and their common parent domain."""

    def __init__(self, ev: DestEvidence, parent: str) -> None:
        self.ev = ev
        self.reasons: dict[tuple[str, bool], dict[str, int]] = {}
        self.hosts: set[str] = set()
        self.more = 0  # distinct hosts past the sample (an upper bound: repeats count)
        self.parent = parent

    def add_host(self, host: str) -> None:
        if host in self.hosts:
            return
        if len(self.hosts) < MAX_OVERFLOW_HOSTS:
            self.hosts.add(host)
        else:
            self.more += 1
        parent = host.split(".", 1)[1]
        while not (parent == self.parent or parent.endswith("." + self.parent)):
            self.parent = self.parent.split(".", 1)[1]


def _best_parent(hosts: list[str], reg: str) -> tuple[str | None, list[str]]:
    """The deepest parent domain (at or below ``reg``) with at least WILDCARD_MIN_HOSTS of
    ``hosts`` strictly under it, and those hosts."""
    counts: dict[str, list[str]] = {}
    for h in hosts:
        labels = h.split(".")
        for i in range(1, len(labels)):
            parent = ".".join(labels[i:])
            if len(parent) < len(reg):
                break
            counts.setdefault(parent, []).append(h)
    best = [(p, hs) for p, hs in counts.items() if len(hs) >= WILDCARD_MIN_HOSTS]
    if not best:
        return None, []
    parent, members = max(best, key=lambda kv: (kv[0].count("."), len(kv[1]), kv[0]))
    return parent, members


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def _rule_order(p: ProposedRule) -> tuple[Any, ...]:
    r = p.rule
    host = r.host[2:] if r.host.startswith("*.") else r.host
    return (
        ".".join(reversed(host.split("."))), r.host.startswith("*."), r.port, r.scheme,
        r.websocket, [method_key(m) for m in r.methods or ()],
    )  # fmt: skip
