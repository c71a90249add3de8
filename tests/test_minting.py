"""Minted tokens as pure logic (egress.minting), the ``mint:`` config, and the refresher's
schedule. tests/test_minted_tokens.py runs the same against real token endpoints."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from egress.config import parse
from egress.config.model import MintSpec
from egress.errors import ConfigError
from egress.minting import (
    GOOGLE_TOKEN_AUDIENCE,
    MintError,
    drop_at,
    guarded_parts,
    minted_value,
    parse_answer,
    refresh_due,
    token_request,
)
from egress.secrets import SecretValue

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption()).decode()  # fmt: skip
PUBLIC = KEY.public_key()
CC = MintSpec("oauth_client_credentials", token_url="https://auth.test/token", scopes=("a", "b"))
NOW = 1_800_000_000.0
GH_EXPIRY = 1_800_003_600.0  # 2027-01-15T09:00:00Z


def inputs(**parts: str) -> SecretValue:
    items = tuple(parts.items())
    return SecretValue(items[-1][1], items) if items else SecretValue("x")


def form(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode()))


def test_client_credentials_basic_encodes_id_and_secret_first() -> None:
    """RFC 6749 2.3.1: client id and secret are form-encoded before Basic encoding."""
    r = token_request(CC, inputs(client_id="id:1", client_secret="s e+c/r"), NOW)
    auth = dict(r.headers)["Authorization"]
    assert base64.b64decode(auth.split()[1]).decode() == "id%3A1:s+e%2Bc%2Fr"
    assert form(r.body) == {"grant_type": "client_credentials", "scope": "a b"}
    assert "s e+c/r" not in repr(r)


def test_client_credentials_post() -> None:
    spec = MintSpec("oauth_client_credentials", token_url="https://auth.test/token", client_auth="post",
                    audience="https://api.test")  # fmt: skip
    r = token_request(spec, inputs(client_id="id", client_secret="sec"), NOW)
    assert "Authorization" not in dict(r.headers)
    assert form(r.body) == {"grant_type": "client_credentials", "audience": "https://api.test",
                            "client_id": "id", "client_secret": "sec"}  # fmt: skip


def test_refresh_token_uses_the_rotated_one() -> None:
    spec = MintSpec("oauth_refresh_token", token_url="https://auth.test/token")
    value = inputs(client_id="id", refresh_token="rt-original")
    assert form(token_request(spec, value, NOW).body)["refresh_token"] == "rt-original"
    body = form(token_request(spec, value, NOW, refresh_token="rt-rotated").body)
    assert body == {"grant_type": "refresh_token", "refresh_token": "rt-rotated", "client_id": "id"}


def test_google_assertion() -> None:
    info = {"client_email": "sa@p.iam.gserviceaccount.com", "private_key": PEM, "private_key_id": "k1",
            "token_uri": "https://auth.test/google"}  # fmt: skip
    spec = MintSpec("google_service_account", scopes=("s1", "s2"))
    r = token_request(spec, SecretValue(json.dumps(info)), NOW)
    # The key file's token_uri is data: the assertion, good at Google for an hour wherever
    # it goes, is sent to Google's endpoint unless the config names another.
    assert r.url == GOOGLE_TOKEN_AUDIENCE
    explicit = MintSpec(
        "google_service_account", scopes=("s1",), token_url="https://auth.test/google"
    )
    assert (
        token_request(explicit, SecretValue(json.dumps(info)), NOW).url
        == "https://auth.test/google"
    )
    assertion = form(r.body)["assertion"]
    claims = jwt.decode(assertion, PUBLIC, algorithms=["RS256"], audience=GOOGLE_TOKEN_AUDIENCE,
                        options={"verify_exp": False, "verify_iat": False})  # fmt: skip
    assert claims == {"iss": info["client_email"], "scope": "s1 s2", "aud": GOOGLE_TOKEN_AUDIENCE,
                      "iat": int(NOW), "exp": int(NOW) + 3600}  # fmt: skip
    assert jwt.get_unverified_header(assertion)["kid"] == "k1"


def test_github_app_jwt_and_scoping() -> None:
    spec = MintSpec("github_app", app_id="123", installation_id=9, repositories=("octo/a",),
                    permissions=(("contents", "read"),), api_url="https://gh.test/api/v3/")  # fmt: skip
    r = token_request(spec, SecretValue(PEM), NOW)
    assert r.url == "https://gh.test/api/v3/app/installations/9/access_tokens"
    token = dict(r.headers)["Authorization"].split()[1]
    claims = jwt.decode(
        token, PUBLIC, algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims == {"iss": "123", "iat": int(NOW) - 60, "exp": int(NOW) + 540}
    assert json.loads(r.body) == {"repositories": ["octo/a"], "permissions": {"contents": "read"}}


def test_bad_key_is_a_clear_error() -> None:
    spec = MintSpec("github_app", app_id="1", installation_id=1)
    with pytest.raises(MintError, match="cannot sign an RS256 JWT"):
        token_request(spec, SecretValue("not a key"), NOW)


GH_SCOPED = MintSpec(
    "github_app", app_id="1", installation_id=1, permissions=(("contents", "read"),)
)
GH_REPOS = MintSpec("github_app", app_id="1", installation_id=1, repositories=("octo/hello",))
GH_OK = {"token": "ghs_x", "expires_at": "2027-01-15T09:00:00Z", "permissions": {"contents": "read"},
         "repository_selection": "selected", "repositories": [{"name": "hello", "full_name": "octo/hello"}]}  # fmt: skip

ANSWERS = [
    ("ok", CC, 200, {"access_token": "tok", "expires_in": 60}, ("tok", NOW + 60)),
    ("no expires_in: an hour", CC, 200, {"access_token": "tok"}, ("tok", NOW + 3600)),
    ("expires_in as text", CC, 200, {"access_token": "tok", "expires_in": "60"}, ("tok", NOW + 60)),
    ("error code only", CC, 401, {"error": "invalid_client", "error_description": "secret sec-123 wrong"}, "answered 401 (invalid_client)"),
    ("not json", CC, 200, "<html>", "with no JSON"),
    ("no token", CC, 200, {"token_type": "Bearer"}, "no usable token"),
    ("token with a line break", CC, 200, {"access_token": "a\r\nX-Evil: 1"}, "no usable token"),
    ("zero expiry", CC, 200, {"access_token": "t", "expires_in": 0}, "positive number"),
    ("github ok", MintSpec("github_app", app_id="1", installation_id=1, permissions=(("contents", "read"),)),
     201, {"token": "ghs_x", "expires_at": "2027-01-15T09:00:00Z", "permissions": {"contents": "read"}},
     ("ghs_x", GH_EXPIRY)),
    ("github grants more", MintSpec("github_app", app_id="1", installation_id=1, permissions=(("contents", "read"),)),
     201, {"token": "ghs_x", "expires_at": "2027-01-15T09:00:00Z", "permissions": {"contents": "write"}}, "grants more"),
    ("github no expiry", MintSpec("github_app", app_id="1", installation_id=1), 201, {"token": "ghs_x"}, "no expires_at"),
    ("github metadata:read comes with every token", GH_SCOPED, 201, {**GH_OK, "permissions": {"contents": "read", "metadata": "read"}}, ("ghs_x", GH_EXPIRY)),
    ("github a lower level is fine", MintSpec("github_app", app_id="1", installation_id=1, permissions=(("contents", "write"),)),
     201, {**GH_OK, "permissions": {"contents": "read"}}, ("ghs_x", GH_EXPIRY)),
    ("github answer without permissions", GH_SCOPED, 201, {k: v for k, v in GH_OK.items() if k != "permissions"}, "does not say"),
    ("github all repositories", GH_REPOS, 201, {**GH_OK, "repository_selection": "all"}, "not limited"),
    ("github another repository", GH_REPOS, 201, {**GH_OK, "repositories": [{"name": "other"}]}, "not limited"),
    ("github the repository asked", GH_REPOS, 201, GH_OK, ("ghs_x", GH_EXPIRY)),
    ("github naive time is UTC", GH_SCOPED, 201, {**GH_OK, "expires_at": "2027-01-15T09:00:00"}, ("ghs_x", GH_EXPIRY)),
    ("github already expired", GH_SCOPED, 201, {**GH_OK, "expires_at": "2027-01-15T07:59:00Z"}, "less than 1 s"),
    ("error code with spaces is not repeated", CC, 400, {"error": "invalid_grant rt=SEC-123"}, "answered 400"),
    ("float expires_in", CC, 200, {"access_token": "tok", "expires_in": 3599.5}, ("tok", NOW + 3599.5)),
    ("huge expires_in", CC, 200, {"access_token": "tok", "expires_in": 10**400}, "positive number"),
    ("long digit string", CC, 200, {"access_token": "tok", "expires_in": "9" * 5000}, "positive number"),
    ("lifetime capped at a day", CC, 200, {"access_token": "tok", "expires_in": 10**8}, ("tok", NOW + 86400)),
    ("token with a tab", CC, 200, {"access_token": "to\tk"}, "no usable token"),
    ("token not ASCII", CC, 200, {"access_token": "tök"}, "no usable token"),
]  # fmt: skip


@pytest.mark.parametrize(
    "spec,status,answer,expected", [c[1:] for c in ANSWERS], ids=[c[0] for c in ANSWERS]
)
def test_answers(spec: MintSpec, status: int, answer: Any, expected: Any) -> None:
    body = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
    if isinstance(expected, str):
        with pytest.raises(MintError) as e:
            parse_answer(spec, "https://auth.test/token", status, body, NOW)
        assert expected in str(e.value) and "sec-123" not in str(e.value).lower()
        return
    got = parse_answer(spec, "https://auth.test/token", status, body, NOW)
    assert got.token == expected[0]
    assert got.expires_at == expected[1]


def test_rotated_refresh_token_is_kept() -> None:
    spec = MintSpec("oauth_refresh_token", token_url="https://a/t")
    got = parse_answer(
        spec,
        "https://a/t",
        200,
        json.dumps({"access_token": "tok-ACCESS-1", "refresh_token": "rt-ROTATED-2"}).encode(),
        NOW,
    )
    assert got.refresh_token == "rt-ROTATED-2"
    assert "ROTATED" not in repr(got) and "ACCESS" not in repr(got)


def test_guarded_parts_hold_the_credentials_not_the_client_id() -> None:
    value = minted_value(
        "tok", CC, inputs(client_id="my-client", client_secret="sec-ret-value"), None
    )
    assert value.reveal() == "tok"
    assert set(value.texts()) == {"tok", "sec-ret-value"}
    pem_value = minted_value(
        "ghs", MintSpec("github_app", app_id="1", installation_id=1), SecretValue(PEM), None
    )
    body = "".join(line for line in PEM.splitlines() if not line.startswith("-----"))
    assert PEM in pem_value.texts() and body in pem_value.texts()
    parts = dict(guarded_parts(MintSpec("oauth_refresh_token", token_url="https://a/t"),
                               inputs(client_id="c", refresh_token="rt")))  # fmt: skip
    assert parts == {"refresh_token": "rt"}


@given(st.floats(0, 1e9), st.integers(1, 100_000), st.integers(0, 4000), st.integers(1, 600))
def test_schedule_is_before_expiry(obtained: float, life: int, before: int, margin: int) -> None:
    spec = MintSpec(
        "oauth_client_credentials", refresh_before_seconds=before, expiry_margin_seconds=margin
    )
    due, drop = (
        refresh_due(obtained, obtained + life, spec),
        drop_at(obtained, obtained + life, spec),
    )
    assert obtained + life / 2 - 1e-6 <= due <= obtained + life * 2 / 3 + 1e-6  # early, not at once
    assert drop < obtained + life  # never served up to expiry
    assert drop >= obtained + life * 3 / 4 - 1e-6  # but not dropped in the first three quarters


def cfg(**secret: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "m", "hosts": ["api.test"],
                            "source": {"env": {"client_id": "I", "client_secret": "S"}},
                            "mint": {"type": "oauth_client_credentials", "token_url": "https://auth.test/t"}}  # fmt: skip
    base.update(secret)
    return {"allow": ["api.test"], "secrets": [base]}


def test_config_ok(tmp_path: Path) -> None:
    spec = parse(cfg(), "t.yaml", tmp_path).secrets[0]
    assert spec.mint is not None and spec.mint.refresh_before_seconds == 300
    gh = parse(cfg(source={"file": "app.yaml", "key": "pem"},
                   mint={"type": "github_app", "app_id": 1, "installation_id": 2,
                         "permissions": {"contents": "read"}}), "t.yaml", tmp_path).secrets[0]  # fmt: skip
    assert (
        gh.mint is not None
        and gh.mint.permissions == (("contents", "read"),)
        and gh.mint.app_id == "1"
    )


CONFIG_ERRORS = [
    ("no token_url", {"mint": {"type": "oauth_client_credentials"}}, "secrets[0].mint.token_url", "is required"),
    ("http token_url", {"mint": {"type": "oauth_client_credentials", "token_url": "http://a/t"}}, "secrets[0].mint.token_url", "https://"),
    ("unknown type", {"mint": {"type": "saml"}}, "secrets[0].mint.type", "is not one of"),
    ("unknown key", {"mint": {"type": "oauth_client_credentials", "token_url": "https://a/t", "scope": ["x"]}}, "secrets[0].mint.scope", "did you mean 'scopes'?"),
    ("missing client_secret", {"source": {"env": {"client_id": "I"}}}, "secrets[0].source.env.client_secret", "is required by scheme oauth_client_credentials"),
    ("one key for client credentials", {"source": {"env": "X"}}, "secrets[0].source.env", "reads several parts"),
    ("google without scopes", {"source": {"file": "sa.json", "key": "k"}, "mint": {"type": "google_service_account"}}, "secrets[0].mint.scopes", "is required"),
    ("github without installation", {"source": {"file": "a", "key": "k"}, "mint": {"type": "github_app", "app_id": 1}}, "secrets[0].mint.installation_id", "is required"),
    ("github bad permission", {"source": {"file": "a", "key": "k"}, "mint": {"type": "github_app", "app_id": 1, "installation_id": 2, "permissions": {"contents": "all"}}}, "secrets[0].mint.permissions.contents", "read, write, admin"),
    ("github key on oauth", {"mint": {"type": "oauth_client_credentials", "token_url": "https://a/t", "app_id": 1}}, "secrets[0].mint.app_id", "github_app only"),
    ("store on client credentials", {"mint": {"type": "oauth_client_credentials", "token_url": "https://a/t", "store": "x"}}, "secrets[0].mint.store", "oauth_refresh_token only"),
    ("mint on aws", {"scheme": "aws_sigv4", "source": {"env": {"access_key_id": "A", "secret_access_key": "B"}}}, "secrets[0].mint", "goes with scheme static only"),
]  # fmt: skip


@pytest.mark.parametrize(
    "changes,key,message", [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS]
)
def test_config_errors(tmp_path: Path, changes: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(cfg(**changes), "t.yaml", tmp_path)
    assert f"{key}:" in str(e.value) and message in str(e.value), str(e.value)
