"""Proxy credentials (egress.identity): parsing, and a comparison that is constant-time by
construction (hmac.compare_digest over equal-length digests), not by measurement."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress import identity
from egress.identity import Credentials, Identified, Unidentified, authenticate, token_digest
from egress.reasons import Reason

CREDS = Credentials({"alpha": token_digest("tok-a"), "beta": token_digest("tok-b")})


def basic(user: bytes | str, password: bytes | str) -> str:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return "Basic " + base64.b64encode(u + b":" + p).decode()


@pytest.mark.parametrize(
    "header, expect",
    [
        (basic("alpha", "tok-a"), Identified("alpha")),
        (basic("beta", "tok-b"), Identified("beta")),
        ("basic " + base64.b64encode(b"alpha:tok-a").decode(), Identified("alpha")),  # scheme case
        (basic("alpha", "tok-b"), Reason.PROXY_AUTH_FAILED),  # the other agent's token
        (basic("alpha", "tok-a "), Reason.PROXY_AUTH_FAILED),
        (basic("alpha", ""), Reason.PROXY_AUTH_FAILED),
        (basic("gamma", "tok-a"), Reason.PROXY_AUTH_FAILED),  # unknown agent
        (basic("ALPHA", "tok-a"), Reason.PROXY_AUTH_FAILED),  # names are exact
        (basic(b"alph\xe4", "tok-a"), Reason.PROXY_AUTH_REQUIRED),  # not ASCII
        (None, Reason.PROXY_AUTH_REQUIRED),
        ("", Reason.PROXY_AUTH_REQUIRED),
        ("Bearer tok-a", Reason.PROXY_AUTH_REQUIRED),
        ("Basic !!!", Reason.PROXY_AUTH_REQUIRED),
        ("Basic " + base64.b64encode(b"alpha").decode(), Reason.PROXY_AUTH_REQUIRED),  # no colon
        ("Basic " + "A" * 5000, Reason.PROXY_AUTH_REQUIRED),  # over the size bound
    ],
)
def test_proxy_credentials(header: str | None, expect: Any) -> None:
    got = authenticate(header, CREDS)
    if isinstance(expect, Identified):
        assert got == expect
    else:
        assert isinstance(got, Unidentified) and got.reason is expect
        assert "tok-a" not in got.detail and "tok-b" not in got.detail


def test_the_comparison_is_hmac_compare_digest_on_equal_length_digests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every check, whatever the name or token, is one hmac.compare_digest of two SHA-256
    digests: its time does not depend on where they differ, and the token's length never
    reaches it."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(identity.hmac, "compare_digest", spy)
    for header in (
        basic("alpha", "tok-a"),
        basic("alpha", "x" * 3000),
        basic("gamma", "t"),
        basic("beta", ""),
    ):
        authenticate(header, CREDS)
    assert len(calls) == 4
    assert all(len(a) == len(b) == 32 for a, b in calls)
    assert calls[0] == (hashlib.sha256(b"tok-a").digest(), CREDS.digests["alpha"])
    # No other comparison of secret material: the module never uses == on digests.
    source = open(identity.__file__).read()
    assert (
        "compare_digest(" in source and "digest() ==" not in source and "== expected" not in source
    )


def test_credentials_never_show_a_digest() -> None:
    assert repr(CREDS) == "Credentials(agents=['alpha', 'beta'])"


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_only_the_right_token_identifies(user: bytes, password: bytes) -> None:
    got = authenticate(basic(user, password), CREDS)
    right = (user, password) in ((b"alpha", b"tok-a"), (b"beta", b"tok-b"))
    assert isinstance(got, Identified) == right


def test_an_unknown_name_is_never_quoted() -> None:
    """A token given as the user name (http://<token>@host) must not reach the audit log."""
    got = authenticate(basic("s3cr3t-token-as-user", ""), CREDS)
    assert isinstance(got, Unidentified) and "s3cr3t" not in got.detail
    assert "'alpha'" in authenticate(basic("alpha", "nope"), CREDS).detail  # type: ignore[union-attr]
