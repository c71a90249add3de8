from __future__ import annotations

from pathlib import Path

import pytest

from egress.config import parse
from egress.policy import Allowlist, path_matches
from egress.reasons import Reason

RULES = [
    {"host": "api.github.com", "methods": ["GET", "POST"], "paths": ["/repos/", "/user"]},
    {"host": "*.example.com", "ports": [443, 8443]},
    {"host": "plain.test", "schemes": ["http"]},
    {"host": "both.test", "schemes": ["https", "http"]},
    {"host": "10.0.0.0/8", "ports": [9000]},
]

CASES = [
    # (scheme, host, port, method, path, reason, rule index)
    ("https", "api.github.com", 443, "GET", "/repos/a/b", Reason.ALLOWED, 0),
    ("https", "api.github.com", 443, "GET", "/user", Reason.ALLOWED, 0),
    ("https", "api.github.com", 443, "GET", "/user/keys", Reason.ALLOWED, 0),
    ("https", "api.github.com", 443, "GET", "/users", Reason.PATH_NOT_ALLOWED, 0),
    ("https", "api.github.com", 443, "GET", "/repos/../admin", Reason.PATH_NOT_ALLOWED, 0),
    ("https", "api.github.com", 443, "GET", "/repos/%2e%2e/admin", Reason.PATH_NOT_ALLOWED, 0),
    ("https", "api.github.com", 443, "GET", "/repos%2fx", Reason.PATH_NOT_ALLOWED, 0),
    ("https", "api.github.com", 443, "GET", "/repos/a?x=/admin", Reason.ALLOWED, 0),
    ("https", "api.github.com", 443, "DELETE", "/repos/a", Reason.METHOD_NOT_ALLOWED, 0),
    ("https", "api.github.com", 8443, "GET", "/repos/a", Reason.PORT_NOT_ALLOWED, 0),
    ("http", "api.github.com", 443, "GET", "/repos/a", Reason.SCHEME_NOT_ALLOWED, 0),
    ("https", "github.com", 443, "GET", "/", Reason.HOST_NOT_ALLOWED, None),
    ("https", "x.example.com", 8443, "DELETE", "/anything", Reason.ALLOWED, 1),
    ("https", "x.y.example.com", 443, "GET", "/", Reason.ALLOWED, 1),
    ("https", "example.com", 443, "GET", "/", Reason.HOST_NOT_ALLOWED, None),
    ("https", "evilexample.com", 443, "GET", "/", Reason.HOST_NOT_ALLOWED, None),
    ("http", "plain.test", 80, "GET", "/", Reason.ALLOWED, 2),
    ("https", "plain.test", 443, "GET", "/", Reason.PORT_NOT_ALLOWED, 2),
    ("http", "both.test", 80, "GET", "/", Reason.ALLOWED, 3),
    ("https", "both.test", 443, "GET", "/", Reason.ALLOWED, 3),
    ("https", "10.1.2.3", 9000, "GET", "/", Reason.ALLOWED, 4),
    ("https", "10.1.2.3", 443, "GET", "/", Reason.PORT_NOT_ALLOWED, 4),
    ("https", "127.0.0.1", 9000, "GET", "/", Reason.IP_LITERAL, None),
]


@pytest.fixture(scope="module")
def allowlist() -> Allowlist:
    return Allowlist(parse({"allow": RULES}, "t.yaml", Path("/")).rules)


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c[0]}://{c[1]}:{c[2]} {c[3]} {c[4]}" for c in CASES]
)
def test_decide(allowlist: Allowlist, case: tuple) -> None:
    scheme, host, port, method, path, reason, rule = case
    d = allowlist.decide(scheme, host, port, method, path)
    assert d.reason is reason
    assert d.allowed is (reason is Reason.ALLOWED)
    assert (d.rule.index if d.rule else None) == rule
    if not d.allowed:
        assert d.detail


@pytest.mark.parametrize(
    ("host", "port", "reason"),
    [("api.github.com", 443, Reason.ALLOWED), ("api.github.com", 80, Reason.PORT_NOT_ALLOWED),
     ("plain.test", 80, Reason.ALLOWED), ("nope.test", 443, Reason.HOST_NOT_ALLOWED)],
)  # fmt: skip
def test_decide_connect(allowlist: Allowlist, host: str, port: int, reason: Reason) -> None:
    assert allowlist.decide_connect(host, port).reason is reason


def test_empty_allowlist_denies_everything() -> None:
    assert Allowlist([]).decide("https", "a.com", 443, "GET", "/").reason is Reason.HOST_NOT_ALLOWED


@pytest.mark.parametrize(
    ("prefix", "path", "ok"),
    [("/repos", "/repos", True), ("/repos", "/repos/x", True), ("/repos", "/reposx", False),
     ("/repos/", "/repos/x", True), ("/repos/", "/repos", False), ("/", "/anything", True)],
)  # fmt: skip
def test_path_prefix_is_segment_aware(prefix: str, path: str, ok: bool) -> None:
    assert path_matches(prefix, path) is ok
