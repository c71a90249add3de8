"""``egress review --audit``: the one-pass join of a config with an audit log, on generated
audit logs (egress/review/auditjoin.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.config import Config, parse
from egress.policy import Allowlist
from egress.review.auditjoin import AuditJoin, no_suggestion_reason, summarize
from egress.review.auditrecords import ALLOWLIST_REASONS, OVERLONG, read_lines

CONFIG = {
    "allow": [
        {"host": "api.github.com", "methods": ["GET"], "paths": ["/repos/"]},  # allow[0]
        {"host": "pypi.org"},  # allow[1]
        {"host": "files.example.com", "ports": [8443]},  # allow[2]
        {"host": "ws.example.com", "paths": ["/socket"]},  # allow[3]
    ],
    "secrets": [
        {"name": "gh", "source": {"env": "GH"}, "hosts": ["api.github.com"]},
        {"name": "pypi_token", "source": {"env": "PYPI"}, "hosts": ["pypi.org"]},
    ],
}


def config(data: dict[str, Any] | None = None) -> Config:
    return parse(data or CONFIG, "egress.yaml", Path("."))


def rec(
    host: str = "api.github.com", path: str = "/repos/o/r", method: str = "GET",
    decision: str = "allow", reason: str = "allowed", would: str | None = None,
    rule: str | None = None, secrets: tuple[str, ...] = (), port: int = 443,
    scheme: str = "https", event: str = "request", status: int | None = 200,
    t: str = "2026-11-24T03:04:34.288Z", detail: str | None = None,
) -> str:  # fmt: skip
    return json.dumps({
        "time": t, "event": event, "flow_id": "60b08455-528f-4fa9-8334-fa52a54beafd",
        "client": "127.0.0.1:53518", "method": method, "scheme": scheme, "host": host,
        "port": port, "path": path, "decision": decision, "reason": reason, "rule": rule,
        "would_deny": would, "secrets": list(secrets), "scrubbed": 0, "status": status,
        "bytes_in": 0, "bytes_out": 12, "duration_ms": 1.5, "detail": detail,
    })  # fmt: skip


def deny(reason: str, **kw: Any) -> str:
    return rec(decision="deny", reason=reason, **{"status": 403, **kw})


def parse_rules(suggestion: str) -> list[Any]:
    """The suggestion parses as a list of allow rules egress accepts."""
    rules = yaml.safe_load(suggestion)
    assert isinstance(rules, list) and rules
    return list(parse({"allow": rules}, "suggestion.yaml", Path(".")).rules)


# --- rules never used, credentials never injected -------------------------------------

USE_CASES = [
    # (id, log, unused rules, secrets never injected)
    ("nothing seen", [], ["allow[0]", "allow[1]", "allow[2]", "allow[3]"], ["gh", "pypi_token"]),
    ("allowed records name their rule",
     [rec(rule="allow[0]", secrets=("gh",)), rec(host="pypi.org", path="/simple/x", rule="allow[1]")],
     ["allow[2]", "allow[3]"], ["pypi_token"]),
    ("a would_deny record names the closest rule, which did not allow it",
     [rec(path="/user", rule="allow[0]", would="path_not_allowed")],
     ["allow[0]", "allow[1]", "allow[2]", "allow[3]"], ["gh", "pypi_token"]),
    ("a denied record is no use of its rule",
     [deny("placeholder_to_unbound_host", rule="allow[1]", host="pypi.org")],
     ["allow[0]", "allow[1]", "allow[2]", "allow[3]"], ["gh", "pypi_token"]),
    ("an unscrubbable response still injected its secret",
     [rec(decision="error", reason="unscrubbable_response", rule="allow[1]", host="pypi.org",
          secrets=("pypi_token",), status=502)],
     ["allow[0]", "allow[1]", "allow[2]", "allow[3]"], ["gh"]),
    ("rule labels and secret names not in the config are ignored",
     [rec(rule="allow[99]", secrets=("nope",))],
     ["allow[0]", "allow[1]", "allow[2]", "allow[3]"], ["gh", "pypi_token"]),
]  # fmt: skip


@pytest.mark.parametrize("case", USE_CASES, ids=[c[0] for c in USE_CASES])
def test_unused_rules_and_uninjected_secrets(case: tuple[Any, ...]) -> None:
    _, log, unused, uninjected = case
    s = summarize(log, config(), "audit.jsonl")
    assert s.unused_rules == unused
    assert s.uninjected_secrets == uninjected
    assert s.records == len(log) and s.skipped == 0


# --- denied destinations and their suggested rules -------------------------------------

SUGGEST_CASES = [
    # (id, records, (scheme, host, port), the requests (method, path, websocket) the rule must allow)
    ("host not allowed (report mode)",
     [rec(host="api.openai.com", path=f"/v1/{p}", would="host_not_allowed") for p in ("models", "files", "chat")],
     ("https", "api.openai.com", 443),
     [("GET", "/v1/models", False), ("GET", "/v1/files", False), ("GET", "/v1/chat", False)]),
    ("method not allowed, with an override",
     [rec(method="POST", path="/repos/o/r/issues", would="method_not_allowed",
          detail="method POST (overridden to DELETE) is not allowed for host 'api.github.com'")],
     ("https", "api.github.com", 443), [("POST", "/repos/o/r/issues", False)]),
    ("path not allowed (enforce mode)",
     [deny("path_not_allowed", path="/user/repos?page=REDACTED", rule="allow[0]")],
     ("https", "api.github.com", 443), [("GET", "/user/repos", False)]),
    ("port not allowed on a CONNECT: host and port only",
     [deny("port_not_allowed", host="pypi.org", port=8443, method="CONNECT", path="", event="connect")],
     ("https", "pypi.org", 8443), [("GET", "/anything", False)]),
    ("scheme not allowed",
     [deny("scheme_not_allowed", host="pypi.org", port=80, scheme="http", path="/simple/")],
     ("http", "pypi.org", 80), [("GET", "/simple/", False)]),
    ("websocket not allowed",
     [deny("websocket_not_allowed", host="ws.example.com", path="/socket")],
     ("https", "ws.example.com", 443), [("GET", "/socket", True)]),
    ("ip literal",
     [deny("ip_literal", host="93.184.216.34", method="CONNECT", path="", event="connect")],
     ("https", "93.184.216.34", 443), [("GET", "/", False)]),
    ("an IPv6 literal",
     [rec(host="2606:4700::1111", path="/x", would="ip_literal")],
     ("https", "2606:4700::1111", 443), [("GET", "/x", False)]),
    ("refused in transparent mode on the ClientHello",
     [deny("host_not_allowed", host="cdn.example.net", scheme="tcp", method="", path="",
           event="tunnel", status=None)],
     ("https", "cdn.example.net", 443), [("GET", "/a", False)]),
    ("a path with odd characters is quoted",
     [rec(host="x.example.org", path="/a b/c%3Fd", would="host_not_allowed"),
      rec(host="x.example.org", path="/#x", would="host_not_allowed")],
     ("https", "x.example.org", 443), [("GET", "/a b/c%3Fd", False)]),
]  # fmt: skip


@pytest.mark.parametrize("case", SUGGEST_CASES, ids=[c[0] for c in SUGGEST_CASES])
def test_denied_destination_gets_a_rule_that_allows_it(case: tuple[Any, ...]) -> None:
    _, log, (scheme, host, port), requests = case
    cfg = config()
    s = summarize(log, cfg, "audit.jsonl")
    [dest] = s.denied
    assert (dest.scheme, dest.host, dest.port, dest.count) == (scheme, host, port, len(log))
    assert dest.suggestion and no_suggestion_reason(dest) == ""
    rules = parse_rules(dest.suggestion)
    for r in rules:  # each rule as narrow as the evidence: the destination's own host
        assert r.host.text == host and r.ports == (port,) and r.schemes == (scheme,)
    merged = Allowlist([*cfg.rules, *rules])
    for method, path, websocket in requests:
        d = merged.decide(scheme, host, port, method, path, websocket)
        assert d.allowed, (dest.suggestion, method, path, d.reason)


def test_suggestion_is_as_narrow_as_the_evidence() -> None:
    log = [rec(host="api.openai.com", path="/v1/files", would="host_not_allowed"),
           rec(host="api.openai.com", method="POST", path="/v1/chat/completions",
               would="host_not_allowed")]  # fmt: skip
    [dest] = summarize(log, config(), "a").denied
    allow = Allowlist(parse_rules(dest.suggestion))
    assert dest.methods == ("GET", "POST")
    assert allow.decide("https", "api.openai.com", 443, "HEAD", "/v1/files").allowed  # GET's kin
    assert not allow.decide("https", "api.openai.com", 443, "POST", "/v1/files").allowed
    assert not allow.decide("https", "api.openai.com", 443, "GET", "/v1/models").allowed
    assert not allow.decide("https", "api.openai.com", 443, "DELETE", "/v1/chat").allowed


SECRET_ONLY = [
    "secret_to_unbound_host", "placeholder_to_unbound_host", "foreign_credential",
    "placeholder_surface_not_allowed", "plaintext_injection",
]  # fmt: skip


@pytest.mark.parametrize("reason", SECRET_ONLY)
def test_secret_refusals_get_no_rule_and_say_why(reason: str) -> None:
    [dest] = summarize([deny(reason, host="gist.github.com", path="/x")], config(), "a").denied
    assert dest.suggestion == ""
    assert dest.reasons == {reason: 1}
    assert reason in no_suggestion_reason(dest) and "secret" in no_suggestion_reason(dest)


@pytest.mark.parametrize("host,cls", [("169.254.169.254", "metadata"), ("10.1.2.3", "private"),
                                      ("127.0.0.1", "loopback"), ("fe80::1", "link-local")])  # fmt: skip
def test_no_rule_opens_a_blocked_address_class(host: str, cls: str) -> None:
    log = [deny("ip_literal", host=host, method="CONNECT", path="", event="connect"),
           rec(host=host, path="/latest/meta-data", would="ip_literal")]  # fmt: skip
    [dest] = summarize(log, config(), "a").denied
    assert dest.suggestion == "" and dest.count == 2
    assert f"blocked address class ({cls})" in no_suggestion_reason(dest)


def test_identity_refusal_gets_no_rule() -> None:
    [dest] = summarize([deny("host_header_mismatch")], config(), "a").denied
    assert dest.suggestion == ""
    assert "host_header_mismatch" in no_suggestion_reason(dest)


def test_mixed_destination_rule_says_the_secret_refusals_stay() -> None:
    log = [rec(host="evil.example.com", path="/a", would="host_not_allowed"),
           deny("placeholder_to_unbound_host", host="evil.example.com", path="/b")]  # fmt: skip
    [dest] = summarize(log, config(), "a").denied
    assert dest.reasons == {"host_not_allowed": 1, "placeholder_to_unbound_host": 1}
    assert "placeholder_to_unbound_host x1" in dest.suggestion
    allow = Allowlist(parse_rules(dest.suggestion))
    assert allow.decide("https", "evil.example.com", 443, "GET", "/a").allowed
    assert not allow.decide("https", "evil.example.com", 443, "GET", "/b").allowed


def test_denied_are_most_denied_first_and_capped_to_top() -> None:
    log = [rec(host=f"h{i}.example.com", path="/", would="host_not_allowed")
           for i in range(30) for _ in range(i + 1)]  # fmt: skip
    random.Random(1).shuffle(log)
    s = summarize(log, config(), "a", top_denied=5)
    assert [(d.host, d.count) for d in s.denied] == [
        (f"h{i}.example.com", i + 1) for i in (29, 28, 27, 26, 25)
    ]


# --- reasons over time ----------------------------------------------------------------


def test_reasons_overall_and_report_mode_keys() -> None:
    log = [rec(rule="allow[0]"), rec(would="host_not_allowed", host="x.example.com"),
           deny("host_not_allowed", host="y.example.com", event="connect", method="CONNECT", path=""),
           rec(decision="error", reason="upstream_error", status=502)]  # fmt: skip
    s = summarize(log, config(), "a")
    assert s.by_reason == {
        "allowed": 1, "host_not_allowed": 1, "upstream_error": 1,
        "would_deny:host_not_allowed": 1,
    }  # fmt: skip


def ts(seconds: int) -> str:
    import datetime

    t = datetime.datetime(2026, 11, 24, tzinfo=datetime.UTC) + datetime.timedelta(seconds=seconds)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


TIMELINE_CASES = [
    # (id, span in seconds, records, bucket_seconds given, expected width): the narrowest
    # width of the ladder that fits the span in 120 buckets
    ("a minute: 1 s buckets", 59, 60, None, 1),
    ("an hour: 30 s buckets", 3599, 200, None, 30),
    ("three days: 1 h buckets", 3 * 86400 - 1, 500, None, 3600),
    ("a month: 12 h buckets", 30 * 86400, 500, None, 43200),
    ("two years: 1 week buckets", 730 * 86400, 300, None, 604800),
    ("five years: doubling past a week", 5 * 365 * 86400, 300, None, 604800 * 4),
    ("a fixed width is kept", 3 * 86400 - 1, 500, 300, 300),
    ("a fixed width doubles only past the hard cap", 60 * 86400, 500, 60, 1920),
]  # fmt: skip


@pytest.mark.parametrize("case", TIMELINE_CASES, ids=[c[0] for c in TIMELINE_CASES])
def test_timeline_buckets_merge_as_the_span_grows(case: tuple[Any, ...]) -> None:
    _, span, n, width, expected = case
    times = sorted({0, span, *random.Random(2).sample(range(span + 1), min(n, span + 1) - 2)})
    order = list(times)
    random.Random(3).shuffle(order)  # records are in finish order, not start order
    log = [rec(t=ts(x), rule="allow[0]") for x in order]
    s = summarize(log, config(), "a", bucket_seconds=width)
    assert s.bucket_seconds == expected
    assert len(s.timeline) <= (4096 if width else 120)
    assert sum(sum(b.by_decision.values()) for b in s.timeline) == len(log)
    assert s.first_time == ts(0) and s.last_time == ts(span)
    starts = [b.start for b in s.timeline]
    assert starts == sorted(starts) and starts[0] <= ts(0)[:19] + "Z"


def test_timeline_hosts_top_and_other() -> None:
    log = [rec(host=f"h{i}.example.com", path="/", t=ts(i), would="host_not_allowed")
           for i in range(20) for _ in range(i + 1)]  # fmt: skip
    s = summarize(log, config(), "a", top_hosts=3)
    hosts = {h for b in s.timeline for h in b.by_host}
    assert hosts == {"h19.example.com", "h18.example.com", "h17.example.com", "(other)"}
    total = sum(v for b in s.timeline for d in b.by_host.values() for v in d.values())
    assert total == len(log)


# --- the counts are what a naive count says --------------------------------------------

HOSTS = ["api.github.com", "pypi.org", "x.example.com", "y.example.com", "93.184.216.34"]
REASONS = [("allow", "allowed", None), ("allow", "allowed", "host_not_allowed"),
           ("allow", "allowed", "path_not_allowed"), ("deny", "host_not_allowed", None),
           ("deny", "placeholder_to_unbound_host", None), ("error", "upstream_error", None),
           ("deny", "method_not_allowed", None)]  # fmt: skip
records = st.lists(
    st.tuples(
        st.sampled_from(HOSTS), st.sampled_from([443, 8443]), st.sampled_from(REASONS),
        st.sampled_from(["allow[0]", "allow[1]", "allow[2]", None]),
        st.lists(st.sampled_from(["gh", "pypi_token", "zzz"]), max_size=2),
        st.integers(0, 7 * 86400), st.sampled_from(["GET", "POST"]),
        st.sampled_from(["/", "/a", "/a/b", "/repos/x"]),
    ),
    max_size=60,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(records)
def test_counts_equal_a_naive_count(rows: list[tuple[Any, ...]]) -> None:
    log = [rec(host=h, port=p, decision=d, reason=r, would=w, rule=rule, secrets=tuple(sec),
               t=ts(t), method=m, path=path)
           for h, p, (d, r, w), rule, sec, t, m, path in rows]  # fmt: skip
    cfg = config()
    s = summarize(log, cfg, "a", top_denied=1000)
    assert s.records == len(rows) and s.skipped == 0
    naive_reason: dict[str, int] = {}
    naive_denied: dict[tuple[str, str, int], dict[str, int]] = {}
    used, injected = set(), set()
    for h, p, (d, r, w), rule, sec, _, _, _ in rows:
        key = f"would_deny:{w}" if w else r
        naive_reason[key] = naive_reason.get(key, 0) + 1
        if d == "deny" or w:
            reasons = naive_denied.setdefault(("https", h, p), {})
            reasons[w or r] = reasons.get(w or r, 0) + 1
        if d == "allow" and not w and rule:
            used.add(rule)
        injected |= set(sec)
    assert s.by_reason == naive_reason
    assert {(x.scheme, x.host, x.port): x.reasons for x in s.denied} == naive_denied
    assert all(x.count == sum(x.reasons.values()) for x in s.denied)
    assert s.unused_rules == [r.label for r in cfg.rules if r.label not in used]
    assert s.uninjected_secrets == [x.name for x in cfg.secrets if x.name not in injected]
    assert sum(sum(b.by_reason.values()) for b in s.timeline) == len(rows)
    for x in s.denied:
        if x.suggestion:
            parse_rules(x.suggestion)
            assert any(r in ALLOWLIST_REASONS for r in x.reasons)


# --- bad lines ------------------------------------------------------------------------

CANARY = "CANARY-7f3a"
BAD_LINES = [
    # (id, line)
    ("not json", f"hello {CANARY}"),
    ("a json list", json.dumps([CANARY])),
    ("a json string", json.dumps(CANARY)),
    ("truncated", rec()[:-20] + CANARY),
    ("time missing", json.dumps({**json.loads(rec()), "time": None, "x": CANARY})),
    ("time not a time", json.dumps({**json.loads(rec()), "time": CANARY})),
    ("port a string", json.dumps({**json.loads(rec()), "port": CANARY})),
    ("secrets not a list", json.dumps({**json.loads(rec()), "secrets": CANARY})),
    ("decision missing", json.dumps({k: v for k, v in json.loads(rec()).items() if k != "decision"})),
    ("not utf-8", b"\xff\xfe" + CANARY.encode()),
    ("deeply nested", "[" * 100_000 + "]" * 100_000),
    ("overlong", OVERLONG),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_bad_lines_are_skipped_never_echoed(case: tuple[str, Any]) -> None:
    _, line = case
    s = summarize(
        [rec(rule="allow[0]"), line, rec(rule="allow[1]", host="pypi.org")], config(), "a"
    )
    assert (s.records, s.skipped) == (2, 1)
    assert CANARY not in repr(s)


def test_field_values_are_sanitised() -> None:
    evil = "\x1b[31mevil.example.com"
    log = [rec(host=evil, would="host_not_allowed"),
           rec(host="ok.example.com", reason="\x1b]0;pwned\x07", decision="deny", status=403),
           rec(host="ok.example.com", would="x" * 500, method="G\nET")]  # fmt: skip
    s = summarize(log, config(), "a")
    text = repr(s)
    assert "\x1b" not in text and "pwned" not in text and "x" * 100 not in text
    assert "(invalid host)" in {d.host for d in s.denied}
    assert next(d for d in s.denied if d.host == "(invalid host)").suggestion == ""
    assert s.records == 3


def test_blank_lines_are_not_records() -> None:
    s = summarize(["", "\n", b"  \n", rec()], config(), "a")
    assert (s.records, s.skipped) == (1, 0)


def test_read_lines_bounds_a_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes((rec() + "\n").encode() + b"x" * 5000 + b"\n" + rec().encode())
    s = summarize(read_lines(str(log), max_line=1000), config(), str(log))
    assert (s.records, s.skipped) == (2, 1)


# --- bounded memory -------------------------------------------------------------------


def test_100k_distinct_denied_hosts_keep_at_most_the_cap() -> None:
    join = AuditJoin(config(), "a", max_destinations=500)
    heavy = rec(host="heavy.example.com", path="/x", would="host_not_allowed")
    template = rec(host="HOST", path="/PATH", would="host_not_allowed", t="TIME")
    for i in range(100_000):
        line = template.replace("HOST", f"h{i}.example.com").replace("PATH", str(i))
        join.feed(line.replace("TIME", ts(i * 3)))
        if i % 50 == 0:
            join.feed(heavy)
        assert join.tracked_destinations <= 500
    assert len(join.hosts) <= join.hosts.capacity
    assert all(len(b.hosts) <= 2 * join.hosts.capacity + 1 for b in join.buckets.values())
    assert len(join.buckets) <= 120
    s = join.result()
    assert s.records == 102_000
    assert s.denied[0].host == "heavy.example.com"  # a heavy hitter survives the churn
    assert len(s.denied) == 20


def test_paths_per_destination_are_capped() -> None:
    join = AuditJoin(config(), "a")
    for i in range(5000):
        join.feed(rec(host="x.example.com", path=f"/a/{i}/b/{i}", would="host_not_allowed"))
    [ev] = join.evidence.values()
    assert all(len(ps.entries) <= 16 for ps in ev.paths.values())
    [dest] = join.result().denied
    allow = Allowlist(parse_rules(dest.suggestion))
    assert allow.decide("https", "x.example.com", 443, "GET", "/a/17/b/17").allowed
    assert not allow.decide("https", "x.example.com", 443, "GET", "/b").allowed
