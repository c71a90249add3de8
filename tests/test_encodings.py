"""Finding and scrubbing a secret in its common encodings, buffered and streamed."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from egress.encodings import StreamScrubber, find, make_forms, scrub, stream_forms
from egress.secrets import SecretValue

S = "s3cr3t/VALUE+0123456789=abcd"  # characters every encoding treats differently; 28 bytes
P = "egress-t-placeholder"
FORMS = [make_forms("t", SecretValue(S), P)]

ENCODED = [
    ("raw", lambda x: x),
    ("base64", lambda x: base64.b64encode(x.encode()).decode()),
    ("base64 unpadded", lambda x: base64.b64encode(x.encode()).decode().rstrip("=")),
    ("base64url", lambda x: base64.urlsafe_b64encode(x.encode()).decode()),
    ("hex", lambda x: x.encode().hex()),
    ("HEX", lambda x: x.encode().hex().upper()),
    ("percent", lambda x: quote(x, safe="")),
    ("json", lambda x: json.dumps(x)[1:-1]),
    ("basic pair", lambda x: base64.b64encode(f"git:{x}".encode()).decode()),
    (
        "json in base64url",
        lambda x: base64.urlsafe_b64encode(json.dumps({"k": x}).encode()).decode().rstrip("="),
    ),
]


@pytest.mark.parametrize("encode", [e[1] for e in ENCODED], ids=[e[0] for e in ENCODED])
def test_scrub_replaces_each_form_by_the_placeholder_in_that_form(encode) -> None:  # noqa: ANN001
    data = f"before {encode(S)} after".encode()
    out, n = scrub(data, FORMS)
    assert n == 1
    assert out == f"before {encode(P)} after".encode()
    assert find(data, FORMS) is not None and find(out, FORMS) is None


def test_no_secret_means_byte_identical() -> None:
    data = b'{"a": "ZWdyZXNz", "b": "00ff", "c": "%2F"}'
    assert scrub(data, FORMS) == (data, 0)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_stream_scrubber_finds_secrets_split_across_chunks(chunk: int) -> None:
    body = ("x" * 50 + S + "y" * 13 + base64.b64encode(S.encode()).decode() + "z" * 5).encode()
    s = StreamScrubber(stream_forms(FORMS))
    pieces = [s(body[i : i + chunk]) for i in range(0, len(body), chunk)] + [s(b"")]
    assert all(p != b"" for piece in pieces for p in piece)  # no empty chunk: it would end the body
    out = b"".join(p for piece in pieces for p in piece)
    assert len(out) == len(body)  # Content-Length stays true
    assert S.encode() not in out and base64.b64encode(S.encode()) not in out
    assert s.count == 2
    assert out.startswith(b"x" * 50 + P.encode())


def test_forms_repr_is_redacted() -> None:
    assert S not in repr(FORMS) and S not in str(FORMS[0])
