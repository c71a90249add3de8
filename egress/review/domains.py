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

The data is read once, on first use, and indexed by name, so a lookup costs a walk up the
pattern's labels and a bisection, not a scan of the lists.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import importlib.metadata
import importlib.resources
import importlib.util
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import publicsuffixlist
import yaml
from publicsuffixlist import PublicSuffixList

from egress.errors import InvalidHost
from egress.hostnames import canonical_host, is_ip
from egress.policy import path_matches

# RFC 9110 section 9.2.1: every other method may change state on the server.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

HOSTS_FILE = "hosts.yaml"
FRONTING_FILE = "domain-fronting.yaml"
MISP_SELECTION_FILE = "misp-warninglists.yaml"
HEADER_FIELDS = ("source", "licence", "date")
FRONTING_CATEGORY = "domain_fronting"

# A sample of the private-section suffixes a broad wildcard spans: enough to recognise
# the operator, short enough for one line of a report.
SUFFIX_SAMPLE = 5

_DATA_LABEL = re.compile(r"^[a-z0-9_*](?:[a-z0-9_*-]*[a-z0-9_*])?$")
_HOST_NAME = re.compile(
    r"^(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$"
)


@dataclass(frozen=True)
class HostFact:
    """One reason a host pattern matters for exfiltration, and where that comes from."""

    category: str  # stable id, a key of categories(): "object_store", "paste", ...
    matched: str  # the data's entry that matched, as written there
    reason: str  # one sentence: why this kind of host matters for exfiltration
    source: str  # the list and its version, our data file, or the study
    paths: tuple[str, ...] | None = None  # only these path prefixes are risky (None: all)
    write_only: bool = False  # only write methods (not GET, HEAD, OPTIONS, TRACE) are risky
    reference: str = ""  # a URL backing the entry, when the data has one
    service: str = ""  # the service's name, when the data has one
    also_matched: tuple[str, ...] = ()  # more entries of the same data entry or list


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
# Host patterns: a rule's (exact or leading "*.") and the data's (also "*" inside).


@dataclass(frozen=True)
class _Pattern:
    """A host pattern as labels from the right; ``subdomains``: a leading "*." (one or
    more labels, never the name itself)."""

    labels: tuple[str, ...]
    subdomains: bool

    @property
    def name(self) -> str:
        return ".".join(reversed(self.labels))


def _parse_rule_pattern(host_pattern: str) -> _Pattern | None:
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
    return _Pattern(tuple(reversed(name.split("."))), subdomains)


def _parse_data_pattern(text: str) -> _Pattern:
    """A data entry's pattern: like a rule's, plus "*" inside labels (one label's worth)."""
    subdomains = text.startswith("*.")
    rest = text[2:] if subdomains else text
    labels = tuple(reversed(rest.lower().rstrip(".").split(".")))
    if not all(_DATA_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r} is not a host pattern")
    return _Pattern(labels, subdomains)


def _is_glob(pattern: _Pattern) -> bool:
    return any("*" in label for label in pattern.labels)


def _intersects(rule: _Pattern, data: _Pattern) -> bool:
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
# The data files.


def _data_dir() -> Path:
    return Path(str(importlib.resources.files("egress"))) / "data" / "review"


def data_file(name: str) -> Path:
    """The path of one of the review's data files (``HOSTS_FILE``, ...)."""
    return _data_dir() / name


@functools.cache
def _load_yaml(name: str) -> dict[str, Any]:
    path = data_file(name)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping")
    header = data.get("header")
    missing = [f for f in HEADER_FIELDS if not isinstance(header, dict) or not header.get(f)]
    if missing:
        raise ValueError(f"{path}: header: missing {', '.join(missing)}")
    return data


def _data_error(name: str, where: str, problem: str) -> ValueError:
    return ValueError(f"{data_file(name)}: {where}: {problem}")


def categories() -> dict[str, str]:
    """Every fact category: stable id -> a title for reports, in report order."""
    return dict(_categories())


@functools.cache
def _categories() -> dict[str, str]:
    found = _load_yaml(HOSTS_FILE).get("categories")
    if not isinstance(found, dict) or not found:
        raise _data_error(HOSTS_FILE, "categories", "missing")
    return {str(k): str(v) for k, v in found.items()}


def _category(name: str, where: str, value: object) -> str:
    if value not in _categories():
        raise _data_error(name, where, f"unknown category {value!r}")
    return str(value)


def _reason(name: str, where: str, entry: dict[str, Any]) -> str:
    reason = entry.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise _data_error(name, where, "every entry needs a reason")
    return " ".join(reason.split())


def _paths(name: str, where: str, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) and p[:1] == "/" for p in value):
        raise _data_error(name, where, "paths must be a list of prefixes starting with '/'")
    return tuple(value)


# One data entry: its pattern, the text it was written as, and the fact it yields; and
# the same for an entry on one name: (name, subdomains only, text, fact).
_Entry = tuple[_Pattern, str, HostFact]
_NamedEntry = tuple[str, bool, str, HostFact]


def _patterns(name: str, where: str, entry: dict[str, Any]) -> list[tuple[_Pattern, str]]:
    hosts = entry.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise _data_error(name, where, "hosts must be a non-empty list")
    try:
        return [(_parse_data_pattern(str(h)), str(h)) for h in hosts]
    except ValueError as e:
        raise _data_error(name, where, str(e)) from None


def _own_entries() -> Iterator[_Entry]:
    source = f"egress/data/review/{HOSTS_FILE}"
    for i, entry in enumerate(_load_yaml(HOSTS_FILE).get("entries") or []):
        where = f"entries[{i}]"
        fact = HostFact(
            category=_category(HOSTS_FILE, where, entry.get("category")),
            matched="",
            reason=_reason(HOSTS_FILE, where, entry),
            source=source,
            paths=_paths(HOSTS_FILE, where, entry.get("paths")),
            write_only=bool(entry.get("write_methods_only", False)),
            reference=str(entry.get("reference") or ""),
            service=str(entry.get("service") or ""),
        )
        for pattern, text in _patterns(HOSTS_FILE, where, entry):
            yield pattern, text, fact


def _study_source(study: dict[str, Any]) -> str:
    return " ".join(str(study["citation"]).split())


def _fronting_entries() -> Iterator[_Entry]:
    data = _load_yaml(FRONTING_FILE)
    studies = data.get("studies") or {}
    for i, entry in enumerate(data.get("entries") or []):
        where = f"entries[{i}]"
        cited = entry.get("studies") or []
        if not cited or any(s not in studies for s in cited):
            raise _data_error(FRONTING_FILE, where, "studies must name entries of 'studies'")
        reason = _reason(FRONTING_FILE, where, entry)
        patterns = _patterns(FRONTING_FILE, where, entry)
        if entry.get("provider_blocked"):
            continue  # history: the provider has since refused fronted requests
        fact = HostFact(
            category=_category(FRONTING_FILE, where, FRONTING_CATEGORY),
            matched="",
            reason=reason,
            source="; ".join(_study_source(studies[s]) for s in cited),
            reference=str(studies[cited[0]].get("url") or ""),
            service=str(entry.get("cdn") or ""),
        )
        for pattern, text in patterns:
            yield pattern, text, fact


# ---------------------------------------------------------------------------------------
# The MISP warning lists: only the selected ones, read straight from their JSON files.


def _misp_lists_dir() -> Path:
    # Found without importing the package: its import pulls in jsonschema and requests
    # (0.3 s) for a loader this module does not use.
    spec = importlib.util.find_spec("pymispwarninglists")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("egress review needs the pymispwarninglists package")
    package = Path(next(iter(spec.submodule_search_locations)))
    return package / "data" / "misp-warninglists" / "lists"


@functools.cache
def _misp_list(folder: str) -> dict[str, Any]:
    path = _misp_lists_dir() / folder / "list.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"MISP warning list {folder!r} (selected in {data_file(MISP_SELECTION_FILE)}) "
            f"is not at {path}: has pymispwarninglists changed its layout?"
        )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _misp_selection() -> list[dict[str, Any]]:
    selected = _load_yaml(MISP_SELECTION_FILE).get("selected")
    if not isinstance(selected, list) or not selected:
        raise _data_error(MISP_SELECTION_FILE, "selected", "missing")
    return selected


def _misp_header() -> dict[str, Any]:
    header: dict[str, Any] = _load_yaml(MISP_SELECTION_FILE)["header"]
    return header


def _misp_list_url(folder: str) -> str:
    return f"{_misp_header()['url'].rstrip('/')}/{folder}"


def _misp_source(wl: dict[str, Any]) -> str:
    licence = _misp_header()["list_licence"]
    return f"MISP warning list '{wl['name']}' ({licence}), version {wl['version']}"


def _misp_names(wl_type: str, item: str) -> Iterator[tuple[str, bool]]:
    """(name, subdomains) as pymispwarninglists reads an entry: in a 'hostname' list,
    'name' is the name and its subdomains and '.name' only the subdomains; in a 'string'
    list, the name alone."""
    text = item.strip().lower().rstrip(".")
    name = text.lstrip(".")
    if not _HOST_NAME.match(name):
        return  # not a host name (an upstream slip): nothing to match
    if wl_type == "string" or not text.startswith("."):
        yield name, False
    if wl_type == "hostname":
        yield name, True


def _misp_entries() -> Iterator[_NamedEntry]:
    for i, chosen in enumerate(_misp_selection()):
        where = f"selected[{i}]"
        wl = _misp_list(str(chosen.get("list")))
        if wl.get("type") not in ("hostname", "string"):
            raise _data_error(MISP_SELECTION_FILE, where, f"list type {wl.get('type')!r}")
        fact = HostFact(
            category=_category(MISP_SELECTION_FILE, where, chosen.get("category")),
            matched="",
            reason=_reason(MISP_SELECTION_FILE, where, chosen),
            source=_misp_source(wl),
            reference=_misp_list_url(str(chosen["list"])),
        )
        for item in wl["list"]:
            for name, subdomains in _misp_names(wl["type"], item):
                yield name, subdomains, item, fact


# ---------------------------------------------------------------------------------------
# The index over every entry.


def _named(entries: Iterable[_Entry]) -> tuple[list[_NamedEntry], list[_Entry]]:
    """Split entries into those written on one name and those with "*" inside a label."""
    named: list[_NamedEntry] = []
    globs: list[_Entry] = []
    for pattern, text, fact in entries:
        if _is_glob(pattern):
            globs.append((pattern, text, fact))
        else:
            named.append((pattern.name, pattern.subdomains, text, fact))
    return named, globs


class _FactIndex:
    """Every data entry, by the name it is written on; the few with "*" inside a label
    are checked one by one."""

    def __init__(self, named: Iterable[_NamedEntry], globs: Iterable[_Entry]):
        # name -> [(subdomains, text, fact)]; facts are shared, so 35,000 MISP entries
        # cost their names and little else.
        self._by_name: dict[str, list[tuple[bool, str, HostFact]]] = {}
        for name, subdomains, text, fact in named:
            self._by_name.setdefault(name, []).append((subdomains, text, fact))
        self._globs = list(globs)
        self._names = _NamesBelow(self._by_name)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values()) + len(self._globs)

    def reached_by(self, rule: _Pattern) -> Iterator[tuple[str, HostFact]]:
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
    named, globs = _named([*_own_entries(), *_fronting_entries()])
    return _FactIndex([*named, *_misp_entries()], globs)


def _allows_write(methods: Iterable[str] | None) -> bool:
    return methods is None or any(m.upper() not in SAFE_METHODS for m in methods)


def _paths_overlap(rule_paths: Iterable[str] | None, fact_paths: Iterable[str] | None) -> bool:
    if rule_paths is None or fact_paths is None:
        return True
    return any(path_matches(r, f) or path_matches(f, r) for r in rule_paths for f in fact_paths)


def _report_order(fact: HostFact) -> tuple[int, str, str]:
    rank = {category: i for i, category in enumerate(_categories())}
    return rank.get(fact.category, len(rank)), fact.matched, fact.source


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
    return tuple(sorted(found, key=_report_order))


def _simplest_first(text: str) -> tuple[int, int, str]:
    """Order a fact's matched entries: plain names before patterns, short before long."""
    return text.count("*"), text.count("."), text


# ---------------------------------------------------------------------------------------
# The Public Suffix List: the package's list, and its private section by itself (the
# package can apply the ICANN section alone, but cannot list what is below a name).

_PRIVATE_BEGIN = "// ===BEGIN PRIVATE DOMAINS==="
_PRIVATE_END = "// ===END PRIVATE DOMAINS==="


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@functools.cache
def _psl_icann() -> PublicSuffixList:
    return PublicSuffixList(only_icann=True)


def _psl_lines() -> list[str]:
    return Path(publicsuffixlist.PSLFILE).read_text(encoding="utf-8").splitlines()


def _psl_rule_name(rule: str) -> str | None:
    """The name a private-section rule is about ("*.x" is about x); None for exceptions."""
    if rule.startswith("!"):
        return None
    name = rule[2:] if rule.startswith("*.") else rule
    return name.encode("idna").decode("ascii") if not name.isascii() else name


@functools.cache
def _psl_private() -> tuple[_NamesBelow, dict[str, str]]:
    """The private section's names (indexed) and, by name, the rule as the list writes it."""
    rules: dict[str, str] = {}
    inside = False
    for line in _psl_lines():
        text = line.strip()
        if text == _PRIVATE_BEGIN:
            inside = True
        elif text == _PRIVATE_END:
            break
        elif inside and text and not text.startswith("//"):
            rule = text.split()[0].lower()
            name = _psl_rule_name(rule)
            if name:
                rules.setdefault(name, "*." + name if rule.startswith("*.") else name)
    return _NamesBelow(rules), rules


@functools.cache
def psl_version() -> str:
    """The list's VERSION and COMMIT lines, as the package's copy records them."""
    found = {}
    for line in _psl_lines()[:40]:
        for key in ("VERSION", "COMMIT"):
            if line.startswith(f"// {key}:"):
                found[key] = line.split(":", 1)[1].strip()
    return " ".join(f"{k.lower()} {v}" for k, v in found.items()) or "unknown"


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


# ---------------------------------------------------------------------------------------
# Where the data comes from, for the report's footer and the docs.


def data_sources() -> list[dict[str, str]]:
    """Each data source in use: name, licence, version (or date) and url."""
    sources = [
        {
            "name": "Public Suffix List (ICANN and private sections)",
            "licence": "MPL-2.0",
            "version": f"{psl_version()} (publicsuffixlist {publicsuffixlist.__version__})",
            "url": publicsuffixlist.PSLURL,
        }
    ]
    for chosen in _misp_selection():
        wl = _misp_list(str(chosen["list"]))
        sources.append(
            {
                "name": f"MISP warning list '{wl['name']}'",
                "licence": str(_misp_header()["list_licence"]),
                "version": f"{wl['version']} (pymispwarninglists {_package_version()})",
                "url": _misp_list_url(str(chosen["list"])),
            }
        )
    hosts_header = _load_yaml(HOSTS_FILE)["header"]
    sources.append(
        {
            "name": f"egress review host data (egress/data/review/{HOSTS_FILE})",
            "licence": str(hosts_header["licence"]),
            "version": str(hosts_header["date"]),
            "url": str(hosts_header.get("url") or ""),
        }
    )
    for study in (_load_yaml(FRONTING_FILE).get("studies") or {}).values():
        sources.append(
            {
                "name": _study_source(study),
                "licence": str(study.get("licence") or ""),
                "version": str(study.get("date") or ""),
                "url": str(study.get("url") or ""),
            }
        )
    return sources


@functools.cache
def _package_version() -> str:
    try:
        return importlib.metadata.version("pymispwarninglists")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
