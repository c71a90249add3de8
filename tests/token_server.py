"""Real token endpoints on loopback, for minted-token tests.

One threaded HTTPS server (werkzeug, a trustme certificate for every name) runs in a
background thread of the test process, so tests read its counters and flip its switches
directly. It serves:

- ``POST /oauth/token``: authlib's ``AuthorizationServer`` with ``client_credentials``
  (``client_secret_basic`` and ``client_secret_post``), ``refresh_token`` with rotation (a
  used refresh token is revoked: reuse is ``invalid_grant``) and RFC 7523 ``jwt-bearer`` as
  Google service accounts use it (RS256 by ``kid``, ``aud`` the Google token URL).
- ``POST /app/installations/<id>/access_tokens``: a GitHub App stand-in (app JWT checked as
  GitHub does; ``repositories``/``repository_ids``/``permissions`` scoping; 422 beyond the
  installation's grant).
- ``/api/whoami`` (and any ``/api/...``): a resource API that accepts only live tokens it
  issued and echoes the request headers, so a test proves what egress injected.

Names are only names: the server listens on 127.0.0.1 and its certificate covers every name
in ``names``; in-process clients reach it through :meth:`TokenServer.session` (a requests
adapter that dials 127.0.0.1 but keeps the name for SNI, certificate check and Host), egress
through ``upstream.resolve``. No request or secret is ever logged.
"""

from __future__ import annotations

import http.client
import itertools
import secrets
import ssl
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import jwt
import requests
import trustme
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidScopeError
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerGrant
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, jsonify, request
from requests.adapters import HTTPAdapter
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler, make_server

AUTH_HOST = "auth.egress.test"
API_HOST = "api.mint.test"
GITHUB_HOST = "github.egress.test"
DEFAULT_NAMES = (AUTH_HOST, API_HOST, GITHUB_HOST, "127.0.0.1")

TOKEN_PATH = "/oauth/token"
WHOAMI_PATH = "/api/whoami"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth signs this audience whatever token_uri says, so the stand-in demands it.
GOOGLE_TOKEN_AUD = "https://oauth2.googleapis.com/token"

# Token kinds: the keys of ``counts`` and the ``token_kind`` the API reports.
KINDS = {
    "client_credentials": "client_credentials",
    "refresh_token": "refresh_token",
    JWT_BEARER: "jwt_bearer",
}
PREFIX = {"client_credentials": "cc-", "refresh_token": "at-", "jwt_bearer": "ya29."}
REFRESH_PREFIX = "rt-"
GITHUB_PREFIX = "ghs_"
GITHUB_LEVELS = {"read": 1, "write": 2, "admin": 3}
GITHUB_DOCS = (
    "https://docs.github.com/rest/apps/apps#create-an-installation-access-token-for-an-app"
)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def new_private_key_pem() -> str:
    """A fresh RSA-2048 private key (PKCS#8 PEM): the "wrong key" of negative tests."""
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class TokenRequest(NamedTuple):
    """One request to a token endpoint, as the server saw it."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # the form (dict) or the JSON body; None if empty
    kind: str  # client_credentials | refresh_token | jwt_bearer | github_app | unknown
    status: int
    host: str  # the Host header
    jwt_header: dict[str, Any] | None  # of the JWT sent (jwt_bearer assertion, GitHub app JWT)
    claims: dict[str, Any] | None  # its claims, unverified


@dataclass
class Issued:
    """A token the server issued (access, installation or refresh token)."""

    kind: str  # client_credentials | refresh_token | jwt_bearer | github_app | refresh
    expires_at: float | None  # None: does not expire (refresh tokens)
    client_id: str | None = None
    scope: str | None = None
    app_id: str | None = None
    installation_id: int | None = None
    permissions: dict[str, str] | None = None
    repositories: list[str] | None = None
    revoked: bool = False

    def live(self, now: float) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


@dataclass
class Installation:
    app_id: str
    installation_id: int
    permissions: dict[str, str]
    repositories: list[dict[str, Any]]  # {"id", "name", "full_name"}
    repository_selection: str  # "all" | "selected"


@dataclass
class _Client(ClientMixin):
    client_id: str
    client_secret: str | None
    scopes: list[str]
    grant_types: tuple[str, ...]
    auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post")
    keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)  # service accounts

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope_to_list(scope) if s in self.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and secrets.compare_digest(
            client_secret.encode(), self.client_secret.encode()
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in self.auth_methods

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types

    def __repr__(self) -> str:
        return f"_Client({self.client_id!r})"


class _RefreshRecord(TokenMixin):
    def __init__(self, issued: Issued, client: _Client) -> None:
        self.issued = issued
        self.client = client

    def check_client(self, client: ClientMixin) -> bool:
        return client.get_client_id() == self.client.client_id

    def get_scope(self) -> str:
        return self.issued.scope or ""

    def get_expires_in(self) -> int:
        return 0

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return self.issued.revoked

    def get_user(self) -> dict[str, str]:
        return {"client_id": self.client.client_id}

    def get_client(self) -> _Client:
        return self.client


def _check_scope(grant: grants.BaseGrant) -> None:
    """Requesting a scope the client was not registered with is ``invalid_scope``."""
    scope = grant.request.payload.scope
    client = grant.request.client
    if scope and not set(scope_to_list(scope)) <= set(client.scopes):
        raise InvalidScopeError()


class _ClientCredentials(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_requested_scope(self) -> None:
        _check_scope(self)


class _Refresh(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshRecord | None:
        owner: TokenServer = self.server.owner
        issued = owner.tokens.get(refresh_token)
        if issued is None or issued.kind != "refresh" or issued.revoked:
            return None  # authlib does not check revocation itself
        return _RefreshRecord(issued, owner.clients[issued.client_id])

    def authenticate_user(self, refresh_token: _RefreshRecord) -> dict[str, str]:
        return refresh_token.get_user()

    def revoke_old_credential(self, refresh_token: _RefreshRecord) -> None:
        refresh_token.issued.revoked = True


class _GoogleJwtBearer(JWTBearerGrant):
    """RFC 7523 as Google service accounts use it; claims checked with pyjwt."""

    def process_assertion_claims(self, assertion: str) -> dict[str, Any]:
        owner: TokenServer = self.server.owner
        try:
            header = jwt.get_unverified_header(assertion)
            iss = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as e:
            raise InvalidGrantError(description=f"malformed assertion: {e}")
        client = owner.clients.get(iss) if isinstance(iss, str) else None
        if client is None or not client.keys:
            raise InvalidGrantError(description="unknown issuer")
        if header.get("alg") != "RS256":
            raise InvalidGrantError(description="alg must be RS256")
        kid = header.get("kid")
        if kid is not None and kid not in client.keys:
            raise InvalidGrantError(description="unknown kid")
        keys = [client.keys[kid]] if kid is not None else list(client.keys.values())
        claims = None
        for key in keys:
            try:
                claims = jwt.decode(
                    assertion,
                    key,
                    algorithms=["RS256"],
                    audience=GOOGLE_TOKEN_AUD,
                    issuer=iss,
                    options={
                        "verify_exp": False,
                        "verify_iat": False,
                        "require": ["iss", "aud", "iat", "exp"],
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as e:
                raise InvalidGrantError(description=f"invalid assertion: {e}")
        if claims is None:
            raise InvalidGrantError(description="invalid signature")
        now = time.time()
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise InvalidGrantError(description="iat and exp must be numbers")
        if exp <= now:
            raise InvalidGrantError(description="assertion expired")
        if iat > now + 60:
            raise InvalidGrantError(description="iat is in the future")
        if exp - iat > 3600:
            raise InvalidGrantError(description="exp - iat exceeds 3600 seconds")
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.strip():
            raise InvalidScopeError(description="the assertion has no scope claim")
        self.request.assertion_claims = claims
        return claims

    def resolve_issuer_client(self, issuer: str) -> _Client:
        client = self.server.owner.clients.get(issuer)
        if client is None:
            raise InvalidGrantError(description="unknown issuer")
        return client

    def authenticate_user(self, subject: str) -> dict[str, str]:
        return {"sub": subject}  # domain-wide delegation: any subject

    def has_granted_permission(self, client: _Client, user: dict[str, str]) -> bool:
        return True


class _QuietHandler(WSGIRequestHandler):
    """No request log: paths and errors stay out of the test output."""

    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class _LoopbackAdapter(HTTPAdapter):
    """Dial 127.0.0.1 for the server's names; SNI, certificate check and Host keep the name."""

    def __init__(self, names: Iterable[str], port: int) -> None:
        self._names = {n for n in names if n != "127.0.0.1"}
        self._port = port
        super().__init__()

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        name = host_params["host"]
        if name in self._names and host_params["port"] == self._port:
            host_params = {**host_params, "host": "127.0.0.1"}
            pool_kwargs = {**pool_kwargs, "server_hostname": name, "assert_hostname": name}
        return host_params, pool_kwargs

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url)
        if parts.hostname in self._names and "Host" not in request.headers:
            request.headers["Host"] = parts.netloc
        return super().send(request, **kwargs)


class TokenServer:
    """Token endpoints, a GitHub App stand-in and a token-checking API on one HTTPS port.

    Use as a context manager (or ``start()``/``stop()``). Test controls, all safe to use
    from the test thread while the server runs:

    - ``token_ttl``: lifetime in seconds of every token issued from now on (read at issue).
    - ``outage``: while True every token endpoint answers 503 (the API keeps working).
    - ``token_delay``: seconds each token endpoint waits before answering (single-flight).
    - ``counts``: ``Counter`` of token requests by kind, plus ``<kind>.issued``,
      ``<kind>.rejected``, ``<kind>.unavailable``, ``rejected``, ``api.ok``, ``api.rejected``.
    - ``requests``: every token-endpoint request as a :class:`TokenRequest`.
    - ``revoke_all_access_tokens()``: live access/installation tokens now get 401.
    - ``errors``: tracebacks of server-side exceptions (should stay empty).
    """

    def __init__(
        self,
        ca: trustme.CA,
        *,
        names: Iterable[str] = DEFAULT_NAMES,
        token_ttl: float = 3600,
    ) -> None:
        self.ca = ca
        self.names = tuple(names)
        self.token_ttl = token_ttl
        self._initial_ttl = token_ttl
        self.outage = False
        self.token_delay = 0.0
        self.counts: Counter[str] = Counter()
        self.requests: list[TokenRequest] = []
        self.errors: list[str] = []
        self.port = 0
        self.ca_file: Path | None = None
        self.clients: dict[str, _Client] = {}
        self.tokens: dict[str, Issued] = {}
        self.installations: dict[int, Installation] = {}
        self._github_keys: dict[str, rsa.RSAPublicKey] = {}
        self._github_pems: dict[str, str] = {}
        self._secrets: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.app = self._make_app()

    # ---- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> TokenServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            raise RuntimeError("TokenServer already started")
        try:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="token-server-")
            self.ca_file = Path(self._tmpdir.name) / "ca.pem"
            self.ca.cert_pem.write_to_path(str(self.ca_file))
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(*self.names).configure_cert(ctx)
            self._server = make_server(
                "127.0.0.1",
                0,
                self.app,
                threaded=True,
                ssl_context=ctx,
                request_handler=_QuietHandler,
            )
            # TLS failures of clients that do not trust the CA: not the test output's business.
            self._server.handle_error = lambda request, client_address: None
            self.port = self._server.server_port
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"token-server-{self.port}",
                daemon=True,
            )
            self._thread.start()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except (OSError, http.client.HTTPException) as e:
                last = e
            finally:
                conn.close()
            time.sleep(0.05)
        raise RuntimeError(f"token server on port {self.port} not ready after {timeout}s: {last!r}")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self.ca_file = None

    # ---- helpers for tests --------------------------------------------------------------

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}:{self.port}{path}"

    @property
    def token_url(self) -> str:
        return self.url(AUTH_HOST, TOKEN_PATH)

    @property
    def github_api_url(self) -> str:
        return self.url(GITHUB_HOST, "")

    @property
    def whoami_url(self) -> str:
        return self.url(API_HOST, WHOAMI_PATH)

    def session(self, session: requests.Session | None = None) -> requests.Session:
        """A requests session (or the one given, e.g. authlib's OAuth2Session) that trusts
        the CA and reaches the server's names on 127.0.0.1, ignoring proxy variables."""
        s = session if session is not None else requests.Session()
        s.verify = str(self.ca_file)
        s.trust_env = False
        s.mount("https://", _LoopbackAdapter(self.names, self.port))
        return s

    def reset(self) -> None:
        """Controls back to their start values; registrations and tokens stay."""
        with self._lock:
            self.outage = False
            self.token_delay = 0.0
            self.token_ttl = self._initial_ttl
            self.counts.clear()
            self.requests.clear()

    def revoke_all_access_tokens(self) -> None:
        """Every access and installation token issued so far is refused by the API from now on
        (refresh tokens stay usable)."""
        with self._lock:
            for issued in self.tokens.values():
                if issued.kind != "refresh":
                    issued.revoked = True

    def issued(self, kind: str | None = None) -> list[str]:
        """Token values issued so far, of one kind or all (including refresh tokens)."""
        with self._lock:
            return [t for t, i in self.tokens.items() if kind is None or i.kind == kind]

    def secret_values(self) -> set[str]:
        """Every secret this server knows (client secrets, private keys, refresh, access and
        installation tokens): the canaries a leak search should look for."""
        with self._lock:
            return self._secrets | set(self.tokens)

    # ---- registration -------------------------------------------------------------------

    def add_client(
        self, client_id: str, client_secret: str, scopes: Iterable[str] = ("read",)
    ) -> None:
        """An OAuth client for client_credentials and refresh_token (basic or post auth)."""
        with self._lock:
            self.clients[client_id] = _Client(
                client_id, client_secret, list(scopes), ("client_credentials", "refresh_token")
            )
            self._secrets.add(client_secret)

    def issue_refresh_token(self, client_id: str, scope: str | None = None) -> str:
        """A refresh token for ``client_id`` (its full scope unless given), to configure egress
        with. It rotates on first use."""
        with self._lock:
            client = self.clients[client_id]
            return self._new_refresh(
                client, scope if scope is not None else " ".join(client.scopes)
            )

    def add_service_account(
        self, client_email: str | None = None, project_id: str = "egress-test"
    ) -> dict[str, str]:
        """A Google service account: returns its key file as a dict (token_uri: this server)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        n = next(self._ids)
        email = client_email or f"minter-{n}@{project_id}.iam.gserviceaccount.com"
        kid = secrets.token_hex(20)
        pem = _pem(key)
        with self._lock:
            client = self.clients.get(email)
            if client is None:
                client = _Client(email, None, [], (JWT_BEARER,), auth_methods=())
                self.clients[email] = client
            client.keys[kid] = key.public_key()
            self._secrets.add(pem)
        return {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": kid,
            "private_key": pem,
            "client_email": email,
            "client_id": str(100000000000000000000 + n),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        }

    def add_github_app(
        self,
        app_id: int | str,
        installation_id: int,
        permissions: Mapping[str, str] | None = None,
        repositories: Iterable[str] = (),
        repository_selection: str | None = None,
    ) -> str:
        """A GitHub App with one installation; returns the app's private key (PEM).

        ``repositories`` are full names (``owner/name``); ids are assigned in order from
        ``installation_id * 1000 + 1`` (see ``installations[id].repositories``). Calling it
        again for the same app adds an installation and keeps the first key."""
        repos = list(repositories)
        app = str(app_id)
        with self._lock:
            if app not in self._github_keys:
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                pem = _pem(key)
                self._github_keys[app] = key.public_key()
                self._secrets.add(pem)
                self._github_pems[app] = pem
            pem = self._github_pems[app]
            self.installations[installation_id] = Installation(
                app,
                installation_id,
                dict(permissions or {"metadata": "read", "contents": "read"}),
                [
                    {"id": installation_id * 1000 + i, "name": r.split("/")[-1], "full_name": r}
                    for i, r in enumerate(repos, 1)
                ],
                repository_selection or ("selected" if repos else "all"),
            )
        return pem

    # ---- the app ------------------------------------------------------------------------

    def _new_refresh(self, client: _Client, scope: str | None) -> str:
        token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        self.tokens[token] = Issued("refresh", None, client_id=client.client_id, scope=scope)
        return token

    def _access_token(self, client: _Client, grant_type: str, user: Any, scope: Any) -> str:
        return PREFIX[KINDS[grant_type]] + secrets.token_urlsafe(32)

    def _refresh_token(self, client: _Client, grant_type: str, user: Any, scope: Any) -> str:
        return REFRESH_PREFIX + secrets.token_urlsafe(32)

    def _expires_in(self, client: _Client, grant_type: str) -> int:
        return max(1, round(self.token_ttl))

    def _save_token(self, token: dict[str, Any], req: Any) -> None:
        kind = KINDS[req.payload.grant_type]
        client = req.client
        scope = token.get("scope")
        claims = getattr(req, "assertion_claims", None)
        if claims is not None:
            scope = claims["scope"]
        self.tokens[token["access_token"]] = Issued(
            kind, time.time() + token["expires_in"], client_id=client.client_id, scope=scope
        )
        if "refresh_token" in token:
            self.tokens[token["refresh_token"]] = Issued(
                "refresh", None, client_id=client.client_id, scope=scope
            )

    def _make_app(self) -> Flask:
        app = Flask(f"token_server_{id(self)}")
        authz = AuthorizationServer(app, query_client=self.clients.get, save_token=self._save_token)
        authz.owner = self
        # Our own generator: expires_in read from token_ttl at issue time (authlib's config
        # is read once, at AuthorizationServer(app)).
        authz.register_token_generator(
            "default",
            BearerTokenGenerator(self._access_token, self._refresh_token, self._expires_in),
        )
        authz.register_grant(_ClientCredentials)
        authz.register_grant(_Refresh)
        authz.register_grant(_GoogleJwtBearer)

        @app.get("/healthz")
        def healthz() -> Any:
            return jsonify(ok=True)

        @app.post(TOKEN_PATH)
        def oauth_token() -> Any:
            kind = KINDS.get(request.form.get("grant_type", ""), "unknown")
            jwt_parts = _unverified(request.form.get("assertion"))
            return self._token_endpoint(kind, jwt_parts, authz.create_token_response)

        @app.post("/app/installations/<int:installation_id>/access_tokens")
        def github_token(installation_id: int) -> Any:
            auth = request.headers.get("Authorization", "")
            scheme, _, app_jwt = auth.partition(" ")
            jwt_parts = _unverified(app_jwt) if scheme.lower() == "bearer" else (None, None)
            return self._token_endpoint(
                "github_app", jwt_parts, lambda: self._github(installation_id, scheme, app_jwt)
            )

        @app.route(WHOAMI_PATH, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        @app.route("/api/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        def whoami(rest: str | None = None) -> Any:
            return self._whoami()

        @app.errorhandler(Exception)
        def on_error(e: Exception) -> Any:
            if isinstance(e, HTTPException):
                return e
            with self._lock:
                self.errors.append(traceback.format_exc())
            return jsonify(error="server_error"), 500

        return app

    def _token_endpoint(
        self,
        kind: str,
        jwt_parts: tuple[dict[str, Any] | None, dict[str, Any] | None],
        handle: Any,
    ) -> Any:
        delay = self.token_delay
        if delay:
            time.sleep(delay)
        with self._lock:
            self.counts[kind] += 1
            if self.outage:
                resp: Any = (jsonify(error="temporarily_unavailable"), 503)
                status = 503
            else:
                resp = handle()
                status = resp[1] if isinstance(resp, tuple) else resp.status_code
            outcome = "issued" if status < 300 else "unavailable" if status >= 500 else "rejected"
            self.counts[f"{kind}.{outcome}"] += 1
            if outcome == "rejected":
                self.counts["rejected"] += 1
            body: Any
            if request.is_json:
                body = request.get_json(silent=True)
            else:
                body = request.form.to_dict() or None
            self.requests.append(
                TokenRequest(
                    request.path,
                    {k.lower(): v for k, v in request.headers.items()},
                    body,
                    kind,
                    status,
                    request.host,
                    *jwt_parts,
                )
            )
        return resp

    def _github(self, installation_id: int, scheme: str, app_jwt: str) -> Any:
        def fail(status: int, message: str) -> Any:
            return jsonify(
                message=message, documentation_url=GITHUB_DOCS, status=str(status)
            ), status

        if scheme.lower() != "bearer" or not app_jwt:
            return fail(401, "A JSON web token could not be decoded")
        try:
            iss = jwt.decode(app_jwt, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return fail(401, "A JSON web token could not be decoded")
        key = self._github_keys.get(str(iss)) if isinstance(iss, str | int) else None
        if key is None:
            return fail(401, "'Issuer' claim ('iss') must be an Integer or the app's client ID")
        try:
            claims = jwt.decode(
                app_jwt,
                key,
                algorithms=["RS256"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "require": ["iss", "iat", "exp"],
                },
            )
        except jwt.PyJWTError:
            return fail(401, "A JSON web token could not be decoded")
        now = time.time()
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            return fail(401, "'Issued at' and 'Expiration time' claims must be numbers")
        if iat > now + 60:
            return fail(
                401,
                "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
            )
        if exp <= now:
            return fail(
                401,
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
            )
        if exp - iat > 600:
            return fail(401, "'Expiration time' claim ('exp') is too far in the future")
        inst = self.installations.get(installation_id)
        if inst is None or inst.app_id != str(iss):
            return fail(404, "Not Found")

        body = request.get_json(silent=True) if request.data else {}
        if not isinstance(body, dict):
            return fail(400, "Problems parsing JSON")
        names = body.get("repositories")
        ids = body.get("repository_ids")
        wanted = body.get("permissions")
        if (
            (names is not None and not isinstance(names, list))
            or (ids is not None and not isinstance(ids, list))
            or (wanted is not None and not isinstance(wanted, dict))
        ):
            return fail(422, "Invalid request.")
        selected: list[dict[str, Any]] = []
        wanted_repos = [("name", n) for n in names or []] + [("id", i) for i in ids or []]
        for by, ref in wanted_repos:
            match = [
                r
                for r in inst.repositories
                if (by == "id" and type(ref) is int and r["id"] == ref)
                or (by == "name" and isinstance(ref, str) and ref in (r["name"], r["full_name"]))
            ]
            if not match:
                return fail(
                    422,
                    "There is at least one repository that does not exist or is not accessible to the parent installation.",
                )
            if match[0] not in selected:
                selected.append(match[0])
        if wanted:
            for perm, level in wanted.items():
                granted = inst.permissions.get(perm)
                if (
                    granted is None
                    or level not in GITHUB_LEVELS
                    or GITHUB_LEVELS[level] > GITHUB_LEVELS.get(granted, 0)
                ):
                    return fail(
                        422, "The permissions requested are not granted to this installation."
                    )
        permissions = dict(wanted) if wanted else dict(inst.permissions)
        token = GITHUB_PREFIX + secrets.token_urlsafe(27)
        expires_at = int(now) + max(1, round(self.token_ttl))
        if selected:
            selection, repos = "selected", selected
        else:
            selection = inst.repository_selection
            repos = inst.repositories if selection == "selected" else []
        self.tokens[token] = Issued(
            "github_app",
            expires_at,
            app_id=inst.app_id,
            installation_id=installation_id,
            permissions=permissions,
            repositories=[r["full_name"] for r in repos] if selection == "selected" else None,
        )
        answer: dict[str, Any] = {
            "token": token,
            "expires_at": _iso(expires_at),
            "permissions": permissions,
            "repository_selection": selection,
        }
        if selection == "selected":
            answer["repositories"] = [dict(r) for r in repos]
        return jsonify(answer), 201

    def _whoami(self) -> Any:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        with self._lock:
            issued = self.tokens.get(token) if scheme.lower() in ("bearer", "token") else None
            ok = issued is not None and issued.kind != "refresh" and issued.live(time.time())
            self.counts["api.ok" if ok else "api.rejected"] += 1
        if not ok or issued is None:
            reason = (
                "missing"
                if not token
                else "unknown"
                if issued is None or issued.kind == "refresh"
                else "revoked"
                if issued.revoked
                else "expired"
            )
            resp = jsonify(ok=False, error="invalid_token", reason=reason)
            resp.status_code = 401
            resp.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return resp
        answer: dict[str, Any] = {"ok": True, "token_kind": issued.kind}
        if issued.kind == "github_app":
            answer.update(
                app=issued.app_id,
                installation_id=issued.installation_id,
                permissions=issued.permissions,
                repositories=issued.repositories,
            )
        else:
            answer.update(client_id=issued.client_id, scope=issued.scope)
        answer.update(
            method=request.method,
            path=request.path,
            host=request.host,
            echo_headers={k.lower(): v for k, v in request.headers.items()},
            body=request.get_data(as_text=True),
        )
        return jsonify(answer)


def _unverified(token: str | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Header and claims of a JWT without checking it: what a test asserts about egress's JWT."""
    if not token:
        return None, None
    try:
        return (
            jwt.get_unverified_header(token),
            jwt.decode(token, options={"verify_signature": False}),
        )
    except jwt.PyJWTError:
        return None, None
