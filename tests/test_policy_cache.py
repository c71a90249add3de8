"""The allowlist's per-host caches never change a decision: every answer equals the one the
uncached decision procedure (copied here as it was before the caches) gives, on generated
rules and requests, and the caches stay bounded under many distinct hosts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.config import Rule
from egress.hostnames import is_ip, parse_host_pattern
from egress.policy import CACHE_ENTRIES, Allowlist, Decision, path_allowed
from egress.reasons import Reason
from egress.routing import path_readings


class Reference:
    """Allowlist.decide, decide_connect and restricts_methods before the caches."""

    def __init__(self, rules: Sequence[Rule]):
        self.rules = tuple(rules)

    def _host_rules(self, host: str) -> list[Rule]:
        return [r for r in self.rules if r.host.matches(host)]

    def restricts_methods(self, host: str) -> bool:
        return any(r.methods is not None for r in self._host_rules(host))

    def _no_rule(self, host: str) -> Decision:
        if is_ip(host):
            return Decision(False, Reason.IP_LITERAL, None,
                            f"the address {host} is not named by any rule (an address is allowed only "
                            "by a rule that names it or its range)")  # fmt: skip
        return Decision(False, Reason.HOST_NOT_ALLOWED, None, f"no rule allows host {host!r}")

    def decide_connect(self, host: str, port: int) -> Decision:
        rules = self._host_rules(host)
        if not rules:
            return self._no_rule(host)
        for r in rules:
            if port in r.ports:
                return Decision(True, Reason.ALLOWED, r)
        ports = sorted({p for r in rules for p in r.ports})
        return Decision(
            False, Reason.PORT_NOT_ALLOWED, rules[0],
            f"host {host!r} is allowed on port(s) {ports}, not {port}",
        )  # fmt: skip

    def decide(
        self, scheme: str, host: str, port: int, method: str, path: str, websocket: bool = False,
        overrides: Sequence[str] = (),
    ) -> Decision:  # fmt: skip
        rules = self._host_rules(host)
        if not rules:
            return self._no_rule(host)
        path_only = path.split("?", 1)[0] or "/"
        readings, unjudgeable = (
            path_readings(path_only) if any(r.paths is not None for r in rules) else ([], None)
        )
        methods = list(dict.fromkeys([method.upper(), *overrides]))
        method_text = f"method {method}" + (
            f" (overridden to {', '.join(overrides)})" if overrides else ""
        )
        path_text = f"path {path_only}" + (f" ({unjudgeable})" if unjudgeable else "")
        stages = (
            (Reason.PORT_NOT_ALLOWED, lambda r: port in r.ports, f"port {port}"),
            (Reason.SCHEME_NOT_ALLOWED, lambda r: scheme in r.schemes, f"scheme {scheme}"),
            (Reason.METHOD_NOT_ALLOWED,
             lambda r: r.methods is None or all(m in r.methods for m in methods), method_text),
            (Reason.PATH_NOT_ALLOWED,
             lambda r: path_allowed(r, readings, unjudgeable), path_text),
            (Reason.WEBSOCKET_NOT_ALLOWED, lambda r: r.websocket or not websocket, "a WebSocket upgrade"),
        )  # fmt: skip
        for reason, test, what in stages:
            passing = [r for r in rules if test(r)]
            if not passing:
                return Decision(False, reason, rules[0], f"{what} is not allowed for host {host!r}")
            rules = passing
        return Decision(True, Reason.ALLOWED, rules[0])


HOST_ENTRIES = ["a.test", "b.a.test", "*.a.test", "*.b.a.test", "c.test", "10.0.0.0/8",
                "10.1.2.3", "::1", "2001:db8::/32", "127.0.0.1"]  # fmt: skip
HOSTS = ["a.test", "b.a.test", "x.b.a.test", "c.test", "d.test", "10.1.2.3", "10.9.9.9", "::1",
         "2001:db8::5", "127.0.0.1", "8.8.8.8", "xa.test"]  # fmt: skip
PATHS = ["/", "/repos", "/repos/x", "/reposx", "/repos/../admin", "/a%2fb", "/%2e%2e/x",
         "/v1/items?page=3", "/admin;x=1", "/x//y", "/%ff", "/r%65pos/x", "?q", "",
         "/\uff0e\uff0e/x", "/a\\b", "/%00", "/\udc80", "/repos/\udcff?x"]  # fmt: skip
METHODS = ["GET", "POST", "get", "PATCH", "DELETE"]

rule_st = st.builds(
    lambda i, host, ports, schemes, methods, paths, ws: Rule(
        i, parse_host_pattern(host), tuple(ports), tuple(schemes), methods, paths, ws
    ),
    st.integers(0, 60),
    st.sampled_from(HOST_ENTRIES),
    st.lists(st.sampled_from([80, 443, 8443, 1]), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from(["https", "http"]), min_size=1, max_size=2, unique=True),
    st.none() | st.lists(st.sampled_from(["GET", "POST", "PATCH"]), min_size=1, unique=True).map(tuple),
    st.none() | st.lists(st.sampled_from(["/", "/repos", "/repos/", "/v1", "/admin"]), min_size=1, unique=True).map(tuple),
    st.booleans(),
)  # fmt: skip
request_st = st.tuples(
    st.sampled_from(["https", "http"]), st.sampled_from(HOSTS), st.sampled_from([80, 443, 8443, 1, 9]),
    st.sampled_from(METHODS), st.sampled_from(PATHS) | st.text(max_size=12).map(lambda t: "/" + t),
    st.booleans(), st.lists(st.sampled_from(["PUT", "GET", "DELETE"]), max_size=2),
)  # fmt: skip


def outcome(fn, *args):  # type: ignore[no-untyped-def]
    """What a call gives: its answer, or the type and text of what it raised."""
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 (compared, not handled)
        return "raised", type(e), str(e)


def same(allow: Allowlist, ref: Reference, req: tuple) -> None:  # type: ignore[type-arg]
    scheme, host, port, method, path, ws, overrides = req
    for _ in range(2):  # the first call fills the caches, the second answers from them
        args = (scheme, host, port, method, path, ws, overrides)
        assert outcome(allow.decide, *args) == outcome(ref.decide, *args)
        assert allow.decide_connect(host, port) == ref.decide_connect(host, port)
        assert allow.restricts_methods(host) == ref.restricts_methods(host)


@settings(max_examples=200, deadline=None)
@given(rules=st.lists(rule_st, max_size=8), requests=st.lists(request_st, min_size=1, max_size=15))
def test_generated_rules_and_requests_get_the_uncached_decision(
    rules: list[Rule],
    requests: list[tuple],  # type: ignore[type-arg]
) -> None:
    allow, ref = Allowlist(rules), Reference(rules)
    for req in requests:
        same(allow, ref, req)


def fifty_rules() -> list[Rule]:
    rules = [Rule(i, parse_host_pattern(f"svc{i}.example.com"), (443,), ("https",), None, None)
             for i in range(45)]  # fmt: skip
    rules += [
        Rule(45, parse_host_pattern("api.github.com"), (443,), ("https",), ("GET", "POST"), ("/repos/", "/user")),
        Rule(46, parse_host_pattern("api.github.com"), (443,), ("https",), ("PATCH",), ("/repos/",), True),
        Rule(47, parse_host_pattern("*.githubassets.com"), (443,), ("https",), None, None),
        Rule(48, parse_host_pattern("10.0.0.0/8"), (80, 443), ("https", "http"), None, None),
        Rule(49, parse_host_pattern("pypi.org"), (443, 80), ("https",), ("GET",), None),
    ]  # fmt: skip
    return rules


TABLE = [
    ("https", "api.github.com", 443, "GET", "/repos/o/r", False, []),
    ("https", "api.github.com", 443, "PATCH", "/repos/o/r", True, []),
    ("https", "api.github.com", 443, "DELETE", "/repos/o/r", False, []),
    ("https", "api.github.com", 443, "POST", "/user", False, ["PATCH"]),
    ("https", "api.github.com", 443, "GET", "/admin", False, []),
    ("https", "api.github.com", 443, "GET", "/repos/%2e%2e/admin", False, []),
    ("https", "api.github.com", 80, "GET", "/repos/o", False, []),
    ("http", "api.github.com", 443, "GET", "/repos/o", False, []),
    ("https", "api.github.com", 443, "GET", "/user", True, []),
    ("https", "x.githubassets.com", 443, "GET", "/a", False, []),
    ("https", "githubassets.com", 443, "GET", "/a", False, []),
    ("http", "10.2.3.4", 80, "GET", "/", False, []),
    ("http", "11.2.3.4", 80, "GET", "/", False, []),
    ("https", "pypi.org", 80, "GET", "/simple", False, []),
    ("https", "svc44.example.com", 443, "GET", "/", False, []),
    ("https", "svc45.example.com", 443, "GET", "/", False, []),
]  # fmt: skip


@pytest.mark.parametrize("req", TABLE)
def test_a_realistic_allowlist_gets_the_uncached_decision(req: tuple) -> None:  # type: ignore[type-arg]
    rules = fifty_rules()
    same(Allowlist(rules), Reference(rules), req)


def test_the_caches_stay_bounded_under_many_distinct_hosts() -> None:
    rules = fifty_rules()
    allow, ref = Allowlist(rules), Reference(rules)
    for i in range(3 * CACHE_ENTRIES):
        host = f"h{i}.githubassets.com" if i % 2 else f"h{i}.example.com"
        assert allow.decide("https", host, 443 + i % 3, "GET", "/") == ref.decide(
            "https", host, 443 + i % 3, "GET", "/"
        )
    assert allow._host_rules_cached.cache_info().currsize <= CACHE_ENTRIES
    assert allow._port_scheme_cached.cache_info().currsize <= CACHE_ENTRIES
    assert allow.decide("https", "h1.githubassets.com", 444, "GET", "/") == ref.decide(
        "https", "h1.githubassets.com", 444, "GET", "/"
    )


def test_long_hosts_are_decided_but_never_kept() -> None:
    rules = fifty_rules()
    allow, ref = Allowlist(rules), Reference(rules)
    host = "a" * 5000 + ".githubassets.com"
    assert allow.decide("https", host, 443, "GET", "/") == ref.decide(
        "https", host, 443, "GET", "/"
    )
    assert allow.decide_connect(host, 443) == ref.decide_connect(host, 443)
    assert allow._host_rules_cached.cache_info().currsize == 0
    assert allow._port_scheme_cached.cache_info().currsize == 0


def test_the_rules_cannot_be_swapped_under_the_caches() -> None:
    allow = Allowlist(fifty_rules())
    with pytest.raises(AttributeError):
        allow.rules = ()  # type: ignore[misc]
