"""The data behind egress/review/domains.py, read once on first use and checked as it is
read (a bad entry names its file, its place and the problem):

- ``data/review/hosts.yaml``: our own entries for what no list covers, each with its reason,
  and the fact categories in report order;
- ``data/review/domain-fronting.yaml``: CDNs that published studies found to allow fronting;
- the MISP warning lists (CC0) that ``data/review/misp-warninglists.yaml`` selects, read
  from the copy the ``pymispwarninglists`` package ships (only those lists, straight from
  their JSON files: the package's own loader reads all of them, about 2 s and 290 MB);
- the Public Suffix List's private section, from the ``publicsuffixlist`` package's copy.

Every domain name comes from these files, never from this one. ``data_sources()`` names
each source with its licence and version for the report.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import publicsuffixlist
import yaml

HOSTS_FILE = "hosts.yaml"
FRONTING_FILE = "domain-fronting.yaml"
MISP_SELECTION_FILE = "misp-warninglists.yaml"
HEADER_FIELDS = ("source", "licence", "date")
FRONTING_CATEGORY = "domain_fronting"

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
    # Headers the service takes credentials in besides Authorization and Cookie (GitLab's
    # PRIVATE-TOKEN): a guard that leaves one out lets the agent's own token through.
    credential_headers: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------
# Host patterns, as labels; the data's may hold "*" inside a label (a rule's are parsed
# in domains.py).


@dataclass(frozen=True)
class Pattern:
    """A host pattern as labels from the right; ``subdomains``: a leading "*." (one or
    more labels, never the name itself)."""

    labels: tuple[str, ...]
    subdomains: bool

    @property
    def name(self) -> str:
        return ".".join(reversed(self.labels))


def parse_data_pattern(text: str) -> Pattern:
    """A data entry's pattern: like a rule's, plus "*" inside labels (one label's worth)."""
    subdomains = text.startswith("*.")
    rest = text[2:] if subdomains else text
    labels = tuple(reversed(rest.lower().rstrip(".").split(".")))
    if not all(_DATA_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r} is not a host pattern")
    return Pattern(labels, subdomains)


def is_glob(pattern: Pattern) -> bool:
    return any("*" in label for label in pattern.labels)


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


def report_order(fact: HostFact) -> tuple[int, str, str]:
    """A sort key: facts by category, in the data's order, then by entry and source."""
    rank = {category: i for i, category in enumerate(_categories())}
    return rank.get(fact.category, len(rank)), fact.matched, fact.source


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
Entry = tuple[Pattern, str, HostFact]
NamedEntry = tuple[str, bool, str, HostFact]


def _patterns(name: str, where: str, entry: dict[str, Any]) -> list[tuple[Pattern, str]]:
    hosts = entry.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise _data_error(name, where, "hosts must be a non-empty list")
    try:
        return [(parse_data_pattern(str(h)), str(h)) for h in hosts]
    except ValueError as e:
        raise _data_error(name, where, str(e)) from None


def own_entries() -> Iterator[Entry]:
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
            credential_headers=tuple(str(h).lower() for h in entry.get("credential_headers") or ()),
        )
        for pattern, text in _patterns(HOSTS_FILE, where, entry):
            yield pattern, text, fact


def _study_source(study: dict[str, Any]) -> str:
    return " ".join(str(study["citation"]).split())


def fronting_entries() -> Iterator[Entry]:
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


def misp_lists_dir() -> Path:
    # Found without importing the package: its import pulls in jsonschema and requests
    # (0.3 s) for a loader this module does not use.
    spec = importlib.util.find_spec("pymispwarninglists")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("egress review needs the pymispwarninglists package")
    package = Path(next(iter(spec.submodule_search_locations)))
    return package / "data" / "misp-warninglists" / "lists"


@functools.cache
def _misp_list(folder: str) -> dict[str, Any]:
    path = misp_lists_dir() / folder / "list.json"
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


def misp_entries() -> Iterator[NamedEntry]:
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
# The Public Suffix List's own file: its private section and its version.

_PRIVATE_BEGIN = "// ===BEGIN PRIVATE DOMAINS==="
_PRIVATE_END = "// ===END PRIVATE DOMAINS==="


def _psl_lines() -> list[str]:
    return Path(publicsuffixlist.PSLFILE).read_text(encoding="utf-8").splitlines()


def _psl_rule_name(rule: str) -> str | None:
    """The name a private-section rule is about ("*.x" is about x); None for exceptions."""
    if rule.startswith("!"):
        return None
    name = rule[2:] if rule.startswith("*.") else rule
    return name.encode("idna").decode("ascii") if not name.isascii() else name


@functools.cache
def psl_private_rules() -> dict[str, str]:
    """The private section's rules, by the name each is about, as the list writes them."""
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
    return rules


@functools.cache
def psl_version() -> str:
    """The list's VERSION and COMMIT lines, as the package's copy records them."""
    found = {}
    for line in _psl_lines()[:40]:
        for key in ("VERSION", "COMMIT"):
            if line.startswith(f"// {key}:"):
                found[key] = line.split(":", 1)[1].strip()
    return " ".join(f"{k.lower()} {v}" for k, v in found.items()) or "unknown"


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
