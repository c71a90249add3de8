"""Self-test of tests/token_server.py with real clients: authlib's OAuth2Session, google-auth's
service account credentials, pyjwt for the GitHub App JWT, requests for the API."""

from __future__ import annotations

import calendar
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import requests
import trustme
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import service_account

from tests.token_server import (
    API_HOST,
    AUTH_HOST,
    GITHUB_HOST,
    GOOGLE_TOKEN_AUD,
    JWT_BEARER,
    TokenServer,
    new_private_key_pem,
)

CLIENT_ID = "egress-minter"
CLIENT_SECRET = "client-secret-CANARY-ts1"
SCOPES = ["read", "write"]
APP_ID = 424242
INSTALLATION = 777
OTHER_APP_ID = 515151
OTHER_INSTALLATION = 888
GH_PERMISSIONS = {"metadata": "read", "contents": "write", "issues": "read"}
GH_REPOS = ["octo/hello", "octo/world"]
GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


@pytest.fixture(scope="module")
def srv(test_ca: trustme.CA) -> Iterator[TokenServer]:
    with TokenServer(test_ca) as s:
        s.add_client(CLIENT_ID, CLIENT_SECRET, scopes=SCOPES)
        s.add_github_app(OTHER_APP_ID, OTHER_INSTALLATION)
        yield s


@pytest.fixture(scope="module")
def gh_pem(srv: TokenServer) -> str:
    return srv.add_github_app(
        APP_ID, INSTALLATION, permissions=GH_PERMISSIONS, repositories=GH_REPOS
    )


@pytest.fixture(scope="module")
def sa_info(srv: TokenServer) -> dict[str, str]:
    return srv.add_service_account()


@pytest.fixture(autouse=True)
def _fresh(srv: TokenServer) -> Iterator[None]:
    srv.reset()
    yield
    assert srv.errors == []


def oauth(srv: TokenServer, method: str = "client_secret_basic", **kw: Any) -> OAuth2Session:
    sess = OAuth2Session(
        CLIENT_ID, kw.pop("secret", CLIENT_SECRET), token_endpoint_auth_method=method, **kw
    )
    srv.session(sess)
    return sess


def whoami(srv: TokenServer, token: str, scheme: str = "Bearer") -> requests.Response:
    return srv.session().get(
        srv.whoami_url, headers={"Authorization": f"{scheme} {token}", "X-Probe": "1"}
    )


def app_jwt(key: str, **over: Any) -> str:
    now = int(time.time())
    claims = {"iat": now - 60, "exp": now + 540, "iss": str(APP_ID), **over}
    if isinstance(claims["iss"], int):  # pyjwt refuses to encode an int iss; GitHub takes it
        return jwt.api_jws.encode(json.dumps(claims).encode(), key, algorithm="RS256")
    return jwt.encode(claims, key, algorithm="RS256")


def gh_post(
    srv: TokenServer, token: str | None, body: Any = None, inst: int = INSTALLATION
) -> requests.Response:
    headers = {"Accept": "application/vnd.github+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return srv.session().post(
        srv.url(GITHUB_HOST, f"/app/installations/{inst}/access_tokens"),
        headers=headers,
        json=body,
    )


# ---- OAuth client credentials -------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_credentials(srv: TokenServer, method: str) -> None:
    tok = oauth(srv, method, scope="read").fetch_token(
        srv.token_url, grant_type="client_credentials"
    )
    assert tok["access_token"].startswith("cc-")
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == 3600 and tok["scope"] == "read"
    assert "refresh_token" not in tok

    (req,) = srv.requests
    assert req.path == "/oauth/token" and req.kind == "client_credentials" and req.status == 200
    assert req.host == f"{AUTH_HOST}:{srv.port}"
    assert req.body["scope"] == "read"
    if method == "client_secret_basic":
        assert req.headers["authorization"].startswith("Basic ")
        assert "client_secret" not in req.body
    else:
        assert "authorization" not in req.headers
        assert req.body["client_id"] == CLIENT_ID and req.body["client_secret"] == CLIENT_SECRET
    assert srv.counts["client_credentials"] == 1 and srv.counts["client_credentials.issued"] == 1

    for scheme in ("Bearer", "token"):
        r = whoami(srv, tok["access_token"], scheme)
        assert r.status_code == 200, r.text
        j = r.json()
        assert j["ok"] and j["token_kind"] == "client_credentials" and j["client_id"] == CLIENT_ID
        assert j["echo_headers"]["authorization"] == f"{scheme} {tok['access_token']}"
        assert j["echo_headers"]["x-probe"] == "1" and j["host"] == f"{API_HOST}:{srv.port}"


@pytest.mark.parametrize(
    ("method", "secret", "scope", "status", "error"),
    [
        ("client_secret_basic", "wrong-secret", "read", 401, "invalid_client"),
        ("client_secret_post", "wrong-secret", "read", 401, "invalid_client"),
        ("client_secret_basic", CLIENT_SECRET, "admin", 400, "invalid_scope"),
    ],
)
def test_client_credentials_rejected(
    srv: TokenServer, method: str, secret: str, scope: str, status: int, error: str
) -> None:
    with pytest.raises(OAuthError) as e:
        oauth(srv, method, secret=secret, scope=scope).fetch_token(
            srv.token_url, grant_type="client_credentials"
        )
    assert e.value.error == error
    assert [r.status for r in srv.requests] == [status]
    assert srv.counts["client_credentials.rejected"] == 1 and srv.counts["rejected"] == 1
    assert srv.counts["client_credentials.issued"] == 0


def test_outage_then_recovery(srv: TokenServer) -> None:
    srv.outage = True
    sess = oauth(srv)
    with pytest.raises(requests.HTTPError) as e:
        sess.fetch_token(srv.token_url, grant_type="client_credentials")
    assert e.value.response.status_code == 503
    srv.outage = False
    tok = sess.fetch_token(srv.token_url, grant_type="client_credentials")
    assert whoami(srv, tok["access_token"]).status_code == 200
    assert srv.counts["client_credentials"] == 2
    assert srv.counts["client_credentials.unavailable"] == 1
    assert srv.counts["client_credentials.issued"] == 1


def test_expiry_and_ttl_read_at_issue(srv: TokenServer) -> None:
    srv.token_ttl = 1
    t0 = time.time()
    tok = oauth(srv).fetch_token(srv.token_url, grant_type="client_credentials")
    assert tok["expires_in"] == 1
    assert whoami(srv, tok["access_token"]).status_code == 200
    time.sleep(max(0.0, t0 + 1.3 - time.time()))
    r = whoami(srv, tok["access_token"])
    assert r.status_code == 401 and r.json()["reason"] == "expired"
    assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert srv.counts["api.ok"] == 1 and srv.counts["api.rejected"] == 1


def test_revoke_all_access_tokens(srv: TokenServer) -> None:
    tok = oauth(srv).fetch_token(srv.token_url, grant_type="client_credentials")
    assert whoami(srv, tok["access_token"]).status_code == 200
    srv.revoke_all_access_tokens()
    r = whoami(srv, tok["access_token"])
    assert r.status_code == 401 and r.json()["reason"] == "revoked"
    fresh = oauth(srv).fetch_token(srv.token_url, grant_type="client_credentials")
    assert whoami(srv, fresh["access_token"]).status_code == 200


@pytest.mark.parametrize(
    ("token", "reason"),
    [("", "missing"), ("cc-not-issued", "unknown"), ("Zm9vOmJhcg==", "unknown")],
)
def test_api_refuses_unknown_tokens(srv: TokenServer, token: str, reason: str) -> None:
    r = whoami(srv, token)
    assert r.status_code == 401 and r.json()["reason"] == reason
    assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


# ---- OAuth refresh token with rotation ------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_refresh_token_rotation(srv: TokenServer, method: str) -> None:
    rt0 = srv.issue_refresh_token(CLIENT_ID)
    assert rt0.startswith("rt-")
    assert whoami(srv, rt0).status_code == 401  # a refresh token is no access token
    sess = oauth(srv, method)
    t1 = sess.refresh_token(srv.token_url, refresh_token=rt0)
    assert t1["access_token"].startswith("at-") and t1["refresh_token"].startswith("rt-")
    assert t1["refresh_token"] != rt0 and t1["scope"] == "read write"
    j = whoami(srv, t1["access_token"]).json()
    assert j["token_kind"] == "refresh_token" and j["client_id"] == CLIENT_ID

    with pytest.raises(OAuthError) as e:  # the old one was revoked by the rotation
        sess.refresh_token(srv.token_url, refresh_token=rt0)
    assert e.value.error == "invalid_grant"

    t2 = sess.refresh_token(srv.token_url, refresh_token=t1["refresh_token"])
    assert t2["refresh_token"] not in (rt0, t1["refresh_token"])
    assert whoami(srv, t2["access_token"]).status_code == 200
    assert [r.body["refresh_token"] for r in srv.requests] == [rt0, rt0, t1["refresh_token"]]
    assert [r.status for r in srv.requests] == [200, 400, 200]
    assert srv.counts["refresh_token"] == 3 and srv.counts["refresh_token.rejected"] == 1


def test_refresh_with_wrong_secret(srv: TokenServer) -> None:
    rt0 = srv.issue_refresh_token(CLIENT_ID)
    with pytest.raises(OAuthError) as e:
        oauth(srv, secret="nope").refresh_token(srv.token_url, refresh_token=rt0)
    assert e.value.error == "invalid_client"
    # a failed attempt does not burn the refresh token
    assert oauth(srv).refresh_token(srv.token_url, refresh_token=rt0)["access_token"]


# ---- Google service account (RFC 7523 jwt-bearer) ---------------------------------------


def test_google_service_account(srv: TokenServer, sa_info: dict[str, str]) -> None:
    info = dict(sa_info)
    assert info["token_uri"] == f"https://{AUTH_HOST}:{srv.port}/oauth/token"
    creds = service_account.Credentials.from_service_account_info(info, scopes=[GOOGLE_SCOPE])
    creds.refresh(GoogleRequest(srv.session()))
    assert creds.valid and creds.token.startswith("ya29.")

    (req,) = srv.requests
    assert req.kind == "jwt_bearer" and req.status == 200
    assert req.body["grant_type"] == JWT_BEARER
    assert req.jwt_header == {"alg": "RS256", "typ": "JWT", "kid": info["private_key_id"]}
    assert req.claims["aud"] == GOOGLE_TOKEN_AUD and req.claims["iss"] == info["client_email"]
    assert req.claims["scope"] == GOOGLE_SCOPE

    j = whoami(srv, creds.token).json()
    assert j["token_kind"] == "jwt_bearer" and j["client_id"] == info["client_email"]
    assert j["scope"] == GOOGLE_SCOPE


def test_google_wrong_key_is_rejected(srv: TokenServer, sa_info: dict[str, str]) -> None:
    other = new_private_key_pem()
    info = {**sa_info, "private_key": other}
    creds = service_account.Credentials.from_service_account_info(info, scopes=[GOOGLE_SCOPE])
    with pytest.raises(RefreshError, match="invalid_grant"):
        creds.refresh(GoogleRequest(srv.session()))
    assert srv.counts["jwt_bearer.rejected"] == 1


def _assertion(info: dict[str, str], key: str | None = None, kid: Any = "", **over: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": info["client_email"],
        "aud": GOOGLE_TOKEN_AUD,
        "scope": GOOGLE_SCOPE,
        "iat": now,
        "exp": now + 3600,
        **over,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    headers = {} if kid is None else {"kid": kid or info["private_key_id"]}
    return jwt.encode(claims, key or info["private_key"], algorithm="RS256", headers=headers)


@pytest.mark.parametrize(
    ("case", "over", "status", "error"),
    [
        ("valid", {}, 200, None),
        ("valid without kid", {"kid": None}, 200, None),
        ("aud is token_uri", {"aud": "TOKEN_URI"}, 400, "invalid_grant"),
        ("life over 3600", {"exp": "+3601"}, 400, "invalid_grant"),
        ("expired", {"iat": "-3700", "exp": "-100"}, 400, "invalid_grant"),
        ("issued in the future", {"iat": "+300", "exp": "+900"}, 400, "invalid_grant"),
        ("no scope", {"scope": None}, 400, "invalid_scope"),
        ("unknown issuer", {"iss": "someone@else.iam.gserviceaccount.com"}, 400, "invalid_grant"),
        ("unknown kid", {"kid": "0" * 40}, 400, "invalid_grant"),
        ("wrong key", {"key": "OTHER"}, 400, "invalid_grant"),
    ],
)
def test_jwt_bearer_checks(
    srv: TokenServer,
    sa_info: dict[str, str],
    case: str,
    over: dict[str, Any],
    status: int,
    error: str | None,
) -> None:
    info = dict(sa_info)
    now = int(time.time())
    kw: dict[str, Any] = {}
    for k, v in over.items():
        if v == "TOKEN_URI":
            v = info["token_uri"]
        elif v == "OTHER":
            v = new_private_key_pem()
        elif isinstance(v, str) and v[0] in "+-":
            v = now + int(v)
        kw[k] = v
    if "exp" in kw and "iat" not in kw:
        kw["iat"] = now
    r = srv.session().post(
        srv.token_url, data={"grant_type": JWT_BEARER, "assertion": _assertion(info, **kw)}
    )
    assert r.status_code == status, r.text
    if error:
        assert r.json()["error"] == error
    else:
        assert set(r.json()) == {"access_token", "token_type", "expires_in"}


# ---- GitHub App installation tokens -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "selection", "repos", "permissions"),
    [
        (
            {"repositories": ["hello"], "permissions": {"contents": "read"}},
            "selected",
            ["octo/hello"],
            {"contents": "read"},
        ),
        ({"repository_ids": [INSTALLATION * 1000 + 2]}, "selected", ["octo/world"], GH_PERMISSIONS),
        (None, "selected", GH_REPOS, GH_PERMISSIONS),
    ],
)
def test_github_app(
    srv: TokenServer,
    gh_pem: str,
    body: Any,
    selection: str,
    repos: list[str],
    permissions: dict[str, str],
) -> None:
    pem = gh_pem
    t0 = time.time()
    r = gh_post(srv, app_jwt(pem), body)
    assert r.status_code == 201, r.text
    j = r.json()
    assert j["token"].startswith("ghs_") and j["repository_selection"] == selection
    assert j["permissions"] == permissions
    assert [x["full_name"] for x in j["repositories"]] == repos
    expires = calendar.timegm(time.strptime(j["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert t0 + 3600 - 2 <= expires <= t0 + 3600 + 1

    (req,) = srv.requests
    assert req.kind == "github_app" and req.host == f"{GITHUB_HOST}:{srv.port}"
    assert req.claims["iss"] == str(APP_ID) and req.jwt_header["alg"] == "RS256"
    assert req.body == body

    w = whoami(srv, j["token"], "token").json()
    assert w["token_kind"] == "github_app" and w["app"] == str(APP_ID)
    assert w["installation_id"] == INSTALLATION and w["repositories"] == repos


def test_github_app_all_repositories_and_int_iss(srv: TokenServer) -> None:
    pem = srv.add_github_app(OTHER_APP_ID, OTHER_INSTALLATION)  # same app: same key back
    r = gh_post(srv, app_jwt(pem, iss=OTHER_APP_ID), {}, inst=OTHER_INSTALLATION)
    assert r.status_code == 201, r.text
    j = r.json()
    assert j["repository_selection"] == "all" and "repositories" not in j
    assert j["permissions"] == {"metadata": "read", "contents": "read"}


@pytest.mark.parametrize(
    ("case", "jwt_over", "body", "inst", "status"),
    [
        ("no jwt", None, None, INSTALLATION, 401),
        ("wrong key", {"key": "OTHER"}, None, INSTALLATION, 401),
        ("garbage jwt", {"raw": "not.a.jwt"}, None, INSTALLATION, 401),
        ("unknown app", {"iss": "999"}, None, INSTALLATION, 401),
        ("life over 600", {"iat": -10, "exp": 600}, None, INSTALLATION, 401),
        ("expired", {"iat": -700, "exp": -100}, None, INSTALLATION, 401),
        ("iat beyond skew", {"iat": 120, "exp": 500}, None, INSTALLATION, 401),
        ("another app's installation", {}, None, OTHER_INSTALLATION, 404),
        (
            "permission level above grant",
            {},
            {"permissions": {"contents": "admin"}},
            INSTALLATION,
            422,
        ),
        (
            "permission not granted",
            {},
            {"permissions": {"pull_requests": "read"}},
            INSTALLATION,
            422,
        ),
        ("unknown repository", {}, {"repositories": ["nope"]}, INSTALLATION, 422),
        ("unknown repository id", {}, {"repository_ids": [1]}, INSTALLATION, 422),
    ],
)
def test_github_app_rejected(
    srv: TokenServer,
    gh_pem: str,
    case: str,
    jwt_over: dict[str, Any] | None,
    body: Any,
    inst: int,
    status: int,
) -> None:
    token = None
    if jwt_over is not None:
        over = dict(jwt_over)
        now = int(time.time())
        key = gh_pem
        if over.pop("key", None) == "OTHER":
            key = new_private_key_pem()
        for k in ("iat", "exp"):
            if k in over:
                over[k] += now
        token = over.pop("raw", None) or app_jwt(key, **over)
    r = gh_post(srv, token, body, inst=inst)
    assert r.status_code == status, r.text
    assert r.json()["message"]
    assert srv.counts["github_app.rejected"] == 1 and srv.counts["github_app.issued"] == 0


def test_github_outage(srv: TokenServer, gh_pem: str) -> None:
    srv.outage = True
    r = gh_post(srv, app_jwt(gh_pem), {})
    assert r.status_code == 503
    assert srv.counts["github_app.unavailable"] == 1


# ---- the fixture itself -------------------------------------------------------------------


def test_concurrent_token_requests(srv: TokenServer) -> None:
    srv.token_delay = 0.1  # all eight are in flight at once
    with ThreadPoolExecutor(8) as pool:
        toks = list(
            pool.map(
                lambda _: oauth(srv).fetch_token(srv.token_url, grant_type="client_credentials"),
                range(8),
            )
        )
    assert len({t["access_token"] for t in toks}) == 8
    assert srv.counts["client_credentials"] == 8 and len(srv.requests) == 8


def test_no_secret_in_output(
    srv: TokenServer, sa_info: dict[str, str], gh_pem: str, capfd: pytest.CaptureFixture[str]
) -> None:
    srv.token_ttl = 60
    rt0 = srv.issue_refresh_token(CLIENT_ID)
    oauth(srv).refresh_token(srv.token_url, refresh_token=rt0)
    with pytest.raises(OAuthError):
        oauth(srv, secret="wrong").fetch_token(srv.token_url, grant_type="client_credentials")
    creds = service_account.Credentials.from_service_account_info(
        sa_info,
        scopes=[GOOGLE_SCOPE],
    )
    creds.refresh(GoogleRequest(srv.session()))
    gh = gh_post(srv, app_jwt(gh_pem), {}).json()
    whoami(srv, gh["token"])
    out, err = capfd.readouterr()
    values = srv.secret_values()
    assert {rt0, creds.token, gh["token"], CLIENT_SECRET} <= values
    leaked = [v for v in values if v in out or v in err]
    assert leaked == []
    assert "/oauth/token" not in err  # no request log


def test_lifecycle(test_ca: trustme.CA) -> None:
    s = TokenServer(test_ca, names=("auth.egress.test", "127.0.0.1"), token_ttl=5)
    s.start()
    assert s.session().get(s.url("127.0.0.1", "/healthz")).json() == {"ok": True}
    with pytest.raises(RuntimeError):
        s.start()
    port = s.port
    s.stop()
    s.stop()  # twice is fine
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_failed_start_cleans_up(test_ca: trustme.CA) -> None:
    s = TokenServer(test_ca, names=())  # no name to issue a certificate for
    with pytest.raises(ValueError):
        s.start()
    assert s._server is None and s._thread is None and s._tmpdir is None
    s.stop()
