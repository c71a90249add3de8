"""What kind of host a rule's host pattern names, from maintained, licensed data.

`egress review` asks two questions of every rule's host pattern:

- ``facts_for(pattern, methods, paths)``: does it reach hosts that accept arbitrary user
  content or relay data (object stores, paste, gist and raw-content hosts, URL shorteners,
  webhook and request-bin services, tunnels, dynamic DNS, model providers' file uploads,
  code hosts' write APIs, DNS-over-HTTPS, CDNs reported to allow domain fronting)?
- ``broad_wildcard(pattern)``: is a ``*.`` wildcard broad for its registrable domain?

Every domain name comes from data, never from this file (a test enforces it):

- the Public Suffix List, private section included, from the ``publicsuffixlist`` package;
- the MISP warning lists (CC0) that ``data/review/misp-warninglists.yaml`` selects, read
  from the copy the ``pymispwarninglists`` package ships (only those lists, straight from
  their JSON files: the package's own loader reads all of them, about 2 s and 290 MB);
- ``data/review/hosts.yaml``: our own entries for what no list covers, each with its reason;
- ``data/review/domain-fronting.yaml``: CDNs that published studies found to allow fronting.

``data_sources()`` names each source with its licence and version for the report.

**When a wildcard is broad.** ``*.D`` is broad when the Public Suffix List says the names
it matches belong to more than one party: D is itself a public suffix (every label below
it is a separate registrant: ``*.github.io``, ``*.cloudfront.net``), or suffixes of the
list's private section lie at or below D, which is how an operator declares that names
below belong to its customers (``*.amazonaws.com`` spans ``s3.amazonaws.com`` and hundreds
more, so the rule reaches every tenant's buckets and apps). A wildcard inside one owner's
namespace is narrow, whatever its depth (``*.githubassets.com``, ``*.api.example.com``):
that owner controls every name under it. Whether such a host relays data is ``facts_for``'s
question, not this one's.

**When a pattern reaches a fact.** A rule's pattern reaches a data entry when some host
matches both: an exact name must match the entry; ``*.D`` reaches an entry for D's
subdomains, for a name below D or for a wildcard above it (``*.amazonaws.com`` reaches
``s3.amazonaws.com``; ``*.githubusercontent.com`` reaches ``raw.githubusercontent.com``).
Addresses and CIDR ranges reach nothing here: the review judges them on their own.
A fact limited to write methods needs a rule that allows one (any method RFC 9110 does not
call safe), and a fact limited to path prefixes needs a rule path that overlaps one.

The data is read once, on first use (egress/review/domaindata.py reads and checks it), and
indexed by name, so a lookup costs a walk up the pattern's labels and a bisection, not a
scan of the lists.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase

from publicsuffixlist import PublicSuffixList

from egress.errors import InvalidHost
from egress.hostnames import canonical_host, is_ip
from egress.policy import path_matches
from egress.review.domaindata import (
    FRONTING_FILE,
    HEADER_FIELDS,
    HOSTS_FILE,
    MISP_SELECTION_FILE,
    Entry,
    HostFact,
    NamedEntry,
    Pattern,
    categories,
    data_file,
    data_sources,
    fronting_entries,
    is_glob,
    misp_entries,
    own_entries,
    psl_private_rules,
    psl_version,
    report_order,
)

# The names tests/test_review_domains.py reaches these by.
from egress.review.domaindata import misp_lists_dir as _misp_lists_dir  # noqa: F401
from egress.review.domaindata import parse_data_pattern as _parse_data_pattern  # noqa: F401

# RFC 9110 section 9.2.1: every other method may change state on the server.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# A sample of the private-section suffixes a broad wildcard spans: enough to recognise
# the operator, short enough for one line of a report.
SUFFIX_SAMPLE = 5


@dataclass(frozen=True)
class BroadWildcard:
    """A ``*.`` wildcard whose names belong to more than one party (see the module doc)."""

    registrable: str  # the registrable domain under the wildcard (ICANN section)
    suffix: str  # the ICANN public suffix it sits on, e.g. "com"
    private_section: bool  # it sits on or spans suffixes of the PSL private section
    private_suffixes_under: tuple[str, ...]  # a sample, closest first; count is the total
    reason: str
    private_suffix_count: int = 0  # how many private-section suffixes it spans


# ---------------------------------------------------------------------------------------
# A rule's host pattern (exact or leading "*."), and where it meets the data's.


def _parse_rule_pattern(host_pattern: str) -> Pattern | None:
    """A rule's host pattern, or None for an address or CIDR range; ValueError if neither."""
    try:
        ipaddress.ip_network(host_pattern.strip("[]"), strict=False)
        return None
    except ValueError:
        pass
    subdomains = host_pattern.startswith("*.")
    rest = host_pattern[2:] if subdomains else host_pattern
    try:
        name = canonical_host(rest)
    except InvalidHost as e:
        raise ValueError(f"not a host pattern: {host_pattern!r} ({e})") from None
    if is_ip(name):
        return None  # an address in a legacy spelling ("127.1")
    return Pattern(tuple(reversed(name.split("."))), subdomains)


def _intersects(rule: Pattern, data: Pattern) -> bool:
    """Whether some host matches both patterns (a rule's labels are literal)."""
    if not all(fnmatchcase(r, d) for r, d in zip(rule.labels, data.labels, strict=False)):
        return False
    if len(rule.labels) == len(data.labels):
        return rule.subdomains == data.subdomains
    if len(rule.labels) < len(data.labels):
        return rule.subdomains  # the data names something below the rule's domain
    return data.subdomains  # the rule names something below the data's domain


def _parent_names(name: str) -> Iterator[str]:
    """The name's proper parents, nearest first: a.b.c -> b.c, c."""
    while "." in name:
        name = name.split(".", 1)[1]
        yield name


class _NamesBelow:
    """Names kept sorted by their labels from the right, so every name at or below a
    domain is one contiguous run found by bisection."""

    def __init__(self, names: Iterable[str]):
        self._keys = sorted({".".join(reversed(n.split("."))) for n in names})

    def at_or_below(self, name: str, *, include_self: bool = True) -> list[str]:
        key = ".".join(reversed(name.split(".")))
        found = []
        start = bisect.bisect_left(self._keys, key)
        if include_self and start < len(self._keys) and self._keys[start] == key:
            found.append(name)
        below = key + "."
        i = bisect.bisect_left(self._keys, below)
        while i < len(self._keys) and self._keys[i].startswith(below):
            found.append(".".join(reversed(self._keys[i].split("."))))
            i += 1
        return found


# ---------------------------------------------------------------------------------------
# The index over every entry.


def _named(entries: Iterable[Entry]) -> tuple[list[NamedEntry], list[Entry]]:
    """Split entries into those written on one name and those with "*" inside a label."""
    named: list[NamedEntry] = []
    globs: list[Entry] = []
    for pattern, text, fact in entries:
        if is_glob(pattern):
            globs.append((pattern, text, fact))
        else:
            named.append((pattern.name, pattern.subdomains, text, fact))
    return named, globs


class _FactIndex:
    """Every data entry, by the name it is written on; the few with "*" inside a label
    are checked one by one."""

    def __init__(self, named: Iterable[NamedEntry], globs: Iterable[Entry]):
        # name -> [(subdomains, text, fact)]; facts are shared, so 35,000 MISP entries
        # cost their names and little else.
        self._by_name: dict[str, list[tuple[bool, str, HostFact]]] = {}
        for name, subdomains, text, fact in named:
            self._by_name.setdefault(name, []).append((subdomains, text, fact))
        self._globs = list(globs)
        self._names = _NamesBelow(self._by_name)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values()) + len(self._globs)

    def reached_by(self, rule: Pattern) -> Iterator[tuple[str, HostFact]]:
        name = rule.name
        for subdomains, text, fact in self._by_name.get(name, ()):
            if subdomains == rule.subdomains:
                yield text, fact
        for parent in _parent_names(name):
            for subdomains, text, fact in self._by_name.get(parent, ()):
                if subdomains:
                    yield text, fact
        if rule.subdomains:
            for below in self._names.at_or_below(name, include_self=False):
                for _, text, fact in self._by_name[below]:
                    yield text, fact
        for pattern, text, fact in self._globs:
            if _intersects(rule, pattern):
                yield text, fact


@functools.cache
def _index() -> _FactIndex:
    named, globs = _named([*own_entries(), *fronting_entries()])
    return _FactIndex([*named, *misp_entries()], globs)


def _allows_write(methods: Iterable[str] | None) -> bool:
    return methods is None or any(m.upper() not in SAFE_METHODS for m in methods)


def _paths_overlap(rule_paths: Iterable[str] | None, fact_paths: Iterable[str] | None) -> bool:
    if rule_paths is None or fact_paths is None:
        return True
    return any(path_matches(r, f) or path_matches(f, r) for r in rule_paths for f in fact_paths)


def facts_for(
    host_pattern: str,
    methods: tuple[str, ...] | None = None,
    paths: tuple[str, ...] | None = None,
) -> list[HostFact]:
    """The facts a rule reaches: host_pattern is an exact canonical name, a "*." wildcard
    or an address/CIDR (no facts); methods and paths are the rule's (None: any). A fact
    limited to write methods or to path prefixes is left out when the rule excludes it.
    In report order (category, then matched entry), without duplicates. ValueError if
    host_pattern is not a host pattern."""
    as_tuple = None if methods is None else tuple(methods)
    return list(_facts(host_pattern, as_tuple, None if paths is None else tuple(paths)))


# The review asks about one rule several times (findings, secrets, the diff's two sides).
@functools.lru_cache(maxsize=4096)
def _facts(
    host_pattern: str, methods: tuple[str, ...] | None, paths: tuple[str, ...] | None
) -> tuple[HostFact, ...]:
    rule = _parse_rule_pattern(host_pattern)
    if rule is None:
        return ()
    # One fact per data entry (or MISP list), however many of its names the rule reaches:
    # "*.amazonaws.com" reaches ten S3 patterns but one reason to worry.
    matched: dict[HostFact, set[str]] = {}
    for text, fact in _index().reached_by(rule):
        if fact.write_only and not _allows_write(methods):
            continue
        if not _paths_overlap(paths, fact.paths):
            continue
        matched.setdefault(fact, set()).add(text)
    found = [
        dataclasses.replace(fact, matched=texts[0], also_matched=tuple(texts[1:]))
        for fact, texts in ((f, sorted(t, key=_simplest_first)) for f, t in matched.items())
    ]
    return tuple(sorted(found, key=report_order))


def _simplest_first(text: str) -> tuple[int, int, str]:
    """Order a fact's matched entries: plain names before patterns, short before long."""
    return text.count("*"), text.count("."), text


# ---------------------------------------------------------------------------------------
# The Public Suffix List: the package's list, and its private section by itself (the
# package can apply the ICANN section alone, but cannot list what is below a name).


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@functools.cache
def _psl_icann() -> PublicSuffixList:
    return PublicSuffixList(only_icann=True)


@functools.cache
def _psl_private() -> tuple[_NamesBelow, dict[str, str]]:
    """The private section's names (indexed) and, by name, the rule as the list writes it."""
    rules = psl_private_rules()
    return _NamesBelow(rules), rules


def _private_suffixes_under(name: str) -> list[str]:
    names, rules = _psl_private()
    under = names.at_or_below(name)
    under.sort(key=lambda n: (n.count("."), n))  # the closest first
    return [rules[n] for n in under]


@functools.lru_cache(maxsize=4096)
def broad_wildcard(host_pattern: str) -> BroadWildcard | None:
    """Whether a "*." wildcard is broad for its registrable domain (the module doc says
    when); None for one that is not, and for exact names and addresses."""
    rule = _parse_rule_pattern(host_pattern)
    if rule is None or not rule.subdomains:
        return None
    name = rule.name
    under = _private_suffixes_under(name)
    on_public_suffix = _psl().is_public(name)
    if not under and not on_public_suffix:
        return None
    icann = _psl_icann()
    on_icann_suffix = icann.is_public(name)
    return BroadWildcard(
        registrable=icann.privatesuffix(name) or name,
        suffix=icann.publicsuffix(name) or name,
        private_section=bool(under) or not on_icann_suffix,
        private_suffixes_under=tuple(under[:SUFFIX_SAMPLE]),
        reason=_broad_reason(host_pattern, name, under, on_icann_suffix),
        private_suffix_count=len(under),
    )


def _broad_reason(host_pattern: str, name: str, under: list[str], on_icann_suffix: bool) -> str:
    if on_icann_suffix:
        return (
            f"'{host_pattern}' sits on the public suffix {name}: every name below it is a "
            f"separate registrant's, so the rule reaches domains anyone can register."
        )
    if not under or under[0] in (name, "*." + name):
        return (
            f"'{host_pattern}' sits on {name}, a suffix in the Public Suffix List's private "
            f"section: its operator declares every name below it a separate site, so the rule "
            f"reaches sites anyone can create there."
        )
    sample = ", ".join(under[:SUFFIX_SAMPLE]) + (", ..." if len(under) > SUFFIX_SAMPLE else "")
    count = f"{len(under)} suffixes" if len(under) > 1 else "a suffix"
    return (
        f"'{host_pattern}' spans {count} of the Public Suffix List's private section "
        f"({sample}): their operator declares every name below them a separate site, so the "
        f"rule reaches sites anyone can create there."
    )


__all__ = [
    "FRONTING_FILE", "HEADER_FIELDS", "HOSTS_FILE", "MISP_SELECTION_FILE", "SAFE_METHODS",
    "SUFFIX_SAMPLE", "BroadWildcard", "HostFact", "broad_wildcard", "categories", "data_file",
    "data_sources", "facts_for", "psl_version",
]  # fmt: skip
