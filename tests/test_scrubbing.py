"""The client never sees a real secret, whatever the upstream reflects and however."""

from __future__ import annotations

import base64
import gzip
import json
import ssl

import httpx
import pytest

from egress.encodings import find, make_forms
from egress.secrets import SecretValue
from tests.conftest import API, SECRET, RunningProxy
from tests.upstream import Upstream

PH = "egress-api_token-placeholder"
FORMS = [make_forms("api_token", SecretValue(SECRET), PH)]


def client(proxy: RunningProxy) -> httpx.Client:
    return httpx.Client(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca)), timeout=20
    )


def decoded_views(body: bytes) -> list[bytes]:
    """Every way a client might read the body: as is, and decoded."""
    views = [body]
    for decode in (base64.b64decode, bytes.fromhex, gzip.decompress):
        try:
            views.append(decode(body if decode is not bytes.fromhex else body.decode()))  # type: ignore[arg-type]
        except Exception:  # noqa: S112 (not that encoding)
            continue
    return views


@pytest.mark.parametrize("form", ["raw", "base64", "hex", "gzip", "deflate", "chunked", "big"])
def test_reflected_secret_is_scrubbed(proxy: RunningProxy, upstream: Upstream, form: str) -> None:
    with client(proxy) as c:
        r = c.get(
            f"https://{API}:{upstream.port}/reflect?as={form}",
            headers={"authorization": f"Bearer {PH}"},
        )
    assert r.status_code == 200
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # injected
    for view in [*decoded_views(r.content), str(r.headers).encode()]:
        assert find(view, FORMS) is None, f"secret reached the client ({form})"
    if form in ("raw", "gzip", "deflate"):
        assert json.loads(r.content)["authorization"] == f"Bearer {PH}"  # put back, readable
    if form == "chunked":  # streamed: the same-length mask, so that framing and lengths hold
        assert json.loads(r.content)["authorization"].startswith(f"Bearer {PH}")
    if form == "big":
        assert len(r.content) == int(r.headers["content-length"])  # streamed; length unchanged


def test_unknown_content_encoding_on_a_secret_flow_is_refused(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    with client(proxy) as c:
        r = c.get(
            f"https://{API}:{upstream.port}/reflect?as=weird-encoding",
            headers={"authorization": f"Bearer {PH}"},
        )
    assert r.status_code == 502 and r.headers["x-egress-reason"] == "unscrubbable_response"
    assert SECRET not in r.text


def test_response_without_secret_is_byte_identical(proxy: RunningProxy, upstream: Upstream) -> None:
    with client(proxy) as c:
        r = c.get(
            f"https://{API}:{upstream.port}/reflect?as=gzip",
            headers={"x-note": "nothing secret"},
        )
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert json.loads(r.content)["headers"]["x-note"] == "nothing secret"


GUARDS = [
    # (id, headers, path, expected status, reason)
    ("own credential in the secret's header", {"authorization": "Bearer sk-agents-own-key-000000"}, "/g1", 403,
     "foreign_credential"),
    ("own credential as Basic", {"authorization": "Basic " + base64.b64encode(b"me:my-own-password").decode()}, "/g2",
     403, "foreign_credential"),
    ("own key in x-api-key", {"x-api-key": "agents-own-key"}, "/g3", 403, "foreign_credential"),
    ("placeholder in the header", {"authorization": f"Bearer {PH}"}, "/g4", 200, None),
    ("no credential at all", {}, "/g5", 200, None),
    ("SigV4 signed over the placeholder", {"authorization": f"AWS4-HMAC-SHA256 Credential={PH}/20261124/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00"},
     "/g6", 403, "signature_scheme_unsupported"),
    ("presigned URL over the placeholder", {}, f"/g7?X-Amz-Credential={PH}&X-Amz-Signature=00", 403,
     "signature_scheme_unsupported"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "path", "status", "reason"), [g[1:] for g in GUARDS], ids=[g[0] for g in GUARDS]
)
def test_credential_guards(proxy: RunningProxy, upstream: Upstream, headers: dict, path: str, status: int,
                           reason: str | None) -> None:  # fmt: skip
    with client(proxy) as c:
        r = c.get(f"https://{API}:{upstream.port}{path}", headers=headers)
    assert r.status_code == status, r.text
    if reason:
        assert r.headers["x-egress-reason"] == reason
        assert upstream.requests == []
    assert SECRET not in r.text


def test_websocket_frames_are_scrubbed(tmp_path, test_ca, test_ca_file) -> None:  # noqa: ANN001
    import ssl as _ssl

    from tests.conftest import base_config, start_proxy, write_config
    from tests.rawclient import connect_tunnel
    from tests.wsutil import WsUpstream, ws_exchange

    ctx = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(API).configure_cert(ctx)
    up = WsUpstream(ctx)
    cfg = base_config(tmp_path, test_ca_file, up.port)
    cfg["allow"][0]["websocket"] = True
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        with connect_tunnel(p.port, API, up.port, p.ca) as s:
            got = ws_exchange(s, f"{API}:{up.port}", [("authorization", f"Bearer {PH}")], ["hello"])
    finally:
        assert p.stop() == 0
        up.close()
    assert up.seen_auth == [f"Bearer {SECRET}"]  # injected into the upgrade request
    assert got == [f"auth:Bearer {PH}", "echo:hello"]  # the reflected secret came back scrubbed


def test_http2_reflection_is_scrubbed(tmp_path, test_ca, test_ca_file) -> None:  # noqa: ANN001
    import ssl as _ssl

    from tests.conftest import base_config, start_proxy, write_config
    from tests.h2util import H2Upstream, h2_requests
    from tests.rawclient import connect_tunnel

    ctx = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(API).configure_cert(ctx)
    with H2Upstream(ctx) as up:
        p = start_proxy(
            write_config(tmp_path, base_config(tmp_path, test_ca_file, up.port)), tmp_path
        )
        try:
            bodies: dict[str, bytes] = {}
            with connect_tunnel(p.port, API, up.port, p.ca, alpn=["h2"]) as s:
                status = h2_requests(
                    s, [(f"{API}:{up.port}", "/h2")], [("authorization", f"Bearer {PH}")], bodies
                )
        finally:
            assert p.stop() == 0
    assert status == {"/h2": 200}
    assert up.recorder.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert json.loads(bodies["/h2"])["authorization"] == f"Bearer {PH}"


@pytest.mark.parametrize("size", ["", "-big"], ids=["buffered", "streamed"])
@pytest.mark.parametrize("br", ["lf", "crlf", "jsonlf"])
@pytest.mark.parametrize("width", [60, 64, 76])
def test_reflected_secret_in_wrapped_base64_is_scrubbed(
    proxy: RunningProxy, upstream: Upstream, width: int, br: str, size: str
) -> None:
    """Code hosts return file contents as base64 wrapped at 60/64/76 columns; a secret
    inside must not survive at any alignment, buffered or streamed."""
    with client(proxy) as c:
        r = c.get(f"https://{API}:{upstream.port}/reflect?as=wrap{width}-{br}{size}",
                  headers={"authorization": f"Bearer {PH}"})  # fmt: skip
    assert r.status_code == 200
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    content = json.loads(r.content, strict=False)["content"]  # raw line breaks in the string
    assert find(r.content, FORMS) is None
    assert find(base64.b64decode(content.replace("\n", "").replace("\r", "")), FORMS) is None
    if size:
        assert len(r.content) == int(r.headers["content-length"])


def test_reason_phrase_is_scrubbed(proxy: RunningProxy, upstream: Upstream) -> None:
    with client(proxy) as c:
        r = c.get(f"https://{API}:{upstream.port}/reflect?as=reason",
                  headers={"authorization": f"Bearer {PH}"})  # fmt: skip
    assert r.status_code == 401
    assert SECRET not in r.reason_phrase and PH in r.reason_phrase


def test_transfer_coded_response_is_refused(proxy: RunningProxy, upstream: Upstream) -> None:
    """Transfer-Encoding: gzip, chunked would pass undecoded, past the scrubber."""
    with client(proxy) as c:
        r = c.get(f"https://{API}:{upstream.port}/reflect?as=te-gzip",
                  headers={"authorization": f"Bearer {PH}", "te": "gzip"})  # fmt: skip
    assert r.status_code == 502 and r.headers["x-egress-reason"] == "unscrubbable_response"
    for view in decoded_views(r.content):
        assert find(view, FORMS) is None
    assert "te" not in {k.lower() for k in upstream.requests[-1].headers}  # TE: gzip not forwarded


def test_a_server_sent_event_arrives_before_the_next_one_is_sent(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    """Streaming without delay: the first event (scrubbed) reaches the client long before
    the upstream sends the second, on a flow that carried an injected secret."""
    import time

    with client(proxy) as c:
        start = time.monotonic()
        with c.stream("GET", f"https://{API}:{upstream.port}/reflect?as=sse",
                      headers={"authorization": f"Bearer {PH}", "x-pause": "3"}) as r:  # fmt: skip
            lines = r.iter_lines()
            first = next(lines)
            first_at = time.monotonic() - start
            rest = list(lines)
    assert json.loads(first[6:])["auth"].startswith(f"Bearer {PH}")  # the same-length mask
    assert first_at < 1.5, f"the first event took {first_at:.2f}s (the second is sent at 3s)"
    assert any('"n": 2' in line for line in rest)


def _auth(request: bytes) -> bytes:
    for line in request.split(b"\r\n"):
        if line.lower().startswith(b"authorization:"):
            return line.split(b":", 1)[1].strip()
    return b""


BROKEN_UPSTREAMS = {
    "invalid header line": lambda req: b"HTTP/1.1 200 OK\r\nno colon here " + _auth(req) + b"\r\n\r\n",
    "bad status line": lambda req: b"HTTP/9 " + _auth(req) + b"\r\n\r\n",
    "head cut off": lambda req: b"HTTP/1.1 200 OK\r\nX-Echo: " + _auth(req),
    "invalid header name": lambda req: b"HTTP/1.1 200 OK\r\nX E: " + _auth(req) + b"\r\nContent-Length: 0\r\n\r\n",
    "bad chunk": lambda req: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz " + _auth(req) + b"\r\n",
}  # fmt: skip


@pytest.mark.parametrize("answer", list(BROKEN_UPSTREAMS.values()), ids=list(BROKEN_UPSTREAMS))
def test_a_broken_upstream_answer_never_reaches_the_client(
    tmp_path,
    test_ca,
    test_ca_file,
    answer,  # noqa: ANN001
) -> None:
    """mitmproxy's own 502 page quotes the upstream's raw bytes; egress shows none."""
    import ssl as _ssl

    from tests.conftest import base_config, start_proxy, write_config
    from tests.upstream import RawUpstream

    ctx = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(API).configure_cert(ctx)
    up = RawUpstream(ctx, answer)
    p = start_proxy(write_config(tmp_path, base_config(tmp_path, test_ca_file, up.port)), tmp_path)
    try:
        with client(p) as c:
            try:
                r = c.get(
                    f"https://{API}:{up.port}/broken", headers={"authorization": f"Bearer {PH}"}
                )
                seen = r.content + str(r.headers).encode() + r.reason_phrase.encode()
            except httpx.HTTPError as e:
                seen = str(e).encode()
    finally:
        assert p.stop() == 0
        up.close()
    assert up.seen and f"Bearer {SECRET}".encode() in up.seen[0]  # injected, then echoed back
    for view in decoded_views(seen):
        assert find(view, FORMS) is None, seen[:300]
    records = [r for r in p.audit() if r["path"] == "/broken"]
    assert len(records) == 1 and records[0]["decision"] == "error", records
    assert SECRET not in (records[0]["detail"] or "")
