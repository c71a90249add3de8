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

Lines are read and records cleaned by egress/review/auditrecords.py (``read_lines``; orjson
when installed), suggested rules drafted by egress/review/drafting.py, and the Space-Saving
table is egress/review/topk.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from egress.config import Config
from egress.review.auditrecords import (
    ALLOWLIST_REASONS,
    INVALID_HOST,
    KNOWN_CODES,
    MAX_TRIPWIRES,
    OTHER,
    SECRET_REASONS,
    blocked_class,
    clean_code,
    clean_method,
    display_host,
    epoch_seconds,
    feed_lines,
    is_reload,
    is_websocket,
    iso,
    loads,
    minutes,
    override_methods,
    shown_hosts,
    tripwire_entry,
)
from egress.review.drafting import DestEvidence, RuleDraft, method_key, rules_for
from egress.review.model import AuditSummary, DeniedDestination, TimeBucket
from egress.review.topk import SpaceSaving, most_first

MAX_BUCKETS = 120
HARD_MAX_BUCKETS = 4096
MAX_SUGGEST_METHODS = 8
MAX_SUGGEST_PATHS = 16
MAX_BLOCKED = 16
_LADDER = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400, 604800)


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
        self.rule_labels = {r.label for r in cfg.all_rules}
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
        self.tripwires: list[dict[str, Any]] = []

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
            trip = tripwire_entry(rec)
            if trip is not None:
                if len(self.tripwires) < MAX_TRIPWIRES:
                    self.tripwires.append(trip)
            elif not is_reload(rec):  # a reload record decides nothing (docs/reload.md)
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
        base = minutes.get(t[:16]) if t[-1:] == "Z" and t[16:17] == ":" else None
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
        reason = KNOWN_CODES.get(reason) or clean_code(reason)
        would = rec.get("would_deny")
        if would is not None:
            would = KNOWN_CODES.get(would) or clean_code(would)
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
        shown = shown_hosts.get(host)
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
            unused_rules=[r.label for r in self.cfg.all_rules if r.label not in self.used_rules],
            uninjected_secrets=[s.name for s in self.cfg.secrets if s.name not in self.injected],
            denied=out,
            by_reason=most_first(self.by_reason),
            timeline=timeline,
            bucket_seconds=self.width,
            tripwires=self.tripwires,
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
            reasons=most_first(ev.reasons),
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
    feed_lines(lines, join.feed)
    return join.result()
