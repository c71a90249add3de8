"""Minted tokens: the agent holds a placeholder; egress holds a long-lived credential and
injects a short-lived token it obtains from a token endpoint, cached until shortly before
it expires.

Pure functions here: the token request for each type (OAuth 2.0 client credentials and
refresh token, RFC 6749; Google service-account JWT bearer, RFC 7523; GitHub App
installation tokens) and the reading of the answer. The JWTs are signed with PyJWT (RS256
over ``cryptography``). The HTTP call, the source that mints at load and the refresher
thread are in egress.mintsource.

Nothing here logs or raises with a credential in it: errors name the endpoint, the status
and the OAuth ``error`` code only (an ``error_description`` may quote what was sent).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote_plus, urlencode

from egress.config.model import MintSpec
from egress.secrets import SecretValue

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL; what google-auth signs for)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_ANSWER_BYTES = 1024 * 1024
DEFAULT_LIFETIME = 3600  # an answer without expires_in: RFC 6749 leaves it to documentation
# An OAuth error code as logged: a plain word. Anything else (RFC 6749 allows spaces, and a
# server may put what it was sent there) is not repeated.
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
# A token is put into a header: visible ASCII, bounded.
_TOKEN = re.compile(r"^[\x21-\x7e]{1,16384}$")
MAX_LIFETIME = 86400  # a token said to live longer is refreshed after a day anyway
MIN_LIFETIME = 1  # a token already expired is not used (a clock ahead, an answer replayed)
_LEVELS = {"read": 1, "write": 2, "admin": 3}


class MintError(Exception):
    """A token could not be minted. The message names no credential."""


@dataclass(frozen=True)
class TokenRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def __repr__(self) -> str:  # headers and body hold credentials
        return f"TokenRequest({self.method} {self.url}, <redacted>)"


@dataclass(frozen=True)
class Minted:
    token: str
    expires_at: float  # epoch seconds
    refresh_token: str | None = None  # a rotated refresh token to keep

    def __repr__(self) -> str:
        return f"Minted(<redacted>, expires_at={self.expires_at})"


def _basic(client_id: str, secret: str) -> str:
    # RFC 6749 2.3.1: each form-urlencoded before joining.
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _form(url: str, fields: list[tuple[str, str]], headers: list[tuple[str, str]]) -> TokenRequest:
    headers = [("Content-Type", "application/x-www-form-urlencoded"),
               ("Accept", "application/json"), *headers]  # fmt: skip
    return TokenRequest("POST", url, tuple(headers), urlencode(fields).encode())


def _client_auth(
    spec: MintSpec, inputs: SecretValue, fields: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    client_id = inputs.part("client_id") or ""
    secret = inputs.part("client_secret")
    if secret is None:  # a public client (refresh token only)
        fields.append(("client_id", client_id))
        return []
    if spec.client_auth == "post":
        fields += [("client_id", client_id), ("client_secret", secret)]
        return []
    return [("Authorization", _basic(client_id, secret))]


def _rs256(claims: dict[str, object], pem: str, kid: str | None = None) -> str:
    import jwt

    try:
        return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid} if kid else None)
    except (ValueError, TypeError, jwt.PyJWTError) as e:
        raise MintError(f"the private key cannot sign an RS256 JWT ({type(e).__name__})") from None


def service_account(inputs: SecretValue) -> dict[str, str]:
    """A Google service-account key file (JSON) as the secret's one value."""
    try:
        info = json.loads(inputs.reveal())
    except ValueError:
        raise MintError("the secret is not a service-account key file (JSON)") from None
    missing = [
        k for k in ("client_email", "private_key") if not isinstance(info, dict) or not info.get(k)
    ]
    if missing:
        raise MintError(f"the service-account key file has no {', '.join(missing)}")
    return {k: str(v) for k, v in info.items() if isinstance(v, str | int)}


def token_request(
    spec: MintSpec, inputs: SecretValue, now: float, refresh_token: str | None = None
) -> TokenRequest:
    """The request that obtains a token. ``refresh_token``: the latest rotated one, in place
    of the one the source holds."""
    if spec.type == "oauth_client_credentials":
        assert spec.token_url is not None
        fields = [("grant_type", "client_credentials")]
        if spec.scopes:
            fields.append(("scope", " ".join(spec.scopes)))
        if spec.audience:
            fields.append(("audience", spec.audience))
        return _form(spec.token_url, fields, _client_auth(spec, inputs, fields))
    if spec.type == "oauth_refresh_token":
        assert spec.token_url is not None
        token = refresh_token or inputs.part("refresh_token") or ""
        fields = [("grant_type", "refresh_token"), ("refresh_token", token)]
        if spec.scopes:
            fields.append(("scope", " ".join(spec.scopes)))
        return _form(spec.token_url, fields, _client_auth(spec, inputs, fields))
    if spec.type == "google_service_account":
        info = service_account(inputs)
        iat = int(now)
        claims = {"iss": info["client_email"], "scope": " ".join(spec.scopes),
                  "aud": spec.audience or GOOGLE_TOKEN_AUDIENCE, "iat": iat, "exp": iat + 3600}  # fmt: skip
        assertion = _rs256(claims, info["private_key"], info.get("private_key_id"))
        # The key file's token_uri is data, not config: the assertion is good at Google for
        # an hour wherever it is sent, so only Google's own endpoint is taken from the file.
        url = spec.token_url or GOOGLE_TOKEN_AUDIENCE
        return _form(url, [("grant_type", JWT_BEARER), ("assertion", assertion)], [])
    if spec.type == "github_app":
        iat = int(now) - 60  # GitHub's advice: allow for clock drift
        app_jwt = _rs256({"iat": iat, "exp": iat + 600, "iss": str(spec.app_id)}, inputs.reveal())
        body: dict[str, object] = {}
        if spec.repositories:
            body["repositories"] = list(spec.repositories)
        if spec.permissions:
            body["permissions"] = dict(spec.permissions)
        url = f"{spec.api_url.rstrip('/')}/app/installations/{spec.installation_id}/access_tokens"
        headers = (("Authorization", f"Bearer {app_jwt}"), ("Accept", "application/vnd.github+json"),
                   ("X-GitHub-Api-Version", "2022-11-28"), ("Content-Type", "application/json"),
                   ("User-Agent", "egress"))  # fmt: skip
        return TokenRequest("POST", url, headers, json.dumps(body).encode())
    raise MintError(f"unknown mint type {spec.type!r}")


def _error_code(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    code = data.get("error") if isinstance(data, dict) else None
    if isinstance(code, str) and _ERROR_CODE.match(code):
        return f" ({code})"
    return ""  # GitHub's free-text "message" is not repeated either


def parse_answer(spec: MintSpec, url: str, status: int, body: bytes, now: float) -> Minted:
    """The token, its expiry and a rotated refresh token, from the endpoint's answer."""
    if not 200 <= status < 300:
        raise MintError(f"the token endpoint {url} answered {status}{_error_code(body)}")
    try:
        data = json.loads(body)
    except ValueError:
        raise MintError(f"the token endpoint {url} answered {status} with no JSON") from None
    if not isinstance(data, dict):
        raise MintError(f"the token endpoint {url} answered JSON that is not an object")
    if spec.type == "github_app":
        token, expires_at = data.get("token"), _iso_time(data.get("expires_at"))
        _check_github_scope(spec, url, data)
        if expires_at is None:
            raise MintError(f"the answer of {url} has no expires_at")
    else:
        token = data.get("access_token")
        expires_at = now + _lifetime(url, data.get("expires_in", DEFAULT_LIFETIME))
    if expires_at - now < MIN_LIFETIME:
        raise MintError(f"the token from {url} expires in less than {MIN_LIFETIME} s "
                        "(is egress's clock right?); it was not used")  # fmt: skip
    expires_at = min(expires_at, now + MAX_LIFETIME)
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise MintError(f"the answer of {url} has no usable token")
    return Minted(token, expires_at, rotated_refresh_token(spec, status, body))


def rotated_refresh_token(spec: MintSpec, status: int, body: bytes) -> str | None:
    """A new refresh token in a successful answer, read before anything else is checked:
    the server has revoked the old one, so it must be kept even if the rest of the answer
    is refused."""
    if spec.type != "oauth_refresh_token" or not 200 <= status < 300:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    rotated = data.get("refresh_token") if isinstance(data, dict) else None
    return rotated if isinstance(rotated, str) and _TOKEN.match(rotated) else None


def _lifetime(url: str, value: object) -> float:
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise MintError(f"the answer of {url} has an expires_in that is not a positive number")
    return float(value)


def _check_github_scope(spec: MintSpec, url: str, data: dict[str, object]) -> None:
    """The installation token may not do more than asked: no permission above the level
    configured (``metadata: read`` comes with every token), no repository outside the
    list."""
    granted = data.get("permissions")
    if spec.permissions:
        if not isinstance(granted, dict):
            raise MintError(
                f"the answer of {url} does not say the token's permissions; it was not used"
            )
        asked = dict(spec.permissions)
        wider = sorted(
            k for k, v in granted.items()
            if _LEVELS.get(str(v), 99) > _LEVELS.get(asked.get(k, "read" if k == "metadata" else ""), 0)
        )  # fmt: skip
        if wider:
            raise MintError(f"the installation token of {url} grants more than "
                            f"mint.permissions: {', '.join(wider)}; it was not used")  # fmt: skip
    if spec.repositories:
        repos = data.get("repositories")
        names = (
            {str(r.get("name")) for r in repos if isinstance(r, dict)}
            if isinstance(repos, list)
            else None
        )
        allowed = {r.rsplit("/", 1)[-1] for r in spec.repositories}
        if data.get("repository_selection") != "selected" or names is None or not names <= allowed:
            raise MintError(f"the installation token of {url} is not limited to "
                            "mint.repositories; it was not used")  # fmt: skip


def _iso_time(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # GitHub writes UTC; never the local zone
    return when.timestamp()


def guarded_parts(spec: MintSpec, inputs: SecretValue) -> tuple[tuple[str, str], ...]:
    """The long-lived inputs that must never reach a client, as parts of the minted value:
    the client secret, the refresh token, the private key (as its PEM and as the one-line
    base64 of its body). The client id is no secret and stays out (it would be refused
    and scrubbed wherever it appears)."""
    out: list[tuple[str, str]] = []
    for role in ("client_secret", "refresh_token"):
        if (text := inputs.part(role)) is not None:
            out.append((role, text))
    pem = None
    if spec.type == "github_app":
        pem = inputs.reveal()
    elif spec.type == "google_service_account":
        try:
            pem = service_account(inputs)["private_key"]
        except MintError:
            pem = None
    if pem:
        out.append(("private_key", pem))
        body = "".join(
            line.strip() for line in pem.splitlines() if line and not line.startswith("-----")
        )
        if body:
            out.append(("private_key_body", body))
    return tuple(out)


def minted_value(
    token: str, spec: MintSpec, inputs: SecretValue, rotated: str | None
) -> SecretValue:
    parts = list(guarded_parts(spec, inputs))
    if rotated:
        parts.append(("refresh_token_rotated", rotated))
    return SecretValue(token, (("access_token", token), *parts))


def refresh_due(obtained: float, expires_at: float, spec: MintSpec) -> float:
    """When to mint again: two thirds into the token's life, or ``refresh_before_seconds``
    ahead of expiry if that is earlier, but never before half its life (a token shorter
    than refresh_before_seconds is not minted again at once, over and over)."""
    life = max(expires_at - obtained, 1.0)
    return obtained + max(min(life * 2 / 3, life - spec.refresh_before_seconds), life / 2)


def drop_at(obtained: float, expires_at: float, spec: MintSpec) -> float:
    """After this a token is no longer served: ``expiry_margin_seconds`` before it expires
    (never more than a quarter of its life)."""
    life = max(expires_at - obtained, 1.0)
    return expires_at - min(spec.expiry_margin_seconds, life / 4)
