"""egress review: the reach matrix, every finding id on a config made to trigger it, and
--diff on changes that open and that only narrow what an agent can reach."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from egress import config
from egress.review.analyze import review_config
from egress.review.diff import diff_configs
from egress.review.findings import KINDS
from egress.review.model import Report

SECRET = "    source: {env: REAL}\n"

# (finding id, config text, the key path it must point at, the subject)
TRIGGERS = [
    ("report_mode", "mode: report\nallow: [a.example]\n", "mode", "mode"),
    ("wildcard_broad", "allow: ['*.amazonaws.com']\n", "allow[0].host", "*.amazonaws.com"),
    ("exfiltration_host", "allow: [pastebin.com]\n", "allow[0].host", "pastebin.com"),
    ("write_to_user_content", "allow:\n  - host: pastebin.com\n    methods: [POST]\n", "allow[0].methods", "pastebin.com"),
    ("user_content_host", "allow:\n  - host: raw.githubusercontent.com\n    methods: [GET]\n", "allow[0].host", "raw.githubusercontent.com"),
    ("file_upload_api", "allow: [api.openai.com]\n", "allow[0].host", "api.openai.com"),
    ("code_host_write", "allow: [api.github.com]\nsecrets:\n  - name: gh\n" + SECRET + "    hosts: [api.github.com]\n",
     "allow[0].host", "api.github.com"),
    ("secret_on_wildcard", "allow: ['*.corp.example']\nsecrets:\n  - name: t\n" + SECRET + "    hosts: ['*.corp.example']\n",
     "secrets[0].hosts[0]", "t"),
    ("secret_over_http", "allow:\n  - host: a.example\n    schemes: [http]\nsecrets:\n  - name: t\n" + SECRET
     + "    hosts: [a.example]\n    allow_http: true\n", "secrets[0].allow_http", "t"),
    ("secret_in_query", "allow: [a.example]\nsecrets:\n  - name: t\n" + SECRET + "    hosts: [a.example]\n    inject: [headers, query]\n",
     "secrets[0].inject", "t"),
    ("secret_in_body", "allow: [a.example]\nsecrets:\n  - name: t\n" + SECRET + "    hosts: [a.example]\n    inject: [body]\n",
     "secrets[0].inject", "t"),
    ("secret_in_stored_body", "allow: [api.github.com]\nsecrets:\n  - name: gh\n" + SECRET + "    hosts: [api.github.com]\n    inject: [headers, body]\n",
     "secrets[0].inject", "gh"),
    ("no_foreign_credential_check", "allow: [a.example]\nsecrets:\n  - name: t\n" + SECRET
     + "    hosts: [a.example]\n    require_placeholder: false\n", "secrets[0].require_placeholder", "t"),
    ("scrubbing_relaxed", "allow: [a.example]\nsecrets:\n  - name: t\n" + SECRET
     + "    hosts: [a.example]\n    allow_unscrubbable: true\n", "secrets[0].allow_unscrubbable", "t"),
    ("dead_secret", "allow:\n  - host: a.example\n    schemes: [http]\nsecrets:\n  - name: t\n" + SECRET + "    hosts: [a.example]\n",
     "secrets[0]", "t"),
    ("metadata_reachable", "allow: ['169.254.0.0/16']\n", "allow[0].host", "169.254.0.0/16"),
    ("private_range_opened", "allow: [a.example]\nupstream:\n  allow_private: [10.1.2.0/24]\n", "upstream.allow_private[0]", "10.1.2.0/24"),
    ("websocket_allowed", "allow:\n  - host: a.example\n    websocket: true\n", "allow[0].websocket", "a.example"),
    ("plain_http", "allow:\n  - host: a.example\n    schemes: [http]\n", "allow[0].schemes", "a.example"),
    ("non_default_port", "allow:\n  - host: a.example\n    ports: [8443]\n", "allow[0].ports", "a.example"),
    ("dead_rule", "allow: [internal.example]\nupstream:\n  resolve: {internal.example: 10.0.0.5}\n", "allow[0]", "internal.example"),
    ("rule_duplicate", "allow: [a.example, b.example, a.example]\n", "allow[2]", "a.example"),
    ("rule_shadowed", "allow:\n  - host: a.example\n  - host: a.example\n    methods: [GET]\n", "allow[1]", "a.example"),
    ("domain_fronting", "allow: [a248.e.akamai.net]\n", "allow[0].host", "a248.e.akamai.net"),
    ("upstream_ca_trusted", "allow: [a.example]\nupstream:\n  ca_files: [ca.pem]\n", "upstream.ca_files[0]", "CA_PEM"),
    ("credential_host_pinned", "allow: [a.example]\nupstream:\n  resolve: {a.example: 192.0.2.10}\nsecrets:\n  - name: t\n"
     + SECRET + "    hosts: [a.example]\n", "upstream.resolve.a.example", "a.example"),
]  # fmt: skip


def review_text(tmp_path: Path, text: str) -> Report:
    path = tmp_path / "egress.yaml"
    path.write_text(text)
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n(a test CA)\n")
    return review_config(config.load(path))


def test_every_finding_id_has_a_triggering_case() -> None:
    assert {case[0] for case in TRIGGERS} == set(KINDS)


@pytest.mark.parametrize(("kind", "text", "key", "subject"), TRIGGERS, ids=[t[0] for t in TRIGGERS])
def test_each_finding_points_at_its_key(
    tmp_path: Path, kind: str, text: str, key: str, subject: str
) -> None:
    report = review_text(tmp_path, text)
    subject = "ca.pem" if subject == "CA_PEM" else subject
    hits = [f for f in report.findings if f.id == kind]
    assert hits, [f.id for f in report.findings]
    f = hits[0]
    assert (f.location.key, f.subject, f.severity) == (key, subject, f.severity)
    assert f.location.file == str(tmp_path / "egress.yaml")
    line = text.splitlines()[f.location.line - 1]
    last = key.rsplit(".", 1)[-1].split("[")[0]
    assert subject in line or last in line or line.lstrip().startswith("- "), line
    assert f.fix and f.explanation and f.title


CLEAN = """\
allow:
  - host: api.anthropic.com
    methods: [POST, GET]
    paths: [/v1/messages, /v1/models]
  - host: pypi.org
    methods: [GET]
secrets:
  - name: anthropic
    source: {env: REAL}
    hosts: [api.anthropic.com]
    auth_headers: [x-api-key, authorization]
"""


def test_a_narrow_config_has_no_finding_above_low(tmp_path: Path) -> None:
    report = review_text(tmp_path, CLEAN)
    assert [f.id for f in report.findings if f.severity in ("critical", "high", "medium")] == []


def test_reach_matrix(tmp_path: Path) -> None:
    text = """\
allow:
  - host: '*.example.com'
    methods: [GET]
  - host: api.example.com
    methods: [POST]
    paths: [/v1/]
    websocket: true
  - host: other.example
    schemes: [http, https]
secrets:
  - name: api
    source: {env: REAL}
    hosts: [api.example.com]
    inject: [headers, query]
  - name: other
    source: {env: REAL2}
    hosts: [other.example]
"""
    report = review_text(tmp_path, text)
    rows = {
        (e.secret, e.rule): (e.host, e.methods, e.paths, e.schemes, e.surfaces)
        for e in report.reach
    }
    assert rows == {
        ("api", "allow[0]"): ("api.example.com", ("GET",), None, ("https",), ("headers", "query")),
        ("api", "allow[1]"): (
            "api.example.com",
            ("POST",),
            ("/v1/",),
            ("https",),
            ("headers", "query", "websocket"),
        ),
        ("other", "allow[2]"): (
            "other.example",
            None,
            None,
            ("https",),
            ("headers",),
        ),  # no allow_http
    }
    riding = {h.rule: h.secrets for h in report.hosts}
    assert riding == {"allow[0]": ("api",), "allow[1]": ("api",), "allow[2]": ("other",)}


OLD = """\
allow:
  - host: api.github.com
    methods: [GET]
  - host: pypi.org
secrets:
  - name: github_token
    source: {env: REAL}
    hosts: [api.github.com]
"""

DIFFS = [
    # (new config, reach grows?, a line that must be in the opened reach, closed reach)
    (OLD.replace("methods: [GET]", "methods: [GET, POST]"), True,
     "this change lets `github_token` reach api.github.com with POST (allow[0])", None),
    (OLD.replace("  - host: pypi.org\n", "  - host: pypi.org\n  - host: gist.github.com\n").replace(
        "hosts: [api.github.com]", "hosts: [api.github.com, gist.github.com]"), True,
     "this change lets `github_token` reach gist.github.com with any method injected in the headers", None),
    (OLD + "    inject: [headers, body]\n", True, "api.github.com injected in the body", None),
    (OLD.replace("    methods: [GET]\n", "    methods: [GET]\n    paths: [/repos/]\n"), False, None,
     "this change stops `github_token` from reaching api.github.com on any path"),
    (OLD.replace("  - host: pypi.org\n", ""), False, None, None),
]  # fmt: skip


GROWS = {"host", "methods", "paths", "ports", "schemes", "surfaces", "websocket"}


@pytest.mark.parametrize(("new", "grows", "opened", "closed"), DIFFS)
def test_diff(
    tmp_path: Path, new: str, grows: bool, opened: str | None, closed: str | None
) -> None:
    (tmp_path / "old.yaml").write_text(OLD)
    (tmp_path / "new.yaml").write_text(new)
    d = diff_configs(str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml"))
    assert d.reach_grows is grows, [c.line for c in d.opened_reach]
    if opened:
        assert any(opened in c.line for c in d.opened_reach), [c.line for c in d.opened_reach]
        assert all(set(c.grows) <= GROWS for c in d.opened_reach)
    if closed:
        assert any(closed in c.line for c in d.closed_reach), [c.line for c in d.closed_reach]
    back = diff_configs(str(tmp_path / "new.yaml"), str(tmp_path / "old.yaml"))
    assert back.reach_grows is bool(d.closed_reach)


def test_diff_between_git_revisions(tmp_path: Path) -> None:
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "egress.yaml").write_text(OLD)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "old"], check=True)
    (tmp_path / "egress.yaml").write_text(DIFFS[0][0])
    subprocess.run([*git, "commit", "-qam", "new"], check=True)
    path = tmp_path / "egress.yaml"
    d = diff_configs(f"HEAD~1:{path}", f"HEAD:{path}")
    assert d.reach_grows and d.old.config.startswith("HEAD~1:")
