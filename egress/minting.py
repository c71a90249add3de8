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
from datetime import datetime
from urllib.parse import quote_plus, urlencode

from egress.config.model import MintSpec
from egress.secrets import SecretValue

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL; what google-auth signs for)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_ANSWER_BYTES = 1024 * 1024
DEFAULT_LIFETIME = 3600  # an answer without expires_in: RFC 6749 leaves it to documentation
_ERROR_CODE = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$")  # RFC 6749 5.2 error syntax


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
        url = spec.token_url or info.get("token_uri") or GOOGLE_TOKEN_AUDIENCE
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
    message = data.get("message") if isinstance(data, dict) else None  # GitHub's shape
    if isinstance(message, str) and _ERROR_CODE.match(message[:64]):
        return f" ({message[:64]})"
    return ""


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
        granted = data.get("permissions")
        if spec.permissions and isinstance(granted, dict):
            wider = sorted(k for k, v in granted.items() if dict(spec.permissions).get(k) != v)
            if wider:
                raise MintError(f"the installation token of {url} grants more than "
                                f"mint.permissions: {', '.join(wider)}; it was not used")  # fmt: skip
        if expires_at is None:
            raise MintError(f"the answer of {url} has no expires_at")
    else:
        token = data.get("access_token")
        lifetime = data.get("expires_in", DEFAULT_LIFETIME)
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0:
            raise MintError(f"the answer of {url} has an expires_in that is not a positive number")
        expires_at = now + lifetime
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n\x00 "):
        raise MintError(f"the answer of {url} has no usable token")
    rotated = data.get("refresh_token") if spec.type == "oauth_refresh_token" else None
    if rotated is not None and (not isinstance(rotated, str) or not rotated):
        raise MintError(f"the answer of {url} has a refresh_token that is not a string")
    return Minted(token, expires_at, rotated)


def _iso_time(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


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
    """When to mint again: ``refresh_before_seconds`` ahead of expiry, and never later than
    two thirds into the token's life (a short-lived token is renewed well before its end)."""
    life = max(expires_at - obtained, 1.0)
    return max(
        obtained + 0.5, min(expires_at - spec.refresh_before_seconds, obtained + life * 2 / 3)
    )


def drop_at(obtained: float, expires_at: float, spec: MintSpec) -> float:
    """After this a token is no longer served: ``expiry_margin_seconds`` before it expires
    (never more than a quarter of its life)."""
    life = max(expires_at - obtained, 1.0)
    return expires_at - min(spec.expiry_margin_seconds, life / 4)
