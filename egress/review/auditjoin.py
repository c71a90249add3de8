"""``egress review --audit``: join a config with an audit log, in one streaming pass.

What the pass says about the config (``AuditSummary`` in egress/review/model.py):

- **rules never used**: every ``allow[N]`` of the config that no allowed record names. A
  record counts as use only when it was allowed by the rule (``decision: allow`` and no
  ``would_deny``): in report mode a record with ``would_deny`` names the closest rule,
  which did not allow it.
- **credentials never injected**: every configured secret that no record lists in
  ``secrets``.
- **most-denied destinations** (scheme, host, port), each with a ready-to-paste rule built
  from the refused requests' methods and paths (generalised as ``egress learn`` does,
  egress/review/learn.py). A destination is denied when ``decision`` is ``deny``, or when
  report mode let it through with ``would_deny``. Only allowlist refusals
  (``ALLOWLIST_REASONS``) get a rule; a destination refused only for a secret reason
  (``secret_to_unbound_host``, ``placeholder_to_unbound_host``, ``foreign_credential``...)
  or an identity reason gets ``suggestion == ""``: a rule would not change that refusal,
  and the refusal is the proxy doing its job. Nor does an address in a blocked class
  (cloud metadata, private, loopback...): a rule naming it would open it. A destination
  seen only in refused CONNECTs (no method or path known) gets a host-and-port rule with
  a comment saying so. ``no_suggestion_reason`` says why there is none, for the
  renderers.
- **decisions by reason code**, overall and over time. A report-mode record with
  ``would_deny`` is counted under ``would_deny:<code>`` (it was allowed, but the config
  would refuse it), every other record under its ``reason``.

Bounded memory, whatever the log size:

- Denied destinations are tracked with the *Space-Saving* algorithm (Metwally, Agrawal
  and El Abbadi, 2005) in a table of ``max_destinations`` entries: a new destination
  replaces the one with the smallest estimated count and inherits that estimate. Every
  destination denied more than ``records / max_destinations`` times is guaranteed to be in
  the table at the end. The ``count`` reported is what was seen while the destination was
  tracked (a lower bound, exact for a log with at most ``max_destinations`` denied
  destinations), and its reasons, methods and paths are from that time too.
- Per destination: at most ``MAX_SUGGEST_METHODS`` method sets and ``MAX_SUGGEST_PATHS``
  paths per method set (beyond, any method, and paths cut to shorter prefixes, see
  ``PathSet``), and ``MAX_BLOCKED`` secret-refused requests.
- Hosts in the timeline: the same Space-Saving table (``max_hosts`` entries) picks the
  ``top_hosts`` busiest hosts; a bucket's count for a host that left the table is folded
  into ``(other)``.
- Timeline: at most ``max_buckets`` buckets. The time span is not known up front, so the
  pass starts with 1-second buckets aligned on the epoch and, whenever the span would need
  more buckets, merges adjacent ones into the next width of a ladder of "round" widths,
  each a multiple of the previous (1 s, 5 s, 10 s, 30 s, 1 min, 5 min, 15 min, 30 min, 1 h,
  2 h, 6 h, 12 h, 1 day, 1 week, then doubling). Merging is exact: a bucket of the wider
  width is the sum of the narrower ones it covers. With ``bucket_seconds`` given, that
  width is kept unless the span would need more than ``HARD_MAX_BUCKETS``; then it
  doubles.
- Reason codes are egress's own, or counted only when they look like codes (``[a-z_]``,
  at most 48 characters; at most 64 distinct unknown ones), otherwise as ``(invalid)`` /
  ``(other)``; decisions other than allow/deny/error count as ``(other)``.
- Memos (host checks, parsed minutes): at most ``CACHE_ENTRIES`` entries each.

Bad lines (not JSON, not an object, a field missing or of the wrong type, an unparseable
``time``) are counted in ``skipped`` and never echoed: the output holds only sanitised field
values (a host that is not a valid host name becomes ``(invalid host)``).

``read_lines(path)`` reads a file in binary, line by line, with a bound on the length of
one line (a longer one is skipped), for a caller that hands ``summarize`` a file: a file
object iterated directly would hold a whole line, however long, in memory.

With orjson installed, lines are parsed about four times faster (it is optional; the
standard library's json is the fallback, and the reference for what a line means).
"""

from __future__ import annotations

import calendar
import datetime
import heapq
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from egress.addresses import AddressPolicy
from egress.config import DEFAULT_PORTS, Config
from egress.hostnames import is_ip, parse_host_pattern
from egress.policy import path_matches
from egress.reasons import Reason
from egress.review.model import AuditSummary, DeniedDestination, TimeBucket
from egress.routing import path_readings

try:  # optional: four times faster on audit lines; the stdlib parser is the fallback
    import orjson as _orjson

    _fast_loads: Callable[[Any], Any] | None = _orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None

# Reasons the allowlist gives (also the report-mode ``would_deny`` codes): a rule changes them.
ALLOWLIST_REASONS = frozenset({
    "host_not_allowed", "port_not_allowed", "scheme_not_allowed", "method_not_allowed",
    "path_not_allowed", "websocket_not_allowed", "ip_literal",
})  # fmt: skip
# Refusals by a secret check: the request carried a credential where it must not go. A rule
# never fixes these, and learn never proposes one for them.
SECRET_REASONS = frozenset({
    "placeholder_to_unbound_host", "secret_to_unbound_host", "placeholder_surface_not_allowed",
    "plaintext_injection", "foreign_credential", "signature_scheme_unsupported",
    "body_too_large",
})  # fmt: skip
# Allowed by the allowlist (or let through by report mode), then failed: still traffic the
# agent needs.
SENT_ERRORS = frozenset(
    {"upstream_error", "dns_failure", "secret_unavailable", "unscrubbable_response"}
)

MAX_LINE_BYTES = 1 << 20
CACHE_ENTRIES = 16_384  # per memo (host checks, minutes): cleared when full
MAX_CODES = 64
MAX_BUCKETS = 120
HARD_MAX_BUCKETS = 4096
MAX_SUGGEST_METHODS = 8
MAX_SUGGEST_PATHS = 16
MAX_BLOCKED = 16
# Generalise a path to ``prefix/`` only when this many distinct children were seen under it.
MIN_CHILDREN = 3
_LADDER = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400, 604800)

_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_HOSTISH = re.compile(r"[A-Za-z0-9._:\[\]-]{1,255}")
# A canonical DNS name: lower-case labels, no punycode label, the last one not numeric
# (which would make it an IPv4 address in some spelling).
_CANON_NAME = re.compile(
    r"(?:(?!xn--)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+"
    r"(?!xn--)(?![0-9]+$|0x)[a-z_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
)
# A character a rule's path prefix cannot hold (config: no query, fragment, white space or
# control character), or cannot be written back as text (a lone surrogate from a byte
# that was not UTF-8).
_BAD_PATH_CHAR = re.compile(r"[?#\s\x00-\x1f\x7f\ud800-\udfff]")
_OVERRIDE = re.compile(r"\(overridden to ([A-Z0-9_, -]{1,200})\)")
OVERLONG = b"\x00(line over the length limit)"
INVALID_HOST = "(invalid host)"
OTHER = "(other)"
INVALID = "(invalid)"


# ---------------------------------------------------------------------------------------
# Reading lines and records


def read_lines(path: str, max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of a file, read in binary; a line over ``max_line`` bytes is given as
    ``OVERLONG`` (which ``summarize`` and ``learn`` count as skipped). Raises OSError."""
    with open(path, "rb") as f:
        readline = f.readline
        while True:
            line = readline(max_line)
            if not line:
                return
            if len(line) == max_line and not line.endswith(b"\n"):
                while True:  # drop the rest of the overlong line
                    rest = readline(max_line)
                    if not rest or rest.endswith(b"\n"):
                        break
                yield OVERLONG
                continue
            yield line


def loads(line: str | bytes) -> Any:
    """Parse one line (``None`` when it is not JSON)."""
    if _fast_loads is not None:
        try:
            return _fast_loads(line)
        except ValueError:
            pass  # orjson refuses lone surrogates (\\udcXX escapes); json takes them
    try:
        return json.loads(line)
    except (ValueError, TypeError, RecursionError):
        return None


_minutes: dict[str, int] = {}


def epoch_seconds(t: str) -> int:
    """Seconds since the epoch of an audit ``time`` (``2026-11-24T03:04:34.288Z``).
    Raises ValueError."""
    if len(t) >= 20 and t[10] == "T" and t[16] == ":" and t[-1] == "Z":
        minute = t[:16]
        base = _minutes.get(minute)
        if base is None:
            dt = datetime.datetime.strptime(minute, "%Y-%m-%dT%H:%M")
            base = calendar.timegm(dt.timetuple())
            if len(_minutes) > CACHE_ENTRIES:
                _minutes.clear()
            _minutes[minute] = base
        sec = t[17:19]
        if not sec.isdigit() or int(sec) > 60:
            raise ValueError(t)
        return base + int(sec)
    dt = datetime.datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return int(dt.timestamp())


def iso(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_KNOWN_CODES = {r.value: r.value for r in Reason}
_codes: dict[str, str] = {}


def clean_code(value: Any) -> str:
    """A reason code as it may appear in output: itself when it is one of egress's codes,
    or looks like one (a newer egress's) and fewer than MAX_CODES such were seen;
    ``(invalid)`` when it does not look like a code, ``(other)`` past the cap."""
    if type(value) is not str:
        return INVALID
    got = _KNOWN_CODES.get(value) or _codes.get(value)
    if got is not None:
        return got
    if not _CODE.fullmatch(value):
        return INVALID
    if len(_codes) >= MAX_CODES:
        return OTHER
    _codes[value] = value
    return value


_hosts: dict[str, str | None] = {}


def canonical(host: Any) -> str | None:
    """The host as a rule can name it (canonical text of an exact name or address), or
    None when it is not a host egress would write in a record. Cached (bounded)."""
    if type(host) is not str:
        return None
    got = _hosts.get(host, "")
    if got != "":
        return got
    out: str | None = None
    if len(host) <= 253 and _CANON_NAME.fullmatch(host) and not host.startswith("xn--"):
        out = host  # already canonical (the common case: what egress writes)
    elif _HOSTISH.fullmatch(host):
        try:
            pattern = parse_host_pattern(host.strip("[]"))
            out = pattern.text if pattern.kind != "wildcard" else None
        except ValueError:
            out = None
    if len(_hosts) > CACHE_ENTRIES:
        _hosts.clear()
    _hosts[host] = out
    return out


_shown: dict[str, str] = {}


def blocked_class(host: str) -> str | None:
    """The blocked address class (docs/policy.md) of a canonical host that is an address
    ("metadata", "private", "loopback"...), or None. A rule naming such an address opens
    it: neither ``review --audit`` nor ``learn`` ever proposes one."""
    if not is_ip(host):
        return None
    return AddressPolicy().blocked(ipaddress.ip_address(host))


def display_host(host: Any) -> str:
    """The host as output may show it: canonical, or ``(invalid host)``. Cached (bounded)."""
    if type(host) is not str:
        return INVALID_HOST
    shown = canonical(host) or INVALID_HOST
    if len(_shown) > CACHE_ENTRIES:
        _shown.clear()
    _shown[host] = shown
    return shown


def clean_method(value: Any) -> str | None:
    return value if type(value) is str and _METHOD.fullmatch(value) else None


def override_methods(detail: Any) -> list[str]:
    """The methods a ``method_not_allowed`` detail says the request overrode to."""
    if type(detail) is not str:
        return []
    m = _OVERRIDE.search(detail)
    if not m:
        return []
    return [x for x in (s.strip() for s in m.group(1).split(",")) if _METHOD.fullmatch(x)]


def is_websocket(rec: dict[str, Any]) -> bool:
    return rec.get("status") == 101 or "websocket_not_allowed" in (
        rec.get("reason"),
        rec.get("would_deny"),
    )


# ---------------------------------------------------------------------------------------
# Evidence: the paths and methods seen for one destination, and the rules they support


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


def draftable_readings(path: str) -> list[str] | None:
    """The readings of a recorded path (its query cut) that a rule's path prefixes must
    cover, or None when no prefix a rule can hold allows it: egress cannot judge the path
    (a dot segment, an encoded slash...), or its first segment, once decoded, holds a
    character a rule cannot (white space, ``?``, ``#``)."""
    readings, why = path_readings(path.split("?", 1)[0] or "/")
    if why or any(_BAD_PATH_CHAR.search(r.split("/", 2)[1]) for r in readings):
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
        ps = self.paths.get(key)
        if ps is None:
            if len(self.paths) >= self.method_cap:
                key = (ANY_METHOD, websocket)  # too many method sets: any method
                ps = self.paths.get(key)
        if ps is None:
            ps = self.paths[key] = PathSet(self.path_cap)
            self.key_counts[key] = 0
        self.key_counts[key] += 1
        for r in readings:
            ps.add(r)
        return key

    def methods(self) -> list[str]:
        seen = {m for k, _ in self.paths for m in k.split(",")} - {ANY_METHOD}
        return sorted(seen, key=method_key)

    def add_blocked(self, host: str, method: str, path: str, reason: str) -> None:
        readings, why = path_readings(path.split("?", 1)[0] or "/")
        if why:
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


# ---------------------------------------------------------------------------------------
# Space-Saving heavy hitters


class SpaceSaving:
    """The Space-Saving top-k table (Metwally et al. 2005) over hashable keys: at most
    ``capacity`` keys; a new key replaces the one with the smallest estimate."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts: dict[Any, int] = {}
        self._heap: list[tuple[int, int, Any]] = []  # (estimate when pushed, seq, key), lazy
        self._seq = 0

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, key: Any) -> tuple[bool, Any]:
        """Count ``key``. Returns (whether it is new in the table, the key it evicted)."""
        counts = self.counts
        c = counts.get(key)
        if c is not None:
            counts[key] = c + 1
            return False, None
        heap = self._heap
        self._seq += 1
        if len(counts) < self.capacity:
            counts[key] = 1
            heapq.heappush(heap, (1, self._seq, key))
            return True, None
        while True:
            est, _, k = heap[0]
            cur = counts[k]
            if cur != est:
                heapq.heapreplace(heap, (cur, self._seq, k))
                self._seq += 1
                continue
            heapq.heappop(heap)
            break
        del counts[k]
        counts[key] = est + 1
        heapq.heappush(heap, (est + 1, self._seq, key))
        return True, k

    def top(self, n: int) -> list[Any]:
        return [k for k, _ in sorted(self.counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]]


# ---------------------------------------------------------------------------------------
# The join


def no_suggestion_reason(dest: DeniedDestination) -> str:
    """Why a denied destination has no suggested rule (for the renderers), or ""."""
    if dest.suggestion:
        return ""
    codes = sorted(dest.reasons)
    if any(c in SECRET_REASONS for c in codes):
        return (
            "refused by a secret check (" + ", ".join(c for c in codes if c in SECRET_REASONS)
            + "): a credential went where it must not; an allow rule would not change that"
        )  # fmt: skip
    if dest.host == INVALID_HOST:
        return "the host is not a valid host name"
    cls = blocked_class(dest.host)
    if cls:
        return (
            f"{dest.host} is in a blocked address class ({cls}): a rule naming it would open "
            "it to the agent"
        )
    return (
        "refused for a reason no allow rule changes ("
        + ", ".join(c for c in codes if c not in ALLOWLIST_REASONS)
        + ")"
    )


_DECISIONS = ("allow", "deny", "error", OTHER)
_DECISION_INDEX = {"allow": 0, "deny": 1, "error": 2}


class _Bucket:
    """One time bucket: counts by (decision, reason) and by host (a count per decision,
    in the order of _DECISIONS)."""

    __slots__ = ("counts", "hosts")

    def __init__(self) -> None:
        self.counts: dict[tuple[int, str], int] = {}
        self.hosts: dict[str, list[int]] = {}

    def merge(self, other: _Bucket) -> None:
        counts = self.counts
        for k, v in other.counts.items():
            counts[k] = counts.get(k, 0) + v
        for h, d in other.hosts.items():
            mine = self.hosts.get(h)
            if mine is None:
                self.hosts[h] = d
            else:
                for i, v in enumerate(d):
                    mine[i] += v


class AuditJoin:
    """The streaming pass: ``feed`` each line, then ``result``. Memory is bounded by the
    parameters, never by the log."""

    def __init__(
        self, cfg: Config, source: str, bucket_seconds: int | None = None, top_hosts: int = 8,
        max_destinations: int = 1024, top_denied: int = 20, max_hosts: int = 256,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:  # fmt: skip
        self.cfg, self.source = cfg, source
        self.top_hosts, self.top_denied = top_hosts, top_denied
        self.fixed_width = bucket_seconds is not None and bucket_seconds > 0
        self.width: int = bucket_seconds if bucket_seconds and bucket_seconds > 0 else 1
        self.max_buckets = HARD_MAX_BUCKETS if self.fixed_width else max_buckets
        self.records = 0
        self.skipped = 0
        self.first: tuple[int, str] | None = None
        self.last: tuple[int, str] | None = None
        self.rule_labels = {r.label for r in cfg.rules}
        self.secret_names = {s.name for s in cfg.secrets}
        self.used_rules: set[str] = set()
        self.injected: set[str] = set()
        self.by_reason: dict[str, int] = {}
        self.buckets: dict[int, _Bucket] = {}
        self.lo = self.hi = 0
        self.hosts = SpaceSaving(max_hosts)
        self.host_limit = 2 * max_hosts  # per bucket, before untracked hosts are folded
        self.denied = SpaceSaving(max_destinations)
        self.evidence: dict[tuple[str, str, int], DestEvidence] = {}

    @property
    def tracked_destinations(self) -> int:
        return len(self.evidence)

    def feed(self, line: str | bytes) -> None:
        """Count one line. The hot path: written for speed, every check kept."""
        rec = loads(line)
        try:
            t, host, decision = rec["time"], rec["host"], rec["decision"]
            reason, event = rec["reason"], rec["event"]
        except (KeyError, TypeError, IndexError):
            self.skipped += 1
            return
        port = rec.get("port")
        secrets = rec.get("secrets")
        if (
            type(t) is not str or type(host) is not str or type(decision) is not str
            or type(reason) is not str or type(event) is not str
            or (port is not None and type(port) is not int)
            or (secrets is not None and type(secrets) is not list)
        ):  # fmt: skip
            self.skipped += 1
            return
        base = _minutes.get(t[:16]) if t[-1:] == "Z" and t[16:17] == ":" else None
        sec = t[17:19]
        if base is not None and sec.isdigit():
            ts = base + int(sec)
        else:
            try:
                ts = epoch_seconds(t)
            except (ValueError, OverflowError, OSError):
                self.skipped += 1
                return
        self.records += 1
        if self.first is None:
            self.first = self.last = (ts, t)
        elif ts < self.first[0]:
            self.first = (ts, t)
        elif ts > self.last[0]:  # type: ignore[index]
            self.last = (ts, t)
        di = _DECISION_INDEX.get(decision, 3)
        reason = _KNOWN_CODES.get(reason) or clean_code(reason)
        would = rec.get("would_deny")
        if would is not None:
            would = _KNOWN_CODES.get(would) or clean_code(would)
            key = "would_deny:" + would if di == 0 else reason
        else:
            key = reason
        by_reason = self.by_reason
        by_reason[key] = by_reason.get(key, 0) + 1
        if di == 0 and would is None:
            rule = rec.get("rule")
            if rule in self.rule_labels:
                self.used_rules.add(rule)  # type: ignore[arg-type]
        if secrets:
            for s in secrets:
                if type(s) is str and s in self.secret_names:
                    self.injected.add(s)
        shown = _shown.get(host)
        if shown is None:
            shown = display_host(host)
        # the timeline
        idx = ts // self.width
        if idx < self.lo or idx > self.hi:
            self._extend(idx)
            idx = ts // self.width
        b = self.buckets.get(idx)
        if b is None:
            b = self.buckets[idx] = _Bucket()
        counts = b.counts
        ck = (di, key)
        counts[ck] = counts.get(ck, 0) + 1
        tracked = self.hosts.counts
        c = tracked.get(shown)
        if c is not None:
            tracked[shown] = c + 1
        else:
            self.hosts.add(shown)
        hosts = b.hosts
        h = hosts.get(shown)
        if h is None:
            if len(hosts) > self.host_limit:
                self._fold(b)
            h = hosts[shown] = [0, 0, 0, 0]
        h[di] += 1
        if di == 1:
            self._count_denied(rec, shown, port, reason)
        elif di == 0 and would:
            self._count_denied(rec, shown, port, would)

    def _extend(self, idx: int) -> None:
        if not self.buckets:
            self.lo = self.hi = idx
            return
        self.lo, self.hi = min(self.lo, idx), max(self.hi, idx)
        if self.hi - self.lo + 1 > self.max_buckets:
            self._coarsen()

    def _fold(self, b: _Bucket) -> None:
        """Fold the counts of hosts no longer tracked into ``(other)``."""
        other = b.hosts.pop(OTHER, [0, 0, 0, 0])
        for host in [h for h in b.hosts if h not in self.hosts.counts]:
            for i, v in enumerate(b.hosts.pop(host)):
                other[i] += v
        b.hosts[OTHER] = other

    def _coarsen(self) -> None:
        lo_ts, hi_ts = self.lo * self.width, self.hi * self.width + self.width - 1
        width = self.width
        while (hi_ts // width) - (lo_ts // width) + 1 > self.max_buckets:
            width = _next_width(width, self.fixed_width)
        merged: dict[int, _Bucket] = {}
        for idx, b in self.buckets.items():
            new = idx * self.width // width
            into = merged.get(new)
            if into is None:
                merged[new] = b
            else:
                into.merge(b)
                if len(into.hosts) > self.host_limit:
                    self._fold(into)
        self.buckets, self.width = merged, width
        self.lo, self.hi = lo_ts // width, hi_ts // width

    def _count_denied(self, rec: dict[str, Any], host: str, port: Any, reason: str) -> None:
        scheme = rec.get("scheme")
        if scheme == "tcp" and reason in ALLOWLIST_REASONS:
            scheme = "https"  # a TLS connection refused on its ClientHello (transparent mode)
        elif scheme not in ("https", "http", "tcp"):
            scheme = OTHER
        key = (scheme, host, port if type(port) is int else 0)
        new, evicted = self.denied.add(key)
        if evicted is not None:
            del self.evidence[evicted]
        ev = self.evidence.get(key)
        if ev is None:
            ev = self.evidence[key] = DestEvidence(
                MAX_SUGGEST_METHODS, MAX_SUGGEST_PATHS, MAX_BLOCKED
            )
        ev.count += 1
        ev.reasons[reason] = ev.reasons.get(reason, 0) + 1
        method = clean_method(rec.get("method"))
        path = rec.get("path")
        request = rec.get("event") == "request" and method and type(path) is str and path[:1] == "/"
        if reason in ALLOWLIST_REASONS:
            if not request:
                ev.connects += 1
                return
            methods = [method]
            if reason == "method_not_allowed":
                methods += override_methods(rec.get("detail"))
            ev.add_request(methods, path, is_websocket(rec))  # type: ignore[arg-type]
        elif reason in SECRET_REASONS and request:
            ev.add_blocked(host, method, path, reason)  # type: ignore[arg-type]

    def result(self) -> AuditSummary:
        denied = sorted(self.evidence.items(), key=lambda kv: (-kv[1].count, str(kv[0])))
        out = [self._destination(k, ev) for k, ev in denied[: self.top_denied]]
        top = set(self.hosts.top(self.top_hosts))
        timeline: list[TimeBucket] = []
        if self.buckets:
            timeline = [self._time_bucket(idx, top) for idx in range(self.lo, self.hi + 1)]
        return AuditSummary(
            source=self.source,
            records=self.records,
            skipped=self.skipped,
            first_time=self.first[1] if self.first else None,
            last_time=self.last[1] if self.last else None,
            unused_rules=[r.label for r in self.cfg.rules if r.label not in self.used_rules],
            uninjected_secrets=[s.name for s in self.cfg.secrets if s.name not in self.injected],
            denied=out,
            by_reason=dict(sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
            timeline=timeline,
            bucket_seconds=self.width,
        )

    def _time_bucket(self, idx: int, top: set[str]) -> TimeBucket:
        b = self.buckets.get(idx) or _Bucket()
        by_decision: dict[str, int] = {}
        by_reason: dict[str, int] = {}
        for (di, reason), n in b.counts.items():
            by_decision[_DECISIONS[di]] = by_decision.get(_DECISIONS[di], 0) + n
            by_reason[reason] = by_reason.get(reason, 0) + n
        hosts: dict[str, dict[str, int]] = {}
        other = [0, 0, 0, 0]
        for h, d in b.hosts.items():
            if h in top:
                hosts[h] = {_DECISIONS[i]: v for i, v in enumerate(d) if v}
            else:
                other = [a + v for a, v in zip(other, d, strict=True)]
        if any(other):
            hosts[OTHER] = {_DECISIONS[i]: v for i, v in enumerate(other) if v}
        return TimeBucket(
            start=iso(idx * self.width), by_decision=by_decision, by_reason=by_reason,
            by_host=hosts,
        )  # fmt: skip

    def _destination(self, key: tuple[str, str, int], ev: DestEvidence) -> DeniedDestination:
        scheme, host, port = key
        methods = sorted({*ev.methods(), *(b.method for b in ev.blocked)}, key=method_key)
        return DeniedDestination(
            host=host, port=port, scheme=scheme, count=ev.count,
            reasons=dict(sorted(ev.reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            methods=tuple(methods), suggestion=suggest(ev, host, port, scheme),
        )  # fmt: skip


def _next_width(width: int, doubling: bool) -> int:
    if not doubling:
        for w in _LADDER:
            if w > width and w % width == 0:
                return w
    return width * 2


def suggest(ev: DestEvidence, host: str, port: int, scheme: str) -> str:
    """A ready-to-paste YAML list of rules that allows the allowlist refusals in ``ev``
    ("" when there are none, or the destination cannot be named in a rule)."""
    if host == INVALID_HOST or scheme not in ("https", "http") or not 0 < port < 65536:
        return ""
    if blocked_class(host):
        return ""
    if not any(r in ALLOWLIST_REASONS for r in ev.reasons):
        return ""
    lines: list[str] = []
    secret = {r: n for r, n in ev.reasons.items() if r in SECRET_REASONS}
    if secret:
        lines.append(
            "# also refused for secret reasons ("
            + ", ".join(f"{r} x{n}" for r, n in sorted(secret.items()))
            + "): this rule does not change those refusals"
        )
    rules = rules_for(ev, host, port, scheme, ev.blocked, ev.exact_covers) if ev.paths else []
    if not rules:
        lines.append(
            "# only refused CONNECTs were seen: no method or path is known, so this allows "
            "any; run with mode: report (or egress learn) to narrow it"
        )
        rules = [RuleDraft(host, port, scheme, None, None)]
    for r in rules:
        lines += [f"# {n}" for n in r.notes]
        lines.append(r.to_yaml())
    return "\n".join(lines) + "\n"


def summarize(
    lines: Iterable[str | bytes], cfg: Config, source: str, bucket_seconds: int | None = None,
    top_hosts: int = 8, *, max_destinations: int = 1024, top_denied: int = 20,
) -> AuditSummary:  # fmt: skip
    """One streaming pass over an audit log's lines: what it says about ``cfg``."""
    join = AuditJoin(cfg, source, bucket_seconds, top_hosts, max_destinations, top_denied)
    feed = join.feed
    for line in lines:
        if line.strip():
            feed(line)
    return join.result()
