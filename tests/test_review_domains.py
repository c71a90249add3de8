"""egress/review/domains.py: what kind of host a rule's pattern names, from licensed data."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from publicsuffixlist import PublicSuffixList

from egress.review import domains
from egress.review.domains import (
    FRONTING_FILE,
    HEADER_FIELDS,
    HOSTS_FILE,
    MISP_SELECTION_FILE,
    BroadWildcard,
    HostFact,
    broad_wildcard,
    categories,
    data_sources,
    facts_for,
)

DATA_FILES = (HOSTS_FILE, FRONTING_FILE, MISP_SELECTION_FILE)
SPEC_CATEGORIES = {
    "user_content", "paste", "raw_content", "url_shortener", "webhook_relay", "tunnel",
    "dynamic_dns", "object_store", "file_upload_api", "code_host_write", "domain_fronting",
}  # fmt: skip
OWN = "egress/data/review/hosts.yaml"
SHORTENERS = "MISP warning list 'List of known URL Shorteners domains' (CC0-1.0), version"
LINK_IN_BIO = "MISP warning list 'List of known link in Bio domains' (CC0-1.0), version"
DYNAMIC_DNS = "MISP warning list 'List of known dynamic DNS domains' (CC0-1.0), version"
LOTS = "MISP warning list 'List of LOTS (Living Off Trusted Sites) Project Domains'"
IPFS = "MISP warning list 'List of known public IPFS gateways' (CC0-1.0), version"
SUBRAMANI = "Measuring CDNs susceptible to Domain Fronting"


def categories_of(facts: list[HostFact]) -> set[str]:
    return {f.category for f in facts}


def read_yaml(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(domains.data_file(name).read_text(encoding="utf-8"))
    return data


# ---------------------------------------------------------------------------------------
# broad_wildcard

# pattern, registrable, suffix, a private-section suffix it must list, minimum count
BROAD = [
    ("*.amazonaws.com", "amazonaws.com", "com", "s3.amazonaws.com", 100),
    ("*.s3.amazonaws.com", "amazonaws.com", "com", "s3.amazonaws.com", 1),
    ("*.us-east-1.amazonaws.com", "amazonaws.com", "com", "us-east-1.amazonaws.com", 2),
    ("*.googleapis.com", "googleapis.com", "com", "googleapis.com", 1),
    ("*.cloudfront.net", "cloudfront.net", "net", "cloudfront.net", 1),
    ("*.azurewebsites.net", "azurewebsites.net", "net", "azurewebsites.net", 2),
    ("*.github.io", "github.io", "io", "github.io", 1),
    ("*.githubusercontent.com", "githubusercontent.com", "com", "githubusercontent.com", 1),
    ("*.herokuapp.com", "herokuapp.com", "com", "herokuapp.com", 1),
    ("*.appspot.com", "appspot.com", "com", "appspot.com", 1),
    ("*.blob.core.windows.net", "windows.net", "net", "blob.core.windows.net", 1),
    ("*.ngrok-free.app", "ngrok-free.app", "app", "ngrok-free.app", 1),
]


@pytest.mark.parametrize(("pattern", "registrable", "suffix", "member", "count"), BROAD)
def test_broad_wildcards(
    pattern: str, registrable: str, suffix: str, member: str, count: int
) -> None:
    found = broad_wildcard(pattern)
    assert isinstance(found, BroadWildcard)
    assert (found.registrable, found.suffix, found.private_section) == (registrable, suffix, True)
    assert found.private_suffix_count >= count
    assert len(found.private_suffixes_under) == min(found.private_suffix_count, 5)
    assert found.reason.startswith(f"'{pattern}'")
    # the sample holds the closest suffixes; the member is in it or at least counted
    if found.private_suffix_count <= 5:
        assert member in found.private_suffixes_under
    assert member in domains._private_suffixes_under(pattern[2:])


@pytest.mark.parametrize(
    "pattern",
    ["*.githubassets.com", "*.example.com", "*.api.example.com", "*.github.com",
     "*.bucket.s3.amazonaws.com", "*.my-app.herokuapp.com", "*.openai.com"],
)  # fmt: skip
def test_narrow_wildcards(pattern: str) -> None:
    assert broad_wildcard(pattern) is None


@pytest.mark.parametrize(
    "pattern", ["api.github.com", "amazonaws.com", "s3.amazonaws.com", "10.0.0.0/8",
                "192.0.2.7", "[2001:db8::1]", "2001:db8::/32", "127.1"],
)  # fmt: skip
def test_broad_wildcard_is_only_about_wildcards(pattern: str) -> None:
    assert broad_wildcard(pattern) is None


def test_a_wildcard_on_an_icann_suffix_is_broad() -> None:
    # The config refuses these; the review still says why they would be broad.
    found = broad_wildcard("*.co.uk")
    assert found is not None
    assert (found.registrable, found.suffix) == ("co.uk", "co.uk")
    assert "public suffix co.uk" in found.reason


# ---------------------------------------------------------------------------------------
# facts_for: exact hosts in each category, with their source

# host, methods, category, source (a prefix), the data entry that matched
EXACT = [
    ("bit.ly", None, "url_shortener", SHORTENERS, "bit.ly"),
    ("tinyurl.com", ("GET",), "url_shortener", SHORTENERS, "tinyurl.com"),
    ("linktr.ee", None, "url_shortener", LINK_IN_BIO, "linktr.ee"),
    ("home.duckdns.org", ("GET",), "dynamic_dns", DYNAMIC_DNS, ".duckdns.org"),
    ("x.ddns.net", None, "dynamic_dns", DYNAMIC_DNS, ".ddns.net"),
    ("docs.google.com", ("GET",), "user_content", LOTS, "docs.google.com"),
    ("ipfs.io", ("GET",), "user_content", IPFS, "ipfs.io"),
    ("my-app.vercel.app", None, "user_content", OWN, "*.vercel.app"),
    ("gist.github.com", ("GET",), "paste", OWN, "gist.github.com"),
    ("pastebin.com", None, "paste", OWN, "pastebin.com"),
    ("transfer.sh", ("PUT",), "file_drop", OWN, "transfer.sh"),
    ("raw.githubusercontent.com", ("GET",), "raw_content", OWN, "raw.githubusercontent.com"),
    ("cdn.jsdelivr.net", ("GET",), "raw_content", OWN, "cdn.jsdelivr.net"),
    ("webhook.site", None, "webhook_relay", OWN, "webhook.site"),
    ("abc123.m.pipedream.net", ("POST",), "webhook_relay", OWN, "*.pipedream.net"),
    ("hooks.slack.com", ("POST",), "webhook_relay", OWN, "hooks.slack.com"),
    ("quiet-fox.trycloudflare.com", None, "tunnel", OWN, "*.trycloudflare.com"),
    ("a1b2.ngrok-free.app", None, "tunnel", OWN, "*.ngrok-free.app"),
    ("bucket.s3.amazonaws.com", ("GET",), "object_store", OWN, "*.s3.amazonaws.com"),
    ("bucket.s3.eu-west-1.amazonaws.com", None, "object_store", OWN, "*.s3.*.amazonaws.com"),
    ("s3-us-west-2.amazonaws.com", None, "object_store", OWN, "s3-*.amazonaws.com"),
    ("storage.googleapis.com", ("GET",), "object_store", OWN, "storage.googleapis.com"),
    ("acct.blob.core.windows.net", None, "object_store", OWN, "*.blob.core.windows.net"),
    ("acct.r2.cloudflarestorage.com", None, "object_store", OWN, "*.r2.cloudflarestorage.com"),
    ("api.openai.com", ("POST",), "file_upload_api", OWN, "api.openai.com"),
    ("api.anthropic.com", ("POST",), "file_upload_api", OWN, "api.anthropic.com"),
    ("api.github.com", ("PUT",), "code_host_write", OWN, "api.github.com"),
    ("gitlab.com", ("POST",), "code_host_write", OWN, "gitlab.com"),
    ("upload.pypi.org", ("POST",), "code_host_write", OWN, "upload.pypi.org"),
    ("dns.google", ("GET",), "dns_over_https", OWN, "dns.google"),
    ("a248.e.akamai.net", None, "domain_fronting", "Karthika Subramani", "*.akamai.net"),
    ("foo.global.ssl.fastly.net", None, "domain_fronting", "Karthika Subramani", "*.fastly.net"),
]


@pytest.mark.parametrize(("host", "methods", "category", "source", "matched"), EXACT)
def test_exact_hosts_and_their_source(
    host: str, methods: tuple[str, ...] | None, category: str, source: str, matched: str
) -> None:
    facts = [f for f in facts_for(host, methods) if f.category == category]
    assert facts, f"{host}: no {category} fact in {facts_for(host, methods)}"
    by_source = [f for f in facts if f.source.startswith(source)]
    assert by_source, f"{host}: {category} facts come from {[f.source for f in facts]}"
    fact = by_source[0]
    assert fact.matched == matched
    assert fact.reason and fact.reason.endswith(".")
    if source == OWN:
        assert fact.reference.startswith("https://") or fact.reference == ""
    if category == "domain_fronting":
        assert SUBRAMANI in fact.source and fact.reference == "https://arxiv.org/abs/2310.17851"


@pytest.mark.parametrize(
    ("host", "category"),
    [("api.openai.com", "file_upload_api"), ("API.OpenAI.com.", "file_upload_api")],
)
def test_a_pattern_is_canonicalised_first(host: str, category: str) -> None:
    assert category in categories_of(facts_for(host, ("POST",)))


@pytest.mark.parametrize(
    "host",
    ["example.com", "pypi.org", "files.pythonhosted.org", "api.openai.com",
     "github.githubassets.com", "objects.example.org", "10.0.0.0/8", "192.0.2.7",
     "[2001:db8::1]", "2001:db8::/32", "127.1"],
)  # fmt: skip
def test_hosts_with_no_fact_for_reads(host: str) -> None:
    assert facts_for(host, ("GET",), ("/",)) == []


@pytest.mark.parametrize(
    "host", ["d111111abcdef8.cloudfront.net", "app.appspot.com", "x.azureedge.net"]
)
def test_providers_that_stopped_fronting_yield_no_fronting_fact(host: str) -> None:
    # history in domain-fronting.yaml (provider_blocked), kept for the record only
    assert "domain_fronting" not in categories_of(facts_for(host))


@pytest.mark.parametrize("pattern", ["exa mple.com", "*.", "a..b", "*", "https://a.com/"])
def test_a_bad_pattern_is_an_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="not a host pattern"):
        facts_for(pattern)


# ---------------------------------------------------------------------------------------
# facts_for: what the rule's methods and paths leave in or out

# host, methods, paths, category, expected present
FILTERED = [
    ("api.openai.com", ("GET",), ("/v1/models",), "file_upload_api", False),
    ("api.openai.com", ("GET",), None, "file_upload_api", False),
    ("api.openai.com", ("GET", "HEAD", "OPTIONS"), None, "file_upload_api", False),
    ("api.openai.com", ("POST",), None, "file_upload_api", True),
    ("api.openai.com", ("post",), None, "file_upload_api", True),
    ("api.openai.com", None, None, "file_upload_api", True),
    ("api.openai.com", None, ("/v1/files",), "file_upload_api", True),
    ("api.openai.com", ("POST",), ("/v1",), "file_upload_api", True),
    ("api.openai.com", ("POST",), ("/",), "file_upload_api", True),
    ("api.openai.com", ("POST",), ("/v1/files/file-abc/content",), "file_upload_api", True),
    ("api.openai.com", ("POST",), ("/v1/chat/completions",), "file_upload_api", False),
    ("api.openai.com", ("POST",), ("/v1/filesystem",), "file_upload_api", False),
    ("api.openai.com", ("POST",), ("/v1/models", "/v1/uploads"), "file_upload_api", True),
    ("generativelanguage.googleapis.com", ("POST",), ("/upload/v1beta/files",),
     "file_upload_api", True),
    ("generativelanguage.googleapis.com", ("POST",), ("/v1beta/models",),
     "file_upload_api", False),
    ("api.github.com", ("GET",), None, "code_host_write", False),
    ("api.github.com", ("PATCH",), ("/repos/",), "code_host_write", True),
    ("api.github.com", ("PROPFIND",), None, "code_host_write", True),
    ("api.github.com", ("GET", "POST"), ("/gists",), "paste", True),
    ("api.github.com", ("POST",), ("/repos/",), "paste", False),
    ("api.github.com", ("GET",), ("/gists",), "paste", False),
    ("discord.com", ("POST",), ("/api/webhooks/1/token",), "webhook_relay", True),
    ("discord.com", ("POST",), ("/api/v10/channels",), "webhook_relay", False),
    ("discord.com", ("GET",), None, "webhook_relay", False),
    # a fact about the whole host ignores the rule's methods and paths
    ("pastebin.com", ("GET",), ("/raw/",), "paste", True),
    ("bit.ly", ("HEAD",), ("/x",), "url_shortener", True),
]  # fmt: skip


@pytest.mark.parametrize(("host", "methods", "paths", "category", "present"), FILTERED)
def test_methods_and_paths_filter_facts(
    host: str,
    methods: tuple[str, ...] | None,
    paths: tuple[str, ...] | None,
    category: str,
    present: bool,
) -> None:
    assert (category in categories_of(facts_for(host, methods, paths))) is present


def test_a_fact_keeps_its_own_scope() -> None:
    (fact,) = [f for f in facts_for("api.openai.com", ("POST",)) if f.category == "file_upload_api"]
    assert fact.paths == ("/v1/files", "/v1/uploads")
    assert fact.write_only is True
    assert fact.service == "OpenAI Files and Uploads"


# ---------------------------------------------------------------------------------------
# facts_for: wildcards reach what any of their hosts reaches

# pattern, category, an entry that must be among the matched ones
WILDCARDS = [
    ("*.amazonaws.com", "object_store", "s3.amazonaws.com"),
    ("*.amazonaws.com", "user_content", ".amazonaws.com"),
    ("*.s3.amazonaws.com", "object_store", "*.s3.amazonaws.com"),
    ("*.githubusercontent.com", "raw_content", "raw.githubusercontent.com"),
    ("*.github.com", "paste", "gist.github.com"),
    ("*.github.com", "raw_content", "codeload.github.com"),
    ("*.googleapis.com", "object_store", "storage.googleapis.com"),
    ("*.windows.net", "object_store", "*.blob.core.windows.net"),
    ("*.core.windows.net", "object_store", "*.file.core.windows.net"),
    ("*.google.com", "user_content", "sites.google.com"),
    ("*.duckdns.org", "dynamic_dns", ".duckdns.org"),
    ("*.ngrok.io", "tunnel", "*.ngrok.io"),
    ("*.make.com", "webhook_relay", "hook.*.make.com"),
    ("*.openai.azure.com", "file_upload_api", "*.openai.azure.com"),
    ("*.akamaized.net", "domain_fronting", "*.akamaized.net"),
]


@pytest.mark.parametrize(("pattern", "category", "entry"), WILDCARDS)
def test_wildcards_reach_the_facts_of_their_hosts(pattern: str, category: str, entry: str) -> None:
    facts = [f for f in facts_for(pattern) if f.category == category]
    assert facts, f"{pattern}: no {category} fact"
    assert any(entry == f.matched or entry in f.also_matched for f in facts)


# pattern, category the wildcard must not reach (it covers subdomains only)
NOT_REACHED = [
    ("*.pastebin.com", "paste"),  # the entry is pastebin.com itself
    ("*.api.github.com", "code_host_write"),
    ("*.api.openai.com", "file_upload_api"),
    ("*.githubassets.com", "raw_content"),
    ("*.storage.googleapis.com.example", "object_store"),
    ("*.gist.github.com", "paste"),
]


@pytest.mark.parametrize(("pattern", "category"), NOT_REACHED)
def test_wildcards_reach_only_their_subdomains(pattern: str, category: str) -> None:
    assert category not in categories_of(facts_for(pattern))


def test_one_fact_per_data_entry_in_report_order() -> None:
    facts = facts_for("*.amazonaws.com")
    object_stores = [f for f in facts if f.category == "object_store"]
    assert len(object_stores) == 1  # ten S3 patterns, one entry
    assert object_stores[0].matched == "s3.amazonaws.com"  # the plainest first
    assert "*.s3.*.amazonaws.com" in object_stores[0].also_matched
    order = list(categories())
    assert [order.index(f.category) for f in facts] == sorted(
        order.index(f.category) for f in facts
    )
    assert facts == facts_for("*.amazonaws.com")
    assert len(set(facts)) == len(facts)


# The index against the plain definition: some host matches both patterns.
SYNTHETIC = ["a.com", "*.a.com", "b.a.com", "*.c.b.a.com", "s3.*.a.com", "*.s3-*.a.com",
             "x.org", "*.y.x.org"]  # fmt: skip
RULES = ["a.com", "*.a.com", "b.a.com", "*.b.a.com", "z.b.a.com", "s3.eu.a.com", "*.eu.a.com",
         "q.s3-eu.a.com", "s3-eu.a.com", "x.org", "*.x.org", "y.x.org", "*.y.x.org", "k.y.x.org",
         "other.net", "*.com"]  # fmt: skip


def brute_force_hosts(rule: str, entries: list[str]) -> set[str]:
    """Candidate hosts under the rule, tested against every entry with fnmatch-by-label."""
    rule_pattern = domains._parse_rule_pattern(rule)
    assert rule_pattern is not None
    return {e for e in entries if domains._intersects(rule_pattern, domains._parse_data_pattern(e))}


@pytest.mark.parametrize("rule", RULES)
def test_the_index_finds_what_the_definition_finds(rule: str) -> None:
    fact = HostFact(category="paste", matched="", reason="r.", source="s")
    named, globs = domains._named([(domains._parse_data_pattern(e), e, fact) for e in SYNTHETIC])
    index = domains._FactIndex(named, globs)
    rule_pattern = domains._parse_rule_pattern(rule)
    assert rule_pattern is not None
    found = {text for text, _ in index.reached_by(rule_pattern)}
    assert found == brute_force_hosts(rule, SYNTHETIC)


# rule, entry, intersects: the definition itself, spelled out
INTERSECTS = [
    ("a.com", "a.com", True), ("a.com", "*.a.com", False), ("b.a.com", "*.a.com", True),
    ("*.a.com", "a.com", False), ("*.a.com", "b.a.com", True), ("*.a.com", "*.a.com", True),
    ("*.b.a.com", "*.a.com", True), ("*.a.com", "*.c.b.a.com", True),
    ("s3.eu.a.com", "s3.*.a.com", True), ("s3.eu.west.a.com", "s3.*.a.com", False),
    ("q.s3-eu.a.com", "*.s3-*.a.com", True), ("s3-eu.a.com", "*.s3-*.a.com", False),
    ("*.a.com", "s3.*.a.com", True), ("a.org", "a.com", False),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "entry", "expected"), INTERSECTS)
def test_pattern_intersection(rule: str, entry: str, expected: bool) -> None:
    rule_pattern = domains._parse_rule_pattern(rule)
    assert rule_pattern is not None
    assert domains._intersects(rule_pattern, domains._parse_data_pattern(entry)) is expected


# ---------------------------------------------------------------------------------------
# The data files

URL = re.compile(r"^https://[^\s/]+/\S*$")


@pytest.mark.parametrize("name", DATA_FILES)
def test_every_data_file_starts_with_its_header(name: str) -> None:
    text = domains.data_file(name).read_text(encoding="utf-8")
    assert text.startswith("#"), "the file opens with a comment saying what it is"
    header = read_yaml(name)["header"]
    for field in (*HEADER_FIELDS, "url"):
        assert isinstance(header.get(field), str) and header[field].strip(), field
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", header["date"])
    assert URL.match(header["url"])


def test_every_own_entry_has_a_reason_a_category_and_valid_patterns() -> None:
    data = read_yaml(HOSTS_FILE)
    assert set(data["categories"]) >= SPEC_CATEGORIES
    for i, entry in enumerate(data["entries"]):
        where = f"{HOSTS_FILE} entries[{i}] ({entry.get('service')})"
        assert entry.get("service"), where
        assert entry["category"] in data["categories"], where
        assert isinstance(entry.get("reason"), str) and len(entry["reason"]) > 20, where
        assert entry["hosts"], where
        for host in entry["hosts"]:
            domains._parse_data_pattern(host)
        if "reference" in entry:
            assert URL.match(entry["reference"]), where
        assert set(entry) <= {"service", "category", "hosts", "reason", "reference", "paths",
                              "write_methods_only", "credential_headers"}, where  # fmt: skip
        for path in entry.get("paths") or []:
            assert path.startswith("/") and "?" not in path, where


def test_every_fronting_entry_cites_a_study() -> None:
    data = read_yaml(FRONTING_FILE)
    for key, study in data["studies"].items():
        for field in ("citation", "url", "licence", "date"):
            assert study.get(field), f"{key}: {field}"
        assert study["licence"] == "facts from a published study"
    for i, entry in enumerate(data["entries"]):
        where = f"{FRONTING_FILE} entries[{i}]"
        assert entry.get("cdn") and entry.get("reason"), where
        assert entry["studies"] and set(entry["studies"]) <= set(data["studies"]), where
        for host in entry["hosts"]:
            domains._parse_data_pattern(host)
        blocked = entry.get("provider_blocked")
        if blocked:
            assert blocked.get("date") and URL.match(blocked.get("url", "")), where


def misp_lists() -> dict[str, dict[str, Any]]:
    return {
        path.parent.name: json.loads(path.read_text(encoding="utf-8"))
        for path in domains._misp_lists_dir().glob("*/list.json")
    }


def test_every_selected_misp_list_is_in_the_package_with_a_category_and_reason() -> None:
    available = misp_lists()
    selection = read_yaml(MISP_SELECTION_FILE)
    assert selection["header"]["list_licence"] == "CC0-1.0"
    for chosen in selection["selected"]:
        assert chosen["list"] in available, chosen["list"]
        assert available[chosen["list"]]["type"] in ("hostname", "string")
        assert chosen["category"] in categories()
        assert chosen.get("reason")


def test_every_misp_list_of_hosts_was_reviewed() -> None:
    # A new list in a newer pymispwarninglists: decide whether it belongs in
    # misp-warninglists.yaml's selected or not_selected, and say why.
    selection = read_yaml(MISP_SELECTION_FILE)
    reviewed = {c["list"] for c in selection["selected"]}
    for group in selection["not_selected"]:
        reviewed |= set(group["lists"])
        assert group.get("reason")
    available = misp_lists()
    host_lists = {name for name, wl in available.items() if wl["type"] != "cidr"}
    assert host_lists - reviewed == set()
    assert reviewed - set(available) == {"(every list of type cidr)"}


def test_data_sources_name_licence_and_version() -> None:
    sources = data_sources()
    for source in sources:
        assert set(source) == {"name", "licence", "version", "url"}
        assert all(source.values()), source
        assert URL.match(source["url"]), source
    by_name = {s["name"]: s for s in sources}
    psl = by_name["Public Suffix List (ICANN and private sections)"]
    assert psl["licence"] == "MPL-2.0" and psl["version"].startswith("version 20")
    misp = [s for s in sources if s["name"].startswith("MISP warning list")]
    assert len(misp) == len(read_yaml(MISP_SELECTION_FILE)["selected"])
    assert all(s["licence"] == "CC0-1.0" and "pymispwarninglists" in s["version"] for s in misp)
    assert any(HOSTS_FILE in s["name"] for s in sources)
    assert sum(s["licence"] == "facts from a published study" for s in sources) == len(
        read_yaml(FRONTING_FILE)["studies"]
    )


REVIEW_MODULES = sorted(Path(domains.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("module", REVIEW_MODULES, ids=[m.name for m in REVIEW_MODULES])
def test_the_misp_lists_are_read_without_the_package_loader(module: Path) -> None:
    # Its loader reads all 119 lists (about 2 s, 290 MB); the review needs five.
    source = module.read_text(encoding="utf-8")
    assert "WarningLists(" not in source
    assert "import pymispwarninglists" not in source


# ---------------------------------------------------------------------------------------
# No hand-typed domain lists inside the code

_ICANN = PublicSuffixList(only_icann=True, accept_unknown=False)
_DOMAIN_LIKE = re.compile(r"(?<![\w-])(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+([a-z]{2,63})\b", re.I)


def domain_literals(source: str) -> list[str]:
    """Every domain name in a string literal of the source, docstrings aside: a dotted
    name whose last label is a top-level domain of the Public Suffix List."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                docstrings.add(id(body[0].value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            for match in _DOMAIN_LIKE.finditer(node.value):
                if _ICANN.is_public(match.group(1).lower()):
                    found.append(match.group(0))
    return found


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ('X = ["pastebin.com", "bit.ly"]', ["pastebin.com", "bit.ly"]),
        ('URL = "https://github.com/MISP/x"', ["github.com"]),
        ('f"{x}.s3.amazonaws.com"', ["s3.amazonaws.com"]),
        ('NAME = "hosts.yaml"; J = "list.json"', []),
        ('def f():\n    """Like *.amazonaws.com."""\n    return 1', []),
    ],
)
def test_the_domain_literal_check(source: str, found: list[str]) -> None:
    assert domain_literals(source) == found


# The modules that judge hosts (renderers name files and CSS classes that look like names).
JUDGING = [m for m in REVIEW_MODULES if m.stem in
           ("domains", "domaindata", "findings", "reach", "diff", "drafting", "learner", "auditjoin")]  # fmt: skip


def test_the_judging_modules_exist() -> None:
    assert len(JUDGING) == 8


@pytest.mark.parametrize("module", JUDGING, ids=[m.name for m in JUDGING])
def test_no_domain_names_in_the_review_modules(module: Path) -> None:
    assert domain_literals(module.read_text(encoding="utf-8")) == []
