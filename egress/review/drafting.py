"""Drafting allow rules from what an audit log shows, shared by ``egress review --audit``
(a suggested rule per denied destination, egress/review/auditjoin.py) and ``egress learn``
(egress/review/learn.py).

``DestEvidence`` holds, bounded, the methods and paths seen for one destination (the
paths of one method set in a ``PathSet``) and the requests refused for a secret reason
(``Blocked``); ``rules_for`` turns it into ``RuleDraft``s, their paths generalised only as
far as the evidence supports (``generalise``), never so far that a secret-refused request
would be newly allowed (``allows``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from egress.config import DEFAULT_PORTS
from egress.policy import path_matches
from egress.routing import path_readings

# Generalise a path to ``prefix/`` only when this many distinct children were seen under it.
MIN_CHILDREN = 3
# A character a rule's path prefix cannot hold (config: no query, fragment, white space or
# control character), or cannot be written back as text (a lone surrogate from a byte
# that was not UTF-8).
_BAD_PATH_CHAR = re.compile(r"[?#\s\x00-\x1f\x7f\ud800-\udfff]")

ANY_METHOD = "*"  # the evidence key past the cap on method sets per destination
EXACT = 1  # the path itself was seen: its prefix covers it and everything below
OPEN = 2  # only paths below it are known (cut short by the cap or an unwritable character)


class PathSet:
    """The distinct paths (readings) seen for one destination and method, bounded.

    Held as segment tuples (``/repos/a`` -> ``("repos", "a")``) with flags. When more than
    ``cap`` are held, the deepest ones are cut one segment shorter and marked OPEN (the
    prefix ``/repos/`` stands for everything seen below it), and later paths are cut to that
    depth too; at depth 0, OPEN means any path. A reading with a character a rule cannot
    hold (``?``, ``#``, white space, control) is cut before the segment that holds it.
    """

    __slots__ = ("entries", "cap", "depth")

    def __init__(self, cap: int) -> None:
        self.entries: dict[tuple[str, ...], int] = {}
        self.cap = cap
        self.depth = 1 << 30  # entries deeper than this are cut to it

    def add(self, reading: str) -> None:
        segs = tuple(reading[1:].split("/"))
        flag = EXACT
        if _BAD_PATH_CHAR.search(reading):
            for i, s in enumerate(segs):
                if _BAD_PATH_CHAR.search(s):
                    segs, flag = segs[:i], OPEN
                    break
        if len(segs) > self.depth:
            segs, flag = segs[: self.depth], OPEN
        self.put(segs, flag)

    def put(self, segs: tuple[str, ...], flag: int) -> None:
        entries = self.entries
        entries[segs] = entries.get(segs, 0) | flag
        while len(entries) > self.cap:
            depth = max(len(s) for s in entries)
            if depth == 0:
                break
            self.depth = depth - 1
            cut: dict[tuple[str, ...], int] = {}
            for s, f in entries.items():
                if len(s) == depth:
                    s, f = s[:-1], OPEN
                cut[s] = cut.get(s, 0) | f
            self.entries = entries = cut

    def merge(self, other: PathSet) -> None:
        for s, f in other.entries.items():
            if len(s) > self.depth:
                s, f = s[: self.depth], OPEN
            self.put(s, f)

    def any_path(self) -> bool:
        return bool(self.entries.get((), 0) & OPEN) or bool(self.entries.get(("",), 0) & EXACT)

    def exact_prefixes(self) -> list[str]:
        return [_prefix(s) for s, f in self.entries.items() if f & EXACT]


def _prefix(segs: tuple[str, ...], open_: bool = False) -> str:
    text = "/" + "/".join(segs)
    return text + "/" if open_ and segs else text


@dataclass
class _Node:
    flags: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def generalise(
    paths: PathSet, blocked_under: Callable[[str], bool] = lambda p: False,
    min_children: int = MIN_CHILDREN,
) -> tuple[tuple[str, ...], list[str]]:  # fmt: skip
    """The path prefixes a rule needs for what was seen, and notes.

    The rule, top-down from the root: a path seen itself is its own prefix (egress prefixes
    cover everything below them, so nothing under it needs listing). Below a prefix ``P``
    that was not seen itself, when at least ``min_children`` distinct next segments were
    seen and no secret-refused request lies under it (``blocked_under``), ``P/`` covers
    them all; otherwise each child is decided the same way, down to the seen paths. The
    root is never generalised: ``/`` only when ``/`` itself was requested, or when more
    distinct first segments were seen than the cap keeps. (``paths: [/]``, never no
    ``paths``: a rule with paths still refuses a path egress cannot judge.)
    """
    if paths.any_path():
        why = (
            "a request to '/' was seen, and a prefix covers every path below it: '/' allows "
            "every path egress can judge"
            if paths.entries.get(("",), 0) & EXACT
            else f"more distinct first segments than the cap ({paths.cap}) keeps: '/' allows "
            "every path egress can judge"
        )
        return ("/",), [why]
    root = _Node()
    for segs, flags in paths.entries.items():
        node = root
        for s in segs:
            node = node.children.setdefault(s, _Node())
        node.flags |= flags
    out: list[str] = []
    fanned: list[str] = []
    cut: list[str] = []

    def walk(node: _Node, segs: tuple[str, ...]) -> None:
        if segs and node.flags & EXACT:
            out.append(_prefix(segs))
            return
        if segs and node.flags & OPEN:
            out.append(_prefix(segs, True))
            cut.append(_prefix(segs, True))
            return
        if segs and len(node.children) >= min_children and not blocked_under(_prefix(segs, True)):
            out.append(_prefix(segs, True))
            fanned.append(f"{_prefix(segs, True)} ({len(node.children)})")
            return
        for name in sorted(node.children):
            walk(node.children[name], (*segs, name))

    walk(root, ())
    notes = []
    if fanned:
        notes.append(
            f"paths generalised where {min_children} or more distinct children were seen: "
            + _some(fanned)
        )
    if cut:
        notes.append("paths cut short (more were seen below than are kept): " + _some(cut))
    return tuple(out), notes


def _some(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


_METHOD_ORDER = {
    m: i for i, m in enumerate(("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"))
}


def method_key(m: str) -> tuple[int, str]:
    return (_METHOD_ORDER.get(m, len(_METHOD_ORDER)), m)


@dataclass
class Blocked:
    """A request refused for a secret reason: no draft may newly allow it."""

    host: str
    method: str
    readings: tuple[str, ...]
    reason: str


def judged_readings(path: str) -> list[str] | None:
    """The readings egress decides a recorded path on (its query cut), or None when
    egress cannot judge the path (then no rule with paths allows it)."""
    readings, why = path_readings(path.split("?", 1)[0] or "/")
    return None if why else readings


def draftable_readings(path: str) -> list[str] | None:
    """The readings of a recorded path (its query cut) that a rule's path prefixes must
    cover, or None when no prefix a rule can hold allows it: egress cannot judge the path
    (a dot segment, an encoded slash...), or its first segment, once decoded, holds a
    character a rule cannot (white space, ``?``, ``#``)."""
    readings = judged_readings(path)
    if readings is None or any(_BAD_PATH_CHAR.search(r.split("/", 2)[1]) for r in readings):
        return None
    return readings


class DestEvidence:
    """What was seen for one destination (scheme, host, port), bounded."""

    __slots__ = (
        "count", "reasons", "paths", "key_counts", "unjudgeable", "connects", "blocked",
        "blocked_overflow", "method_cap", "path_cap", "blocked_cap",
    )  # fmt: skip

    def __init__(self, method_cap: int, path_cap: int, blocked_cap: int) -> None:
        self.count = 0
        self.reasons: dict[str, int] = {}
        # (method, websocket) -> paths. A request that overrides its method (a
        # ``method_not_allowed`` detail says so) needs one rule with all of them: its key is
        # "POST,DELETE".
        self.paths: dict[tuple[str, bool], PathSet] = {}
        self.key_counts: dict[tuple[str, bool], int] = {}
        self.unjudgeable = 0  # paths no path rule can allow (dot segments, encoded slash...)
        self.connects = 0  # CONNECT / tunnel records: no method or path known
        self.blocked: list[Blocked] = []
        self.blocked_overflow = False
        self.method_cap, self.path_cap, self.blocked_cap = method_cap, path_cap, blocked_cap

    def add_request(
        self, methods: list[str], path: str, websocket: bool
    ) -> tuple[str, bool] | None:
        """A request the draft must allow (its method, then any it overrides to). Returns
        the evidence key it went under (None: left out)."""
        readings = draftable_readings(path)
        if readings is None:
            self.unjudgeable += 1  # only a rule without paths allows it: never drafted
            return None
        key = (",".join(dict.fromkeys(methods)), websocket)
        if key not in self.paths and len(self.paths) >= self.method_cap:
            key = (ANY_METHOD, websocket)  # too many method sets: any method
        ps = self.path_set(key)
        self.key_counts[key] += 1
        for r in readings:
            ps.add(r)
        return key

    def path_set(self, key: tuple[str, bool]) -> PathSet:
        """The paths seen under an evidence key (a new, empty set the first time)."""
        ps = self.paths.get(key)
        if ps is None:
            ps = self.paths[key] = PathSet(self.path_cap)
            self.key_counts[key] = 0
        return ps

    def merge(self, other: DestEvidence) -> None:
        """Add what ``other`` holds (its paths and counts; not its refused requests)."""
        for key, ps in other.paths.items():
            self.path_set(key).merge(ps)
            self.key_counts[key] += other.key_counts[key]
        self.unjudgeable += other.unjudgeable
        self.count += other.count

    def methods(self) -> list[str]:
        seen = {m for k, _ in self.paths for m in k.split(",")} - {ANY_METHOD}
        return sorted(seen, key=method_key)

    def add_blocked(self, host: str, method: str, path: str, reason: str) -> None:
        readings = judged_readings(path)
        if readings is None:
            return  # no path rule allows it anyway
        if len(self.blocked) >= self.blocked_cap:
            self.blocked_overflow = True
            return
        b = Blocked(host, method, tuple(readings), reason)
        if b not in self.blocked:
            self.blocked.append(b)

    def exact_covers(self, b: Blocked) -> bool:
        """Would a rule per seen request, its exact paths as prefixes, allow ``b``?"""
        sets = [ps for (k, _ws), ps in self.paths.items() if b.method in k.split(",")]
        prefixes = [p for ps in sets for p in ps.exact_prefixes()]
        return all(any(path_matches(p, r) for p in prefixes) for r in b.readings)


@dataclass
class RuleDraft:
    """One proposed allow rule."""

    host: str  # an exact host, an address or a *.wildcard
    port: int
    scheme: str
    methods: tuple[str, ...] | None
    paths: tuple[str, ...] | None
    websocket: bool = False
    notes: list[str] = field(default_factory=list)
    sources: list[tuple[str, bool]] = field(default_factory=list)  # evidence keys it covers

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"host": self.host}
        if self.port != DEFAULT_PORTS.get(self.scheme):
            d["ports"] = [self.port]
        if self.scheme != "https":
            d["schemes"] = [self.scheme]
        if self.methods is not None:
            d["methods"] = list(self.methods)
        if self.paths is not None:
            d["paths"] = list(self.paths)
        if self.websocket:
            d["websocket"] = True
        return d

    def to_yaml(self, indent: str = "") -> str:
        d = self.as_dict()
        lines = [f"{indent}- host: {scalar(d['host'])}"]
        sub = indent + "  "
        if "ports" in d:
            lines.append(f"{sub}ports: [{', '.join(str(int(x)) for x in d['ports'])}]")
        for k in ("schemes", "methods"):
            if k in d:
                lines.append(f"{sub}{k}: [{', '.join(scalar(str(x)) for x in d[k])}]")
        if "paths" in d:
            lines.append(f"{sub}paths:")
            lines += [f"{sub}  - {scalar(p)}" for p in d["paths"]]
        if d.get("websocket"):
            lines.append(f"{sub}websocket: true")
        return "\n".join(lines)


_PLAIN = re.compile(r"[A-Za-z0-9/][A-Za-z0-9._~/*:-]*")


def scalar(text: str) -> str:
    """A YAML scalar for ``text``: plain when it reads back as the same string, quoted
    (JSON, a subset of YAML's double-quoted style) otherwise."""
    if _PLAIN.fullmatch(text) and not text.endswith(":") and ": " not in text:
        try:
            if yaml.safe_load(f"k: {text}") == {"k": text}:
                return text
        except yaml.YAMLError:
            pass
    return json.dumps(text, ensure_ascii=True)


def rules_for(
    ev: DestEvidence, host: str, port: int, scheme: str, blocked: list[Blocked],
    covers: Callable[[Blocked], bool], min_children: int = MIN_CHILDREN,
) -> list[RuleDraft]:  # fmt: skip
    """The rules that allow what ``ev`` holds, as narrow as the evidence allows.

    One rule per group of methods whose generalised paths are the same (so a method is
    never allowed on a path it was not seen on, beyond what generalisation allows); GET
    brings HEAD along (the same reach, no body) unless a HEAD request was refused for a
    secret reason. ``blocked`` are the secret-refused requests this rule's host pattern
    matches, ``covers(b)`` whether the exact evidence already allows ``b``: a generalised
    rule that would newly allow one is redrafted without generalisation.
    """
    groups: dict[tuple[tuple[str, ...] | None, bool], tuple[set[str], list[str], list[Any]]] = {}
    exact = ev.blocked_overflow  # too many refusals to reason about: no generalisation
    blocked_head = exact or any(b.method == "HEAD" for b in blocked)
    for (key, ws), ps in sorted(ev.paths.items(), key=lambda kv: (method_key(kv[0][0]), kv[0][1])):
        methods = set(key.split(","))
        if key == "GET" and not blocked_head:
            methods.add("HEAD")
        relevant = [
            b for b in blocked if (ANY_METHOD in methods or b.method in methods) and not covers(b)
        ]

        def blocked_under(prefix: str, relevant: list[Blocked] = relevant) -> bool:
            return any(path_matches(prefix, r) for b in relevant for r in b.readings)

        paths, notes = generalise(ps, (lambda p: True) if exact else blocked_under, min_children)
        rule = RuleDraft(host, port, scheme, _methods(methods), paths, ws)
        if any(allows(rule, b) for b in relevant):
            paths, notes = generalise(ps, lambda p: True, min_children)
            methods = set(key.split(","))
            notes.append("not generalised: a secret-refused request would have been allowed")
        ms, ns, src = groups.setdefault((paths, ws), (set(), [], []))
        ms |= methods
        ns += [n for n in notes if n not in ns]
        src.append((key, ws))
    out = []
    for (paths, ws), (ms, ns, src) in groups.items():
        if ANY_METHOD in ms:
            ns.insert(0, f"more than {ev.method_cap} method sets were seen: any method")
        out.append(RuleDraft(host, port, scheme, _methods(ms), paths, ws, ns, src))
    if ev.unjudgeable:
        msg = (
            f"{ev.unjudgeable} request(s) left out: a path egress cannot judge (a dot segment, "
            "an encoded slash...) or no rule can name (a space, '?' or '#' in its first "
            "segment, once decoded); only a rule without paths allows those"
        )
        for r in out:
            r.notes.append(msg)
    out.sort(key=lambda r: (r.websocket, method_key(r.methods[0]) if r.methods else (-1, "")))
    return out


def _methods(ms: set[str]) -> tuple[str, ...] | None:
    return None if ANY_METHOD in ms else tuple(sorted(ms, key=method_key))


def allows(rule: RuleDraft, b: Blocked) -> bool:
    """Does ``rule`` allow the refused request ``b`` (its host pattern aside)?"""
    if rule.methods is not None and b.method not in rule.methods:
        return False
    if rule.paths is None:
        return True
    return all(any(path_matches(p, r) for p in rule.paths) for r in b.readings)
