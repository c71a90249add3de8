"""The pure placeholder/secret logic, as a table of requests and outcomes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.config import parse
from egress.injection import Denial, Injection, RequestParts, plan
from egress.reasons import Reason
from egress.secrets import SecretValue

CFG = parse(
    {
        "allow": ["api.test", "other.test", "*.multi.test"],
        "secrets": [
            {"name": "tok", "source": {"env": "X"}, "hosts": ["api.test", "*.multi.test"],
             "inject": ["headers", "query", "body"], "body_max_bytes": 64},
            {"name": "hdr", "source": {"env": "Y"}, "hosts": ["api.test"], "placeholder": "ghp_PLACEHOLDER0000"},
            {"name": "web", "source": {"env": "Z"}, "hosts": ["other.test"], "allow_http": True},
        ],
    },
    "t.yaml", Path("/"),
)  # fmt: skip
VALUES = {"tok": "real-tok-value-1234", "hdr": "ghp_realrealrealreal", "web": "web-secret-99999"}
TOK, HDR, WEB = "egress-tok-placeholder", "ghp_PLACEHOLDER0000", "egress-web-placeholder"


def req(host: str = "api.test", *, scheme: str = "https", path: str = "/", headers: tuple = (),
        body: bytes | None = b"", content_type: str = "") -> RequestParts:  # fmt: skip
    return RequestParts(scheme, host, "POST", path, tuple(headers), body, content_type)


def run(r: RequestParts, missing: tuple[str, ...] = ()) -> Denial | Injection:
    secrets = [(s, None if s.name in missing else SecretValue(VALUES[s.name])) for s in CFG.secrets]
    return plan(r, secrets)


def basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


ALLOWED = [
    ("bearer", req(headers=(("authorization", f"Bearer {TOK}"),)),
     lambda i: i.headers == [("authorization", f"Bearer {VALUES['tok']}")], ["tok"]),
    ("two secrets", req(headers=(("a", TOK), ("b", HDR))),
     lambda i: i.headers == [("a", VALUES["tok"]), ("b", VALUES["hdr"])], ["tok", "hdr"]),
    ("basic password", req(headers=(("Authorization", basic("git", TOK)),)),
     lambda i: i.headers == [("Authorization", basic("git", VALUES["tok"]))], ["tok"]),
    ("query", req(path=f"/x?k={TOK}&a=1"), lambda i: i.path == f"/x?k={VALUES['tok']}&a=1", ["tok"]),
    ("json body", req(body=json.dumps({"t": TOK}).encode(), content_type="application/json"),
     lambda i: json.loads(i.body) == {"t": VALUES["tok"]} and i.body_changed, ["tok"]),
    ("form body", req(body=f"t={TOK}".encode(), content_type="application/x-www-form-urlencoded"),
     lambda i: i.body == f"t={VALUES['tok']}".encode(), ["tok"]),
    ("wildcard binding", req("a.b.multi.test", headers=(("x", TOK),)), lambda i: i.headers == [("x", VALUES["tok"])], ["tok"]),
    ("no placeholder", req(headers=(("x", "y"),)), lambda i: i.headers == [("x", "y")], []),
    ("http allowed secret", req("other.test", scheme="http", headers=(("x", WEB),)),
     lambda i: i.headers == [("x", VALUES["web"])], ["web"]),
    ("bound secret's own value", req(headers=(("x", VALUES["tok"]),)), lambda i: i.injected == [], []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("r", "check", "injected"), [c[1:] for c in ALLOWED], ids=[c[0] for c in ALLOWED]
)
def test_injects(r: RequestParts, check, injected: list[str]) -> None:
    out = run(r)
    assert isinstance(out, Injection), out
    assert check(out)
    assert out.injected == injected


DENIED = [
    ("placeholder header to unbound host", req("other.test", headers=(("x", TOK),)), Reason.PLACEHOLDER_TO_UNBOUND_HOST, "tok"),
    ("placeholder in basic to unbound host", req("other.test", headers=(("Authorization", basic("u", HDR)),)),
     Reason.PLACEHOLDER_TO_UNBOUND_HOST, "hdr"),
    ("placeholder in query to unbound host", req("other.test", path=f"/?q={TOK}"), Reason.PLACEHOLDER_TO_UNBOUND_HOST, "tok"),
    ("placeholder in body to unbound host", req("other.test", body=TOK.encode()), Reason.PLACEHOLDER_TO_UNBOUND_HOST, "tok"),
    ("placeholder in path to unbound host", req("other.test", path=f"/{TOK}"), Reason.PLACEHOLDER_TO_UNBOUND_HOST, "tok"),
    ("real value to unbound host", req("other.test", headers=(("x", VALUES["tok"]),)), Reason.SECRET_TO_UNBOUND_HOST, "tok"),
    ("real value in basic to unbound host", req("other.test", headers=(("authorization", basic("u", VALUES["hdr"])),)),
     Reason.SECRET_TO_UNBOUND_HOST, "hdr"),
    ("real value in body to unbound host", req("other.test", body=VALUES["tok"].encode()), Reason.SECRET_TO_UNBOUND_HOST, "tok"),
    ("placeholder in path to bound host", req(path=f"/{TOK}/x"), Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED, "tok"),
    ("header-only secret in query", req(path=f"/?k={HDR}"), Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED, "hdr"),
    ("header-only secret in body", req(body=HDR.encode()), Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED, "hdr"),
    ("plain http", req(scheme="http", headers=(("x", TOK),)), Reason.PLAINTEXT_INJECTION, "tok"),
    ("body over limit", req(body=TOK.encode() + b" " * 100), Reason.BODY_TOO_LARGE, "tok"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("r", "reason", "secret"), [c[1:] for c in DENIED], ids=[c[0] for c in DENIED]
)
def test_denies(r: RequestParts, reason: Reason, secret: str) -> None:
    out = run(r)
    assert isinstance(out, Denial), out
    assert (out.reason, out.secret) == (reason, secret)
    for value in VALUES.values():
        assert value not in out.detail


def test_unloaded_secret_fails_closed() -> None:
    out = run(req(headers=(("x", TOK),)), missing=("tok",))
    assert isinstance(out, Denial) and out.reason is Reason.SECRET_UNAVAILABLE


def test_unloaded_secret_does_not_block_requests_without_its_placeholder() -> None:
    out = run(req(headers=(("x", HDR),)), missing=("tok",))
    assert isinstance(out, Injection) and out.injected == ["hdr"]


ENCODED_LEAKS = [
    ("base64 header", lambda v: (("x", base64.b64encode(v.encode()).decode()),), None, b""),
    ("hex query", lambda v: (), lambda v: f"/?q={v.encode().hex()}", b""),
    ("percent path", lambda v: (), lambda v: "/p/" + "".join(f"%{b:02X}" for b in v.encode()), b""),
    ("embedded base64 body", lambda v: (), None, lambda v: json.dumps({"d": base64.b64encode(b"u:" + v.encode() + b"!").decode()}).encode()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "path", "body"), [c[1:] for c in ENCODED_LEAKS], ids=[c[0] for c in ENCODED_LEAKS]
)
def test_real_value_in_any_encoding_to_unbound_host_is_blocked(headers, path, body) -> None:  # noqa: ANN001
    v = VALUES["tok"]
    r = req(
        "other.test",
        headers=headers(v),
        path=path(v) if path else "/",
        body=body(v) if callable(body) else body,
    )
    out = run(r)
    assert isinstance(out, Denial) and out.reason is Reason.SECRET_TO_UNBOUND_HOST
    assert v not in out.detail


def spellings(name: str) -> st.SearchStrategy[str]:
    """Every spelling of a header name that CGI/WSGI servers fold into one variable: any
    case for each letter, '-' or '_' for each separator."""
    per_char = [st.sampled_from("-_") if c == "-" else st.sampled_from([c.lower(), c.upper()])
                for c in name]  # fmt: skip
    return st.tuples(*per_char).map("".join)


@settings(max_examples=300, deadline=None)
@given(name=spellings("x-api-key") | spellings("authorization"))
def test_foreign_credential_in_every_spelling_of_the_header_name(name: str) -> None:
    out = run(req(headers=((name, "agents-own-key"),)))
    assert isinstance(out, Denial) and out.reason is Reason.FOREIGN_CREDENTIAL, name


# --- the leak guard decodes as deep as an agent may encode ---------------------------

REAL = VALUES["hdr"]  # bound to api.test only; the requests below go to other.test


def _pct_all(x: str) -> str:
    return "".join(f"%{b:02x}" for b in x.encode())


ENCODERS = {
    "percent twice": lambda x: quote(quote(x, safe=""), safe=""),
    "percent three times": lambda x: quote(quote(_pct_all(x), safe=""), safe=""),
    "every byte percent-encoded": _pct_all,
    "hex with colons": lambda x: ":".join(f"{b:02x}" for b in x.encode()),
    "hex with spaces, upper": lambda x: " ".join(f"{b:02X}" for b in x.encode()),
    "C hex escapes": lambda x: "".join(f"\\x{b:02x}" for b in x.encode()),
    "0x list": lambda x: ", ".join(f"0x{b:02x}" for b in x.encode()),
    "JSON split across values": lambda x: json.dumps({"a": x[:5], "b": x[5:11], "c": x[11:]}),
    "JSON unicode escapes": lambda x: '{"v": "' + "".join(f"\\u{ord(c):04x}" for c in x) + '"}',
    "base64 wrapped at 4": lambda x: "\n".join(
        base64.b64encode(("zz" + x).encode()).decode()[i : i + 4] for i in range(0, 60, 4)
    ),
    "spread with spaces": lambda x: " ".join(x),
}


@pytest.mark.parametrize("surface", ["header", "query", "body"])
@pytest.mark.parametrize("encode", list(ENCODERS.values()), ids=list(ENCODERS))
def test_a_real_value_to_an_unbound_host_is_found_however_encoded(encode, surface: str) -> None:  # noqa: ANN001
    text = encode(REAL)
    if surface == "header":
        r = req("other.test", headers=(("x-data", text.replace("\n", " ")),))
    elif surface == "query":
        r = req("other.test", path="/x?d=" + quote(text, safe="%"))
    else:
        r = req("other.test", body=text.encode())
    out = run(r)
    assert isinstance(out, Denial) and out.reason is Reason.SECRET_TO_UNBOUND_HOST, (surface, text)
    assert REAL not in out.detail


one_layer = st.one_of(
    st.integers(1, 3).map(lambda n: ("percent", n)),
    st.sampled_from([":", " ", "-", ",", "", "\\x", "0x"]).map(lambda d: ("hex", d)),
    st.tuples(st.integers(0, 2), st.sampled_from([0, 4, 60, 76]), st.booleans()).map(
        lambda t: ("base64", t)
    ),
    st.lists(st.integers(1, 8), min_size=1, max_size=4).map(lambda cuts: ("json", cuts)),
)


def _encode(layer: tuple, x: str) -> str:  # noqa: PLR0911
    kind, arg = layer
    if kind == "percent":
        for _ in range(arg):
            x = quote(x, safe="")
        return x
    if kind == "hex":
        return arg.join(f"{b:02x}" for b in x.encode())
    if kind == "base64":
        pad, width, url = arg
        blob = (base64.urlsafe_b64encode if url else base64.b64encode)(("z" * pad + x).encode())
        text = blob.decode()
        return "\n".join(text[i : i + width] for i in range(0, len(text), width)) if width else text
    parts, rest = [], x
    for cut in arg:
        parts.append(rest[:cut])
        rest = rest[cut:]
    return json.dumps({f"k{i}": p for i, p in enumerate([*parts, rest])})


@settings(max_examples=400, deadline=None)
@given(layer=one_layer, before=st.text("abc =&{}\":,", max_size=10),
       after=st.text("xyz =&{}\":,", max_size=10), surface=st.sampled_from(["query", "body"]))  # fmt: skip
def test_generated_encodings_of_a_real_value_are_refused(
    layer: tuple, before: str, after: str, surface: str
) -> None:
    """Every encoding the scrubbing side reads (and the named ones from the review: percent
    up to three times, hex with any delimiter, base64 at any alignment and wrap, values split
    across JSON fields), with any parameters, in any surroundings."""
    text = before + _encode(layer, REAL) + after
    r = (req("other.test", path="/x?d=" + quote(text, safe="")) if surface == "query"
         else req("other.test", body=text.encode()))  # fmt: skip
    out = run(r)
    assert isinstance(out, Denial) and out.reason is Reason.SECRET_TO_UNBOUND_HOST, (layer, text)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (REAL.encode().hex() + ".other.test", Reason.SECRET_TO_UNBOUND_HOST),
        (REAL.encode().hex().upper() + ".other.test", Reason.SECRET_TO_UNBOUND_HOST),
        ("-".join(f"{b:02x}" for b in REAL.encode()) + ".other.test", Reason.SECRET_TO_UNBOUND_HOST),
        (HDR.lower() + ".other.test", Reason.PLACEHOLDER_TO_UNBOUND_HOST),
        ("api.other.test", None),
    ],
)  # fmt: skip
def test_a_secret_in_a_host_name_is_found_before_any_lookup(
    name: str, reason: Reason | None
) -> None:
    from egress.encodings import make_forms
    from egress.injection import host_leak

    forms = {
        s.name: [make_forms(s.name, SecretValue(VALUES[s.name]), s.placeholder)]
        for s in CFG.secrets
    }
    found = host_leak([name, name.lower()], "other.test", list(CFG.secrets), forms)
    assert (found.reason if found else None) is reason


@pytest.mark.parametrize("token", ["ü", "Zm9v€", "\u2028abc"])
def test_a_basic_token_outside_ascii_is_refused_not_a_crash(token: str) -> None:
    """base64 decoding raises ValueError (not binascii.Error) for such a token: the request
    failed with an internal error instead of its reason."""
    out = run(req(headers=(("authorization", f"Basic {token}"),)))
    assert isinstance(out, Denial) and out.reason is Reason.FOREIGN_CREDENTIAL
