"""Every form of every loaded secret, searched in one pass whatever the number of secrets.

The per-secret searches in egress.encodings (one ``bytes`` search per form per secret) cost
CPU in proportion to the number of secrets on every request and every streamed chunk. The
index runs Aho-Corasick automata (ahocorasick_rs, its contiguous NFA: one pass over the bytes
at about the same speed for 10 or 1,000 patterns, a few MiB for hundreds of secrets) over:

- the flat forms of every secret value (raw, base64, hex, percent, JSON), on the data;
- the base64 *cores* of every value (egress.b64scan), on the data without line breaks;
- every placeholder, on each request surface.

The automaton is a **prefilter**: it says which secrets can be present, and the exact
per-secret code in egress.encodings and egress.b64scan then runs on those secrets only.
Where nothing matches (nearly every request and response) that is the whole cost; where
something does, the result is the one the per-secret code gives over all secrets (the tests
compare both on generated data). Matching is overlapping, so that one pattern's match never
hides another's.

Built once per set of secret values (at load and on each rotation), shared by every request.
What depends on the host (which secrets are bound to it) is computed once per host, in a
bounded cache.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import ahocorasick_rs

from egress import b64scan
from egress.config import SecretSpec
from egress.encodings import Pause, SecretForms, find, no_pause, stream_forms
from egress.grammar import fold_name
from egress.secrets import MIN_SCAN_LENGTH, SecretValue

# Hosts an agent can name are unbounded under a wildcard rule: the per-host cache is capped
# (cleared when full; recomputing a view costs one pass over the secrets).
HOST_CACHE_SIZE = 4096
# Overlapping matches are listed in full; scanning a long input in windows bounds the list
# an input of repeated secrets makes (a window's matches, not the whole input's).
WINDOW = 256 * 1024
_TO_STD = bytes.maketrans(b"-_", b"+/")
# Up to this many patterns, inputs this long are searched one pattern at a time.
LOOP_MAX_PATTERNS = 24
LOOP_FROM_BYTES = 4096


class _Automaton:
    """One automaton over byte patterns, each owned by one or more owners (ints)."""

    def __init__(self, patterns: Iterable[tuple[bytes, int]]):
        owners: dict[bytes, set[int]] = {}
        for pattern, owner in patterns:
            if pattern:
                owners.setdefault(pattern, set()).add(owner)
        self._owners = [tuple(sorted(v)) for v in owners.values()]
        self._patterns = list(owners)
        self._overlap = max((len(p) for p in owners), default=1) - 1
        self._automaton = (
            ahocorasick_rs.BytesAhoCorasick(
                list(owners), implementation=ahocorasick_rs.Implementation.ContiguousNFA
            )
            if owners
            else None
        )

    def owners_in(self, data: bytes, pause: Pause = no_pause) -> set[int]:
        if self._automaton is None or not data:
            return set()
        if len(data) >= LOOP_FROM_BYTES and len(self._patterns) <= LOOP_MAX_PATTERNS:
            # A few patterns over a long input: CPython's substring search per pattern runs
            # at GB/s and beats the automaton's few hundred MB/s (docs/performance.md).
            return {
                o for p, k in zip(self._patterns, self._owners, strict=True) if p in data for o in k
            }
        if len(data) <= WINDOW:  # nearly always: one call, usually no match
            hits = self._automaton.find_matches_as_indexes(data, overlapping=True)
            if not hits:
                return set()
            return {o for p in {m[0] for m in hits} for o in self._owners[p]}
        found: set[int] = set()
        start = 0
        while True:
            # Each window starts early enough that a match across the seam is seen whole.
            window = data[max(0, start - self._overlap) : start + WINDOW]
            patterns = {
                m[0] for m in self._automaton.find_matches_as_indexes(window, overlapping=True)
            }
            for p in patterns:
                found.update(self._owners[p])
            start += WINDOW
            if start >= len(data):
                return found
            pause()


def compact_view(data: bytes) -> bytes:
    """``data`` without line breaks and in the standard base64 alphabet, where base64 cores
    are searched (``data`` itself when that changes nothing)."""
    if b"\\" in data:  # JSON-escaped line breaks
        data = data.replace(b"\\r", b"").replace(b"\\n", b"")
    if b"\n" in data or b"\r" in data or b"-" in data or b"_" in data:
        # One C pass: raw line breaks out, URL-safe characters read as standard ones.
        data = data.translate(_TO_STD, b"\r\n")
    return data


@dataclass(frozen=True)
class HostView:
    """What the secrets are to one host: computed once per host, read by every request."""

    bound: tuple[int, ...]  # indexes into SecretIndex.specs, in config order
    unbound: tuple[int, ...]
    bound_set: frozenset[int]
    guard: frozenset[int]  # form indexes the leak guard looks for on this host
    header_owners: dict[str, tuple[int, ...]]  # folded header name -> guarded bound specs
    body_bound: bool  # a bound secret injects into bodies


class SecretIndex:
    """The loaded secrets' forms and placeholders, searched in one pass each."""

    def __init__(
        self,
        forms: Sequence[SecretForms],
        specs: Sequence[SecretSpec] = (),
        values: dict[str, SecretValue | None] | None = None,
    ):
        self.forms = tuple(forms)
        self.specs = tuple(specs)
        self.values = dict(values or {})
        self.by_name: dict[str, list[SecretForms]] = {}
        for f in self.forms:
            self.by_name.setdefault(f.name, []).append(f)
        self._flat = _Automaton((s, i) for i, f in enumerate(self.forms) for s, _, _ in f.pairs)
        self._cores = _Automaton((c, i) for i, f in enumerate(self.forms) for c in f.embedded.cores)
        # Both at once, for data without line breaks (owner 2i: a form of i; 2i+1: a core).
        self._both = _Automaton(
            [(s, 2 * i) for i, f in enumerate(self.forms) for s, _, _ in f.pairs]
            + [(c, 2 * i + 1) for i, f in enumerate(self.forms) for c in f.embedded.cores]
        )
        # Values too short for a base64 core: masked wherever another value's core opens a run.
        self._coreless = frozenset(i for i, f in enumerate(self.forms) if not f.embedded.cores)
        self._placeholders = _Automaton(
            (s.placeholder.encode(), k) for k, s in enumerate(self.specs)
        )
        self._placeholders_lower = _Automaton(
            (s.placeholder.lower().encode(), k) for k, s in enumerate(self.specs)
        )
        self._scrub_steps = [(i, s, p) for i, f in enumerate(self.forms) for s, p, _ in f.pairs]
        self._redact_steps = [
            (i, s, f"[secret:{f.name}]".encode())
            for i, f in enumerate(self.forms)
            for s, _, _ in f.pairs
        ]
        self._hosts: dict[str, HostView] = {}
        self._views: dict[tuple[int, ...], HostView] = {}
        self._lock = threading.Lock()
        self._stream: StreamPlan | None = None

    def __repr__(self) -> str:
        return f"SecretIndex({len(self.forms)} values, {len(self.specs)} secrets, <redacted>)"

    # --- secret values -------------------------------------------------------------------

    def candidates(
        self, data: bytes, allowed: frozenset[int] | None = None, pause: Pause = no_pause
    ) -> list[int]:
        """Indexes of the values with a flat form in ``data`` or a base64 core in it (line
        breaks removed): every value the per-secret search could find, in index order."""
        compact = compact_view(data)
        if compact is data:  # no line breaks, no URL-safe characters: one pass for both
            found = {i >> 1 for i in self._both.owners_in(data, pause)}
        else:
            found = self._flat.owners_in(data, pause)
            found |= self._cores.owners_in(compact, pause)
        if not found:
            return []
        if allowed is not None:
            found &= allowed
        return sorted(found)

    def find(
        self, data: bytes, allowed: frozenset[int] | None = None, pause: Pause = no_pause
    ) -> tuple[str, str] | None:
        """encodings.find over the values in ``allowed`` (all by default): the first found,
        as (secret name, encoding)."""
        hits = self.candidates(data, allowed, pause)
        return find(data, [self.forms[i] for i in hits], pause) if hits else None

    def replace_in_order(
        self, data: bytes, steps: Sequence[tuple[int, bytes, bytes]], pause: Pause = no_pause
    ) -> tuple[bytes, int]:
        """Apply ``steps`` ((value index, form, replacement), in order) as the per-value loop
        does, skipping every step whose value is not in the data. A replacement can complete
        another value's form (a placeholder may hold a short value's form): the data is
        searched again after each one, so that later steps see what the loop would see."""
        live = self._flat.owners_in(data, pause)
        if not live:
            return data, 0
        total = 0
        for owner, form, replacement in steps:
            if owner not in live:
                continue
            n = data.count(form)
            if n:
                data = data.replace(form, replacement)
                total += n
                live |= self._flat.owners_in(data, pause)
        return data, total

    def mask_embedded(
        self, data: bytes, frozen: int = 0, pause: Pause = no_pause
    ) -> tuple[bytes, int]:
        """b64scan.mask over every value, run only where some value's core is in the data."""
        cores = self._cores.owners_in(compact_view(data), pause)
        if not cores:
            return data, 0
        targets = [
            f.embedded for i, f in enumerate(self.forms) if i in cores or i in self._coreless
        ]
        return b64scan.mask(data, targets, frozen=frozen)

    def scrub(self, data: bytes, pause: Pause = no_pause) -> tuple[bytes, int]:
        """encodings.scrub over every value: each form replaced by the placeholder's same
        form, each value inside larger base64 masked."""
        if not data or not self.forms:
            return data, 0
        data, count = self.replace_in_order(data, self._scrub_steps, pause)
        data, n = self.mask_embedded(data, pause=pause)
        return data, count + n

    def redact(self, text: str) -> str:
        """Every value in ``text`` replaced by ``[secret:<name>]`` (values inside larger base64
        by their mask)."""
        data = text.encode("utf-8", "surrogateescape")
        data, n = self.replace_in_order(data, self._redact_steps)
        data, m = self.scrub(data)  # what is left: values inside larger base64 blobs
        return data.decode("utf-8", "surrogateescape") if n or m else text

    # --- placeholders and hosts -----------------------------------------------------------

    def placeholders_in(self, data: bytes, lower: bool = False) -> set[int]:
        """Indexes into ``specs`` of the placeholders in ``data`` (``lower``: in text already
        lower-cased, such as a host name)."""
        return (self._placeholders_lower if lower else self._placeholders).owners_in(data)

    def host(self, host: str) -> HostView:
        view = self._hosts.get(host)
        if view is None:
            view = self._view(host)
            with self._lock:
                if len(self._hosts) >= HOST_CACHE_SIZE:
                    self._hosts.clear()
                self._hosts[host] = view
        return view

    def _view(self, host: str) -> HostView:
        bound = tuple(k for k, s in enumerate(self.specs) if s.bound_to(host))
        # Hosts with the same bound secrets share one view: a flood of names under a
        # wildcard adds a dict entry each, not a guard set each.
        shared = self._views.get(bound)
        if shared is not None:
            return shared
        view = self._make_view(bound)
        with self._lock:
            if len(self._views) >= HOST_CACHE_SIZE:
                self._views.clear()
            self._views[bound] = view
        return view

    def _make_view(self, bound: tuple[int, ...]) -> HostView:
        unbound = tuple(k for k in range(len(self.specs)) if k not in bound)
        names = {self.specs[k].name for k in unbound}
        guard = frozenset(
            i for i, f in enumerate(self.forms) if f.name in names and len(f.raw) >= MIN_SCAN_LENGTH
        )
        owners: dict[str, list[int]] = {}
        for k in bound:
            if self.specs[k].require_placeholder:
                for name in self.specs[k].auth_headers:
                    owners.setdefault(fold_name(name), []).append(k)
        return HostView(
            bound=bound,
            unbound=unbound,
            bound_set=frozenset(bound),
            guard=guard,
            header_owners={k: tuple(v) for k, v in owners.items()},
            body_bound=any("body" in self.specs[k].surfaces for k in bound),
        )

    # --- streamed bodies -------------------------------------------------------------------

    def stream_plan(self) -> StreamPlan:
        if self._stream is None:
            self._stream = StreamPlan(self)
        return self._stream


class StreamPlan:
    """What every stream scrubber of one index shares: the same-length replacement of each
    form, and what may begin one, computed once instead of per response. Prefixes are
    looked up in sorted lists (bisect), not kept as sets of every prefix of every form:
    those cost megabytes and seconds to build for a hundred secrets."""

    def __init__(self, index: SecretIndex):
        self.index = index
        owner = {}
        for i, f in enumerate(index.forms):
            for secret, mask in stream_forms([f]):
                owner.setdefault(secret, (mask, i))
        # Longest first across all values, as stream_forms orders them.
        self.steps = sorted(((i, s, m) for s, (m, i) in owner.items()), key=lambda t: -len(t[1]))
        self.embedded = [f.embedded for f in index.forms]
        flat = {secret for _, secret, _ in self.steps if len(secret) > 1}
        cores = {core for e in self.embedded for core, mixed in e.heads if not mixed}
        mixed = {core for e in self.embedded for core, m in e.heads if m}
        self._flat = sorted(flat)
        self._cores = sorted(cores)
        self._mixed = sorted(mixed)
        self.intoken: set[int] = set(b64scan.ALPHABET) | set(b"\r\n\\")
        for _, secret, _ in self.steps:
            self.intoken.update(secret)
        self.longest = max(
            [1]
            + [len(s) for _, s, _ in self.steps]
            + [len(c) + 2 for e in self.embedded for c, _ in e.heads]
        )
        # A core may be spelled in either base64 alphabet, or both mixed.
        url = {b"+": b"-", b"/": b"_"}
        self.firsts = {p[:1] for p in flat | cores}
        self.firsts |= {url[c] for c in self.firsts if c in url}
        self.mixed_firsts = {p[:1] for p in mixed}
        self.mixed_firsts |= {url[c] for c in self.mixed_firsts if c in url}
        flat_class = b"".join(re.escape(c) for c in sorted(self.firsts))
        mixed_class = b"".join(re.escape(c) for c in sorted(self.mixed_firsts))
        alternatives = [b"[" + flat_class + b"]"] if flat_class else []
        if mixed_class:
            alternatives.append(b"[A-Za-z0-9+/_=-](?=[" + mixed_class + b"])")
        self.begins = re.compile(b"|".join(alternatives) or b"(?!)")
        self.intoken_bytes = bytes(sorted(self.intoken))
        # Flat forms are judged on the bytes as sent (a JSON form may hold an escaped
        # line break that the base64 view removes): where one can begin, and how far back.
        flat_firsts = sorted({p[:1] for p in flat})
        self.flat_begins = re.compile(
            b"[" + b"".join(re.escape(c) for c in flat_firsts) + b"]" if flat_firsts else b"(?!)"
        )
        self.longest_flat = max((len(p) for p in flat), default=1)

    def is_prefix(self, text: bytes) -> bool:
        """Is ``text`` a proper prefix of a flat form, or a prefix of a base64 core that no
        mixed character precedes?"""
        return _starts_one(self._flat, text, proper=True) or _starts_one(self._cores, text)

    def is_flat_prefix(self, text: bytes) -> bool:
        """Is ``text`` a proper prefix of a flat form (raw, base64, hex, percent, JSON)?"""
        return _starts_one(self._flat, text, proper=True)

    def is_mixed_prefix(self, text: bytes) -> bool:
        """Is ``text`` a prefix of a base64 core that follows a mixed character?"""
        return _starts_one(self._mixed, text)


def _starts_one(ordered: list[bytes], text: bytes, proper: bool = False) -> bool:
    """Does an item of ``ordered`` (sorted, no duplicates) start with ``text`` (and, if
    ``proper``, go on after it)? The items that do follow ``text`` in order, together."""
    if not text:
        return False
    i = bisect.bisect_left(ordered, text)
    while i < len(ordered) and ordered[i].startswith(text):
        if not proper or len(ordered[i]) > len(text):
            return True
        i += 1
    return False


def build(
    forms: Sequence[SecretForms],
    specs: Sequence[SecretSpec] = (),
    values: dict[str, SecretValue | None] | None = None,
) -> SecretIndex:
    return SecretIndex(forms, specs, values)


def redact(text: str, index: SecretIndex) -> str:
    return index.redact(text)
