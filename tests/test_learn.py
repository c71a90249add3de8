"""``egress learn``: the allowlist an audit log's traffic needed, drafted from generated logs
and from a log the real proxy wrote in report mode (egress/review/learn.py)."""

from __future__ import annotations

import argparse
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.config import Config, Rule, load, parse
from egress.policy import Allowlist
from egress.review.drafting import PathSet, draftable_readings, generalise
from egress.review.learn import Learner, learn, render_draft, run_learn
from egress.review.model import Finding, Location, Report
from tests.conftest import API, OTHER, RunningProxy, base_config, start_proxy, write_config
from tests.upstream import Upstream

PH = "egress-api_token-placeholder"


def rec(
    host: str = "api.example.com", path: str = "/", method: str = "GET",
    decision: str = "allow", reason: str = "allowed", would: str | None = "host_not_allowed",
    port: int = 443, scheme: str = "https", event: str = "request", status: int | None = 200,
    detail: str | None = None, secrets: tuple[str, ...] = (),
) -> str:  # fmt: skip
    return json.dumps({
        "time": "2026-11-24T03:04:34.288Z", "event": event,
        "flow_id": "60b08455-528f-4fa9-8334-fa52a54beafd", "client": "127.0.0.1:53518",
        "method": method, "scheme": scheme, "host": host, "port": port, "path": path,
        "decision": decision, "reason": reason, "rule": None, "would_deny": would,
        "secrets": list(secrets), "scrubbed": 0, "status": status, "bytes_in": 0,
        "bytes_out": 12, "duration_ms": 1.5, "detail": detail,
    })  # fmt: skip


def refused(reason: str = "placeholder_to_unbound_host", **kw: Any) -> str:
    return rec(decision="deny", reason=reason, would=None, **{"status": 403, **kw})


def draft_config(text: str) -> Config:
    """The draft as egress reads it: it must be a valid config on its own."""
    return parse(yaml.safe_load(text), "draft.yaml", Path("."))


def allowlist(lines: list[str], cfg: Config | None = None) -> tuple[Allowlist, str]:
    text = render_draft(learn(lines, cfg))
    rules = list(draft_config(text).rules)
    return Allowlist([*(cfg.rules if cfg else ()), *rules]), text


# --- paths: generalised only as far as the evidence supports ---------------------------

PATH_CASES = [
    # (id, paths seen, prefixes proposed (None: any path))
    ("one path is itself", ["/repos/a/b/issues"], ("/repos/a/b/issues",)),
    ("two children stay apart", ["/repos/a/b/issues", "/repos/c/d/pulls"],
     ("/repos/a/b/issues", "/repos/c/d/pulls")),
    ("three children generalise", ["/repos/a", "/repos/b", "/repos/c"], ("/repos/",)),
    ("deep children generalise where they fan out",
     ["/repos/o/a/issues", "/repos/o/b/pulls", "/repos/o/c", "/user"], ("/repos/o/", "/user")),
    ("a seen parent covers its children", ["/repos", "/repos/a", "/repos/b", "/repos/c"], ("/repos",)),
    ("the root is never generalised", ["/a", "/b", "/c", "/d"], ("/a", "/b", "/c", "/d")),
    ("/ itself means every path egress can judge", ["/", "/a"], ("/",)),
    ("a trailing slash is kept", ["/simple/"], ("/simple/",)),
    ("a query is not a path", ["/search?q=REDACTED"], ("/search",)),
    ("every reading egress decides on", ["/x/%61"], ("/x/%61", "/x/a")),
    ("merged slashes too", ["//a/b"], ("//a/b", "/a/b")),
]  # fmt: skip


@pytest.mark.parametrize("case", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_paths_generalise_only_as_far_as_the_evidence(case: tuple[Any, ...]) -> None:
    _, paths, expected = case
    lines = [rec(path=p) for p in paths]
    d = learn(lines, None)
    [p] = d.rules
    assert p.rule.paths == expected
    allow, _ = allowlist(lines)
    for path in paths:
        assert allow.decide("https", "api.example.com", 443, "GET", path).allowed


def test_pathset_cap_cuts_deepest_first() -> None:
    ps = PathSet(cap=4)
    for i in range(10):
        ps.add(f"/a/{i}/leaf")
    ps.add("/b")
    assert len(ps.entries) <= 4
    prefixes, notes = generalise(ps)
    assert prefixes is not None and "/b" in prefixes
    assert any(p.startswith("/a") for p in prefixes) and notes


def test_a_character_a_rule_cannot_hold_cuts_the_prefix() -> None:
    allow, text = allowlist([rec(path="/files/a%20b/c"), rec(path="/files/x%23y")])
    assert "/files/" in text
    assert allow.decide("https", "api.example.com", 443, "GET", "/files/a%20b/c").allowed


@pytest.mark.parametrize("path", ["/a/../b", "/a%2Fb", "/my%20files/x", "/%3Fx"])
def test_paths_no_prefix_can_allow_are_counted_not_drafted(path: str) -> None:
    d = learn([rec(path=path), rec(path="/ok")], None)
    [p] = d.rules
    assert p.rule.paths == ("/ok",)  # never "any path" from one odd path
    assert any("1 request(s) left out" in n for n in p.rule.notes)


def test_past_the_cap_on_method_sets_any_method() -> None:
    methods = [f"M{i}" for i in range(20)]
    allow, text = allowlist([rec(method=m, path=f"/{m}") for m in methods])
    assert "method sets were seen: any method" in text
    for m in methods:
        assert allow.decide("https", "api.example.com", 443, m, f"/{m}").allowed


# --- methods ---------------------------------------------------------------------------

METHOD_CASES = [
    # (id, (method, path) seen, rules as (methods, paths))
    ("GET brings HEAD", [("GET", "/a")], [(("GET", "HEAD"), ("/a",))]),
    ("HEAD alone stays alone", [("HEAD", "/a")], [(("HEAD",), ("/a",))]),
    ("same paths, one rule", [("GET", "/a"), ("POST", "/a")], [(("GET", "HEAD", "POST"), ("/a",))]),
    ("a write is not allowed where only reads were seen",
     [("GET", "/repos/a"), ("GET", "/repos/b"), ("GET", "/repos/c"), ("POST", "/repos/a/issues")],
     [(("GET", "HEAD"), ("/repos/",)), (("POST",), ("/repos/a/issues",))]),
]  # fmt: skip


@pytest.mark.parametrize("case", METHOD_CASES, ids=[c[0] for c in METHOD_CASES])
def test_methods_are_what_was_seen(case: tuple[Any, ...]) -> None:
    _, seen, expected = case
    d = learn([rec(method=m, path=p) for m, p in seen], None)
    assert [(p.rule.methods, p.rule.paths) for p in d.rules] == expected


def test_a_method_override_needs_one_rule_with_both() -> None:
    line = rec(method="POST", path="/x", would="method_not_allowed",
               detail="method POST (overridden to DELETE) is not allowed for host 'a'")  # fmt: skip
    allow, _ = allowlist([line])
    assert allow.decide("https", "api.example.com", 443, "POST", "/x", overrides=["DELETE"]).allowed


def test_websocket_handshake_gets_a_websocket_rule() -> None:
    allow, text = allowlist([rec(path="/socket", status=101), rec(path="/api")])
    assert "websocket: true" in text
    assert allow.decide("https", "api.example.com", 443, "GET", "/socket", websocket=True).allowed
    assert not allow.decide("https", "api.example.com", 443, "GET", "/api", websocket=True).allowed


# --- wildcards -------------------------------------------------------------------------

WILDCARD_CASES = [
    # (id, hosts seen, secret-refused hosts, the wildcard proposed or None)
    ("two subdomains: no wildcard", ["a.example.com", "b.example.com"], [], None),
    ("three subdomains", ["a.example.com", "b.example.com", "c.example.com"], [], "*.example.com"),
    ("the tightest parent", ["a.x.example.com", "b.x.example.com", "c.x.example.com", "example.com"],
     [], "*.x.example.com"),
    ("a refused sibling blocks it", ["a.example.com", "b.example.com", "c.example.com"],
     ["evil.example.com"], None),
    ("private-section suffixes are not one domain",
     ["a.github.io", "b.github.io", "c.github.io"], [], None),
    ("a public suffix never", ["a.co.uk", "b.co.uk", "c.co.uk"], [], None),
    ("addresses never", ["93.184.216.1", "93.184.216.2", "93.184.216.3"], [], None),
]  # fmt: skip


@pytest.mark.parametrize("case", WILDCARD_CASES, ids=[c[0] for c in WILDCARD_CASES])
def test_wildcards_need_three_subdomains(case: tuple[Any, ...]) -> None:
    _, hosts, bad, wildcard = case
    lines = [rec(host=h, path="/v1") for h in hosts] + [refused(host=h, path="/v1") for h in bad]
    allow, text = allowlist(lines)
    wild = [r for r in draft_config(text).rules if r.host.kind == "wildcard"]
    if wildcard is None:
        assert not wild
    else:
        assert [r.host.text for r in wild] == [wildcard]
        assert "distinct subdomains of example.com were seen" in text
    for h in hosts:
        assert allow.decide("https", h, 443, "GET", "/v1").allowed
    for h in bad:
        assert not allow.decide("https", h, 443, "GET", "/v1").allowed


# --- secret refusals -------------------------------------------------------------------


def test_blocked_address_classes_are_never_proposed() -> None:
    lines = [rec(host="169.254.169.254", path="/latest/meta-data", would="ip_literal"),
             rec(host="10.0.0.8", path="/x", decision="deny", reason="ip_literal", would=None),
             rec(host="93.184.216.34", path="/x", would="ip_literal")]  # fmt: skip
    allow, text = allowlist(lines)
    assert [r.host.text for r in draft_config(text).rules] == ["93.184.216.34"]
    assert "169.254.169.254 (metadata)" in text and "10.0.0.8 (private)" in text
    assert not allow.decide("https", "169.254.169.254", 443, "GET", "/latest/meta-data").allowed


def test_secret_refusals_are_listed_never_proposed() -> None:
    lines = [rec(host="api.example.com", path="/a"),
             refused(host="gist.example.com", path="/x"),
             refused("secret_to_unbound_host", host="gist.example.com", path="/y"),
             refused("foreign_credential", host="api.example.com", path="/z")]  # fmt: skip
    d = learn(lines, None)
    assert [p.rule.host for p in d.rules] == ["api.example.com"]
    text = render_draft(d)
    assert "https://gist.example.com:443  placeholder_to_unbound_host x1" in text
    assert "https://api.example.com:443  foreign_credential x1" in text
    allow = Allowlist(draft_config(text).rules)
    assert not allow.decide("https", "gist.example.com", 443, "GET", "/x").allowed
    assert not allow.decide("https", "api.example.com", 443, "GET", "/z").allowed


def test_a_refused_request_stops_a_generalisation() -> None:
    lines = [rec(path=f"/repos/{c}") for c in "abc"] + [refused(path="/repos/evil")]
    d = learn(lines, None)
    [p] = d.rules
    assert p.rule.paths == ("/repos/a", "/repos/b", "/repos/c")
    lines = [rec(path=f"/repos/{c}") for c in "abc"] + [refused(path="/other")]
    assert learn(lines, None).rules[0].rule.paths == ("/repos/",)


def test_a_refused_head_keeps_head_out() -> None:
    d = learn([rec(path="/a"), refused(method="HEAD", path="/a/b")], None)
    assert d.rules[0].rule.methods == ("GET",)


# --- with a config: only what to add ---------------------------------------------------


def test_with_a_config_only_the_additions(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(yaml.safe_dump({"allow": [
        {"host": "api.example.com", "methods": ["GET"], "paths": ["/v1/"]}]}))  # fmt: skip
    cfg = load(path)
    lines = [rec(path="/v1/models", would=None), rec(path="/v2/x", would="path_not_allowed"),
             rec(method="POST", path="/v1/files", would="method_not_allowed"),
             rec(host="new.example.com", path="/a")]  # fmt: skip
    d = learn(lines, cfg, "audit.jsonl")
    assert d.already_allowed == 1 and d.drafted == 3
    text = render_draft(d)
    assert "the rules to ADD to the allow: list of" in text and "(it has 1 rule(s)" in text
    allow = Allowlist([*cfg.rules, *draft_config(text).rules])
    for m, p, h in [("GET", "/v2/x", "api.example.com"), ("POST", "/v1/files", "api.example.com"),
                    ("GET", "/a", "new.example.com")]:  # fmt: skip
        assert allow.decide("https", h, 443, m, p).allowed
    assert [p.rule.host for p in d.rules] == [
        "api.example.com",
        "api.example.com",
        "new.example.com",
    ]
    assert d.scored == "", d.scored


def test_nothing_to_add(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text("allow:\n  - host: api.example.com\n")
    text = render_draft(learn([rec(path="/x", would=None)], load(path)))
    assert "Nothing to add" in text and yaml.safe_load(text) == {"allow": []}


# --- scoring ---------------------------------------------------------------------------


def test_each_rule_is_scored_by_the_review() -> None:
    lines = [rec(host=h, path="/v1", method="PUT") for h in ("a.example.com", "b.example.com",
                                                              "c.example.com")]  # fmt: skip
    d = learn(lines + [rec(host="api.example.org", path="/x")], None)
    assert d.scored == ""
    text = render_draft(d)
    assert "# findings: none" in text or "# finding " in text
    for p in d.rules:
        for fid, severity, _ in p.findings:
            assert f"# finding {fid} ({severity})" in text


def test_a_risky_rule_gets_its_findings_from_the_real_review(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text("allow:\n  - host: api.example.com\n")
    lines = [rec(host="api.example.com", would=None), rec(host="gist.github.com", method="POST")]
    d = learn(lines, load(path))
    [p] = d.rules
    assert p.rule.host == "gist.github.com" and p.findings, render_draft(d)
    assert f"# finding {p.findings[0][0]} ({p.findings[0][1]})" in render_draft(d)


def test_findings_land_above_the_rule_they_point_at(monkeypatch: pytest.MonkeyPatch) -> None:
    import egress.review.analyze as analyze

    def fake(cfg: Config) -> Report:
        last = cfg.rules[-1]
        return Report(cfg.path, cfg.mode, findings=[Finding(
            "EGR-test", "high", "the last rule", Location(cfg.path, None, f"{last.label}.host"),
            "why", "fix", last.host.text)])  # fmt: skip

    monkeypatch.setattr(analyze, "review_config", fake)
    d = learn([rec(host="a.example.com"), rec(host="b.example.org")], None)
    assert [p.findings for p in d.rules] == [[], [("EGR-test", "high", "the last rule")]]
    text = render_draft(d)
    assert text.index("# finding EGR-test (high)") > text.index("host: a.example.com")
    assert text.index("# finding EGR-test (high)") < text.index("host: b.example.org")


# --- the property: the draft allows everything seen, and no refused request it need not -

HOST_POOL = [
    "a.ex.com", "b.ex.com", "c.ex.com", "d.ex.com", "ex.com", "api.other.org", "93.184.216.34",
]  # fmt: skip
SEGMENTS = ["a", "b", "c", "repos", "v1", "%61", "x", "", "..", "%2F", "%20"]
paths = st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=3).map(lambda s: "/" + "/".join(s))
requests = st.tuples(
    st.sampled_from(["would", "allowed", "refused"]), st.sampled_from(["https", "http"]),
    st.sampled_from(HOST_POOL), st.sampled_from([443, 8443]),
    st.sampled_from(["GET", "HEAD", "POST", "DELETE"]), paths, st.booleans(),
)  # fmt: skip


def exact_allowlist(seen: list[tuple[Any, ...]]) -> Allowlist:
    """A rule per seen request, its exact readings as prefixes: what the draft may never
    go beyond where a secret-refused request is concerned."""
    rules = []
    for i, (scheme, host, port, method, path, ws) in enumerate(seen):
        readings = draftable_readings(path)
        rules.append(Rule(i, parse({"allow": [host]}, "x", Path(".")).rules[0].host, (port,),
                          (scheme,), (method,), tuple(readings), ws))  # fmt: skip
    return Allowlist(rules)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=30))
def test_property_draft_allows_what_was_seen_and_no_refusal_it_need_not(
    reqs: list[tuple[Any, ...]],
) -> None:
    lines, seen, blocked = [], [], []
    for kind, scheme, host, port, method, path, ws in reqs:
        ws = ws and method == "GET"
        if kind == "refused":
            lines.append(refused(host=host, port=port, scheme=scheme, method=method, path=path))
            blocked.append((scheme, host, port, method, path))
        else:
            lines.append(rec(host=host, port=port, scheme=scheme, method=method, path=path,
                             would="host_not_allowed" if kind == "would" else None,
                             status=101 if ws else 200))  # fmt: skip
            if draftable_readings(path) is not None:
                seen.append((scheme, host, port, method, path, ws))
    text = render_draft(learn(lines, None))
    allow = Allowlist(draft_config(text).rules)
    for scheme, host, port, method, path, ws in seen:
        d = allow.decide(scheme, host, port, method, path, ws)
        assert d.allowed, (text, scheme, host, port, method, path, ws, d.reason)
    exact = exact_allowlist(seen)
    for scheme, host, port, method, path in blocked:
        if allow.decide(scheme, host, port, method, path).allowed:
            assert exact.decide(scheme, host, port, method, path).allowed, (
                text,
                host,
                method,
                path,
            )


CONFIG_FOR_PROPERTY = {"allow": [
    {"host": "a.ex.com", "methods": ["GET"], "paths": ["/repos/"]},
    {"host": "api.other.org", "ports": [8443], "schemes": ["https", "http"]},
]}  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests.filter(lambda r: r[0] != "refused"), min_size=1, max_size=20))
def test_property_with_a_config_the_additions_cover_the_rest(reqs: list[tuple[Any, ...]]) -> None:
    cfg = parse(CONFIG_FOR_PROPERTY, "egress.yaml", Path("."))
    lines = [rec(host=h, port=p, scheme=s, method=m, path=path, would="path_not_allowed")
             for _, s, h, p, m, path, _ in reqs]  # fmt: skip
    allow, text = allowlist(lines, cfg)
    for _, scheme, host, port, method, path, _ in reqs:
        if draftable_readings(path) is not None:
            assert allow.decide(scheme, host, port, method, path).allowed, text


# --- bounded memory, bad input, formats, the command -----------------------------------


def test_destinations_and_paths_are_capped() -> None:
    learner = Learner(None, max_destinations=50, max_paths=8)
    for i in range(2000):
        learner.feed(rec(host=f"h{i}.example.net", path="/x"))  # past the cap: one wildcard
        learner.feed(rec(host=f"site{i}.org", path="/y"))  # past the cap: dropped
        learner.feed(rec(path=f"/p/{i}/q/{i}"))
    assert len(learner.evidence) == 50 and len(learner.overflow) == 1
    assert all(len(ps.entries) <= 8 for ev in learner.evidence.values() for ps in ev.paths.values())
    text = render_draft(learner.draft("a"))
    assert "past the first 50 were not drafted" in text
    assert "wildcard: more than" in text and "subdomains of example.net" in text
    allow = Allowlist(draft_config(text).rules)
    assert allow.decide("https", "h1999.example.net", 443, "GET", "/x").allowed
    assert allow.decide("https", "api.example.com", 443, "GET", "/p/1999/q/1999").allowed
    assert not allow.decide("https", "site1999.org", 443, "GET", "/y").allowed


OVERFLOW_CASES = [
    # (id, secret-refused (host, path), whether the wildcard is proposed)
    ("nothing refused", [], True),
    ("a refused path the wildcard does not cover", [("e.ex.com", "/secret")], True),
    ("a refused host never seen", [("zz.ex.com", "/v1")], False),
    ("a refused request it would cover, on a host past the cap", [("e.ex.com", "/v1/x")], False),
]  # fmt: skip


@pytest.mark.parametrize("case", OVERFLOW_CASES, ids=[c[0] for c in OVERFLOW_CASES])
def test_subdomains_past_the_cap_become_a_wildcard_only_if_safe(case: tuple[Any, ...]) -> None:
    _, bad, proposed = case
    learner = Learner(None, max_destinations=2)
    for h, p in bad:
        learner.feed(refused(host=h, path=p))
    for h in ("a.ex.com", "b.ex.com", "c.ex.com", "d.ex.com", "e.ex.com"):
        learner.feed(rec(host=h, path="/v1"))
    text = render_draft(learner.draft("a"))
    allow = Allowlist(draft_config(text).rules)
    assert ("*.ex.com" in text) == proposed
    assert allow.decide("https", "e.ex.com", 443, "GET", "/v1").allowed == proposed
    assert ("were not drafted" in text) != proposed
    for h, p in bad:
        assert not allow.decide("https", h, 443, "GET", p).allowed


def test_bad_lines_are_skipped() -> None:
    d = learn(["nope", "[1]", json.dumps({"event": 1}), rec(path="/a"), b"\xff"], None)
    assert (d.records, d.skipped, len(d.rules)) == (1, 4, 1)


def test_json_format() -> None:
    d = learn([rec(path="/a"), refused(host="x.example.com")], None)
    out = json.loads(render_draft(d, "json"))
    assert out["rules"][0]["rule"] == {"host": "api.example.com", "methods": ["GET", "HEAD"],
                                       "paths": ["/a"]}  # fmt: skip
    assert out["refused_for_secret_reasons"][0]["host"] == "x.example.com"


def ns(audit: str, config: str | None = None, fmt: str = "yaml") -> argparse.Namespace:
    return argparse.Namespace(command="learn", audit=audit, config=config, format=fmt)


RUN_CASES = [
    # (id, file content or None for missing, exit code, text on stderr)
    ("missing file", None, 2, "cannot read"),
    ("not an audit log", b"hello\nworld\n", 2, "holds no audit records"),
    ("empty log", b"", 0, ""),
    ("a log", (rec(path="/a") + "\n").encode(), 0, ""),
]  # fmt: skip


@pytest.mark.parametrize("case", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_learn(
    case: tuple[Any, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, content, code, err = case
    path = tmp_path / "audit.jsonl"
    if content is not None:
        path.write_bytes(content)
    assert run_learn(ns(str(path))) == code
    out = capsys.readouterr()
    assert err in out.err
    if code == 0:
        draft_config(out.out)


def test_run_learn_with_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "audit.jsonl").write_text(rec() + "\n")
    (tmp_path / "bad.yaml").write_text("allow: 3\n")
    assert run_learn(ns(str(tmp_path / "audit.jsonl"), str(tmp_path / "bad.yaml"))) == 2
    assert "bad.yaml" in capsys.readouterr().err


# --- end to end: the real proxy in report mode writes the log learn reads ---------------


def test_learn_from_the_real_proxy_in_report_mode(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["mode"] = "report"
    cfg["allow"] = [{"host": API, "ports": [upstream.port], "methods": ["GET"], "paths": ["/only"]}]
    cfg["secrets"] = cfg["secrets"][:1]  # api_token, bound to API
    config_path = write_config(tmp_path, cfg)
    p: RunningProxy = start_proxy(config_path, tmp_path)
    base, other = f"https://{API}:{upstream.port}", f"https://{OTHER}:{upstream.port}"
    sent = [("GET", f"{base}/only"), ("GET", f"{base}/repos/a/issues"),
            ("GET", f"{base}/repos/b/pulls"), ("GET", f"{base}/repos/c"),
            ("POST", f"{base}/upload?name=x"), ("GET", f"{other}/x/1"), ("DELETE", f"{other}/x/2")]  # fmt: skip
    try:
        tls = ssl.create_default_context(cafile=str(p.ca))
        with httpx.Client(proxy=p.url, verify=tls) as c:
            for method, url in sent:
                assert c.request(method, url, headers={"authorization": f"Bearer {PH}"}
                                 if url.startswith(base) else {}).status_code == 200  # fmt: skip
            leak = c.get(f"{other}/leak", headers={"authorization": f"Bearer {PH}"})
            assert leak.status_code == 403
    finally:
        assert p.stop() == 0
    records = p.audit()
    assert any(r["would_deny"] == "host_not_allowed" for r in records)
    assert any(r["reason"] == "placeholder_to_unbound_host" for r in records)

    from egress.review.auditrecords import read_lines

    whole = render_draft(learn(read_lines(str(p.audit_path)), None, str(p.audit_path)))
    allow = Allowlist(draft_config(whole).rules)
    current = load(config_path)
    added = render_draft(learn(read_lines(str(p.audit_path)), current, str(p.audit_path)))
    with_additions = Allowlist([*current.rules, *draft_config(added).rules])
    for r in records:
        if r["event"] != "request":
            continue
        args = (r["scheme"], r["host"], r["port"], r["method"], r["path"])
        if r["decision"] == "allow":
            assert allow.decide(*args).allowed, (whole, r)
            assert with_additions.decide(*args).allowed, (added, r)
        else:
            assert r["reason"] == "placeholder_to_unbound_host"
            assert not allow.decide(*args).allowed, whole
    assert "/repos/" in whole and f"{OTHER}:{upstream.port}  placeholder_to_unbound_host" in whole
    assert "ADD" in added and "/only" not in added.split("\nallow:", 1)[1]

    from egress.review.auditjoin import summarize

    s = summarize(read_lines(str(p.audit_path)), current, str(p.audit_path))
    assert s.records == len(records) and s.skipped == 0
    assert s.unused_rules == [] and s.uninjected_secrets == []
    hosts = {d.host: d for d in s.denied}
    assert hosts[OTHER].reasons == {"host_not_allowed": 2, "placeholder_to_unbound_host": 1}
    merged = Allowlist([*current.rules, *draft_config(
        "allow:\n" + "".join("  " + ln + "\n" for ln in hosts[API].suggestion.splitlines())).rules])  # fmt: skip
    assert merged.decide("https", API, upstream.port, "POST", "/upload?name=REDACTED").allowed
