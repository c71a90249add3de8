"""Adversarial review of `egress review`, `egress review --diff` and `egress check`.

The promise under test: a security reviewer can approve an agent's allowlist from the
review's output instead of reading YAML. Each table row is a config (and sometimes a
request) where the review could lie: the proxy injects a credential or lets a request out
that the reach matrix, the findings or --diff do not show, or shows wrongly; a finding
evaded by spelling; an output that can be made to hide what it says; a crash.

Each row asserts what a truthful review says. Rows marked ``xfail(strict=True)`` are
problems confirmed today (the reason says what is wrong, the severity and the proxy's side
of it); the others are attacks that held. Where a row claims what the proxy does, it first
proves it with the proxy's own pieces (``egress.decide.decide_request``, the resolver of
``egress check``, ``egress.runtime``), so a row cannot pass or fail on a wrong premise.

The hypothesis tests at the end: review never crashes on a generated valid config (every
format, and --diff between two of them), and a differential property between the reach
matrix and ``decide_request`` (what ``egress check --no-secrets`` runs), both ways.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from egress import config
from egress.addresses import METADATA, embedded_ipv4
from egress.audit import AuditWriter
from egress.checkcmd import build, static_resolve
from egress.cli import main
from egress.decide import Verdict, decide_request
from egress.errors import ConfigError
from egress.hostnames import parse_host_pattern
from egress.policy import Allowlist, path_matches
from egress.resolver import Refused
from egress.review.analyze import review_config
from egress.review.diff import Diff, diff_configs, diff_reports
from egress.review.model import Finding, Report
from egress.review.render import render
from egress.review.render_diff import render_diff
from egress.runtime import Runtime
from egress.secrets import SecretValue

SRC = "    source: {env: EGRESS_ADV_NOT_SET}\n"


# ---------------------------------------------------------------------------------------
# Helpers: write a config (and the files it includes), review it, ask the proxy's pieces.


def write(tmp: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp / "egress.yaml"


def load(tmp: Path, name: str = "egress.yaml") -> config.Config:
    return config.load(tmp / name)


def review(tmp: Path, name: str = "egress.yaml") -> Report:
    return review_config(load(tmp, name))


def ids(report: Report) -> set[str]:
    return {f.id for f in report.findings}


def findings(report: Report, kind: str) -> list[Finding]:
    return [f for f in report.findings if f.id == kind]


def check(
    cfg: config.Config, method: str, url: str, headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None, websocket: bool = False,
) -> Verdict:  # fmt: skip
    """What `egress check --no-secrets` decides (placeholders stand in for the values;
    addresses from upstream.resolve and literals only, as check does)."""
    asked = build(method, url, list(headers or []), body, websocket)
    secrets = [(s, SecretValue(s.placeholder)) for s in cfg.secrets]
    return decide_request(asked.request, Allowlist(cfg.rules), secrets, {},
                          max_body_bytes=cfg.max_body_bytes, resolve=static_resolve(cfg),
                          transparent=cfg.listen_mode == "transparent")  # fmt: skip


def dials(cfg: config.Config, host: str, port: int = 443) -> str | None:
    """The address the proxy's resolver would dial for host (from upstream.resolve or a
    literal, as the running proxy does), or None when it refuses."""
    picked = static_resolve(cfg)(host, port)
    assert picked is not None, f"{host} is resolved only by DNS here"
    return None if isinstance(picked, Refused) else str(picked.address)


def is_metadata(address: str) -> bool:
    """The address is a metadata address, or carries one (IPv4-mapped, NAT64, 6to4,
    Teredo), as egress.addresses judges them."""
    addr = ipaddress.ip_address(address)
    inner = [addr, *embedded_ipv4(addr)]
    return any(a.version == n.version and a in n for a in inner for n in METADATA)


# ---------------------------------------------------------------------------------------
# The table. Each case writes its files, then its check asserts what a truthful review
# says (first proving, where it matters, what the proxy does).


@dataclass
class Case:
    id: str
    files: dict[str, str]
    check: Callable[[Path], None]
    xfail: str | None = None  # why the review is wrong today: what it says, what the proxy does
    marks: list[Any] = field(default_factory=list)


# Problems confirmed at commit 2ee8d04 that the working tree has fixed since (by concurrent
# edits to egress/review and egress/config): their rows stay as regression tests, and their
# reason says what was wrong. Every other row with a reason is a problem today.
FIXED = {
    "metadata-ipv4-mapped-allow_private", "metadata-ipv4-mapped-everything",
    "metadata-nat64-literal", "metadata-6to4-range", "secret-on-public-range",
    "credential-redirected-by-upstream", "user_content_host-www.dropbox.com",
    "user_content_host-oauth.reddit.com", "code-host-write-without-secret",
    "auth-headers-unguarded", "account-only-downgrade-default-auth-headers",
    "dead-rule-live-wildcard", "secret-in-two-fragments-with-override", "include-binary-file",
    "include-echo-yaml-tag", "include-echo-yaml-alias", "bidi-in-paths",
    "diff-websocket-via-query", "diff-secret-removed-opens-writes-as-anyone",
    "diff-require-placeholder-off", "diff-credential-redirected", "diff-markdown-injection",
    "diff-revision-shadowed", "cli-config-error-exit-2", "dead-rule-static-mixed-wildcard",
    "diff-revision-absolute-symlink", "metadata-teredo-range",
    "exfiltration_host-canary.discord.com", "exfiltration_host-ptb.discord.com",
    "exfiltration_host-api.paste.ee", "duplicate-yaml-key", "account-only-gitlab-private-token",
    "check-own-listener",
}  # fmt: skip


def known(case_id: str, reason: str | None) -> list[Any]:
    """A strict xfail for a problem that is still there; nothing once it is fixed."""
    if not reason or case_id in FIXED:
        return []
    return [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)]


def known_problem(case_id: str, reason: str) -> Callable[[Any], Any]:
    def mark(fn: Any) -> Any:
        for m in known(case_id, reason):
            fn = m(fn)
        return fn

    return mark


def _metadata_case(host: str, expected: str) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        cfg = load(tmp)
        address = dials(cfg, host)
        assert address is not None and is_metadata(address), (host, address)  # the proxy dials it
        assert expected in ids(review_config(cfg)), ids(review_config(cfg))

    return run


def _meta_files(rule: str, resolve: str = "", private: str = "") -> dict[str, str]:
    text = f"allow: ['{rule}']\n"
    if resolve or private:
        text += "upstream:\n"
        if private:
            text += f"  allow_private: ['{private}']\n"
        if resolve:
            text += f"  resolve: {{{rule}: '{resolve}'}}\n"
    return {"egress.yaml": text}


def _findings_like(reference: str, host: str, kind: str, xfail: str | None = None) -> Case:
    """``host`` is the same service as ``reference`` (another name of it): it must get the
    finding ``reference`` gets."""

    def run(tmp: Path) -> None:
        (tmp / "ref.yaml").write_text(f"allow:\n  - host: {reference}\n    methods: [POST]\n")
        assert kind in ids(review(tmp, "ref.yaml"))  # the data knows the service
        got = review(tmp)
        assert kind in ids(got), (host, sorted(ids(got)))

    files = {"egress.yaml": f"allow:\n  - host: {host}\n    methods: [POST]\n"}
    return Case(f"{kind}-{host}", files, run, xfail)


def _spelled(host: str, kind: str) -> Case:
    def run(tmp: Path) -> None:
        assert kind in ids(review(tmp)), sorted(ids(review(tmp)))

    return Case(
        f"spelling-{kind}-{host}",
        {"egress.yaml": f"allow:\n  - host: '{host}'\n    methods: [POST]\n"},
        run,
    )


def _public_range_secret(tmp: Path) -> None:
    cfg = load(tmp)
    v = check(cfg, "GET", "https://3.91.4.7/", [("Authorization", "Bearer egress-t-placeholder")])
    assert v.allowed and v.injected == ["t"]  # injected into any of 16.7M public addresses
    report = review_config(cfg)
    wide = [f for f in report.findings if f.severity in ("critical", "high")
            and (f.subject == "t" or f.location.key.startswith("secrets[0]"))]  # fmt: skip
    assert wide, [(f.id, f.severity, f.subject) for f in report.findings]


def _wildcard_secret(tmp: Path) -> None:
    assert "secret_on_wildcard" in ids(review(tmp))


def _redirected_credential(tmp: Path) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp / "their-ca.pem"))
    cfg = load(tmp)
    v = check(cfg, "GET", "https://api.github.com/user",
              [("Authorization", "Bearer egress-gh-placeholder")])  # fmt: skip
    # The proxy injects the real token and dials 1.2.3.4, trusting a CA the config brought.
    assert v.allowed and v.injected == ["gh"] and str(v.address) == "1.2.3.4"
    report = review_config(cfg)
    about = [f for f in report.findings if f.location.key.startswith("upstream.")]
    assert about, [(f.id, f.location.key) for f in report.findings]


def _code_host_write_own_token(tmp: Path) -> None:
    cfg = load(tmp)
    v = check(cfg, "POST", "https://api.github.com/repos/attacker/drop/issues",
              [("Authorization", "token ghp_attackerSuppliedToken0000000000000")], b"{}")  # fmt: skip
    assert v.allowed  # the agent writes to the attacker's repository with the attacker's token
    assert "code_host_write" in ids(review_config(cfg)), sorted(ids(review_config(cfg)))


def _auth_headers_unguarded(tmp: Path) -> None:
    cfg = load(tmp)
    v = check(cfg, "POST", "https://api.github.com/user/repos",
              [("Authorization", "token ghp_myOwnAccountToken00000000000000000")], b"{}")  # fmt: skip
    assert v.allowed  # as with require_placeholder: false
    assert "no_foreign_credential_check" in ids(review_config(cfg))


def _account_only_with_cookie(tmp: Path) -> None:
    cfg = load(tmp)
    v = check(cfg, "POST", "https://github.com/attacker/drop/issues",
              [("Cookie", "user_session=AnotherAccountsSession")], b"issue[title]=data")  # fmt: skip
    assert v.allowed  # a session of another account rides along: the write is not "as that account"
    w = findings(review_config(cfg), "write_to_user_content")
    assert w and w[0].severity == "high", [(f.severity, f.explanation) for f in w]


def _account_only_guarded(tmp: Path) -> None:
    cfg = load(tmp)
    v = check(cfg, "POST", "https://github.com/attacker/drop/issues",
              [("Cookie", "user_session=AnotherAccountsSession")], b"issue[title]=data")  # fmt: skip
    assert not v.allowed and v.reason.value == "foreign_credential"
    w = findings(review_config(cfg), "write_to_user_content")
    assert w and w[0].severity == "medium"  # the downgrade is earned here


def _dead_wildcard(tmp: Path) -> None:
    cfg = load(tmp)
    assert check(cfg, "GET", "https://new.corp.example/").allowed  # resolved by DNS: alive
    assert "dead_rule" not in ids(review_config(cfg)), (
        "says the live wildcard can never let a request out"
    )


def _dead_static_mixed(tmp: Path) -> None:
    cfg = load(tmp)
    assert check(cfg, "GET", "https://new.corp.example/").allowed  # 1.2.3.4 from upstream.resolve
    assert "dead_rule" not in ids(review_config(cfg)), (
        "says the live wildcard can never let a request out"
    )


def _gitlab_own_token(tmp: Path) -> None:
    cfg = load(tmp)
    v = check(cfg, "POST", "https://gitlab.com/api/v4/projects/4242/issues",
              [("PRIVATE-TOKEN", "glpat-attackerSuppliedToken")], b"{}")  # fmt: skip
    assert v.allowed  # GitLab's own token header is not in auth_headers: any account writes
    report = review_config(cfg)
    writes = [f for f in report.findings if f.id in ("write_to_user_content", "code_host_write")]
    assert any(f.severity in ("critical", "high") for f in writes), [
        (f.id, f.severity, f.explanation) for f in writes
    ]


def _duplicate_key_located(tmp: Path) -> None:
    try:
        cfg = load(tmp)
    except ConfigError:
        return  # refusing a duplicate key is right too
    assert cfg.rules[0].methods == ("GET", "POST")  # PyYAML: the last one wins, for the proxy too
    f = findings(review_config(cfg), "write_to_user_content")[0]
    line = (tmp / "egress.yaml").read_text().splitlines()[(f.location.line or 1) - 1]
    assert "POST" in line, f"{f.location.text()} points at {line.strip()!r}"


def _dead_exact(tmp: Path) -> None:
    cfg = load(tmp)
    assert dials(cfg, "old.corp.example") is None
    assert "dead_rule" in ids(review_config(cfg))


def _two_fragments_overridden(tmp: Path) -> None:
    try:
        cfg = load(tmp)
    except ConfigError:
        return  # what docs/config.md promises: the same secret in two fragments is an error
    f = findings(review_config(cfg), "secret_in_body")
    assert f, "the merged secret injects into bodies"
    loc = f[0].location
    line = Path(loc.file).read_text().splitlines()[(loc.line or 1) - 1]
    assert "body" in line, f"{loc.text()} points at {line.strip()!r}"


def _two_fragments(tmp: Path) -> None:
    with pytest.raises(ConfigError, match="also defined in"):
        load(tmp)


def _no_raw_bidi(tmp: Path) -> None:
    try:
        report = review(tmp)
    except ConfigError:
        return  # refusing such a path when the config is loaded is right too
    for fmt in ("text", "markdown", "html", "json", "sarif"):
        out = render(report, fmt)
        hidden = [c for c in "\u202e\u202c\u200b" if c in out]
        assert not hidden, f"{fmt} shows {hidden!r} raw: a path reads as another path"


def _escaped(tmp: Path) -> None:
    report = review(tmp)
    # Markdown: raw markup only inside code spans, where it renders as text.
    md = re.sub(r"`[^`\n]*`", "", render(report, "markdown"))
    html = render(report, "html")
    for raw in ("<script>", "<details>", "](javascript:"):
        assert raw not in md, raw
    for raw in ("<script>", "<details>"):
        assert raw not in html, raw


def _include_non_utf8(tmp: Path) -> None:
    try:
        load(tmp)
    except ConfigError:
        return
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{type(e).__name__} instead of a config error: {e}") from None
    raise AssertionError("loaded a binary fragment")


def _include_echo(value: str) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        with pytest.raises(ConfigError) as e:
            load(tmp)
        assert value not in str(e.value), str(e.value)

    return run


CASES = [
    # --- addresses: a metadata address in a spelling the review does not judge --------------
    Case("metadata-ipv4-mapped-allow_private",
         _meta_files("meta.attacker.example", resolve="::ffff:169.254.169.254", private="::ffff:a9fe:a900/120"),
         _metadata_case("meta.attacker.example", "metadata_reachable"),
         "CRITICAL: upstream.allow_private ::ffff:a9fe:a900/120 (IPv4-mapped 169.254.169.0/24) lets "
         "the proxy dial ::ffff:169.254.169.254 (the metadata service, over a v4-mapped socket); "
         "review compares ranges with METADATA by IP version only and reports no finding at all"),
    Case("metadata-ipv4-mapped-everything",
         _meta_files("meta.attacker.example", resolve="::ffff:169.254.169.254", private="::ffff:0:0/96"),
         _metadata_case("meta.attacker.example", "private_range_opened"),
         "CRITICAL: allow_private ::ffff:0:0/96 opens every IPv4 address (loopback, private, "
         "metadata) to names that answer a v4-mapped AAAA; review: no finding"),
    Case("metadata-nat64-literal", _meta_files("64:ff9b::a9fe:a9fe"),
         _metadata_case("64:ff9b::a9fe:a9fe", "metadata_reachable"),
         "CRITICAL: a rule for 64:ff9b::a9fe:a9fe (NAT64 of 169.254.169.254, which egress's own "
         "address check judges as metadata) is dialled; review: no finding"),
    Case("metadata-6to4-range", _meta_files("2002:a9fe:a9fe::/48"),
         _metadata_case("2002:a9fe:a9fe::1", "metadata_reachable"),
         "HIGH: a rule for 2002:a9fe:a9fe::/48 (6to4 of 169.254.169.254) is dialled; review: no finding"),
    Case("metadata-teredo-range", _meta_files("2001:0:a9fe:a9fe::/64"),
         _metadata_case("2001:0:a9fe:a9fe::1", "metadata_reachable"),
         "HIGH: a rule for 2001:0:a9fe:a9fe::/64 (Teredo, server address 169.254.169.254, which "
         "egress.addresses.embedded_ipv4 judges as metadata) is dialled; the review's IPv4 views "
         "cover mapped, NAT64 and 6to4 but not Teredo: no finding"),
    *[Case(f"metadata-spelled-{h}", {"egress.yaml": f"allow: ['{h}']\n"},
           lambda tmp: None if "metadata_reachable" in ids(review(tmp)) else pytest.fail("not flagged"))
      for h in ("169.254.169.254", "::ffff:169.254.169.254", "::ffff:a9fe:a9fe", "[::ffff:a9fe:a9fe]",
                "169.254.169.254/32", "169.254.0.0/16", "fd00:ec2::254", "100.100.100.200")],
    # --- a credential on a wide binding ----------------------------------------------------
    Case("secret-on-public-range",
         {"egress.yaml": "allow: [3.0.0.0/8]\nsecrets:\n  - name: t\n" + SRC + "    hosts: [3.0.0.0/8]\n"},
         _public_range_secret,
         "HIGH: a secret bound to 3.0.0.0/8 is injected into requests to 16.7M public addresses "
         "(rentable cloud IPs, which can hold IP certificates); secret_on_wildcard fires for "
         "'*.corp.example' but the review reports nothing for a range"),
    Case("secret-on-wildcard",
         {"egress.yaml": "allow: ['*.corp.example']\nsecrets:\n  - name: t\n" + SRC + "    hosts: ['*.corp.example']\n"},
         _wildcard_secret),
    # --- where the credential actually goes ------------------------------------------------
    Case("credential-redirected-by-upstream",
         {"egress.yaml": "allow: [api.github.com]\nupstream:\n  ca_files: [their-ca.pem]\n"
                         "  resolve: {api.github.com: 1.2.3.4}\nsecrets:\n  - name: gh\n" + SRC
                         + "    hosts: [api.github.com]\n"},
         _redirected_credential,
         "HIGH: upstream.resolve sends api.github.com to 1.2.3.4 and upstream.ca_files trusts a CA "
         "the config brought: the real token goes to whoever holds that CA; the reach matrix "
         "says gh -> api.github.com and no finding mentions upstream.*"),
    # --- the same service under another name -----------------------------------------------
    *[_findings_like(ref, host, kind, xfail) for ref, host, kind, xfail in (
        ("discord.com", "canary.discord.com", "exfiltration_host",
         "HIGH: discord.com with POST is an exfiltration_host (webhooks under /api/webhooks); "
         "canary.discord.com serves the same API, webhooks included, and is not: own data "
         "entries match their exact name only (at 2ee8d04 it got no finding at all; the working "
         "tree now gives it the LOTS parent's user_content_host, medium, and "
         "write_to_user_content)"),
        ("discord.com", "ptb.discord.com", "exfiltration_host",
         "HIGH: as canary.discord.com: ptb.discord.com/api/webhooks/... is the same relay"),
        ("paste.ee", "api.paste.ee", "exfiltration_host",
         "HIGH: paste.ee's API (POST api.paste.ee/v1/pastes) is the paste service but not an "
         "exfiltration_host (only LOTS's user_content_host for the parent): with methods [GET], "
         "which still carries data out in the URL, api.paste.ee is medium where paste.ee is high"),
        ("dropbox.com", "www.dropbox.com", "user_content_host",
         "MEDIUM: LOTS lists dropbox.com (name and subdomains); www.dropbox.com gets no finding"),
        ("reddit.com", "oauth.reddit.com", "user_content_host",
         "MEDIUM: LOTS lists reddit.com; oauth.reddit.com, Reddit's API host for posting, gets "
         "no finding"),
        ("discord.com", "discord.com", "exfiltration_host", None),
    )],
    *[_spelled(h, k) for h, k in (
        ("PASTEBIN.COM.", "exfiltration_host"), ("HOOKS.Slack.com.", "exfiltration_host"),
        ("*.Example.NGROK.io.", "exfiltration_host"), ("Gist.GitHub.com", "exfiltration_host"),
        ("*.github.com", "exfiltration_host"), ("discord.com", "exfiltration_host"),
        ("A248.E.Akamai.NET", "domain_fronting"),
    )],
    # --- the agent's own credentials ---------------------------------------------------------
    Case("code-host-write-without-secret",
         {"egress.yaml": "allow:\n  - host: api.github.com\n    methods: [POST]\n    paths: [/repos/]\n"},
         _code_host_write_own_token,
         "HIGH: with no secret bound, nothing guards Authorization on api.github.com: the agent "
         "writes issues/contents to an attacker's repository with a token it was handed; review "
         "drops code_host_write 'because without a credential the write API refuses the agent' "
         "(and reports it, medium, for the safer config where a secret guards the header)"),
    Case("auth-headers-unguarded",
         {"egress.yaml": "allow: [api.github.com]\nsecrets:\n  - name: gh\n" + SRC
                         + "    hosts: [api.github.com]\n    auth_headers: [x-not-used]\n"},
         _auth_headers_unguarded,
         "MEDIUM: auth_headers without authorization lets the agent log in with its own token, as "
         "require_placeholder: false does, but no_foreign_credential_check is not reported"),
    Case("account-only-downgrade-default-auth-headers",
         {"egress.yaml": "allow: [github.com]\nsecrets:\n  - name: github_token\n" + SRC
                         + "    hosts: [github.com]\n"},
         _account_only_with_cookie,
         "MEDIUM: write_to_user_content on github.com is downgraded to medium because 'egress "
         "refuses every credential but the placeholder', but default auth_headers do not guard "
         "Cookie: another account's web session POSTs through (config/egress.yaml is this case)"),
    Case("account-only-gitlab-private-token",
         {"egress.yaml": "allow:\n  - host: gitlab.com\n    methods: [GET, POST]\n"
                         "    paths: [/api/v4/projects/]\nsecrets:\n  - name: gl\n" + SRC
                         + "    hosts: [gitlab.com]\n    auth_headers: [authorization, cookie]\n"},
         _gitlab_own_token,
         "MEDIUM: write_to_user_content on gitlab.com says 'egress refuses every credential "
         "(Authorization and Cookie) but the placeholder of gl: the agent can write only as that "
         "account' and code_host_write stays medium, but GitLab takes PRIVATE-TOKEN (and "
         "JOB-TOKEN, Deploy-Token): an attacker's token in it POSTs through"),
    Case("account-only-downgrade-guarded",
         {"egress.yaml": "allow: [github.com]\nsecrets:\n  - name: github_token\n" + SRC
                         + "    hosts: [github.com]\n    auth_headers: [authorization, cookie]\n"},
         _account_only_guarded),
    # --- dead rules --------------------------------------------------------------------------
    Case("dead-rule-live-wildcard",
         {"egress.yaml": "allow: ['*.corp.example']\nupstream:\n  resolve: {old.corp.example: 10.0.0.9}\n"},
         _dead_wildcard,
         "LOW: one blocked upstream.resolve answer under '*.corp.example' makes the review say the "
         "whole wildcard 'can never let a request out' (fix: remove it); every other subdomain "
         "is resolved by DNS and allowed"),
    Case("dead-rule-static-mixed-wildcard",
         {"egress.yaml": "allow: ['*.corp.example']\nupstream:\n  dns: static\n"
                         "  resolve: {old.corp.example: 10.0.0.9, new.corp.example: 1.2.3.4}\n"},
         _dead_static_mixed,
         "LOW: with dns: static, one blocked answer (old.corp.example) still makes the review "
         "call '*.corp.example' dead, though new.corp.example (1.2.3.4) is allowed and dialled"),
    Case("duplicate-yaml-key",
         {"egress.yaml": "allow:\n  - host: pastebin.com\n    methods: [GET]\n    methods: [GET, POST]\n"},
         _duplicate_key_located,
         "LOW: a duplicate key is accepted (the last wins, for the proxy and the review alike), "
         "but findings point at the first one's line: write_to_user_content (POST) points at "
         "'methods: [GET]', so a reviewer who follows the location reads the harmless copy"),
    Case("dead-rule-exact",
         {"egress.yaml": "allow: [old.corp.example]\nupstream:\n  resolve: {old.corp.example: 10.0.0.9}\n"},
         _dead_exact),
    # --- includes ----------------------------------------------------------------------------
    Case("secret-in-two-fragments-with-override",
         {"frag1.yaml": "allow: [a.example]\nsecrets:\n  - name: t\n    source: {env: A}\n"
                        "    hosts: [a.example]\n    inject: [headers, body]\n",
          "frag2.yaml": "secrets:\n  - name: t\n    source: {env: B}\n    hosts: [a.example]\n"
                        "    inject: [headers]\n",
          "egress.yaml": "include: [./frag1.yaml, ./frag2.yaml]\nsecrets:\n  - name: t\n"
                         "    source: {env: MAIN}\n"},
         _two_fragments_overridden,
         "MEDIUM: the same secret in two fragments is accepted once the main file names it "
         "(docs: an error); the merged secret injects into bodies (frag1's inject) while "
         "secret_in_body points at frag2.yaml's 'inject: [headers]', and frag1 is never named"),
    Case("secret-in-two-fragments",
         {"frag1.yaml": "allow: [a.example]\nsecrets:\n  - name: t\n    source: {env: A}\n    hosts: [a.example]\n",
          "frag2.yaml": "secrets:\n  - name: t\n    source: {env: B}\n    hosts: [a.example]\n",
          "egress.yaml": "include: [./frag1.yaml, ./frag2.yaml]\n"},
         _two_fragments),
    Case("include-binary-file",
         {"egress.yaml": "include: [./keystore.yaml]\nallow: [a.example]\n"},
         lambda tmp: ((tmp / "keystore.yaml").write_bytes(b"\xff\xfe\x00k\x80ey"), _include_non_utf8(tmp))[1],
         "LOW: an include that is not UTF-8 raises UnicodeDecodeError (a traceback) instead of a "
         "config error naming the file"),
    *[Case(f"include-echo-{name}", {"egress.yaml": "include: [./secrets.yaml]\nallow: [a.example]\n",
                                    "secrets.yaml": text}, _include_echo(value), xfail)
      for name, text, value, xfail in (
          ("yaml-tag", "db_password: !Qaz2wsxEDC\n", "Qaz2wsxEDC",
           "MEDIUM: an include that names a secrets file (a typo, or a config under review) prints "
           "its content: a value starting with '!' comes back as \"could not determine a "
           "constructor for the tag '!Qaz2wsxEDC'\" (egress's own secret-file loader never passes "
           "YAML messages on, for this reason)"),
          ("yaml-alias", "token: *Sup3rS3cretVal\n", "Sup3rS3cretVal",
           "MEDIUM: a value starting with '*' comes back as \"found undefined alias 'Sup3rS3cretVal'\""),
          ("dotenv", "GITHUB_TOKEN=ghp_Sup3rS3cretVal\nOTHER=x\n", "ghp_Sup3rS3cretVal", None),
          ("yaml-mapping", "github: ghp_Sup3rS3cretVal\nnpm: npm_Sup3rS3cretVal\n", "Sup3rS3cretVal", None),
          ("json", '{"auths": {"x": {"auth": "Sup3rS3cretVal"}}}\n', "Sup3rS3cretVal", None),
      )],
    # --- output ------------------------------------------------------------------------------
    Case("bidi-in-paths",
         {"egress.yaml": 'allow:\n  - host: a.example\n    paths: ["/\\u202Eetadpu/\\u202C", "/admin\\u200B"]\n'
                         "secrets:\n  - name: t\n" + SRC + "    hosts: [a.example]\n"},
         _no_raw_bidi,
         "LOW: bidi overrides and zero-width characters in a path prefix are printed raw in the "
         "text, Markdown and HTML reports: '/\\u202eetadpu/' displays as '/update/', "
         "'/admin\\u200b' as '/admin', but neither allows those paths"),
    Case("markup-in-paths",
         {"egress.yaml": 'allow:\n  - host: a.example\n    paths: ["/<script>", "/x<details>", "/[a](javascript:x)"]\n'
                         "  - host: b.example\n    paths: [\"/<details>\"]\n"
                         "secrets:\n  - name: t\n" + SRC + "    hosts: [a.example]\n"},
         _escaped),
]  # fmt: skip


def _param(c: Case) -> Any:
    return pytest.param(c, id=c.id, marks=[*c.marks, *known(c.id, c.xfail)])


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_review_tells_the_truth(tmp_path: Path, case: Case) -> None:
    write(tmp_path, case.files)
    case.check(tmp_path)


# ---------------------------------------------------------------------------------------
# --diff: what a change opens must be said.


@dataclass
class DiffCase:
    id: str
    old: str
    new: str
    check: Callable[[Diff, Path], None]
    xfail: str | None = None


def _grows(d: Diff, tmp: Path) -> None:
    assert d.reach_grows, "says credentialed reach does not grow"


def _escalations_reported(d: Diff, tmp: Path) -> None:
    before = {(f.id, f.subject): f.severity for f in d.old.findings}
    order = ("critical", "high", "medium", "low", "info")
    worse = [f for f in d.new.findings if (f.id, f.subject) in before
             and order.index(f.severity) < order.index(before[(f.id, f.subject)])]  # fmt: skip
    assert worse, "the case is built so that a finding gets more severe"
    missing = [
        f"{f.id} {before[(f.id, f.subject)]} -> {f.severity}"
        for f in worse
        if f not in d.new_findings
    ]
    assert not missing, f"unreported: {missing}; verdict: {render_diff(d, 'text').splitlines()[1]}"


def _redirect_noticed(d: Diff, tmp: Path) -> None:
    assert d.reach_grows or d.new_findings, render_diff(d, "text")


def _markdown_inert(d: Diff, tmp: Path) -> None:
    md = render_diff(d, "markdown")
    assert "<details>" not in md, md


def _new_high(d: Diff, tmp: Path) -> None:
    assert d.opened_rules and any(f.severity == "high" for f in d.new_findings)


WS_OLD = (
    "allow:\n  - host: events.example\nsecrets:\n  - name: key\n"
    + SRC
    + "    hosts: [events.example]\n"
)
GH_OLD = ("allow: [github.com]\nsecrets:\n  - name: github_token\n" + SRC
          + "    hosts: [github.com]\n    auth_headers: [authorization, cookie]\n")  # fmt: skip
REDIRECT_OLD = (
    "allow: [api.github.com]\nsecrets:\n  - name: gh\n" + SRC + "    hosts: [api.github.com]\n"
)

DIFF_CASES = [
    DiffCase("websocket-via-query",
             WS_OLD + "    inject: [query]\n",
             WS_OLD.replace("events.example\nsecrets", "events.example\n    websocket: true\nsecrets") + "    inject: [query]\n",
             _grows,
             "MEDIUM: websocket: true on a rule where a query-injected secret rides: the credential "
             "now opens a two-way WebSocket session (egress check: wss://...?key=PLACEHOLDER is "
             "injected), but reach surfaces add 'websocket' only for header secrets, so --diff says "
             "'credentialed reach does not grow' and --fail-on-new-reach passes"),
    DiffCase("websocket-via-headers", WS_OLD,
             WS_OLD.replace("events.example\nsecrets", "events.example\n    websocket: true\nsecrets"), _grows),
    DiffCase("secret-removed-opens-writes-as-anyone", GH_OLD, "allow: [github.com]\n", _escalations_reported,
             "HIGH: removing the secret from github.com removes the foreign-credential guard: any "
             "account's token or session now POSTs through; write_to_user_content goes medium -> "
             "high but findings are matched by (id, subject) only, so --diff says 'this change only "
             "narrows what the agent can reach' and --fail-on high passes"),
    DiffCase("require-placeholder-off", GH_OLD, GH_OLD + "    require_placeholder: false\n",
             _escalations_reported,
             "HIGH: require_placeholder: false escalates write_to_user_content medium -> high; the "
             "diff lists only the new medium finding, so --fail-on high passes"),
    DiffCase("credential-redirected", REDIRECT_OLD,
             REDIRECT_OLD + "upstream:\n  ca_files: [their-ca.pem]\n  resolve: {api.github.com: 1.2.3.4}\n",
             _redirect_noticed,
             "HIGH: pointing a credential's host at another address and trusting a CA the change "
             "brings: 'no change in what the agent can reach', no new finding, every --fail-on passes"),
    DiffCase("markdown-injection", "allow: [a.example]\n",
             "allow:\n  - a.example\n  - host: b.example\n    paths: ['/x<details><summary>ok</summary>']\n  - pastebin.com\n",
             _markdown_inert,
             "MEDIUM: --diff --format markdown (the pull-request comment) prints paths raw: "
             "'<details><summary>ok</summary>' in a path folds every later line, the high "
             "findings included, under a collapsed 'ok'"),
    DiffCase("new-paste-host", "allow: [a.example]\n", "allow: [a.example, pastebin.com]\n", _new_high),
]  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=known(f"diff-{c.id}", c.xfail)) for c in DIFF_CASES],
)  # fmt: skip
def test_diff_tells_the_truth(tmp_path: Path, case: DiffCase) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "their-ca.pem"))
    (tmp_path / "old.yaml").write_text(case.old)
    (tmp_path / "new.yaml").write_text(case.new)
    case.check(diff_configs(str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")), tmp_path)


def _git_repo(tmp: Path) -> Path:
    git = ["git", "-C", str(tmp), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(tmp)], check=True)
    (tmp / "deploy").mkdir()
    (tmp / "deploy" / "egress.yaml").write_text(REDIRECT_OLD)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "old"], check=True)
    wider = ("allow: [api.github.com, gist.github.com]\nsecrets:\n  - name: gh\n" + SRC
             + "    hosts: [api.github.com, gist.github.com]\n    inject: [headers, body]\n")  # fmt: skip
    (tmp / "deploy" / "egress.yaml").write_text(wider)
    subprocess.run([*git, "commit", "-qam", "new"], check=True)
    return tmp


def test_diff_revision_is_the_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held: without a look-alike path, REV:PATH is read from git."""
    monkeypatch.chdir(_git_repo(tmp_path))
    assert diff_configs("HEAD~1:deploy/egress.yaml", "deploy/egress.yaml").reach_grows


@known_problem("diff-revision-shadowed", (
    "HIGH: a change can add a file at the literal path 'HEAD~1:deploy/egress.yaml' (a folder "
    "'HEAD~1:deploy'); load_revision reads any existing path before git, so CI's "
    "`egress review --diff HEAD~1:deploy/egress.yaml deploy/egress.yaml --fail-on-new-reach` "
    "compares the change with itself: 'no change in what the agent can reach', exit 0, and the "
    "header still shows 'HEAD~1:deploy/egress.yaml'"))  # fmt: skip
def test_diff_revision_cannot_be_shadowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _git_repo(tmp_path)
    shadow = repo / "HEAD~1:deploy"
    shadow.mkdir()
    (shadow / "egress.yaml").write_text((repo / "deploy" / "egress.yaml").read_text())
    monkeypatch.chdir(repo)
    assert diff_configs("HEAD~1:deploy/egress.yaml", "deploy/egress.yaml").reach_grows


@known_problem("diff-revision-absolute-symlink", (
    "LOW: a revision whose folder holds a symlink to an absolute path (git archive keeps it) "
    "makes tarfile's data filter raise AbsoluteLinkError out of `egress review --diff`: a "
    "traceback and exit 1 (what --fail-on uses for findings) instead of exit 2"))  # fmt: skip
def test_diff_revision_with_absolute_symlink_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "egress.yaml").write_text("include: [./team.yaml]\nallow: [a.example]\n")
    (tmp_path / "deploy" / "team.yaml").symlink_to("/nonexistent/egress-team.yaml")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    monkeypatch.chdir(tmp_path)
    spec = "HEAD:deploy/egress.yaml"
    try:
        code = main(["review", "--diff", spec, spec])
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{type(e).__name__} escaped: {e}") from None
    assert code == 2 and "egress: error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# The command line: a config error is a config error.


@pytest.mark.parametrize("argv", [
    pytest.param(["review", "--config", "{bad}"], id="review"),
    pytest.param(["review", "--diff", "{good}", "{bad}"], id="diff"),
    pytest.param(["review", "--config", "{bad}", "--fail-on", "high"], id="review-fail-on"),
])  # fmt: skip
@known_problem("cli-config-error-exit-2", (
    "MEDIUM: docs/review.md: 'Exit 2 is a config error, with the same message as egress run'; "
    "egress review lets ConfigError escape (a traceback, exit 1), so CI cannot tell a broken "
    "config from a finding, and the traceback echoes the message (file content included)"))  # fmt: skip
def test_review_config_error_exits_2(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.yaml").write_text("allow:\n  - host: https://a.example\n")
    (tmp_path / "good.yaml").write_text("allow: [a.example]\n")
    args = [a.format(bad=tmp_path / "bad.yaml", good=tmp_path / "good.yaml") for a in argv]
    try:
        code = main(args)
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{type(e).__name__} escaped: {e}") from None
    assert code == 2 and "egress: error:" in capsys.readouterr().err


def test_check_config_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Held: egress check (the same loader) exits 2 with one message."""
    (tmp_path / "bad.yaml").write_text("allow:\n  - host: https://a.example\n")
    assert (
        main(
            ["check", "--no-secrets", "--config", str(tmp_path / "bad.yaml"), "https://a.example/"]
        )
        == 2
    )
    assert "egress: error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# egress check against the running proxy's own pieces.


@known_problem("check-own-listener", (
    "LOW: egress check says ALLOW for https://127.0.0.1:<listen.port>/ under a rule for "
    "127.0.0.1, but the running proxy refuses its own listener (resolved_private, 'the proxy "
    "itself'); check never applies listen.host/listen.port"))  # fmt: skip
def test_check_knows_the_proxys_own_listener(tmp_path: Path) -> None:
    (tmp_path / "egress.yaml").write_text(
        "listen: {host: 127.0.0.1, port: 18080}\nallow:\n  - host: 127.0.0.1\n    ports: [18080]\n"
    )
    cfg = load(tmp_path)
    rt = Runtime.start(cfg, audit=AuditWriter("stderr"), private_ca=True)
    try:
        rt.listening_on(cfg.listen_host, cfg.listen_port)  # what egress run does once it listens
        proxy = asyncio.run(rt.resolver.pick("127.0.0.1", 18080))
    finally:
        rt.close()
    assert isinstance(proxy, Refused)
    assert not check(cfg, "GET", "https://127.0.0.1:18080/").allowed


# ---------------------------------------------------------------------------------------
# Generated configs. Every config is built as data and parsed by the real loader (no file
# needed but for includes, which use presets).

PATTERNS = ["a.example", "b.a.example", "c.b.a.example", "*.a.example", "*.b.a.example",
            "x.other.example", "*.other.example", "10.0.0.1", "10.0.0.0/24", "10.0.0.0/8",
            "A.Example.", "*.B.A.example.", "::ffff:10.0.0.1", "fd00::/64", "fd00::1", "[fd00::2]"]  # fmt: skip
HOSTS = ["a.example", "b.a.example", "c.b.a.example", "d.c.b.a.example", "z.a.example",
         "x.other.example", "y.x.other.example", "other.example", "10.0.0.1", "10.0.0.7", "10.9.0.1",
         "A.EXAMPLE.", "B.a.Example.", "0x0a000001", "::ffff:10.0.0.1", "10.1", "fd00::1",
         "FD00:0::2", "fd00::1:5"]  # fmt: skip
RULE_PATHS = ["/", "/a", "/a/", "/b", "/a/b"]
REQ_PATHS = ["/", "/a", "/a/x", "/a/b", "/b", "/b/c", "/c", "/ab", "/a;x/b", "/A", "/a/%2e%2e/c"]
METHODS = ["GET", "POST", "PUT", "DELETE"]
SURFACE = {"header": "headers", "query": "query", "body": "body"}


def _sub(xs: list[Any], min_size: int = 1) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(xs), min_size=min_size, max_size=len(xs), unique=True)


_rule = st.fixed_dictionaries({"host": st.sampled_from(PATTERNS)}, optional={
    "ports": _sub([443, 80, 8443]), "schemes": _sub(["https", "http"]),
    "methods": _sub(METHODS), "paths": _sub(RULE_PATHS), "websocket": st.booleans()})  # fmt: skip


@st.composite
def small_configs(draw: st.DrawFn) -> dict[str, Any]:
    rules = draw(st.lists(_rule, min_size=1, max_size=4))
    secrets = []
    for i in range(draw(st.integers(1, 2))):
        s: dict[str, Any] = {"name": f"s{i}", "source": {"env": "EGRESS_ADV_NOT_SET"},
                             "hosts": draw(_sub([r["host"] for r in rules] + PATTERNS[:3]))}  # fmt: skip
        s.update(draw(st.fixed_dictionaries({}, optional={
            "inject": _sub(["headers", "query", "body"]), "allow_http": st.booleans(),
            "require_placeholder": st.booleans()})))  # fmt: skip
        secrets.append(s)
    top: dict[str, Any] = {"allow": rules, "secrets": secrets}
    if draw(st.booleans()):
        top["listen"] = {"mode": "transparent"}
    if draw(st.booleans()):
        top["mode"] = "report"
    return top


def parsed(top: dict[str, Any]) -> config.Config | None:
    try:
        return config.parse(top, "generated.yaml", Path(tempfile.gettempdir()))
    except ConfigError:
        return None


def _request(host: str, scheme: str, port: int | None, path: str, method: str, where: str,
             websocket: bool, placeholder: str, override: str | None) -> Any:  # fmt: skip
    authority = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{authority}{'' if port is None else f':{port}'}{path}"
    headers: list[tuple[str, str]] = [("X-HTTP-Method-Override", override)] if override else []
    body = None
    if where == "header":
        headers.append(("X-Token", placeholder))
    elif where == "query":
        url += "?k=" + placeholder
    else:
        body = f"k={placeholder}".encode()
    return build(method, url, headers, body, websocket)


def _decide(cfg: config.Config, asked: Any) -> Verdict:
    secrets = [(s, SecretValue(s.placeholder)) for s in cfg.secrets]
    return decide_request(asked.request, Allowlist(cfg.rules), secrets, {},
                          max_body_bytes=cfg.max_body_bytes, resolve=lambda h, p: None,
                          transparent=cfg.listen_mode == "transparent")  # fmt: skip


def _concrete(pattern: str) -> str:
    p = parse_host_pattern(pattern)
    if p.kind == "name":
        return p.text
    if p.kind == "wildcard":
        return "zz" + p.text[1:]
    assert p.network is not None
    return str(
        p.network.network_address if p.network.num_addresses == 1 else next(p.network.hosts())
    )


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@PROPERTY
@given(small_configs(), st.data())
def test_every_injection_is_in_the_reach_matrix(top: dict[str, Any], data: st.DataObject) -> None:
    """decide_request allows a request and injects S => the reach matrix has an entry for S,
    under the rule that allowed it, whose host, port, scheme, method (overrides included),
    path and surface cover the request."""
    cfg = parsed(top)
    assume(cfg is not None)
    assert cfg is not None
    spec = data.draw(st.sampled_from(cfg.secrets))
    rule = data.draw(st.sampled_from(cfg.rules))
    host = data.draw(st.one_of(st.just(_concrete(rule.host.text)), st.sampled_from(HOSTS)))
    scheme = data.draw(st.sampled_from([*rule.schemes, "https", "http"]))
    port = data.draw(st.sampled_from([None, *rule.ports, 443, 80]))
    path = data.draw(st.sampled_from([*(rule.paths or ()), *REQ_PATHS]))
    method = data.draw(st.sampled_from([*(rule.methods or ()), *METHODS]))
    where = data.draw(st.sampled_from(["header", "query", "body"]))
    websocket = data.draw(st.booleans())
    override = data.draw(st.sampled_from([None, None, "GET", "DELETE"]))
    asked = _request(host, scheme, port, path, method, where, websocket, spec.placeholder, override)
    v = _decide(cfg, asked)
    if not (v.allowed and spec.name in v.injected):
        return
    assert v.rule is not None
    reach = review_config(cfg).reach
    note(f"reach={reach}\nrequest={asked.request}\nrule={v.rule.label}")
    path_only = v.path.split("?", 1)[0]
    mine = [e for e in reach if e.secret == spec.name and e.rule == v.rule.label]
    assert any(
        parse_host_pattern(e.host).matches(v.host) and v.port in e.ports and v.scheme in e.schemes
        and (e.methods is None or all(m in e.methods for m in [asked.method, *v.overrides]))
        and (e.paths is None or any(path_matches(p, path_only) for p in e.paths))
        and SURFACE[where] in e.surfaces
        and (not websocket or where == "body" or "websocket" in e.surfaces)
        for e in mine
    ), mine  # fmt: skip


@PROPERTY
@given(small_configs(), st.data())
def test_every_reach_entry_injects(top: dict[str, Any], data: st.DataObject) -> None:
    """A request inside a reach entry (its host, a port, scheme, method, path prefix and
    surface of it) is allowed and gets the secret injected."""
    cfg = parsed(top)
    assume(cfg is not None)
    assert cfg is not None
    reach = review_config(cfg).reach
    assume(reach)
    e = data.draw(st.sampled_from(reach))
    spec = next(s for s in cfg.secrets if s.name == e.secret)
    surface = data.draw(st.sampled_from(e.surfaces))
    if surface == "websocket":  # the upgrade request carries it, in the headers or the URL
        carriers = [s for s in ("headers", "query") if s in spec.surfaces]
        where = {"headers": "header", "query": "query"}[data.draw(st.sampled_from(carriers))]
    else:
        where = {"headers": "header", "query": "query", "body": "body"}[surface]
    asked = _request(
        _concrete(e.host), data.draw(st.sampled_from(e.schemes)), data.draw(st.sampled_from(e.ports)),
        data.draw(st.sampled_from(e.paths)) if e.paths else "/",
        data.draw(st.sampled_from(e.methods)) if e.methods else "GET",
        where, surface == "websocket", spec.placeholder, None,
    )  # fmt: skip
    v = _decide(cfg, asked)
    note(f"entry={e} verdict={v.reason.value} {v.detail}")
    assert v.allowed and spec.name in v.injected, (v.reason.value, v.detail)


# Wider configs for the crash test: real data hosts, odd spellings, addresses, presets,
# upstream sections, markup in paths, every mode.
WIDE_HOSTS = [
    "a.example", "A.Example.", "*.a.example", "pastebin.com", "PASTEBIN.COM.", "api.openai.com",
    "github.com", "api.github.com", "gist.github.com", "*.amazonaws.com", "*.github.com",
    "*.googleapis.com", "*.discord.com", "a248.e.akamai.net", "xn--bcher-kva.example",
    "*.xn--bcher-kva.example", "raw.githubusercontent.com", "10.0.0.1", "10.0.0.0/8", "0.0.0.0/0",
    "::/0", "::1", "[::1]", "fd00::/8", "169.254.169.254", "64:ff9b::/96", "::ffff:10.0.0.1",
    "s3.amazonaws.com", "webhook.site", "*.webhook.site", "1.2.3.4", "*.blob.core.windows.net",
    "x.ngrok.io", "_dmarc.a.example", "*.core.windows.net", "3.0.0.0/8",
]  # fmt: skip
WIDE_PATHS = ["/", "/a", "/v1/files", "/gists", "/|x", "/`a`", "/<script>", "/a%2fb", "/*",
              "/\u00e9", "/**b**", "/a\\b", "/[x](http://e)", "/x<details>"]  # fmt: skip
_wide_rule = st.one_of(st.sampled_from(WIDE_HOSTS), st.fixed_dictionaries(
    {"host": st.sampled_from(WIDE_HOSTS)}, optional={
        "ports": _sub([443, 80, 8443, 1, 65535, "8080"]), "schemes": st.one_of(st.just("http"), _sub(["https", "http"])),
        "methods": st.one_of(st.just("GET"), _sub(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "PROPFIND", "get"])),
        "paths": st.one_of(st.just("/"), _sub(WIDE_PATHS)), "websocket": st.booleans()}))  # fmt: skip


@st.composite
def wide_configs(draw: st.DrawFn) -> dict[str, Any]:
    rules = draw(st.lists(_wide_rule, max_size=6))
    hosts = [r if isinstance(r, str) else r["host"] for r in rules]
    top: dict[str, Any] = {"allow": rules} if rules or draw(st.booleans()) else {}
    secrets = []
    for i in range(draw(st.integers(0, 3)) if hosts else 0):
        s: dict[str, Any] = {
            "name": f"s{i}",
            "source": {"env": "EGRESS_ADV_NOT_SET"},
            "hosts": draw(_sub(hosts)),
        }
        s.update(draw(st.fixed_dictionaries({}, optional={
            "inject": _sub(["headers", "query", "body"]), "allow_http": st.booleans(),
            "require_placeholder": st.booleans(), "allow_unscrubbable": st.booleans(),
            "auth_headers": _sub(["authorization", "cookie", "X_Api_Key"]),
            "placeholder": st.sampled_from(["auto", "ph-aaaaaaaa"])})))  # fmt: skip
        secrets.append(s)
    if secrets:
        top["secrets"] = secrets
    upstream = draw(st.fixed_dictionaries({}, optional={
        "allow_private": _sub(["10.0.0.0/8", "169.254.0.0/16", "::/0", "fd00::/8", "64:ff9b::/96"]),
        "dns": st.sampled_from(["system", "static"]),
        "resolve": st.dictionaries(st.sampled_from(["a.example", "github.com", "x.ngrok.io"]),
                                   st.sampled_from(["10.0.0.1", "1.2.3.4", "169.254.169.254", "::1"]), max_size=3)}))  # fmt: skip
    if upstream:
        top["upstream"] = upstream
    if draw(st.booleans()):
        top["mode"] = draw(st.sampled_from(["enforce", "report"]))
    if draw(st.booleans()):
        top["listen"] = {"mode": draw(st.sampled_from(["explicit", "transparent"]))}
    if draw(st.booleans()):
        top["include"] = draw(_sub(["github", "pypi", "npm", "openai", "anthropic", "docker-hub",
                                    "huggingface", "go", "crates", "azure-openai"]))  # fmt: skip
    return top


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(wide_configs(), wide_configs())
def test_review_never_crashes_on_a_valid_config(a: dict[str, Any], b: dict[str, Any]) -> None:
    old, new = parsed(a), parsed(b)
    assume(old is not None)
    assert old is not None
    report = review_config(old)
    for fmt in ("text", "json", "markdown", "sarif", "html"):
        assert render(report, fmt)
    if new is not None:
        d = diff_reports(report, review_config(new))
        for fmt in ("text", "json", "markdown"):
            assert render_diff(d, fmt)
    # The YAML a reviewer reads and the file the proxy loads are the same config.
    if not a:
        return  # an empty mapping is "the file is empty" to load()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "egress.yaml"
        path.write_text(yaml.safe_dump(a, allow_unicode=True))
        assert review_config(config.load(path)).reach == report.reach
