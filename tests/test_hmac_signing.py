"""HMAC request signing (``scheme: hmac``): the agent sends the placeholder as the signature
header's value; egress writes the signature computed with the real key.

Each style is checked by a verifier written here from the provider's documentation with
stdlib ``hmac.compare_digest`` (GitHub ``X-Hub-Signature-256``, Slack ``v0``, Stripe-style
``t=,v1=``, a request-line style with a header and the body hash), in the pure function and
end to end: a real ``egress run``, httpx as the agent, and the suite's recording upstream
as the receiver whose recorded request the verifier checks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from egress.config import parse
from egress.config.model import HmacSpec
from egress.errors import ConfigError
from egress.hmacsign import sign
from egress.injection import Denial, Injection, RequestParts, plan
from egress.reasons import Reason
from egress.secrets import SecretValue
from tests.canary import CANARIES
from tests.conftest import API, base_config, proxy_env, start_proxy, write_config
from tests.upstream import Upstream

KEY = "whsec-real-signing-key-0123456789"
PH = "egress-hmac-placeholder-0001"
CANARIES.add(KEY)


def mac(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, algorithm).digest()


def github(h: dict[str, str], body: bytes, path: str, key: bytes) -> bool:
    expected = "sha256=" + mac(key, body).hex()
    return hmac.compare_digest(h["x-hub-signature-256"], expected)


def slack(h: dict[str, str], body: bytes, path: str, key: bytes) -> bool:
    ts = h["x-slack-request-timestamp"]
    expected = "v0=" + mac(key, b"v0:" + ts.encode() + b":" + body).hex()
    return hmac.compare_digest(h["x-slack-signature"], expected)


def stripe(h: dict[str, str], body: bytes, path: str, key: bytes) -> bool:
    fields = dict(p.split("=", 1) for p in h["x-signature"].split(","))
    expected = mac(key, fields["t"].encode() + b"." + body).hex()
    return fields["t"] == h["x-timestamp"] and hmac.compare_digest(fields["v1"], expected)


def request_line(h: dict[str, str], body: bytes, path: str, key: bytes) -> bool:
    message = f"POST\n{path}\n{h['x-tenant']}\n{hashlib.sha256(body).hexdigest()}".encode()
    expected = base64.b64encode(mac(key, message, "sha512")).decode()
    return hmac.compare_digest(h["x-auth-sig"], expected)


STYLES: list[tuple[str, dict[str, Any], str, Callable[..., bool]]] = [
    ("github", {"header": "X-Hub-Signature-256", "value": "sha256={hex}"}, "raw", github),
    ("slack", {"header": "X-Slack-Signature", "message": "v0:{timestamp}:{body}", "value": "v0={hex}",
               "timestamp_header": "X-Slack-Request-Timestamp"}, "raw", slack),
    ("stripe", {"header": "X-Signature", "message": "{timestamp}.{body}", "value": "t={timestamp},v1={hex}",
                "timestamp_header": "X-Timestamp"}, "raw", stripe),
    ("request line, hex key, sha512, base64", {"header": "X-Auth-Sig", "algorithm": "sha512",
     "key_encoding": "hex", "message": "{method}\n{path}\n{header:X-Tenant}\n{body_sha256}",
     "value": "{base64}"}, "hex", request_line),
]  # fmt: skip


def key_text(encoding: str) -> str:
    return KEY.encode().hex() if encoding == "hex" else KEY


@pytest.mark.parametrize(
    "hmac_cfg,encoding,verify", [s[1:] for s in STYLES], ids=[s[0] for s in STYLES]
)
def test_sign_matches_the_documented_verifier(hmac_cfg: dict[str, Any], encoding: str,
                                             verify: Callable[..., bool]) -> None:  # fmt: skip
    spec = HmacSpec(**hmac_cfg)
    body = b'{"event": "push", "n": 1}'
    headers = [("Content-Type", "application/json"), ("X-Tenant", "acme"), (spec.header, PH)]
    signed = sign(
        spec, SecretValue(key_text(encoding)), "POST", "/hook?x=1", headers, body, 1_800_000_000
    )
    got = {k.lower(): v for k, v in signed.headers}
    assert verify(got, body, "/hook?x=1", KEY.encode())
    assert not verify(got, body + b" ", "/hook?x=1", KEY.encode())  # the body is covered
    assert not verify(got, body, "/hook?x=1", b"the-placeholder-key")  # and the real key used
    assert PH not in str(signed.headers) and KEY not in str(signed.headers)


CFG = parse({
    "allow": ["hooks.test", "other.test"],
    "secrets": [{"name": "hook", "scheme": "hmac", "hosts": ["hooks.test"], "placeholder": PH,
                 "source": {"env": "K"}, "hmac": {"header": "X-Hub-Signature-256", "value": "sha256={hex}"}}],
}, "t.yaml", Path("/"))  # fmt: skip


def run(headers: tuple[tuple[str, str], ...], host: str = "hooks.test", body: bytes | None = None,
        scheme: str = "https", value: str = KEY) -> Denial | Injection:  # fmt: skip
    return plan(RequestParts(scheme, host, "POST", "/hook", headers, body),
                [(CFG.secrets[0], SecretValue(value))])  # fmt: skip


PLAN = [
    ("the header holds the placeholder", (("X-Hub-Signature-256", PH),), {}, "sign"),
    ("header names fold", (("x-hub-signature-256", PH),), {}, "sign"),
    ("unbound host", (("X-Hub-Signature-256", PH),), {"host": "other.test"}, Reason.PLACEHOLDER_TO_UNBOUND_HOST),
    ("placeholder inside a longer value", (("X-Hub-Signature-256", f"sha256={PH}"),), {}, Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED),
    ("placeholder in another header too", (("X-Hub-Signature-256", PH), ("X-Other", PH)), {}, Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED),
    ("placeholder in the body", (), {"body": PH.encode()}, Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED),
    ("signature header twice", (("X-Hub-Signature-256", PH), ("X-Hub-Signature-256", PH)), {}, Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED),
    ("the agent's own signature", (("X-Hub-Signature-256", "sha256=" + "0" * 64),), {}, Reason.FOREIGN_CREDENTIAL),
    ("plain http", (("X-Hub-Signature-256", PH),), {"scheme": "http"}, Reason.PLAINTEXT_INJECTION),
]  # fmt: skip


@pytest.mark.parametrize("headers,kw,expected", [c[1:] for c in PLAN], ids=[c[0] for c in PLAN])
def test_plan(headers: tuple[tuple[str, str], ...], kw: dict[str, Any], expected: object) -> None:
    got = run(headers, **kw)
    if expected == "sign":
        assert isinstance(got, Injection) and got.sign_hmac is not None and not got.injected
    else:
        assert isinstance(got, Denial) and got.reason == expected, got


CONFIG_ERRORS = [
    ("no hmac block", {}, "secrets[0].hmac", "is required with scheme hmac"),
    ("no header", {"hmac": {"value": "{hex}"}}, "secrets[0].hmac.header", "is required"),
    ("unknown field", {"hmac": {"header": "X-S", "message": "{bodyy}"}}, "secrets[0].hmac.message", "unknown field {bodyy}"),
    ("value without the MAC", {"hmac": {"header": "X-S", "value": "v1"}}, "secrets[0].hmac.value", "must hold {hex} or {base64}"),
    ("timestamp without its header", {"hmac": {"header": "X-S", "message": "{timestamp}.{body}"}}, "secrets[0].hmac.timestamp_header", "is required when"),
    ("bad algorithm", {"hmac": {"header": "X-S", "algorithm": "md5"}}, "secrets[0].hmac.algorithm", "is not one of"),
    ("inject", {"hmac": {"header": "X-S"}, "inject": ["body"]}, "secrets[0].inject", "does not go with scheme hmac"),
    ("hmac on static", {"scheme": "static", "hmac": {"header": "X-S"}}, "secrets[0].hmac", "goes with 'scheme: hmac' only"),
]  # fmt: skip


@pytest.mark.parametrize(
    "changes,key,message", [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS]
)
def test_config_errors(changes: dict[str, Any], key: str, message: str) -> None:
    secret = {
        "name": "h",
        "scheme": "hmac",
        "hosts": ["hooks.test"],
        "source": {"env": "K"},
        **changes,
    }
    with pytest.raises(ConfigError) as e:
        parse({"allow": ["hooks.test"], "secrets": [secret]}, "t.yaml", Path("/"))
    assert f"{key}:" in str(e.value) and message in str(e.value), str(e.value)


def test_end_to_end(tmp_path: Path, upstream: Upstream, test_ca_file: Path) -> None:
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    for i, (_name, hmac_cfg, _encoding, _) in enumerate(STYLES):
        cfg["secrets"].append({"name": f"hook{i}", "scheme": "hmac", "hosts": [API],
                               "placeholder": f"{PH}-{i}", "source": {"env": f"HOOK_KEY_{i}"},
                               "hmac": hmac_cfg})  # fmt: skip
    env = {f"HOOK_KEY_{i}": key_text(s[2]) for i, s in enumerate(STYLES)}
    p = start_proxy(write_config(tmp_path, cfg), tmp_path, env=proxy_env(**env))
    try:
        ctx = ssl.create_default_context(cafile=str(p.ca))
        with httpx.Client(proxy=p.url, verify=ctx) as c:
            for i, (name, hmac_cfg, _, verify) in enumerate(STYLES):
                body = f'{{"hook": "{name}", "payload": "{"x" * 2000}"}}'.encode()
                r = c.post(f"https://{API}:{upstream.port}/hook?x=1", content=body,
                           headers={hmac_cfg["header"]: f"{PH}-{i}", "X-Tenant": "acme",
                                    "Content-Type": "application/json"})  # fmt: skip
                assert r.status_code == 200, r.text
                got = upstream.requests[-1]
                assert verify(got.headers, got.body, got.path, KEY.encode()), name
                # The upstream echoes the headers: the signature it received is masked for
                # the agent (a signature is a credential for its request).
                echoed = r.json()["headers"][hmac_cfg["header"].lower()]
                assert echoed != got.headers[hmac_cfg["header"].lower()], name
            # The agent's own signature in the header is refused.
            r = c.post(f"https://{API}:{upstream.port}/hook", content=b"{}",
                       headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})  # fmt: skip
            assert r.status_code == 403 and r.headers["x-egress-reason"] == "foreign_credential"
    finally:
        assert p.stop() == 0
    assert KEY not in p.outputs() and KEY.encode().hex() not in p.outputs()
    assert [r["secrets"] for r in p.audit() if r.get("secrets")][:4] == [
        [f"hook{i}"] for i in range(4)
    ]


FORMS = ["raw", "base64", "hex", "gzip", "big", "reason"]


def test_an_echoed_signature_is_masked_in_every_form(tmp_path: Path, upstream: Upstream,
                                                     test_ca_file: Path) -> None:  # fmt: skip
    """An upstream that echoes the request would hand the agent a signature it could replay
    without egress (with {body} alone, forever): masked in headers, the reason phrase,
    buffered and streamed bodies, in the encodings the scrubber knows, whole or in part."""
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["secrets"].append({"name": "gh_hook", "scheme": "hmac", "hosts": [API], "placeholder": PH,
                           "source": {"env": "HOOK_KEY"},
                           "hmac": {"header": "Authorization", "value": "sha256={hex}"}})  # fmt: skip
    p = start_proxy(write_config(tmp_path, cfg), tmp_path, env=proxy_env(HOOK_KEY=KEY))
    try:
        ctx = ssl.create_default_context(cafile=str(p.ca))
        with httpx.Client(proxy=p.url, verify=ctx) as c:
            for form in FORMS:
                r = c.post(f"https://{API}:{upstream.port}/reflect?as={form}",
                           content=f'{{"form": "{form}"}}'.encode(), headers={"Authorization": PH})  # fmt: skip
                sent = upstream.requests[-1].headers["Authorization"]
                mac_hex = sent.removeprefix("sha256=")
                assert len(mac_hex) == 64  # the upstream did receive egress's signature
                seen = (
                    r.reason_phrase + "\n" + "\n".join(v for _, v in r.headers.multi_items()) + "\n"
                )
                decode = {"base64": lambda b: base64.b64decode(b).decode("utf-8", "replace"),
                          "hex": lambda b: bytes.fromhex(b.decode()).decode("utf-8", "replace")}  # fmt: skip
                seen += decode.get(form, lambda b: b.decode("utf-8", "replace"))(r.content)
                for spelling in (
                    mac_hex,
                    mac_hex.upper(),
                    base64.b64encode(bytes.fromhex(mac_hex)).decode(),
                ):
                    assert spelling not in seen, f"{form}: the signature reached the agent"
    finally:
        assert p.stop() == 0
