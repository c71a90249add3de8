"""Path and method rules hold for what upstream stacks route, not only for the raw bytes.

- pure: a table of the spellings from the review and a property over generated paths:
  whenever egress lets a path through a ``/v1/`` rule, every model of an upstream stack
  (servlet containers, nginx, Go, double decoding, Unicode folding), written here
  independently of egress, routes it under ``/v1/``;
- end to end: the same against a real nginx, whose ``$uri`` is the path it routed on;
- method overrides in headers (every spelling CGI servers fold together), query and form
  bodies, pure and through the real proxy.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.config import parse
from egress.policy import Allowlist
from egress.routing import override_methods
from tests.conftest import OTHER, RunningProxy, start_proxy, write_config
from tests.nginx_upstream import NginxUpstream
from tests.rawclient import connect_tunnel, exchange, status_of

RULES = Allowlist(
    parse(
        {"allow": [{"host": "api.test", "methods": ["GET", "POST"], "paths": ["/v1/"]}]},
        "t.yaml",
        Path("/"),
    ).rules  # fmt: skip
)


def decide(path: str, method: str = "GET", overrides: tuple[str, ...] = ()) -> str:
    return RULES.decide("https", "api.test", 443, method, path, False, overrides).reason.value


ESCAPES = [
    "/v1/..;/admin",
    "/v1/%2e%2e;/admin",
    "/v1/..;jsessionid=x/admin",
    "/v1/.;/admin/../../admin",
    "/v1/%2e%2e%3b/admin",
    "/v1/%252e%252e/admin",  # decoded twice
    "/v1/%25252e%25252e/admin",  # three times
    "/v1/%ef%bc%8e%ef%bc%8e/admin",  # fullwidth full stops (NFKC)
    "/v1/%c0%ae%c0%ae/admin",  # overlong UTF-8 dots
    "/v1/%00/../admin",
    "/v1/%2e./admin",
    "/v1%2f..%2fadmin",
    "/v1/..%2fadmin",
    "/v1/..%5cadmin",
    "/v1/%5c..%5cadmin",
    "/v1/%ef%bc%8f..%ef%bc%8fadmin",  # fullwidth solidus
    "/v1;x/admin",
    "/admin;/v1/",
    "/V1/admin",
    "/v1",
    "/v2/x",
]
INSIDE = ["/v1/", "/v1/x", "/v1/x;v=1", "/v1/a%20b", "/v1/100%25", "/v1/x?a=../b", "/v1/x//y",
          "/v1/caf%C3%A9"]  # fmt: skip


@pytest.mark.parametrize("path", ESCAPES)
def test_paths_that_route_elsewhere_are_refused(path: str) -> None:
    assert decide(path) == "path_not_allowed"


@pytest.mark.parametrize("path", INSIDE)
def test_paths_inside_the_rule_pass(path: str) -> None:
    assert decide(path) == "allowed"


# --- models of upstream stacks, independent of egress.routing ----------------------------


def _dots(path: str) -> str:
    out: list[str] = []
    for seg in path.split("/"):
        if seg == "..":
            if len(out) > 1:
                out.pop()
        elif seg != ".":
            out.append(seg)
    resolved = "/".join(out)
    return resolved if resolved.startswith("/") else "/" + resolved


def servlet(path: str) -> str:  # Tomcat: cut ;params, decode, normalise
    cut = "/".join(seg.split(";", 1)[0] for seg in path.split("/"))
    return _dots(unquote(cut, errors="replace"))


def nginx_model(path: str) -> str:
    return _dots(re.sub("/+", "/", unquote(path, errors="replace")))


def go_mux(path: str) -> str:
    return posixpath.normpath(unquote(path, errors="replace")) or "/"


def double_decode(path: str) -> str:
    return _dots(unquote(unquote(path, errors="replace"), errors="replace"))


def nfkc(path: str) -> str:
    return _dots(unicodedata.normalize("NFKC", unquote(path, errors="replace")))


def backslash(path: str) -> str:
    return _dots(unquote(path, errors="replace").replace("\\", "/"))


def overlong(path: str) -> str:  # old decoders read C0 AE as '.'
    raw = unquote_to_bytes(path).replace(b"\xc0\xae", b".").replace(b"\xc0\xaf", b"/")
    return _dots(raw.decode("utf-8", "replace"))


MODELS: list[Callable[[str], str]] = [servlet, nginx_model, go_mux, double_decode, nfkc, backslash,
                                      overlong]  # fmt: skip

pieces = st.sampled_from(["v1", "admin", "..", ".", "%2e", "%2E", "%252e", ";", ";x=1", "%3b", "/",
                          "//", "%2f", "%5c", "%00", "%ef%bc%8e", "%c0%ae", "%c0%af", "a", "%25",
                          "%ef%bc%8f"])  # fmt: skip
paths = st.lists(pieces, max_size=8).map(lambda xs: "/v1/" + "".join(xs))


def _inside(routed: str) -> bool:
    return routed == "/v1" or routed.startswith("/v1/")


@settings(max_examples=2000, deadline=None)
@given(path=paths)
def test_what_passes_a_path_rule_routes_inside_it_on_every_stack(path: str) -> None:
    if decide(path) != "allowed":
        return
    for model in MODELS:
        assert _inside(model(path)), f"{model.__name__} routes {path!r} to {model(path)!r}"


# --- method overrides ------------------------------------------------------------------

OVERRIDES = [
    ("X-HTTP-Method-Override", [("X-HTTP-Method-Override", "DELETE")], "/v1/x", None, ""),
    ("X-HTTP-Method", [("X-HTTP-Method", "DELETE")], "/v1/x", None, ""),
    ("X-Method-Override", [("X-Method-Override", "PUT")], "/v1/x", None, ""),
    ("underscore spelling", [("X_HTTP_Method_Override", "DELETE")], "/v1/x", None, ""),
    ("lower case", [("x-http-method-override", "delete")], "/v1/x", None, ""),
    ("two values", [("X-HTTP-Method-Override", "GET, DELETE")], "/v1/x", None, ""),
    ("_method in the query", [], "/v1/x?_method=DELETE", None, ""),
    ("encoded _method in the query", [], "/v1/x?%5Fmethod=PATCH", None, ""),
    ("_method in a form body", [], "/v1/x", b"a=1&_method=DELETE", "application/x-www-form-urlencoded"),
    ("_method in a multipart body", [], "/v1/x",
     b'--b\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--b--\r\n',
     "multipart/form-data; boundary=b"),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "path", "body", "ctype"), [c[1:] for c in OVERRIDES],
                         ids=[c[0] for c in OVERRIDES])  # fmt: skip
def test_method_overrides_are_decided_as_methods(
    headers: list[tuple[str, str]], path: str, body: bytes | None, ctype: str
) -> None:
    found = tuple(override_methods(headers, path, body, ctype))
    assert found and decide(path, "POST", found) == "method_not_allowed"


def test_an_override_to_an_allowed_method_passes() -> None:
    found = tuple(override_methods([("X-HTTP-Method-Override", "GET")], "/v1/x"))
    assert decide("/v1/x", "POST", found) == "allowed"


# --- end to end, real nginx --------------------------------------------------------------


@pytest.fixture(scope="module")
def rule_proxy(
    tmp_path_factory: pytest.TempPathFactory, nginx: NginxUpstream, test_ca_file: Path
) -> Iterator[RunningProxy]:
    tmp = tmp_path_factory.mktemp("routing")
    cfg = {
        "listen": {"port": 0},
        "ca": {"cert_path": str(tmp / "agent" / "egress-ca.pem")},
        "upstream": {"ca_files": [str(test_ca_file)], "resolve": {OTHER: "127.0.0.1"},
                     "allow_private": ["127.0.0.1/32"], "dns": "static"},
        "allow": [{"host": OTHER, "ports": [nginx.h1_port], "methods": ["GET", "POST"],
                   "paths": ["/v1/"]}],
        "audit": {"path": str(tmp / "audit.jsonl")},
    }  # fmt: skip
    p = start_proxy(write_config(tmp, cfg), tmp)
    try:
        yield p
    finally:
        assert p.stop() == 0


def _send(p: RunningProxy, ng: NginxUpstream, raw: bytes) -> bytes:
    with connect_tunnel(p.port, OTHER, ng.h1_port, p.ca) as s:
        return exchange(s, raw, timeout=3)


def _get(p: RunningProxy, ng: NginxUpstream, path: str) -> tuple[int, list[str]]:
    before = len(ng.records())
    raw = f"GET {path} HTTP/1.1\r\nHost: {OTHER}:{ng.h1_port}\r\nConnection: close\r\n\r\n"
    status = status_of(_send(p, ng, raw.encode()))
    return status, [r["uri"] for r in ng.records_after(before)]


@pytest.mark.parametrize("path", ESCAPES)
def test_escapes_never_reach_nginx(
    rule_proxy: RunningProxy, nginx: NginxUpstream, path: str
) -> None:
    status, routed = _get(rule_proxy, nginx, path)
    assert (status, routed) == (403, [])
    assert rule_proxy.audit()[-1]["reason"] == "path_not_allowed"


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(path=paths)
def test_nginx_routes_what_egress_allowed_inside_the_rule(
    rule_proxy: RunningProxy, nginx: NginxUpstream, path: str
) -> None:
    status, routed = _get(rule_proxy, nginx, path)
    if status == 403:
        assert routed == []
        return
    assert len(routed) == 1 and _inside(routed[0]), (path, routed)


@pytest.mark.parametrize(("headers", "path", "body", "ctype"), [c[1:] for c in OVERRIDES],
                         ids=[c[0] for c in OVERRIDES])  # fmt: skip
def test_overrides_end_to_end(
    rule_proxy: RunningProxy, nginx: NginxUpstream, headers: list[tuple[str, str]], path: str,
    body: bytes | None, ctype: str,
) -> None:  # fmt: skip
    before = len(nginx.records())
    head = f"POST {path} HTTP/1.1\r\nHost: {OTHER}:{nginx.h1_port}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    body = body or b""
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    response = _send(rule_proxy, nginx, head.encode() + body)
    assert status_of(response) == 403 and b"method_not_allowed" in response
    assert nginx.records_after(before) == []
    assert rule_proxy.audit()[-1]["reason"] == "method_not_allowed"
