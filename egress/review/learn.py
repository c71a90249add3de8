"""``egress learn``: draft the allowlist an audit log's traffic needed.

From the audit log of a ``mode: report`` run (or any run), draft the smallest allowlist
that would have allowed every request seen; with ``--config``, only the rules to add to
that config. A reviewer approves a draft instead of writing one.

Which records are evidence
    A ``request`` record the proxy sent upstream or would have: ``decision: allow`` (with
    or without ``would_deny``), an ``error`` after the allowlist let it through
    (``upstream_error``, ``dns_failure``, ``secret_unavailable``, ``unscrubbable_response``),
    and, in an enforce-mode log, a ``deny`` by the allowlist itself (``host_not_allowed``,
    ``path_not_allowed``...). With a config, a request that config already allows is left
    out. Refused CONNECTs (enforce mode: no method or path known) are listed in the header,
    never drafted.

What is never proposed
    A rule for a request refused for a secret reason (``placeholder_to_unbound_host``,
    ``secret_to_unbound_host``, ``foreign_credential``...): those are listed in the header.
    And no generalisation (path prefix, ``HEAD`` next to ``GET``, wildcard host) is kept
    when it would newly allow such a request: a generalised rule that would is redrafted
    from the exact paths. The draft allows a secret-refused request only when a rule for
    the exact requests seen would allow it too.

How a rule is drawn
    Requests are grouped by (scheme, host, port); each group gets one rule per set of
    methods whose paths generalise to the same prefixes (a method is not allowed on paths
    it was not seen on). ``GET`` brings ``HEAD`` along. A WebSocket handshake (status 101, or
    ``websocket_not_allowed``) gets a rule with ``websocket: true``.

Paths, generalised only as far as the evidence supports (``generalise`` in auditjoin.py)
    Each path is split into segments. A path seen itself is its own prefix (egress
    prefixes cover everything below them). Below a prefix that was not itself seen, when
    ``MIN_CHILDREN`` (3) or more distinct next segments were seen, the rule lists ``prefix/``;
    otherwise it lists the distinct deeper prefixes. So ``/repos/a/b/issues`` and
    ``/repos/c/d/pulls`` stay two prefixes; ``/repos/a``, ``/repos/b``, ``/repos/c`` become
    ``/repos/``. The root is never generalised: a rule lists ``/`` only when ``/`` itself
    was requested (a prefix of ``/`` is every path) or more distinct first segments were
    seen than are kept; never a rule without ``paths``, which would also allow the paths
    egress cannot judge. Every reading of a path egress decides on (percent-decoded, NFKC,
    ``;params`` cut, slashes merged) is evidence, so the draft allows what the proxy will
    check; a path egress cannot judge (dot segments, encoded slashes) is counted, not
    drafted, since only a rule without paths allows it.

Wildcard hosts
    Only when at least ``WILDCARD_MIN_HOSTS`` (3) distinct subdomains of one registrable
    domain (Public Suffix List, private section included, as egress/hostnames.py uses it)
    were seen on one scheme and port, as ``*.<their longest common parent>``, and only when
    no secret-refused request would be newly allowed by it; a comment says so.

Scoring
    The draft is built into a config with ``egress.config.parse`` (with ``--config``, its
    rules are appended to that config's, secrets and all), and ``review_config``
    (egress/review/analyze.py) reviews it; each finding located on a proposed rule is
    written above it as a comment (id, severity, title).

Bounded memory: at most ``max_destinations`` destinations, ``max_paths`` paths per method of
one (cut to shorter prefixes beyond, see ``PathSet``), ``max_blocked`` secret-refused
requests per destination (beyond, that destination is drafted without generalisation).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from publicsuffixlist import PublicSuffixList

from egress.config import Config, load_or_default, parse
from egress.errors import EgressError
from egress.hostnames import is_ip
from egress.policy import Allowlist
from egress.review.auditjoin import (
    ALLOWLIST_REASONS,
    MIN_CHILDREN,
    SECRET_REASONS,
    SENT_ERRORS,
    Blocked,
    DestEvidence,
    PathSet,
    RuleDraft,
    SpaceSaving,
    allows,
    blocked_class,
    canonical,
    clean_code,
    clean_method,
    is_websocket,
    loads,
    method_key,
    override_methods,
    read_lines,
    rules_for,
)
from egress.review.model import SEVERITIES
from egress.routing import path_readings

WILDCARD_MIN_HOSTS = 3
MAX_DESTINATIONS = 1024
MAX_PATHS = 128
MAX_METHODS = 16
MAX_BLOCKED = 64
MAX_BLOCKED_DESTINATIONS = 4096
MAX_OVERFLOW_DOMAINS = 256
MAX_OVERFLOW_HOSTS = 256
HEADER_LINES = 12  # refused destinations listed in the YAML header (JSON lists up to 50)
DRAFT_FILE = "egress-learn-draft.yaml"

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


# ---------------------------------------------------------------------------------------
# The pass


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
        readings, why = path_readings(path.split("?", 1)[0] or "/")
        if why:
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
            other=dict(sorted(self.other.items(), key=lambda kv: (-kv[1], kv[0]))),
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
            for key, ps in ev.paths.items():
                into = merged.paths.get(key)
                if into is None:
                    into = merged.paths[key] = PathSet(self.max_paths)
                    merged.key_counts[key] = 0
                into.merge(ps)
                merged.key_counts[key] += ev.key_counts[key]
            merged.unjudgeable += ev.unjudgeable
            merged.count += ev.count
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
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


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


# ---------------------------------------------------------------------------------------
# Scoring


def score(draft: Draft, cfg: Config | None) -> None:
    """Attach to each proposed rule the findings ``review_config`` reports on it.

    The draft is parsed as a config of its own (``egress.config.parse``: it must be one);
    with ``cfg``, its rules are appended to ``cfg``'s (after every rule, included ones
    too), so that the review sees them with the config's secrets. A finding whose key is
    ``allow[N]`` for one of those positions is the proposed rule's.
    """
    if not draft.rules:
        return
    try:
        from egress.review.analyze import review_config
    except ImportError as e:
        draft.scored = f"the review is not available ({e})"
        return
    try:
        drafted = parse({"allow": [p.rule.as_dict() for p in draft.rules]}, DRAFT_FILE, Path.cwd())
    except EgressError as e:
        draft.scored = f"the draft is not a valid config: {e}"  # a bug: say so, keep the draft
        return
    first = len(cfg.rules) if cfg else 0
    combined = drafted
    if cfg is not None:
        added = tuple(replace(r, index=first + r.index) for r in drafted.rules)
        combined = replace(cfg, rules=(*cfg.rules, *added))
    try:
        report = review_config(combined)
    except Exception as e:  # noqa: BLE001 (the draft is still useful without its scores)
        draft.scored = f"the review failed: {type(e).__name__}: {e}"
        return
    for f in report.findings:
        m = re.match(r"allow\[(\d+)\]", f.location.key)
        i = int(m.group(1)) - first if m else -1
        if 0 <= i < len(draft.rules):
            entry = (f.id, f.severity, f.title)
            if entry not in draft.rules[i].findings:
                draft.rules[i].findings.append(entry)
    for p in draft.rules:
        p.findings.sort(key=lambda x: (_severity_rank(x[1]), x[0]))


def _severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


# ---------------------------------------------------------------------------------------
# Entry points


def learn(
    lines: Iterable[str | bytes], cfg: Config | None, source: str = "the audit log",
    **limits: int,
) -> Draft:  # fmt: skip
    """Draft the rules that would have allowed what ``lines`` (an audit log) shows.
    ``limits``: ``max_destinations``, ``max_paths``, ``max_blocked``, ``min_children``."""
    learner = Learner(cfg, **limits)
    feed = learner.feed
    for line in lines:
        if line.strip():
            feed(line)
    draft = learner.draft(source)
    score(draft, cfg)
    return draft


def render_draft(draft: Draft, fmt: str = "yaml") -> str:
    if fmt == "json":
        return json.dumps(_json(draft), indent=2) + "\n"
    if fmt != "yaml":
        raise ValueError(f"unknown format {fmt!r}: yaml or json")
    return _yaml(draft)


def _json(draft: Draft) -> dict[str, Any]:
    return {
        "source": draft.source,
        "config": draft.config,
        "records": draft.records,
        "skipped": draft.skipped,
        "drafted_requests": draft.drafted,
        "already_allowed": draft.already_allowed,
        "scored": not draft.scored,
        "not_scored_because": draft.scored or None,
        "rules": [
            {
                "rule": p.rule.as_dict(),
                "requests": p.requests,
                "hosts": list(p.hosts),
                "reasons": p.reasons,
                "notes": p.rule.notes,
                "findings": [{"id": i, "severity": s, "title": t} for i, s, t in p.findings],
            }  # fmt: skip
            for p in draft.rules
        ],
        "refused_for_secret_reasons": [
            {
                "scheme": r.scheme,
                "host": r.host,
                "port": r.port,
                "reason": r.reason,
                "count": r.count,
            }
            for r in draft.refused
        ],  # fmt: skip
        "refused_connects": [
            {"host": h, "port": p, "reason": r, "count": n} for h, p, r, n in draft.connects
        ],
        "refused_for_other_reasons": draft.other,
        "notes": draft.notes,
    }


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))


def _yaml(draft: Draft) -> str:
    out: list[str] = []
    c = out.append
    if draft.config is None:
        c(f"# egress learn: a draft allowlist from {_comment(draft.source)}")
    else:
        c(f"# egress learn: the rules to ADD to the allow: list of {_comment(draft.config)}")
        c(f"# (it has {draft.config_rules} rule(s); append these after them)")
    c(f"# {draft.records} audit record(s) read, {draft.skipped} line(s) skipped; "
      f"{draft.drafted} request(s) drafted from"
      + (f", {draft.already_allowed} already allowed by the config" if draft.config else "")
      + ".")  # fmt: skip
    c("# Each rule allows only what was seen: its methods (GET brings HEAD) and its paths,")
    c(f"# generalised to PREFIX/ only where {MIN_CHILDREN} or more distinct children were "
      "seen. Review before use.")  # fmt: skip
    for n in draft.notes:
        c(f"# NOTE: {n}")
    if draft.refused:
        c("#")
        c("# Not proposed: refused for a secret reason (a credential went where it must not;")
        c("# an allow rule would not change that, and none is proposed):")
        for r in draft.refused[:HEADER_LINES]:
            c(f"#   {r.scheme}://{r.host}:{r.port}  {r.reason} x{r.count}")
        if len(draft.refused) > HEADER_LINES:
            c(f"#   ... and {len(draft.refused) - HEADER_LINES} more (--format json lists them)")
    if draft.connects:
        c("#")
        c("# Refused CONNECTs (no method or path known; run with mode: report to learn them):")
        for h, p, r, n in draft.connects[:HEADER_LINES]:
            c(f"#   {h}:{p}  {r} x{n}")
        if len(draft.connects) > HEADER_LINES:
            c(f"#   ... and {len(draft.connects) - HEADER_LINES} more (--format json lists them)")
    if draft.other:
        c("#")
        c(f"# Left out, refused for other reasons: {_counts(draft.other)}")
    if draft.scored:
        c("#")
        c(f"# Findings not scored: {_comment(draft.scored)}")
    if not draft.rules:
        c("#")
        c("# Nothing to add: " + ("the config allows every request seen." if draft.config
                                  else "no request to draft from."))  # fmt: skip
        c("allow: []")
        return "\n".join(out) + "\n"
    c("allow:")
    for p in draft.rules:
        c("")
        seen = sorted({m for k, _ in p.rule.sources for m in k.split(",")}, key=method_key)
        c(f"  # {p.requests} request(s) seen ({', '.join(seen)}); {_counts(p.reasons)}")
        for n in p.rule.notes:
            c(f"  # {_comment(n)}")
        if not draft.scored:
            if p.findings:
                for i, s, t in p.findings:
                    c(f"  # finding {i} ({s}): {_comment(t)}")
            else:
                c("  # findings: none")
        c(p.rule.to_yaml("  "))
    return "\n".join(out) + "\n"


def _comment(text: str) -> str:
    """Text safe inside a one-line YAML comment."""
    return re.sub(r"[\x00-\x1f\x7f\u0085\u2028\u2029]", " ", text)


def run_learn(args: argparse.Namespace) -> int:
    """``egress learn AUDIT.jsonl [--config F] [--format yaml|json]``."""
    cfg: Config | None = None
    if getattr(args, "config", None):
        try:
            cfg = load_or_default(args.config)
        except EgressError as e:
            print(f"egress: error: {e}", file=sys.stderr)
            return 2
    try:
        draft = learn(read_lines(args.audit), cfg, source=args.audit)
    except OSError as e:
        print(f"egress learn: cannot read {args.audit}: {e.strerror or e}", file=sys.stderr)
        return 2
    if draft.records == 0 and draft.skipped:
        print(
            f"egress learn: {args.audit} holds no audit records ({draft.skipped} line(s) "
            "were not audit records; docs/audit.md describes the format)",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(render_draft(draft, getattr(args, "format", "yaml") or "yaml"))
    return 0


__all__ = ["Draft", "Learner", "ProposedRule", "Refused", "learn", "render_draft", "run_learn"]
