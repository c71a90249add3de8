"""aws-chunked: the framing boto3 (1.36 and later) and the AWS CLI put around S3 uploads.

Before egress removed it, ``decoding.decode`` knew no ``aws-chunked`` and every boto3
PutObject/UploadPart through egress was refused 413 ``body_too_large``. These tests check the
strict parser on tables of valid and malformed framings, round trips of random chunkings
(with and without chunk signatures and trailers), a differential against botocore's own
encoder (``AwsChunkedWrapper``), and real uploads by boto3 and the aws CLI through a real
egress to moto's S3 over TLS.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from egress import decoding
from egress.decoding import DecodeError, TooLarge, split_aws_chunked
from tests.conftest import RunningProxy, base_config, proxy_env, start_proxy, write_config
from tests.s3_upstream import REGION, S3_HOST, S3Upstream, moto_missing

SIG = "a" * 64
CRC = b"x-amz-checksum-crc32"


def frame(
    chunks: list[bytes],
    trailers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    signature: str | None = None,
    upper: bool = False,
) -> bytes:
    """An aws-chunked body, built the way the SDKs build it."""
    ext = f";chunk-signature={signature}".encode() if signature else b""
    out = io.BytesIO()
    for c in [*chunks, b""]:
        size = f"{len(c):x}".encode()
        out.write((size.upper() if upper else size) + ext + b"\r\n")
        if c:
            out.write(c + b"\r\n")
    for name, value in trailers:
        out.write(name + b":" + value + b"\r\n")
    out.write(b"\r\n")
    return out.getvalue()


# --- tables ------------------------------------------------------------------------------

VALID = [
    # (id, body, payload, trailers)
    ("boto3 unsigned with crc32 trailer",
     b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n",
     b"hello", [(CRC, b"NhCmhg==")]),
    ("no trailer", b"5\r\nhello\r\n0\r\n\r\n", b"hello", []),
    ("empty payload", b"0\r\n\r\n", b"", []),
    ("empty payload with trailer", b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n", b"",
     [(CRC, b"AAAAAA==")]),
    ("several chunks", b"3\r\nabc\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n", b"abcdef", []),
    ("signed chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD)",
     f"5;chunk-signature={SIG}\r\nhello\r\n0;chunk-signature={SIG}\r\n\r\n".encode(),
     b"hello", []),
    ("signed chunks with trailer signature (...-PAYLOAD-TRAILER)",
     f"5;chunk-signature={SIG}\r\nhello\r\n0;chunk-signature={SIG}\r\n"
     f"x-amz-checksum-crc32:NhCmhg==\r\nx-amz-trailer-signature:{'b' * 64}\r\n\r\n".encode(),
     b"hello", [(CRC, b"NhCmhg=="), (b"x-amz-trailer-signature", b"b" * 64)]),
    ("upper-case hex size and signature",
     f"A;chunk-signature={'F' * 64}\r\n0123456789\r\n0\r\n\r\n".encode(), b"0123456789", []),
    ("leading zeros, 16 digits", b"0000000000000003\r\nabc\r\n0000000000000000\r\n\r\n",
     b"abc", []),
    ("whitespace after the colon is stripped", b"0\r\nx-amz-checksum-sha256: \tabc= \r\n\r\n",
     b"", [(b"x-amz-checksum-sha256", b"abc=")]),
    ("CRLF and framing bytes inside chunk data", b"7\r\n0\r\n\r\n\r\n\r\n0\r\n\r\n",
     b"0\r\n\r\n\r\n", []),
    ("binary data", b"4\r\n\x00\xff\r\n\r\n0\r\n\r\n", b"\x00\xff\r\n", []),
    ("empty trailer value", b"0\r\nx-a:\r\n\r\n", b"", [(b"x-a", b"")]),
    ("64 trailers", b"0\r\n" + b"".join(b"t%d:v\r\n" % i for i in range(64)) + b"\r\n", b"",
     [(b"t%d" % i, b"v") for i in range(64)]),
]  # fmt: skip


@pytest.mark.parametrize("body,payload,trailers", [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_framings(body: bytes, payload: bytes, trailers: list[tuple[bytes, bytes]]) -> None:
    assert split_aws_chunked(body, 1 << 20) == (payload, trailers)
    assert decoding.decode(body, "aws-chunked", 1 << 20) == payload
    assert split_aws_chunked(bytearray(body), 1 << 20) == (payload, trailers)


HELLO = b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n"
MALFORMED = [
    # (id, body, a fragment of the error message)
    ("empty body", b"", "ends where a chunk-size line"),
    ("truncated size line", b"5", "ends inside a chunk-size line"),
    ("truncated CRLF of size line", b"5\r", "ends inside a chunk-size line"),
    ("truncated chunk", b"5\r\nhel", "truncated chunk"),
    ("chunk without its CRLF at the end", b"5\r\nhello", "truncated chunk"),
    ("size too small", b"4\r\nhello\r\n0\r\n\r\n", "not followed by CRLF"),
    ("size too large", b"6\r\nhello\r\n0\r\n\r\n", "not followed by CRLF"),
    ("size far too large", b"ff\r\nhello\r\n0\r\n\r\n", "truncated chunk"),
    ("no last chunk", b"5\r\nhello\r\n", "ends where a chunk-size line"),
    ("no final CRLF", b"5\r\nhello\r\n0\r\n", "ends where a trailer line"),
    (
        "trailer without final CRLF",
        b"0\r\nx-amz-checksum-crc32:NhCmhg==\r\n",
        "ends where a trailer",
    ),
    ("trailer line truncated", b"0\r\nx-amz-checksum-crc32:NhCmhg==", "ends inside a trailer"),
    ("extra bytes after the end", HELLO + b"x", "1 bytes after the end"),
    ("a second body after the end", HELLO + HELLO, "after the end"),
    ("CRLF after the end", HELLO + b"\r\n", "2 bytes after the end"),
    ("non-hex size", b"g\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("plus sign", b"+5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("underscore", b"0_5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("space before size", b" 5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("space after size", b"5 \r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("empty size", b"\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("17 hex digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("negative", b"-5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("LF-only line ends", b"5\nhello\n0\n\n", "bare LF"),
    ("LF-only after the data", b"5\r\nhello\n0\r\n\r\n", "not followed by CRLF"),
    ("LF-only final line", b"5\r\nhello\r\n0\r\n\n", "bare LF"),
    ("LF-only trailer", b"0\r\nx-a:b\n\r\n", "bare LF"),
    ("bare CR in size line", b"5\r\r\nhello\r\n0\r\n\r\n", "bare CR"),
    ("bare CR in trailer", b"0\r\nx-a:b\rc\r\n\r\n", "bare CR"),
    ("other extension", b"5;foo=bar\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    ("empty extension", b"5;\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (
        "signature too short",
        f"5;chunk-signature={SIG[:-1]}\r\nhello\r\n0\r\n\r\n".encode(),
        "bad chunk extension",
    ),
    (
        "signature too long",
        f"5;chunk-signature={SIG}a\r\nhello\r\n0\r\n\r\n".encode(),
        "bad chunk extension",
    ),
    (
        "signature not hex",
        f"5;chunk-signature={'g' * 64}\r\nhello\r\n0\r\n\r\n".encode(),
        "bad chunk extension",
    ),
    (
        "signature then another extension",
        f"5;chunk-signature={SIG};x=y\r\nhello\r\n0\r\n\r\n".encode(),
        "bad chunk extension",
    ),
    (
        "space before the extension",
        f"5 ;chunk-signature={SIG}\r\nhello\r\n0\r\n\r\n".encode(),
        "bad chunk size",
    ),
    (
        "upper-case extension name",
        f"5;CHUNK-SIGNATURE={SIG}\r\nhello\r\n0\r\n\r\n".encode(),
        "bad chunk extension",
    ),
    ("trailer without colon", b"0\r\nx-amz-checksum-crc32\r\n\r\n", "bad trailer line"),
    ("trailer with empty name", b"0\r\n:value\r\n\r\n", "bad trailer line"),
    ("trailer name with space", b"0\r\nx amz:value\r\n\r\n", "bad trailer line"),
    ("trailer name with space before colon", b"0\r\nx-amz :value\r\n\r\n", "bad trailer line"),
    ("trailer value with NUL", b"0\r\nx-amz:a\x00b\r\n\r\n", "control character"),
    ("too many trailers", b"0\r\n" + b"t:v\r\n" * 65 + b"\r\n", "more than 64 trailer lines"),
    ("trailer line too long", b"0\r\nx:" + b"v" * 9000 + b"\r\n\r\n", "longer than 8192"),
    ("size line too long", b"5;chunk-signature=" + b"a" * 200 + b"\r\n", "longer than"),
]


@pytest.mark.parametrize("body,message", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_framings_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match="aws-chunked") as info:
        split_aws_chunked(body, 1 << 20)
    assert message in str(info.value)
    assert not isinstance(info.value, TooLarge)
    with pytest.raises(DecodeError):
        decoding.decode(body, "aws-chunked", 1 << 20)


OVER_LIMIT = [
    # (id, body, limit)
    ("one chunk over", b"6\r\nhello!\r\n0\r\n\r\n", 5),
    ("the sum of chunks over", b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 5),
    ("huge announced size, no data (never allocated)", b"ffffffffffffffff\r\n", 1 << 20),
    ("huge size, signed", f"7fffffffffffffff;chunk-signature={SIG}\r\nx".encode(), 1 << 20),
]


@pytest.mark.parametrize("body,limit", [c[1:] for c in OVER_LIMIT], ids=[c[0] for c in OVER_LIMIT])
def test_over_the_limit(body: bytes, limit: int) -> None:
    with pytest.raises(TooLarge):
        split_aws_chunked(body, limit)
    with pytest.raises(TooLarge):
        decoding.decode(body, "aws-chunked", limit)


def test_exactly_at_the_limit() -> None:
    body = frame([b"abc", b"de"])
    assert split_aws_chunked(body, 5) == (b"abcde", [])
    assert decoding.decode(body, "aws-chunked", 5) == b"abcde"


def test_many_tiny_chunks() -> None:
    """A body of 100 000 one-byte chunks parses (offsets, not re-slicing the rest)."""
    payload = bytes(range(256)) * 390 + b"x" * 160
    body = frame([payload[i : i + 1] for i in range(len(payload))])
    assert split_aws_chunked(body, len(payload)) == (payload, [])


# --- Content-Encoding lists --------------------------------------------------------------

GZ_HELLO = frame([gzip.compress(b"hello gzip")], [(CRC, b"xyz=")])
HEADERS = [
    # (id, header, body, decoded or exception)
    ("aws-chunked alone", "aws-chunked", HELLO, b"hello"),
    ("case and spaces", " AWS-Chunked ", HELLO, b"hello"),
    ("with identity", "identity, aws-chunked", HELLO, b"hello"),
    ("aws-chunked,gzip (AWS documents it first, yet it is the outer framing)",
     "aws-chunked,gzip", GZ_HELLO, b"hello gzip"),
    ("gzip,aws-chunked (botocore appends it)", "gzip,aws-chunked", GZ_HELLO, b"hello gzip"),
    ("aws-chunked,deflate", "aws-chunked, deflate", frame([zlib.compress(b"defl")]), b"defl"),
    ("twice", "aws-chunked, aws-chunked", frame([HELLO]), DecodeError),
    ("with an unknown coding", "aws-chunked, bzip2", HELLO, DecodeError),
    ("gzip declared, payload not gzip", "aws-chunked,gzip", HELLO, DecodeError),
    ("not framed", "aws-chunked", b"hello", DecodeError),
]  # fmt: skip


@pytest.mark.parametrize(
    "header,body,expected", [c[1:] for c in HEADERS], ids=[c[0] for c in HEADERS]
)
def test_content_encoding_lists(header: str, body: bytes, expected: Any) -> None:
    assert decoding.is_known(header) == ("bzip2" not in header)
    assert decoding.is_aws_chunked(header)
    if isinstance(expected, bytes):
        assert decoding.decode(body, header, 1 << 20) == expected
    else:
        with pytest.raises(expected):
            decoding.decode(body, header, 1 << 20)


def test_is_aws_chunked() -> None:
    assert "aws-chunked" in decoding.KNOWN
    for header in ("gzip", "", "identity", "aws-chunkedx", "x-aws-chunked"):
        assert not decoding.is_aws_chunked(header)


def test_limit_applies_to_the_inflated_payload() -> None:
    bomb = frame([gzip.compress(b"\x00" * 200_000)])
    assert len(bomb) < 1000
    with pytest.raises(TooLarge):
        decoding.decode(bomb, "aws-chunked,gzip", 65536)
    # A compressed payload a little larger than the limit that inflates under it is fine.
    noise = os.urandom(1000)
    body = frame([gzip.compress(noise)])
    assert decoding.decode(body, "aws-chunked,gzip", 1000) == noise


# --- properties --------------------------------------------------------------------------

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=30)
VALUE = st.binary(max_size=100).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip(b" \t")
)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[tuple[bytes, bytes]], str | None]:
    payload = draw(st.binary(max_size=3000))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=20)))
    edges = [0, *cuts, len(payload)]
    chunks = [payload[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]
    names = draw(st.lists(TOKEN, max_size=5))
    trailers = [(n.encode(), draw(VALUE)) for n in names]
    signature = draw(st.none() | st.text("0123456789abcdef", min_size=64, max_size=64))
    return payload, chunks, trailers, signature


@settings(max_examples=300, deadline=None)
@given(chunked(), st.booleans())
def test_round_trip(case: tuple[Any, ...], upper: bool) -> None:
    payload, chunks, trailers, signature = case
    body = frame(chunks, trailers, signature, upper)
    assert split_aws_chunked(body, len(payload)) == (payload, trailers)
    assert decoding.decode(body, "aws-chunked", len(payload)) == payload
    if payload:
        with pytest.raises(TooLarge):
            split_aws_chunked(body, len(payload) - 1)


@settings(max_examples=100, deadline=None)
@given(chunked())
def test_every_strict_prefix_is_refused(case: tuple[Any, ...]) -> None:
    payload, chunks, trailers, signature = case
    body = frame(chunks, trailers, signature)
    for cut in range(len(body)):
        with pytest.raises(DecodeError):
            split_aws_chunked(body[:cut], 1 << 20)


@settings(max_examples=300, deadline=None)
@given(chunked(), st.integers(0, 10**6), st.binary(min_size=1, max_size=3))
def test_mutations_raise_only_decode_error(case: tuple[Any, ...], at: int, junk: bytes) -> None:
    """Any byte changed, inserted or removed: a clean DecodeError or a valid parse, never a
    crash, and a parse that succeeds yields no more than the body held."""
    payload, chunks, trailers, signature = case
    body = frame(chunks, trailers, signature)
    at %= len(body)
    for mutated in (
        body[:at] + junk + body[at + len(junk) :],
        body[:at] + junk + body[at:],
        body[:at] + body[at + 1 :],
    ):
        try:
            got, _ = split_aws_chunked(mutated, 1 << 20)
        except DecodeError:
            continue
        assert len(got) < len(mutated)


def _botocore_checksums() -> dict[str, Any]:
    from botocore import httpchecksum

    found = getattr(httpchecksum, "_CHECKSUM_CLS", None)
    if found:
        return dict(found)
    return {"crc32": httpchecksum.Crc32Checksum, "sha1": httpchecksum.Sha1Checksum,
            "sha256": httpchecksum.Sha256Checksum}  # fmt: skip


ALGORITHMS = sorted(_botocore_checksums())


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(max_size=5000),
    chunk_size=st.integers(1, 2000),
    algorithm=st.sampled_from([None, *ALGORITHMS]),
    read_size=st.none() | st.integers(1, 700),
)
def test_differential_against_botocore(
    payload: bytes, chunk_size: int, algorithm: str | None, read_size: int | None
) -> None:
    """botocore's own encoder (what boto3 sends): egress gets back the payload and the
    checksum trailer, whatever the chunk size and however the body is read."""
    from botocore.httpchecksum import AwsChunkedWrapper

    kw: dict[str, Any] = {"chunk_size": chunk_size}
    if algorithm:
        kw.update(checksum_cls=_botocore_checksums()[algorithm],
                  checksum_name=f"x-amz-checksum-{algorithm}")  # fmt: skip
    wrapper = AwsChunkedWrapper(io.BytesIO(payload), **kw)
    parts = []
    while part := wrapper.read(read_size):
        parts.append(part)
    body = b"".join(parts)
    got, trailers = split_aws_chunked(body, len(payload))
    assert got == payload
    if algorithm:
        checksum = _botocore_checksums()[algorithm]()
        checksum.update(payload)
        expected = checksum.b64digest().encode()
        assert trailers == [(f"x-amz-checksum-{algorithm}".encode(), expected)]
    else:
        assert trailers == []
    assert decoding.decode(body, "aws-chunked", len(payload)) == payload


# --- end to end: boto3 and the aws CLI through a real egress to moto's S3 -----------------

needs_moto = pytest.mark.skipif(moto_missing() is not None, reason=moto_missing() or "")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA) -> Iterator[S3Upstream]:
    if moto_missing():
        pytest.skip(moto_missing() or "")
    up = S3Upstream(test_ca, tmp_path_factory.mktemp("moto"), auth=False)
    up.start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def s3_proxy(tmp_path_factory: pytest.TempPathFactory, s3: S3Upstream,
             test_ca_file: Path) -> Iterator[RunningProxy]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("egress-s3")
    cfg = base_config(tmp, test_ca_file, s3.port)
    cfg["allow"].append({"host": S3_HOST, "ports": [s3.port]})
    cfg["upstream"]["resolve"][S3_HOST] = "127.0.0.1"
    assert cfg["limits"]["max_body_bytes"] == 65536
    p = start_proxy(write_config(tmp, cfg), tmp)
    try:
        yield p
    finally:
        code = p.stop()
    assert code == 0, p.stderr_path.read_text()
    assert "Traceback" not in p.stderr_path.read_text()


def agent_s3(proxy: RunningProxy, s3: S3Upstream, sent: list[dict[str, str]]) -> Any:
    """boto3 as the agent: through egress, trusting egress's CA, dummy credentials."""
    import boto3
    from botocore.config import Config

    config = Config(
        proxies={"https": proxy.url},
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1},
        request_checksum_calculation="when_supported",  # boto3's default, whatever ~/.aws says
    )
    client = boto3.session.Session().client(
        "s3", region_name=REGION, endpoint_url=s3.url(S3_HOST), verify=str(proxy.ca),
        aws_access_key_id="AKIAAGENTDUMMY000000", aws_secret_access_key="agent-dummy",
        config=config,
    )  # fmt: skip

    def record(request: Any, **_: Any) -> None:
        sent.append({k.lower(): v.decode() if isinstance(v, bytes) else v
                     for k, v in request.headers.items()})  # fmt: skip

    client.meta.events.register("before-send.s3.*", record)
    return client


def denials(proxy: RunningProxy, since: int) -> list[dict[str, Any]]:
    return [r for r in proxy.audit()[since:] if r.get("decision") != "allow"]


@needs_moto
def test_boto3_uploads_through_egress(s3_proxy: RunningProxy, s3: S3Upstream) -> None:
    since = len(s3_proxy.audit())
    sent: list[dict[str, str]] = []
    agent = agent_s3(s3_proxy, s3, sent)
    agent.create_bucket(Bucket="egress-boto3")
    put = agent.put_object(Bucket="egress-boto3", Key="small", Body=b"hello through egress")
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    # The case of the bug: boto3 really framed the upload as aws-chunked.
    assert "aws-chunked" in sent[-1].get("content-encoding", ""), sent[-1]
    assert sent[-1]["x-amz-decoded-content-length"] == "20"
    big = os.urandom(40_000)
    agent.upload_fileobj(io.BytesIO(big), "egress-boto3", "big")
    assert "aws-chunked" in sent[-1].get("content-encoding", ""), sent[-1]

    direct = s3.client("s3")
    assert direct.get_object(Bucket="egress-boto3", Key="small")["Body"].read() == (
        b"hello through egress"
    )
    assert direct.get_object(Bucket="egress-boto3", Key="big")["Body"].read() == big
    assert agent.get_object(Bucket="egress-boto3", Key="big")["Body"].read() == big
    assert denials(s3_proxy, since) == []


@needs_moto
def test_boto3_upload_over_the_body_limit_is_streamed(
    s3_proxy: RunningProxy, s3: S3Upstream
) -> None:
    """Over limits.max_body_bytes (100 KB > 64 KiB) egress neither holds nor decodes the body:
    it streams it (docs/config.md), so the framing reaches S3 untouched."""
    sent: list[dict[str, str]] = []
    agent = agent_s3(s3_proxy, s3, sent)
    agent.create_bucket(Bucket="egress-streamed")
    since = len(s3_proxy.audit())
    data = os.urandom(100_000)
    agent.put_object(Bucket="egress-streamed", Key="big", Body=data)
    assert "aws-chunked" in sent[-1].get("content-encoding", ""), sent[-1]
    assert s3.client("s3").get_object(Bucket="egress-streamed", Key="big")["Body"].read() == data
    assert denials(s3_proxy, since) == []


@needs_moto
@pytest.mark.skipif(shutil.which("aws") is None, reason="needs the aws CLI (pip install awscli)")
def test_aws_cli_upload_through_egress(
    s3_proxy: RunningProxy, s3: S3Upstream, tmp_path: Path
) -> None:
    since = len(s3_proxy.audit())
    s3.client("s3").create_bucket(Bucket="egress-cli")
    src = tmp_path / "upload.bin"
    src.write_bytes(os.urandom(30_000))
    config = tmp_path / "aws-config"  # isolation: nothing from ~/.aws, path-style addressing
    config.write_text("[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n")
    env = proxy_env(
        HTTPS_PROXY=s3_proxy.url, AWS_CA_BUNDLE=str(s3_proxy.ca), AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_ACCESS_KEY_ID="AKIAAGENTDUMMY000000",
        AWS_SECRET_ACCESS_KEY="agent-dummy", AWS_DEFAULT_REGION=REGION, AWS_MAX_ATTEMPTS="1",
        AWS_REQUEST_CHECKSUM_CALCULATION="when_supported",
    )  # fmt: skip
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(k, None)
    run = subprocess.run(
        ["aws", "s3", "cp", str(src), "s3://egress-cli/upload.bin",
         "--endpoint-url", s3.url(S3_HOST), "--debug"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "aws-chunked" in run.stderr  # --debug shows the request headers it sent
    got = s3.client("s3").get_object(Bucket="egress-cli", Key="upload.bin")["Body"].read()
    assert got == src.read_bytes()
    assert denials(s3_proxy, since) == []
