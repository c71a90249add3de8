"""The request as the secret checks see it, and what they answer (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from egress import sigv4
from egress.config import SecretSpec
from egress.reasons import Reason

Header = tuple[str, str]


@dataclass(frozen=True)
class RequestParts:
    scheme: str
    host: str  # canonical
    method: str
    path: str  # path and query, as sent
    headers: tuple[Header, ...]
    body: bytes | None  # None when the body was not buffered
    content_type: str = ""
    # Redirected by the kernel (transparent mode): over plain HTTP the host is only the
    # agent's Host header, so no secret is ever injected.
    transparent: bool = False


@dataclass(frozen=True)
class Denial:
    reason: Reason
    detail: str
    secret: str | None = None


@dataclass
class Injection:
    headers: list[Header]
    path: str
    body: bytes | None
    injected: list[str] = field(default_factory=list)
    body_changed: bool = False
    # An AWS secret whose placeholder key id signed the request: the addon signs it again
    # with the real credentials (egress.sigv4), now or once the body is in.
    resign: tuple[SecretSpec, sigv4.Signed] | None = None
    # An hmac secret whose placeholder is the signature header's value: the addon writes
    # the signature once the body is in (egress.hmacsign).
    sign_hmac: SecretSpec | None = None
    # An azure_shared_key secret whose account the request's SharedKey names: signed again.
    sign_azure: SecretSpec | None = None


def utc_now() -> datetime:
    return datetime.now(UTC)


def https_only(req: RequestParts, spec: SecretSpec) -> Denial | None:
    """A signing secret (aws_sigv4, hmac, azure_shared_key) signs over HTTPS only (plain
    HTTP with allow_http, never in transparent mode)."""
    if req.scheme != "https" and (req.transparent or not spec.allow_http):
        return Denial(Reason.PLAINTEXT_INJECTION,
                      f"secret {spec.name!r} signs only requests sent over HTTPS; use https://",
                      spec.name)  # fmt: skip
    return None


def unavailable(spec: SecretSpec, loaded: bool, key_problem: str | None = None) -> Denial | None:
    """A secret that is not loaded, or whose key cannot sign: the request is not sent."""
    if loaded and key_problem is None:
        return None
    why = "is not loaded" if not loaded else key_problem
    return Denial(Reason.SECRET_UNAVAILABLE,
                  f"secret {spec.name!r} {why}, so the request was not sent", spec.name)  # fmt: skip
