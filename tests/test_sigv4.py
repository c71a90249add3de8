"""AWS SigV4 re-signing (egress.sigv4 and its place in injection.plan), as pure logic.

The proof that a re-signed request is right is differential: the agent signs with botocore
and placeholder credentials, egress signs again with the real ones, and the result must be
the signature botocore itself computes for the same request with the real credentials at
the same instant. That holds for generated requests (methods, paths with reserved and
non-ASCII characters, query strings, repeated headers, bodies, services, regions, session
tokens), in both forms (Authorization header and presigned URL). tests/test_aws_sigv4.py
then shows a real S3 server (moto) accepting what egress signs.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("botocore")
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

from egress import sigv4  # noqa: E402
from egress.config import parse  # noqa: E402
from egress.config.model import AwsSpec  # noqa: E402
from egress.injection import Denial, Injection, RequestParts, plan  # noqa: E402
from egress.reasons import Reason  # noqa: E402
from egress.secrets import SecretValue  # noqa: E402

PH = "AKIAEGRESS0000000001"
REAL_KEY_ID = "AKIAREALKEYID0000042"
REAL_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYrealSECRET"
REAL_TOKEN = "FwoGZXIvYXdzEXAMPLEsessionTOKEN//////////wEaDreal+token="
AGENT_NOW = datetime(2026, 12, 3, 18, 0, 0, tzinfo=UTC)  # the agent's clock: 2 h behind
EGRESS_NOW = datetime(2026, 12, 3, 20, 0, 0, tzinfo=UTC)


def real_value(token: str | None = None) -> SecretValue:
    parts = [("access_key_id", REAL_KEY_ID), ("secret_access_key", REAL_SECRET)]
    if token:
        parts.append(("session_token", token))
    return SecretValue(REAL_SECRET, tuple(parts))


def botocore_sign(creds: Credentials, method: str, url: str, headers: list[tuple[str, str]],
                  body: bytes, service: str, region: str, at: datetime) -> AWSRequest:  # fmt: skip
    request = AWSRequest(method=method, url=url, data=body)
    for k, v in headers:
        request.headers[k] = v
    cls = S3SigV4Auth if service == "s3" else SigV4Auth
    with mock.patch("botocore.auth.get_current_datetime", return_value=at.replace(tzinfo=None)):
        cls(creds, service, region).add_auth(request)
    return request


def botocore_presign(creds: Credentials, method: str, url: str, service: str, region: str,
                     at: datetime, expires: int = 900) -> str:  # fmt: skip
    request = AWSRequest(method=method, url=url)
    cls = S3SigV4QueryAuth if service == "s3" else SigV4QueryAuth
    with mock.patch("botocore.auth.get_current_datetime", return_value=at.replace(tzinfo=None)):
        cls(creds, service, region, expires=expires).add_auth(request)
    return request.url


def split(url: str) -> tuple[str, str]:
    u = urlsplit(url)
    return u.netloc, u.path + (f"?{u.query}" if u.query else "")


# --- the differential property ------------------------------------------------------------

SEGMENT = st.text(st.sampled_from("abcXYZ019-_.~ !$&'()*+,;=:@é/%"), min_size=1, max_size=12)
PARAM = st.tuples(st.text(st.sampled_from("abcxyz-_.~"), min_size=1, max_size=6),
                  st.text(st.sampled_from("abc 019/+=&é~"), max_size=8))  # fmt: skip
HEADER = st.tuples(st.sampled_from(["content-type", "x-amz-meta-a", "x-amz-acl", "content-md5",
                                    "x-amz-meta-b"]),
                   st.text(st.sampled_from("abc 019/+=;  "), min_size=1, max_size=10)
                   .map(str.strip).filter(bool))  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, str, list[tuple[str, str]], bytes]:
    service, host = draw(st.sampled_from([
        ("s3", "s3.eu-west-1.amazonaws.com"), ("s3", "bkt.s3.eu-west-1.amazonaws.com"),
        ("sqs", "sqs.eu-west-1.amazonaws.com"), ("iam", "iam.amazonaws.com"),
        ("execute-api", "abc123.execute-api.eu-west-1.amazonaws.com"),
    ]))  # fmt: skip
    region = "us-east-1" if service == "iam" else "eu-west-1"
    method = draw(st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]))
    path = "/" + "/".join(quote(s, safe="/") for s in draw(st.lists(SEGMENT, max_size=3)))
    params = draw(st.lists(PARAM, max_size=4))
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params)
    url = f"https://{host}{path}" + (f"?{query}" if query else "")
    headers = draw(st.lists(HEADER, max_size=4))
    body = draw(st.binary(max_size=64)) if method in ("PUT", "POST") else b""
    return service, region, method, url, headers, body


@settings(max_examples=150, deadline=None)
@given(requests(), st.sampled_from([None, REAL_TOKEN]), st.booleans())
def test_header_form_is_what_botocore_signs_with_the_real_key(
    r: tuple[str, str, str, str, list[tuple[str, str]], bytes], token: str | None, declare: bool
) -> None:
    service, region, method, url, headers, body = r
    if service == "s3" or declare:  # S3 always declares the payload hash; others may
        headers = [*headers, ("x-amz-content-sha256", hashlib.sha256(body).hexdigest())]
    agent = botocore_sign(Credentials(PH, "anything the agent likes", "AGENT-TOKEN-PH"),
                          method, url, headers, body, service, region, AGENT_NOW)  # fmt: skip
    sent = list(agent.headers.items())
    authority, path = split(url)
    signed = sigv4.parse(sent, path)
    assert isinstance(signed, sigv4.Signed) and signed.access_key_id == PH
    out, signature = sigv4.resign_header(signed, real_value(token), method, authority, path, sent,
                                         body, EGRESS_NOW)  # fmt: skip
    direct = botocore_sign(Credentials(REAL_KEY_ID, REAL_SECRET, token), method, url, headers,
                           body, service, region, EGRESS_NOW)  # fmt: skip
    got = {k.lower(): v for k, v in out}
    assert got["authorization"] == direct.headers["Authorization"]
    assert got["authorization"].endswith(f"Signature={signature}")
    assert got["x-amz-date"] == direct.headers["X-Amz-Date"]
    assert got.get("x-amz-security-token") == token  # the agent's placeholder token is gone
    assert [k for k, _ in out if k.lower() == "authorization"] == ["Authorization"]
    assert "AGENT-TOKEN-PH" not in str(out) and "anything the agent likes" not in str(out)
    # Everything else goes on as the agent sent it.
    rest = [(k, v) for k, v in sent if k.lower() not in ("authorization", "x-amz-date",
                                                         "x-amz-security-token")]  # fmt: skip
    assert [(k, v) for k, v in out if k.lower() not in ("authorization", "x-amz-date",
                                                        "x-amz-security-token")] == rest  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(requests(), st.sampled_from([None, REAL_TOKEN]), st.integers(120, 3600))
def test_query_form_is_what_botocore_presigns_with_the_real_key(
    r: tuple[str, str, str, str, list[tuple[str, str]], bytes], token: str | None, expires: int
) -> None:
    service, region, method, url, _, _ = r
    agent_url = botocore_presign(Credentials(PH, "agent"), method, url, service, region,
                                 EGRESS_NOW - timedelta(seconds=60), expires)  # fmt: skip
    authority, path = split(agent_url)
    sent = [("host", authority)]
    signed = sigv4.parse(sent, path)
    assert isinstance(signed, sigv4.Signed) and signed.form == "query"
    new_path, signature = sigv4.resign_query(signed, real_value(token), method, authority, path,
                                             sent, b"", EGRESS_NOW)  # fmt: skip
    # Valid for what is left of the agent's window, and 5 minutes at most.
    left = min(expires - 60, sigv4.PRESIGN_RESIGNED_SECONDS)
    direct = botocore_presign(Credentials(REAL_KEY_ID, REAL_SECRET, token), method, url, service,
                              region, EGRESS_NOW, left)  # fmt: skip
    assert new_path.endswith(f"X-Amz-Signature={signature}")
    ours = dict(parse_qsl(urlsplit(new_path).query, keep_blank_values=True))
    theirs = dict(parse_qsl(urlsplit(direct).query, keep_blank_values=True))
    assert ours == theirs  # same parameters, same signature
    # The agent's own parameters are forwarded byte for byte, in their order.
    own = [p for p in urlsplit(agent_url).query.split("&") if not p.startswith("X-Amz-")]
    assert [p for p in urlsplit(new_path).query.split("&") if not p.startswith("X-Amz-")] == own


def test_payload_hash_the_agent_declared_is_kept() -> None:
    """botocore's S3 signer puts its own x-amz-content-sha256 in; for an aws-chunked upload
    that would make S3 store the framing as the object. The declared value must be signed."""
    headers = [("host", "s3.eu-west-1.amazonaws.com"),
               ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
               ("x-amz-date", "20261203T180000Z"), ("content-encoding", "aws-chunked"),
               ("authorization", f"AWS4-HMAC-SHA256 Credential={PH}/20261203/eu-west-1/s3/"
                "aws4_request, SignedHeaders=content-encoding;host;x-amz-content-sha256;"
                "x-amz-date, Signature=" + "0" * 64)]  # fmt: skip
    signed = sigv4.parse(headers, "/b/k")
    assert isinstance(signed, sigv4.Signed)
    out = dict(sigv4.resign_header(signed, real_value(), "PUT", "s3.eu-west-1.amazonaws.com",
                                   "/b/k", headers, None, EGRESS_NOW)[0])  # fmt: skip
    assert out["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert (
        "SignedHeaders=content-encoding;host;x-amz-content-sha256;x-amz-date,"
        in out["Authorization"]
    )


# --- what is not re-signed, and why -------------------------------------------------------

AUTH = f"AWS4-HMAC-SHA256 Credential={PH}/20261203/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature={'a' * 64}"  # fmt: skip
PRESIGN = (f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={PH}%2F20261203%2Fus-east-1%2Fs3"
           f"%2Faws4_request&X-Amz-Date=20261203T195000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
           f"&X-Amz-Signature={'b' * 64}")  # fmt: skip
PARSE_CASES = [
    ("header", [("Authorization", AUTH)], "/", "header"),
    ("extra spaces", [("Authorization", AUTH.replace(", ", " ,  "))], "/", "header"),
    ("presigned", [], f"/k?{PRESIGN}", "query"),
    ("not signed", [("Authorization", "Bearer x")], "/?a=1", None),
    ("SigV2 header", [("Authorization", f"AWS {PH}:c2lnbmF0dXJl")], "/", "unsupported"),
    ("SigV2 presigned", [], f"/k?AWSAccessKeyId={PH}&Signature=abc%3D&Expires=1", "unsupported"),
    ("SigV4A", [("Authorization", "AWS4-ECDSA-P256-SHA256 Credential=" + PH + "/x")], "/", "unsupported"),
    ("SigV4A presigned", [], "/k?" + PRESIGN.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256", 1), "unsupported"),
    ("S3 Express", [("Authorization", AUTH), ("x-amz-s3session-token", "t")], "/", "unsupported"),
    ("signed chunks without aws-chunked", [("Authorization", AUTH), ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")], "/", "malformed"),  # without aws-chunked
    ("signed chunks", [("Authorization", AUTH), ("Content-Encoding", "aws-chunked"), ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")], "/", "header"),
    ("signed chunks+trailer", [("Authorization", AUTH), ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")], "/", "unsupported"),
    ("bad payload hash", [("Authorization", AUTH), ("x-amz-content-sha256", "xyz")], "/", "malformed"),
    ("two payload hashes", [("Authorization", AUTH), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")] * 1 + [("x-amz-content-sha256", "UNSIGNED-PAYLOAD")], "/", "malformed"),
    ("garbage AWS4", [("Authorization", "AWS4-HMAC-SHA256 nonsense")], "/", "malformed"),
    ("short signature", [("Authorization", AUTH[:-1])], "/", "malformed"),
    ("two signatures", [("Authorization", AUTH)], f"/k?{PRESIGN}", "malformed"),
    ("two Authorization", [("Authorization", AUTH), ("Authorization", AUTH)], "/", "malformed"),
    ("presign missing date", [], "/k?" + PRESIGN.replace("X-Amz-Date=20261203T195000Z&", ""), "malformed"),
    ("presign twice", [], f"/k?{PRESIGN}&X-Amz-Credential=x", "malformed"),
    ("presign bad scope", [], "/k?" + PRESIGN.replace("%2Faws4_request", "%2Faws5"), "malformed"),
    ("presign bad expires", [], "/k?" + PRESIGN.replace("X-Amz-Expires=900", "X-Amz-Expires=-1"), "malformed"),
    ("presign expires in other digits", [], "/k?" + PRESIGN.replace("X-Amz-Expires=900", "X-Amz-Expires=%C2%B2"), "malformed"),
    ("date in other digits", [("Authorization", AUTH.replace("20261203", "٢٠٢٦١٢٠٣"))], "/", "malformed"),
    # The same signature for requests AWS reads differently: refused, not signed.
    ("query escape not UTF-8", [("Authorization", AUTH)], "/k?x=%ff", "malformed"),
    ("query escape not UTF-8, presigned", [], f"/k?x=%fe&{PRESIGN}", "malformed"),
    ("query bad escape", [("Authorization", AUTH)], "/k?x=%zz", "malformed"),
    ("query plus", [("Authorization", AUTH)], "/k?x=a+b", "malformed"),
    ("query raw non-ASCII", [("Authorization", AUTH)], "/k?x=é", "malformed"),
    ("query UTF-8 escape is fine", [("Authorization", AUTH)], "/k?x=%C3%A9&y=%2B", "header"),
    ("signed header with a tab", [("Authorization", AUTH), ("x-amz-date", "20261203T000000Z\t")], "/", "malformed"),
    ("signed header with NBSP", [("Authorization", AUTH), ("Host", "h\xa0")], "/", "malformed"),
    ("unsigned header may hold anything", [("Authorization", AUTH), ("user-agent", "naïve\t")], "/", "header"),
    ("UNSIGNED-PAYLOAD off S3", [("Authorization", AUTH.replace("/s3/", "/sqs/")), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")], "/", "unsupported"),
    ("streaming without aws-chunked", [("Authorization", AUTH), ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")], "/", "malformed"),
    ("streaming with aws-chunked", [("Authorization", AUTH), ("Content-Encoding", "aws-chunked"), ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")], "/", "header"),
]  # fmt: skip


@pytest.mark.parametrize("headers,path,expected", [c[1:] for c in PARSE_CASES],
                         ids=[c[0] for c in PARSE_CASES])  # fmt: skip
def test_parse(headers: list[tuple[str, str]], path: str, expected: str | None) -> None:
    got = sigv4.parse(headers, path)
    if expected is None:
        assert got is None
    elif expected in ("header", "query"):
        assert isinstance(got, sigv4.Signed) and got.form == expected and got.access_key_id == PH
    else:
        assert isinstance(got, sigv4.Refusal) and got.code == expected, got


HOSTS = [
    ("s3.eu-west-1.amazonaws.com", ("eu-west-1", "s3")),
    ("bkt.s3.eu-west-1.amazonaws.com", ("eu-west-1", "s3")),
    ("bkt.s3.dualstack.eu-west-1.amazonaws.com", ("eu-west-1", "s3")),
    ("s3-us-west-2.amazonaws.com", ("us-west-2", "s3")),
    ("s3.amazonaws.com", (None, "s3")),  # the global endpoint: buckets of any region
    ("bkt.s3.amazonaws.com", (None, "s3")),
    ("my.us-east-1.bkt.s3.eu-west-1.amazonaws.com", ("eu-west-1", "s3")),  # dotted bucket
    ("us-east-1.s3.eu-west-1.amazonaws.com", ("eu-west-1", "s3")),
    ("bkt.s3-accesspoint.eu-west-1.amazonaws.com", ("eu-west-1", "s3")),
    ("iam.amazonaws.com", ("us-east-1", "iam")),
    ("sts.amazonaws.com", ("us-east-1", "sts")),
    ("sts.eu-west-1.amazonaws.com", ("eu-west-1", None)),
    ("sqs.us-gov-west-1.amazonaws.com", ("us-gov-west-1", None)),
    ("s3.cn-north-1.amazonaws.com.cn", ("cn-north-1", "s3")),
    ("minio.internal", (None, None)),
    ("s3.eu-west-1.amazonaws.com.evil.test", (None, None)),
]


@pytest.mark.parametrize("host,expected", HOSTS)
def test_host_scope(host: str, expected: tuple[str | None, str | None]) -> None:
    assert sigv4.host_scope(host, AwsSpec()) == expected


def test_host_scope_endpoints_override() -> None:
    from egress.hostnames import parse_host_pattern

    spec = AwsSpec(endpoints=((parse_host_pattern("minio.internal"), "us-east-1", "s3"),))
    assert sigv4.host_scope("minio.internal", spec) == ("us-east-1", "s3")


# --- plan(): the checks before re-signing, end to end in the pure logic --------------------

CFG = parse(
    {
        "allow": ["s3.eu-west-1.amazonaws.com", "bkt.s3.eu-west-1.amazonaws.com", "iam.amazonaws.com",
                  "api.test", "minio.internal"],
        "secrets": [
            {"name": "aws", "scheme": "aws_sigv4", "placeholder": PH,
             "source": {"env": {"access_key_id": "K", "secret_access_key": "S"}},
             "hosts": ["s3.eu-west-1.amazonaws.com", "bkt.s3.eu-west-1.amazonaws.com", "minio.internal"],
             "aws": {"regions": ["eu-west-1"], "services": ["s3"], "max_presign_seconds": 1800,
                     "endpoints": {"minio.internal": {"region": "eu-west-1", "service": "s3"}}}},
            {"name": "tok", "source": {"env": "T"}, "hosts": ["api.test", "s3.eu-west-1.amazonaws.com"],
             "inject": ["headers", "body"]},
        ],
    },
    "t.yaml", Path("/"),
)  # fmt: skip
VALUES = {"aws": real_value(), "tok": SecretValue("real-tok-value-1234")}


def agent_request(host: str = "s3.eu-west-1.amazonaws.com", *, key_id: str = PH,
                  region: str = "eu-west-1", service: str = "s3", path: str = "/b/k",
                  extra: tuple = (), body: bytes | None = None, scheme: str = "https",
                  at: datetime = AGENT_NOW) -> RequestParts:  # fmt: skip
    signed = botocore_sign(Credentials(key_id, "x"), "GET", f"https://{host}{path}",
                           [("x-amz-content-sha256", hashlib.sha256(b"").hexdigest())], b"",
                           service, region, at)  # fmt: skip
    return RequestParts(scheme, host, "GET", path, (*signed.headers.items(), *extra), body)


def presigned(host: str = "s3.eu-west-1.amazonaws.com", *, key_id: str = PH, expires: int = 900,
              at: datetime | None = None) -> RequestParts:  # fmt: skip
    at = at or datetime.now(UTC) - timedelta(seconds=60)
    url = botocore_presign(Credentials(key_id, "x"), "GET", f"https://{host}/b/k", "s3",
                           "eu-west-1", at, expires)  # fmt: skip
    _, path = split(url)
    return RequestParts("https", host, "GET", path, (("host", host),), None)


def run(r: RequestParts, missing: tuple[str, ...] = ()) -> Denial | Injection:
    return plan(r, [(s, None if s.name in missing else VALUES[s.name]) for s in CFG.secrets])


PLAN_CASES = [
    ("header form", agent_request(), "resign"),
    ("bucket host", agent_request("bkt.s3.eu-west-1.amazonaws.com"), "resign"),
    ("custom endpoint", agent_request("minio.internal"), "resign"),
    ("presigned", presigned(), "resign"),
    ("agent clock 2 h off: egress's date is used", agent_request(at=AGENT_NOW - timedelta(hours=2)), "resign"),
    ("other key id", agent_request(key_id="AKIAAGENTSOWNKEY0001"), Reason.FOREIGN_CREDENTIAL),
    ("presigned, other key id", presigned(key_id="AKIAAGENTSOWNKEY0001"), Reason.FOREIGN_CREDENTIAL),
    ("unbound host", agent_request("iam.amazonaws.com", region="us-east-1", service="iam"), Reason.PLACEHOLDER_TO_UNBOUND_HOST),
    ("region outside aws.regions", agent_request(region="us-east-1"), Reason.AWS_SCOPE_MISMATCH),
    ("service outside aws.services", agent_request(service="sqs"), Reason.AWS_SCOPE_MISMATCH),
    ("placeholder also in body", agent_request(body=PH.encode()), Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED),
    ("placeholder, not signed", RequestParts("https", "s3.eu-west-1.amazonaws.com", "GET", "/",
                                             (("x-other", PH),), None), Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED),
    ("placeholder in query of a header-signed request", agent_request(path=f"/b/k?who={PH}"), Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED),
    ("presigned, expired", presigned(at=datetime.now(UTC) - timedelta(hours=1)), Reason.PRESIGN_EXPIRED),
    ("presigned, in the future", presigned(at=datetime.now(UTC) + timedelta(hours=1)), Reason.PRESIGN_EXPIRED),
    ("presigned, too long", presigned(expires=7200), Reason.PRESIGN_EXPIRED),
    ("plain http", agent_request(scheme="http"), Reason.PLAINTEXT_INJECTION),
    ("credential action in the query", agent_request(path="/b/k?Action=CreateAccessKey"), Reason.AWS_CREDENTIAL_ACTION),
    ("credential action by X-Amz-Target", agent_request(extra=(("X-Amz-Target", "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"),)), Reason.AWS_CREDENTIAL_ACTION),
    ("other actions are fine", agent_request(path="/b/k?Action=ListUsers"), "resign"),
    ("static placeholder in a re-signed request", agent_request(extra=(("x-tok", "egress-tok-placeholder"),)), Reason.SIGNATURE_SCHEME_UNSUPPORTED),
    ("SigV2", RequestParts("https", "s3.eu-west-1.amazonaws.com", "GET", "/", (("Authorization", f"AWS {PH}:sig"),), None), Reason.SIGNATURE_SCHEME_UNSUPPORTED),
    ("garbage", RequestParts("https", "s3.eu-west-1.amazonaws.com", "GET", "/", (("Authorization", f"AWS4-HMAC-SHA256 Credential={PH}"),), None), Reason.MALFORMED_REQUEST),
]  # fmt: skip


@pytest.mark.parametrize(
    "request_,expected", [c[1:] for c in PLAN_CASES], ids=[c[0] for c in PLAN_CASES]
)
def test_plan(request_: RequestParts, expected: object) -> None:
    got = run(request_)
    if expected == "resign":
        assert isinstance(got, Injection), got
        assert got.resign is not None and got.resign[0].name == "aws"
        assert got.injected == [] and got.headers == list(request_.headers)  # nothing swapped
    else:
        assert isinstance(got, Denial) and got.reason == expected, got
        assert REAL_SECRET not in got.detail and REAL_KEY_ID not in got.detail


def test_plan_not_loaded() -> None:
    got = run(agent_request(), missing=("aws",))
    assert isinstance(got, Denial) and got.reason == Reason.SECRET_UNAVAILABLE


def test_real_key_parts_are_guarded_on_other_hosts() -> None:
    """Every part of the AWS secret (key id, secret key, session token) is a value the leak
    guard blocks on hosts the secret is not bound to."""
    value = real_value(REAL_TOKEN)
    for text in (REAL_KEY_ID, REAL_SECRET, REAL_TOKEN):
        r = RequestParts("https", "api.test", "POST", "/", (), text.encode())
        got = plan(r, [(s, value if s.name == "aws" else VALUES[s.name]) for s in CFG.secrets])
        assert isinstance(got, Denial) and got.reason == Reason.SECRET_TO_UNBOUND_HOST, text


def test_signed_chunks_match_aws_published_example() -> None:
    """AWS's own example of a chunked upload signed per chunk ("Signature Calculations for
    the Authorization Header: Transferring Payload in Multiple Chunks", S3 API reference):
    the agent signs with the placeholder; signing again with the example's key at the
    example's instant gives exactly the seed and chunk signatures AWS publishes."""
    key_id, secret = (
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )  # AWS's example key
    value = SecretValue(secret, (("access_key_id", key_id), ("secret_access_key", secret)))
    names = "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class"
    headers = [("Host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
               ("x-amz-storage-class", "REDUCED_REDUNDANCY"), ("Content-Encoding", "aws-chunked"),
               ("x-amz-decoded-content-length", "66560"), ("Content-Length", "66824"),
               ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
               ("Authorization", f"AWS4-HMAC-SHA256 Credential={PH}/20130524/us-east-1/s3/aws4_request, "
                                 f"SignedHeaders={names}, Signature={'1' * 64}")]  # fmt: skip
    body = b"".join(f"{len(d):x};chunk-signature={'2' * 64}\r\n".encode() + d + b"\r\n"
                    for d in (b"a" * 65536, b"a" * 1024, b""))  # fmt: skip
    assert len(body) == 66824
    signed = sigv4.parse(headers, "/examplebucket/chunkObject.txt")
    assert isinstance(signed, sigv4.Signed) and signed.payload_hash == sigv4.SIGNED_CHUNKS
    out, seed, new_body = sigv4.resign_chunked(signed, value, "PUT", "s3.amazonaws.com",
                                               "/examplebucket/chunkObject.txt", headers, body,
                                               datetime(2013, 5, 24, tzinfo=UTC))  # fmt: skip
    assert seed == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    assert [new_body[at : at + 64].decode() for at, _, _ in sigv4.chunk_layout(new_body)] == [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ]
    from egress.decoding import split_aws_chunked

    assert len(new_body) == len(body) and split_aws_chunked(new_body, 1 << 20)[0] == b"a" * 66560
    assert dict(out)["Authorization"].endswith(f"Signature={seed}")


@pytest.mark.parametrize("body", [
    b"5;chunk-signature=" + b"0" * 64 + b"\r\nhello\r\n",  # no last chunk
    b"5\r\nhello\r\n0\r\n\r\n",  # unsigned chunks
    b"5;chunk-signature=" + b"0" * 64 + b"\r\nhello\r\n0;chunk-signature=" + b"0" * 64 + b"\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
    b"zz;chunk-signature=" + b"0" * 64 + b"\r\nhello\r\n",
])  # fmt: skip
def test_chunk_layout_refuses_what_it_cannot_sign(body: bytes) -> None:
    with pytest.raises(ValueError):
        sigv4.chunk_layout(body)


def test_small_chunks_before_the_last_are_refused() -> None:
    """S3 wants every chunk but the last to hold 8 KiB or more: that also bounds the
    signatures egress computes per body (a body of 1-byte chunks cost seconds)."""
    body = b"".join(
        f"{len(d):x};chunk-signature={'0' * 64}\r\n".encode() + d + b"\r\n"
        for d in (b"a", b"b", b"")
    )
    with pytest.raises(ValueError, match="less than 8192"):
        sigv4.chunk_layout(body)
