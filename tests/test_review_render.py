"""The review's report renderers (egress/review/render*.py): text, JSON, Markdown, SARIF and
HTML, on reports built by hand. SARIF is validated against the official 2.1.0 schema; the
HTML is opened in a real headless Chromium (Debian's ``chromium``) and checked there."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from egress.review.model import (
    SEVERITIES,
    AuditSummary,
    DeniedDestination,
    Finding,
    HostEntry,
    Location,
    ReachEntry,
    Report,
    TimeBucket,
)
from egress.review.render import FORMATS, render
from egress.review.render_json import report_from_dict, report_to_dict
from egress.review.render_markdown import md_code, md_escape
from egress.review.render_text import WIDTH

SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
# Markup that, if it ever ran in a browser, would mark the page (the Chromium test looks).
HOSTILE = (
    '<script>document.documentElement.dataset.pwned="script"</script>'
    '<img src=x onerror="document.documentElement.dataset.pwned=1">'
)
HOSTILE_HOST = f"evil{HOSTILE}.example"
CFG = "config/egress.yaml"


def finding(id: str, severity: str, line: int | None, key: str, subject: str = "") -> Finding:
    return Finding(
        id=id,
        severity=severity,
        title=f"{id} on {subject or key}",
        location=Location(CFG, line, key),
        explanation=f"Why {id} matters: an agent could send data where nobody reviews it, "
        "and this sentence is long enough to wrap in a 100-column terminal report.",
        fix=f"Fix {id}: narrow {key} to the hosts and methods the agent needs.",
        subject=subject,
    )


FINDINGS = [
    finding("metadata_reachable", "critical", 30, "allow[5].host", "169.254.169.254"),
    finding("wildcard_broad", "critical", 12, "allow[3].host", "*.amazonaws.com"),
    finding("wildcard_broad", "high", 14, "allow[4].host", "*.googleapis.com"),
    finding("secret_on_wildcard", "high", 40, "secrets.s3_key.hosts[0]", "s3_key"),
    finding("exfiltration_host", "high", 16, "allow[6].host", "pastebin.com"),
    finding("secret_in_query", "medium", 44, "secrets.maps.surfaces", "maps"),
    finding("websocket_allowed", "medium", 18, "allow[2].websocket", "stream.example.com"),
    finding("plain_http", "medium", None, "allow[7].schemes", "legacy.example.com"),
    finding("non_default_port", "low", 20, "allow[2].ports", "8443"),
    finding("dead_secret", "low", 50, "secrets.unused", "unused"),
    finding("rule_shadowed", "info", 22, "allow[8]", "api.github.com"),
    finding("rule_duplicate", "info", 0, "allow[9]", "x|y`z"),
]


def reach(secret: str, host: str, rule: str, **kw: object) -> ReachEntry:
    fields: dict[str, object] = {
        "ports": (443,), "schemes": ("https",), "methods": None, "paths": None,
        "surfaces": ("headers",),
    }  # fmt: skip
    return ReachEntry(secret=secret, host=host, rule=rule, **{**fields, **kw})  # type: ignore[arg-type]


REACH = [
    reach("github_token", "api.github.com", "allow[0]", methods=("GET", "POST")),
    reach("github_token", "uploads.github.com", "allow[1]", paths=("/repos/*",)),
    reach("s3_key", "*.amazonaws.com", "allow[3]", surfaces=("headers", "query", "body")),
    reach("maps", "maps.googleapis.com", "allow[4]", surfaces=("query",), ports=(443, 8443)),
]


def host(
    rule: str, pattern: str, secrets: tuple[str, ...], line: int, ws: bool = False
) -> HostEntry:
    return HostEntry(
        rule=rule, host=pattern, ports=(443,), schemes=("https",), methods=None, paths=None,
        websocket=ws, secrets=secrets, location=Location(CFG, line, f"{rule}.host"),
    )  # fmt: skip


HOSTS = [
    host("allow[0]", "api.github.com", ("github_token",), 8),
    host("allow[1]", "uploads.github.com", ("github_token",), 10),
    host("allow[2]", "stream.example.com", (), 18, ws=True),
    host("allow[3]", "*.amazonaws.com", ("s3_key",), 12),
    host("allow[4]", "maps.googleapis.com", ("maps",), 14),
    host("allow[6]", "pastebin.com", (), 16),
    host("allow[7]", HOSTILE_HOST, (), 24),
]


def bucket(minute: int, allow: int, deny: int, error: int = 0) -> TimeBucket:
    by_host = {"api.github.com": {"allow": allow}, "pastebin.com": {"deny": deny}}
    if error:
        by_host["(other)"] = {"error": error}
    return TimeBucket(
        start=f"2026-12-01T10:{minute:02d}:00Z",
        by_decision={k: v for k, v in (("allow", allow), ("deny", deny), ("error", error)) if v},
        by_reason={"allowed": allow, "host_not_allowed": deny},
        by_host=by_host,
    )


AUDIT = AuditSummary(
    source="audit.jsonl",
    records=420,
    skipped=3,
    first_time="2026-12-01T10:00:03Z",
    last_time="2026-12-01T10:59:58Z",
    unused_rules=["allow[6]", "allow[7]"],
    uninjected_secrets=["unused"],
    denied=[
        DeniedDestination(
            host="pastebin.com",
            port=443,
            scheme="https",
            count=40,
            reasons={"host_not_allowed": 40},
            methods=("GET", "POST"),
            suggestion="- host: pastebin.com\n  methods: [GET]\n  paths: [/raw/*]",
        ),
        DeniedDestination(
            host="attacker.example",
            port=443,
            scheme="https",
            count=5,
            reasons={"secret_to_unbound_host": 5},
            methods=("POST",),
            suggestion="",
        ),
    ],  # fmt: skip
    by_reason={"allowed": 300, "host_not_allowed": 115, "secret_to_unbound_host": 5},
    timeline=[bucket(m, 10 + m, m % 7, error=1 if m % 10 == 0 else 0) for m in range(0, 60, 5)],
    bucket_seconds=300,
)


def make_report(audit: AuditSummary | None = AUDIT) -> Report:
    return Report(
        config=CFG, mode="enforce", hosts=list(HOSTS), reach=list(REACH),
        findings=list(FINDINGS), secrets=["github_token", "s3_key", "maps", "unused"],
        audit=audit,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# Every format


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_deterministic_and_names_every_finding(fmt: str) -> None:
    report = make_report()
    shuffled = replace(report, findings=list(reversed(report.findings)))
    out = render(report, fmt)
    assert out == render(shuffled, fmt)
    for f in FINDINGS:
        assert f.id in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_an_empty_report(fmt: str) -> None:
    out = render(Report(config="empty.yaml", mode="enforce"), fmt)
    assert "empty.yaml" in out


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown report format 'yaml'"):
        render(make_report(), "yaml")


# ---------------------------------------------------------------------------------------
# Text


def test_text_header_matrix_findings_and_audit() -> None:
    out = render(make_report(), "text")
    lines = out.splitlines()
    assert lines[0] == f"egress review: {CFG}"
    assert "findings: 2 critical, 3 high, 3 medium, 2 low, 2 info" in out
    assert max(len(line) for line in lines) <= WIDTH
    assert "\x1b[" not in out  # no colour codes
    sections = ["Reach by credential", "Reach by host", "Hosts with no credential", "Findings",
                "Audit: audit.jsonl"]  # fmt: skip
    positions = [out.index(s) for s in sections]
    assert positions == sorted(positions)
    # the matrix: a row per reach entry, and a secret with none says so
    assert re.search(r"github_token\s+api\.github\.com\s+443\s+https\s+GET, POST", out)
    assert re.search(r"unused\s+\(injected nowhere\)", out)
    assert re.search(r"allow\[3\]\s+\*\.amazonaws\.com\s+.*s3_key", out)
    # findings: most severe first, with location and wrapped explanation and fix
    order = [
        out.index(f"  {f.id}  {f.location.text()}") for f in sorted(FINDINGS, key=Finding.sort_key)
    ]
    assert order == sorted(order)
    assert "CRITICAL  metadata_reachable  config/egress.yaml:30 allow[5].host" in out
    assert "  why: Why metadata_reachable matters" in out
    assert "  fix: Fix metadata_reachable: narrow allow[5].host" in out
    assert "config/egress.yaml allow[7].schemes" in out  # unknown line: no ":None"
    # audit
    assert "Rules never used: allow[6], allow[7]" in out
    assert "Credentials never injected: unused" in out
    assert "      - host: pastebin.com" in out
    assert "no rule: refused by a secret check (secret_to_unbound_host)" in out
    assert "Traffic over time (buckets of 5 min)" in out
    assert re.search(r"2026-12-01T10:55:00Z\s+65\s+6\s+0  #{30}$", out, re.MULTILINE)


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (Report(config="c.yaml", mode="enforce"), ["no secrets configured", "no findings",
                                                    "no host gets a credential", "  none"]),
        (replace(make_report(), audit=None), ["Findings (12)"]),
    ],
)  # fmt: skip
def test_text_edge_cases(report: Report, expected: list[str]) -> None:
    out = render(report, "text")
    for text in expected:
        assert text in out
    assert "Audit:" not in out


def test_text_wraps_long_cells_within_the_width() -> None:
    long_host = "a-very-long-host-name-" * 6 + ".example.com"
    report = replace(make_report(None), reach=[reach("github_token", long_host, "allow[0]")])
    lines = render(report, "text").splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    assert "a-very-long-host-name-a-very" in "\n".join(lines)


# ---------------------------------------------------------------------------------------
# JSON


def test_json_has_the_documented_shape_and_round_trips() -> None:
    report = make_report()
    out = render(report, "json")
    data = json.loads(out)
    assert sorted(data) == sorted(
        ["version", "config", "mode", "secrets", "reach", "hosts", "findings", "audit",
         "summary", "data_sources"]
    )  # fmt: skip
    assert data["version"] == 1
    assert data["summary"] == {"critical": 2, "high": 3, "medium": 3, "low": 2, "info": 2}
    assert list(data["summary"]) == sorted(data["summary"])  # keys sorted in the output
    assert [f["severity"] for f in data["findings"]] == sorted(
        (f.severity for f in FINDINGS), key=SEVERITIES.index
    )
    assert data["findings"][0]["location"] == {"file": CFG, "line": 30, "key": "allow[5].host"}
    assert data["reach"][1]["methods"] is None and data["reach"][0]["methods"] == ["GET", "POST"]
    assert data["audit"]["timeline"][0]["by_host"]["api.github.com"] == {"allow": 10}
    back = report_from_dict(data)
    assert back == replace(report, findings=sorted(report.findings, key=Finding.sort_key))
    assert render(back, "json") == out
    assert report_to_dict(make_report(None))["audit"] is None


def test_json_data_sources_when_asked() -> None:
    source = {"name": "Public Suffix List", "licence": "MPL-2.0", "version": "v", "url": "u"}
    assert json.loads(render(make_report(), "json", [source]))["data_sources"] == [source]
    assert "Public Suffix List (MPL-2.0; v) u" in render(make_report(), "text", [source])


# ---------------------------------------------------------------------------------------
# Markdown


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a|b", "a\\|b"),
        ("`code`", "\\`code\\`"),
        ("*.amazonaws.com", "\\*.amazonaws.com"),
        ("<script>", "\\<script\\>"),
        ("line\nbreak", "line break"),
        ("back\\slash", "back\\\\slash"),
        ("plain.example.com", "plain.example.com"),
    ],
)
def test_markdown_escape(raw: str, escaped: str) -> None:
    assert md_escape(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("allow[3].host", "`allow[3].host`"),
        ("*.amazonaws.com", "`*.amazonaws.com`"),
        ("a|b", "`a\\|b`"),  # GFM splits cells before code spans: the pipe stays escaped
        ("x`y", "x\\`y"),  # a backtick cannot sit in a code span: escaped text instead
        ("two\nlines", "two lines"),
        ("", ""),
    ],
)
def test_markdown_code(raw: str, code: str) -> None:
    assert md_code(raw) == code


def test_markdown_tables_escape_cells() -> None:
    out = render(make_report(), "markdown")
    assert out.startswith(f"### egress review: `{CFG}`\n")
    assert "**2 critical, 3 high, 3 medium, 2 low, 2 info** (worst: **critical**)" in out
    assert "| Severity | Id | Location | Title | Fix |" in out
    assert "| Secret | Host | Ports | Schemes | Methods | Paths | Surfaces | Rule |" in out
    dup = next(line for line in out.splitlines() if "rule\\_duplicate on" in line)
    assert "x\\|y\\`z" in dup
    assert dup.count("|") - dup.count("\\|") == 6  # five cells, none split by the pipe
    for line in out.splitlines():
        if line.startswith("| "):
            assert line.count("|") - line.count("\\|") in (3, 6, 9)
    # markup shows as text only inside a code span
    assert f"\n- `allow[7]`: `{HOSTILE_HOST}`\n" in out and out.count(HOSTILE) == 1
    assert "```yaml\n- host: pastebin.com\n" in out
    assert "refused by a secret check" in out


# ---------------------------------------------------------------------------------------
# SARIF


def sarif_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft4Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.mark.parametrize("report", [make_report(), make_report(None), Report("c.yaml", "report")])
def test_sarif_is_valid_against_the_official_schema(report: Report) -> None:
    log = json.loads(render(report, "sarif"))
    errors = sorted(sarif_validator().iter_errors(log), key=str)
    assert not errors, "\n".join(e.message for e in errors)


def test_sarif_schema_rejects_a_broken_log() -> None:
    log = json.loads(render(make_report(), "sarif"))
    log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    assert list(sarif_validator().iter_errors(log))


@pytest.mark.parametrize(
    ("severity", "level", "security_severity"),
    [("critical", "error", "9.5"), ("high", "error", "8.0"), ("medium", "warning", "5.0"),
     ("low", "note", "3.0"), ("info", "note", "1.0")],
)  # fmt: skip
def test_sarif_levels_and_security_severity(
    severity: str, level: str, security_severity: str
) -> None:
    log = json.loads(render(make_report(), "sarif"))
    results = [r for r in log["runs"][0]["results"] if r["properties"]["severity"] == severity]
    assert results
    for r in results:
        assert r["level"] == level
        assert r["properties"]["security-severity"] == security_severity


def test_sarif_rules_results_and_locations() -> None:
    log = json.loads(render(make_report(), "sarif"))
    assert log["version"] == "2.1.0" and len(log["runs"]) == 1
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "egress review"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert rule_ids == sorted({f.id for f in FINDINGS})
    wildcard = driver["rules"][rule_ids.index("wildcard_broad")]
    assert wildcard["help"]["text"].startswith("Fix wildcard_broad")
    assert wildcard["properties"]["security-severity"] == "9.5"  # its most severe instance
    assert wildcard["shortDescription"]["text"]
    results = run["results"]
    assert len(results) == len(FINDINGS)
    for r in results:
        assert driver["rules"][r["ruleIndex"]]["id"] == r["ruleId"]
    by_key = {r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"]: r for r in results}
    located = by_key["allow[3].host"]["locations"][0]["physicalLocation"]
    assert located == {"artifactLocation": {"uri": CFG}, "region": {"startLine": 12}}
    for key in ("allow[7].schemes", "allow[9]"):  # line unknown (None) or 0: no region
        assert "region" not in by_key[key]["locations"][0]["physicalLocation"]
    fingerprints = [r["partialFingerprints"]["egressFinding/v1"] for r in results]
    assert len(set(fingerprints)) == len(fingerprints)


@pytest.mark.parametrize(
    ("file", "uri"),
    [("config/egress.yaml", "config/egress.yaml"), ("my config.yaml", "my%20config.yaml"),
     ("/etc/egress/egress.yaml", "file:///etc/egress/egress.yaml")],
)  # fmt: skip
def test_sarif_artifact_uri(file: str, uri: str) -> None:
    f = replace(FINDINGS[0], location=Location(file, 3, "mode"))
    log = json.loads(render(Report(file, "enforce", findings=[f]), "sarif"))
    assert log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": uri
    }
    assert not list(sarif_validator().iter_errors(log))


# ---------------------------------------------------------------------------------------
# HTML


class Tags(html.parser.HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def hostile_report() -> Report:
    """A report whose every string field carries markup."""
    evil = replace(
        FINDINGS[0], title=f"title {HOSTILE}", explanation=f"why {HOSTILE}", fix=f"fix {HOSTILE}",
        location=Location(f"cfg{HOSTILE}.yaml", 1, f"allow[0].{HOSTILE}"),
    )  # fmt: skip
    audit = replace(
        AUDIT, source=f"a{HOSTILE}.jsonl", unused_rules=[HOSTILE], uninjected_secrets=[HOSTILE],
        denied=[replace(AUDIT.denied[0], host=HOSTILE_HOST, suggestion=f"- host: {HOSTILE}")],
        by_reason={HOSTILE: 1},
        timeline=[replace(b, by_host={HOSTILE_HOST: {"deny": 1}}) for b in AUDIT.timeline],
    )  # fmt: skip
    return Report(
        config=f"cfg{HOSTILE}.yaml", mode="report", findings=[evil], secrets=[HOSTILE],
        reach=[reach(HOSTILE, HOSTILE_HOST, "allow[0]", paths=(f"/{HOSTILE}",))],
        hosts=[host("allow[0]", HOSTILE_HOST, (HOSTILE,), 1)], audit=audit,
    )  # fmt: skip


@pytest.mark.parametrize("report", [make_report(), hostile_report()])
def test_html_fetches_nothing(report: Report) -> None:
    page = render(report, "html")
    tags = parse(page)
    for tag, attrs in tags.tags:
        assert tag not in ("script", "link", "img", "iframe", "object", "embed", "base"), tag
        for name in ("src", "href", "action", "xlink:href", "srcset", "poster"):
            value = attrs.get(name) or ""
            assert not value or value.startswith("#"), (tag, name, value)
    assert "@import" not in page and "url(" not in page
    csp = [a["content"] for t, a in tags.tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp == ["default-src 'none'; style-src 'unsafe-inline'"]


def test_html_escapes_hostile_strings() -> None:
    page = render(hostile_report(), "html")
    assert "<script" not in page
    assert page.count("&lt;script&gt;") >= 12
    text = "".join(parse(page).text)
    for shown in (f"title {HOSTILE}", f"fix {HOSTILE}", HOSTILE_HOST, f"- host: {HOSTILE}"):
        assert shown in text  # shown as text, once the entities are decoded


def test_html_sections_and_chart() -> None:
    page = render(make_report(), "html")
    tags = parse(page)
    ids = [a.get("id") for _, a in tags.tags if a.get("id")]
    for section in ("summary", "findings", "reach", "hosts", "no-credential", "audit",
                    "timeline-chart", "host-lanes", "reason-lanes", "denied"):  # fmt: skip
        assert section in ids
    badges = [t for t, a in tags.tags if a.get("class") == "badge"]
    assert len(badges) == len(FINDINGS)
    bars = [a for t, a in tags.tags if t == "rect" and "bar" in (a.get("class") or "")]
    chart_bars = sum(len(b.by_decision) for b in AUDIT.timeline)
    assert len([a for a in bars if a["class"] == "bar bar-deny"]) >= 10
    assert len(bars) >= chart_bars
    assert "<pre>- host: pastebin.com\n  methods: [GET]" in page
    no_audit = render(make_report(None), "html")
    assert 'id="audit"' not in no_audit and "<svg" not in no_audit


# ---------------------------------------------------------------------------------------
# HTML in a real browser

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)"
)


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, timeout=120, check=True)


@needs_chromium
def test_html_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render(make_report(), "html"), encoding="utf-8")
    dom = chromium("--dump-dom", page.as_uri(), tmp=tmp_path).stdout.decode()
    tags = parse(dom)
    text = " ".join("".join(tags.text).split())
    for f in FINDINGS:
        assert f.title in text
    for heading in ("Findings (12)", "Reach matrix", "Hosts with no credential (3)",
                    "Traffic by decision over time", "Traffic by host and decision over time",
                    "Most-denied destinations"):  # fmt: skip
        assert heading in text
    assert HOSTILE_HOST in text  # the hostile host shows as text
    svgs = [a for t, a in tags.tags if t == "svg"]
    assert {"timeline-chart"} <= {a.get("id") for a in svgs}
    assert len(svgs) == 1 + 3 + 3  # the chart, a lane per host, a lane per reason
    rects = [a for t, a in tags.tags if t == "rect" and (a.get("class") or "").startswith("bar")]
    assert {"bar bar-allow", "bar bar-deny", "bar bar-error"} <= {a["class"] for a in rects}

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars",
             page.as_uri(), tmp=tmp_path)  # fmt: skip
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def without_csp(page: str) -> str:
    """The page without its Content-Security-Policy: escaping alone must hold."""
    return re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n', "", page, count=1)


@needs_chromium
def test_the_hostile_markup_would_run_unescaped(tmp_path: Path) -> None:
    """The detector works: the same markup, not escaped and with no CSP, marks the page."""
    page = tmp_path / "control.html"
    page.write_text(f"<!DOCTYPE html><html><body><p>{HOSTILE}</p></body></html>")
    assert "data-pwned" in chromium("--dump-dom", page.as_uri(), tmp=tmp_path).stdout.decode()


@needs_chromium
@pytest.mark.parametrize("policy", ["with CSP", "without CSP"])
def test_hostile_strings_never_run_in_chromium(tmp_path: Path, policy: str) -> None:
    html_text = render(hostile_report(), "html")
    if policy == "without CSP":
        html_text = without_csp(html_text)
        assert "Content-Security-Policy" not in html_text
    page = tmp_path / "hostile.html"
    page.write_text(html_text, encoding="utf-8")
    dom = chromium("--dump-dom", page.as_uri(), tmp=tmp_path).stdout.decode()
    assert "data-pwned" not in dom  # no script ran, no handler fired
    tags = parse(dom)
    assert not [t for t, _ in tags.tags if t in ("script", "img")]
    text = "".join(tags.text)
    assert f"title {HOSTILE}" in text and HOSTILE_HOST in text  # shown, as text
