"""AWS Signature Version 4: recognise a request the agent signed with a placeholder access
key id, check its scope, and sign it again with the real credentials.

The agent's SDK signs with the placeholder key id and any secret key; egress cannot verify
that signature (it proves only what the agent knows) and does not try. It keeps what the
agent signed (the method, path, query, the headers in SignedHeaders and the payload hash it
declared), throws the signature away, and computes a new one with botocore's SigV4 code
(the canonical request, the string to sign and the HMAC chain every AWS SDK is checked
against), stamped with egress's own clock. No SigV4 crypto is written here.

Pure functions over plain data; botocore is imported on first use, so a proxy with no AWS
secret never loads it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes

from egress.config.model import AwsSpec
from egress.secrets import SecretValue

Header = tuple[str, str]

ALGORITHM = "AWS4-HMAC-SHA256"
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 +Credential=([^/,\s]+)/([0-9]{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request"
    r" *, *SignedHeaders=([a-z0-9!#$%&'*+.^_`|~-]+(?:;[a-z0-9!#$%&'*+.^_`|~-]+)*)"
    r" *, *Signature=([0-9a-f]{64})$"
)
_AMZ_DATE = re.compile(r"^([0-9]{8})T[0-9]{6}Z$")
# A query egress signs must mean one thing to it and to AWS: unreserved and sub-delim
# characters or %XX escapes of UTF-8, no '+' (a space to some parsers, a plus to others),
# nothing else. AWS decodes raw bytes where Python's unquote would put U+FFFD.
_QUERY_PART = re.compile(r"^(?:[A-Za-z0-9\-._~!$'()*,;:@/?=]|%[0-9A-Fa-f]{2})*$")
# Signed header values: printable ASCII. botocore trims all Unicode white space, AWS only
# ASCII spaces: anything else could make the two canonical requests differ.
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Payload hashes egress can keep as the agent declared them: the upstream checks a hex hash
# against the body itself, and the others say the body is not signed (egress to upstream is
# TLS). Signed chunks chain from the header signature: egress signs each chunk again
# (resign_chunks, checked against AWS's published example). The trailer variant
# (...-PAYLOAD-TRAILER) is refused: no verifier here for its trailer signature.
SIGNED_CHUNKS = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
MIN_CHUNK = 8192  # S3's smallest chunk but the last: bounds the signatures per body
_KEEP_PAYLOAD = ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", SIGNED_CHUNKS)
# The query parameters of a presigned URL that carry its signature: replaced as a whole.
_QUERY_AUTH = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                         "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token"})  # fmt: skip
# A presigned URL egress signs again is sent at once: valid this long at most (AWS checks
# expiry when a request starts, so a long download is not cut off).
PRESIGN_RESIGNED_SECONDS = 300
# Headers the re-signed request carries fresh: the agent's are dropped.
HEADER_AUTH = frozenset({"authorization", "x-amz-date", "x-amz-security-token"})
# AWS region labels in host names: us-east-1, eu-central-2, us-gov-west-1, cn-north-1...
_REGION_LABEL = re.compile(r"^[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d+$")
_GLOBAL_HOSTS = {"iam": "us-east-1", "sts": "us-east-1", "s3": "us-east-1",
                 "route53": "us-east-1", "cloudfront": "us-east-1",
                 "organizations": "us-east-1"}  # fmt: skip


# Actions whose answer is a credential of its own (a new access key, session credentials,
# a registry or database token): signed with the real key, they would hand the agent a
# working credential past egress. Refused unless aws.allow_credential_actions. Matched by
# name, whatever the service: the query API's Action, the JSON API's X-Amz-Target.
CREDENTIAL_ACTIONS = frozenset({
    "CreateAccessKey", "CreateLoginProfile", "UpdateLoginProfile",
    "CreateServiceSpecificCredential", "ResetServiceSpecificCredential", "UploadSSHPublicKey",
    "UploadSigningCertificate", "GetSessionToken", "AssumeRole", "AssumeRoleWithSAML",
    "AssumeRoleWithWebIdentity", "GetFederationToken", "AssumeRoot", "GetClusterCredentials",
    "GetClusterCredentialsWithIAM", "GetAuthorizationToken", "GetCredentialsForIdentity",
    "GetCredentials", "GetRoleCredentials", "GetOpenIdToken", "GetOpenIdTokenForDeveloperIdentity",
    "CreatePresignedDomainUrl",
})  # fmt: skip
# REST APIs whose path is such an action: CodeArtifact's authorization token.
_CREDENTIAL_PATHS = {"codeartifact": "/v1/authorization-token"}


@dataclass(frozen=True)
class Signed:
    """What the agent's SigV4 says (never its signature: it is thrown away)."""

    form: str  # "header" | "query"
    access_key_id: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    payload_hash: str | None  # x-amz-content-sha256 as declared (header form), if any
    amz_date: str | None = None  # query form: X-Amz-Date
    expires: int | None = None  # query form: X-Amz-Expires


@dataclass(frozen=True)
class Refusal:
    """A signed request egress will not re-sign: ``code`` is "unsupported" (a scheme egress
    does not re-sign: SigV2, SigV4A, S3 Express, signed chunks) or "malformed"."""

    code: str
    detail: str


def _header(headers: tuple[Header, ...] | list[Header], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def query_pairs(query: str) -> list[tuple[str, str]]:
    """The raw (still percent-encoded) key=value pairs of a query, in order."""
    return [(k, v) for k, _, v in (p.partition("=") for p in query.split("&") if p)]


def parse(headers: tuple[Header, ...] | list[Header], path: str) -> Signed | Refusal | None:
    """The request's AWS signature, a reason not to re-sign it, or None when it is not
    signed the AWS way at all."""
    auths = _header(headers, "authorization")
    aws_auth = [a for a in auths if a.startswith(("AWS4-", "AWS "))]
    _, _, query = path.partition("?")
    pairs = query_pairs(query)
    names = {unquote(k) for k, _ in pairs}
    if _header(headers, "x-amz-s3session-token"):
        return Refusal("unsupported", "S3 Express One Zone session authentication "
                       "(x-amz-s3session-token) is not re-signed")  # fmt: skip
    if "AWSAccessKeyId" in names and "Signature" in names:
        return Refusal("unsupported", "a SigV2 presigned URL (AWSAccessKeyId=...&Signature=...): "
                       "egress re-signs SigV4 only; with boto3 presign with "
                       "Config(signature_version='s3v4')")  # fmt: skip
    query_signed = "X-Amz-Signature" in names or "X-Amz-Credential" in names
    if aws_auth and query_signed or len(aws_auth) > 1:
        return Refusal("malformed", "the request carries more than one AWS signature")
    if not aws_auth and not query_signed:
        return None
    signed = _parse_header(aws_auth[0], headers) if aws_auth else _parse_query(pairs)
    if isinstance(signed, Signed):
        names = set(signed.signed_headers)
        problem = _ambiguous(query, [(k, v) for k, v in headers if k.lower() in names])
        if problem:
            return Refusal("malformed", problem)
    return signed


def _ambiguous(query: str, headers: tuple[Header, ...] | list[Header]) -> str | None:
    """Why the request egress would sign could read differently at AWS, or None."""
    for part in query.split("&"):
        if not _QUERY_PART.match(part):
            return ("the query of a request egress signs must use only unreserved characters "
                    "and %XX escapes (no '+', no raw non-ASCII)")  # fmt: skip
        try:
            for piece in part.split("=", 1):
                unquote_to_bytes(piece).decode("utf-8")
        except UnicodeDecodeError:
            return "the query of a request egress signs has %XX escapes that are not UTF-8"
    for k, v in headers:
        if not _HEADER_VALUE.match(v):
            return (f"the {k} header of a request egress signs has characters other than "
                    "printable ASCII")  # fmt: skip
    return None


def _parse_header(auth: str, headers: tuple[Header, ...] | list[Header]) -> Signed | Refusal:
    if auth.startswith("AWS4-ECDSA-P256-SHA256"):
        return Refusal("unsupported", "SigV4A (AWS4-ECDSA-P256-SHA256, multi-region) is not "
                       "re-signed: sign for one region with SigV4")  # fmt: skip
    if auth.startswith("AWS "):
        return Refusal("unsupported", "SigV2 (Authorization: AWS key:signature) is not re-signed: "
                       "configure the client for SigV4 (boto3: signature_version='s3v4')")  # fmt: skip
    m = _AUTH.match(auth)
    if m is None:
        return Refusal("malformed", "the Authorization header starts like AWS SigV4 but is not "
                       "'AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request, "
                       "SignedHeaders=..., Signature=...'")  # fmt: skip
    akid, _date, region, service, signed, _sig = m.groups()
    declared = _header(headers, "x-amz-content-sha256")
    if len(declared) > 1:
        return Refusal("malformed", "the request carries x-amz-content-sha256 more than once")
    payload = declared[0].strip() if declared else None
    if payload is not None and payload not in _KEEP_PAYLOAD and not _HEX64.match(payload):
        if payload.startswith("STREAMING-"):
            return Refusal("unsupported", f"signed chunks with a signed trailer (x-amz-content-"
                           f"sha256: {payload}) are not re-signed; sign the chunks without a "
                           "trailer, or send the payload unsigned over HTTPS")  # fmt: skip
        return Refusal("malformed", "x-amz-content-sha256 is not a SHA-256 in hex, "
                       "UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER")  # fmt: skip
    if payload == "UNSIGNED-PAYLOAD" and service != "s3":
        return Refusal("unsupported", f"x-amz-content-sha256: UNSIGNED-PAYLOAD for {service!r}: "
                       "egress signs an unsigned payload for S3 only; other services get the "
                       "body's hash")  # fmt: skip
    if payload is not None and payload.startswith("STREAMING-"):
        codings = [
            c.strip().lower() for v in _header(headers, "content-encoding") for c in v.split(",")
        ]
        if "aws-chunked" not in codings or service != "s3":
            return Refusal("malformed", f"x-amz-content-sha256: {payload} without "
                           "Content-Encoding: aws-chunked to S3")  # fmt: skip
    return Signed("header", akid, region, service, tuple(signed.split(";")), payload)


def _parse_query(pairs: list[tuple[str, str]]) -> Signed | Refusal:
    values: dict[str, str] = {}
    for k, v in pairs:
        key = unquote(k)
        if key in _QUERY_AUTH:
            if key in values:
                return Refusal("malformed", f"the presigned URL carries {key} more than once")
            values[key] = unquote(v)
    algorithm = values.get("X-Amz-Algorithm", "")
    if algorithm == "AWS4-ECDSA-P256-SHA256":
        return Refusal("unsupported", "a SigV4A presigned URL is not re-signed")
    missing = [k for k in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                           "X-Amz-SignedHeaders", "X-Amz-Signature") if k not in values]  # fmt: skip
    if missing or algorithm != ALGORITHM:
        return Refusal("malformed", "a presigned URL needs X-Amz-Algorithm=AWS4-HMAC-SHA256, "
                       "X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders and "
                       f"X-Amz-Signature{' (missing: ' + ', '.join(missing) + ')' if missing else ''}")  # fmt: skip
    scope = values["X-Amz-Credential"].split("/")
    if (len(scope) != 5 or scope[4] != "aws4_request" or not scope[0]
            or not re.fullmatch(r"[0-9]{8}", scope[1]) or not _AMZ_DATE.match(values["X-Amz-Date"])
            or not re.fullmatch(r"[0-9]{1,7}", values["X-Amz-Expires"])
            or not _HEX64.match(values["X-Amz-Signature"])):  # fmt: skip
        return Refusal("malformed", "the presigned URL's X-Amz-Credential, X-Amz-Date, "
                       "X-Amz-Expires or X-Amz-Signature is not in SigV4 form")  # fmt: skip
    return Signed("query", scope[0], scope[2], scope[3],
                  tuple(values["X-Amz-SignedHeaders"].lower().split(";")), None,
                  values["X-Amz-Date"], int(values["X-Amz-Expires"]))  # fmt: skip


def credential_action(
    signed: Signed, path: str, headers: tuple[Header, ...] | list[Header], body: bytes | None
) -> str | None:
    """The credential-issuing action the request asks for, or None (see CREDENTIAL_ACTIONS).
    ``body``: a form body is read too (the query API posts its Action there)."""
    base, _, query = path.partition("?")
    names = [unquote(v) for k, v in query_pairs(query) if unquote(k) == "Action"]
    names += [v.rsplit(".", 1)[-1].strip() for v in _header(headers, "x-amz-target")]
    if body and b"Action" in body:
        from urllib.parse import parse_qsl

        text = body.decode("latin-1")
        names += [v for k, v in parse_qsl(text, keep_blank_values=True) if k == "Action"]
    found = next((n for n in names if n in CREDENTIAL_ACTIONS), None)
    if found is None and _CREDENTIAL_PATHS.get(signed.service) == base.rstrip("/"):
        found = f"{signed.service} {base}"
    return found


def host_scope(host: str, spec: AwsSpec) -> tuple[str | None, str | None]:
    """The (region, service) a host name says, where it says one: an ``aws.endpoints``
    entry, or the region label and the S3 label of an amazonaws.com name. (None, None) for
    names that say nothing (a custom endpoint with no entry)."""
    for pattern, region, service in spec.endpoints:
        if pattern.matches(host):
            return region, service
    labels = host.lower().split(".")
    for suffix in (["amazonaws", "com"], ["amazonaws", "com", "cn"]):
        if labels[-len(suffix) :] == suffix:
            labels = labels[: -len(suffix)]
            break
    else:
        return None, None
    if not labels:
        return None, None
    # From the right: bucket names before them may hold dots and region-like labels.
    last = labels[-1]
    if last.startswith("s3-") and _REGION_LABEL.match(last[3:]):  # s3-us-west-2 (legacy)
        return last[3:], "s3"
    if last in _GLOBAL_HOSTS:  # iam, sts... sign for us-east-1; s3.amazonaws.com: any region
        return (None if last == "s3" else _GLOBAL_HOSTS[last]), last
    if not _REGION_LABEL.match(last):
        return None, None
    before = labels[-3:-1]  # s3.eu-west-1, bkt.s3.dualstack.eu-west-1
    s3 = any(lab in ("s3", "s3-fips", "s3-accesspoint", "s3-control") for lab in before)
    return last, "s3" if s3 else None


def scope_problem(signed: Signed, host: str, spec: AwsSpec) -> str | None:
    """Why the credential scope the agent signed for may not be used here, or None."""
    if spec.regions is not None and signed.region not in spec.regions:
        return f"region {signed.region!r} is not in aws.regions ({', '.join(spec.regions)})"
    if spec.services is not None and signed.service not in spec.services:
        return f"service {signed.service!r} is not in aws.services ({', '.join(spec.services)})"
    region, service = host_scope(host, spec)
    if region is not None and region != signed.region:
        return f"the request is signed for region {signed.region!r} but {host!r} is in {region!r}"
    if service is not None and service != signed.service:
        return (f"the request is signed for service {signed.service!r} but {host!r} is "
                f"{service!r}")  # fmt: skip
    return None


def presign_problem(signed: Signed, now: datetime, spec: AwsSpec) -> str | None:
    """A presigned URL is used within the window the agent asked for, no longer than
    ``aws.max_presign_seconds``; egress's clock decides, give or take the skew allowed."""
    assert signed.amz_date is not None and signed.expires is not None
    if signed.expires > spec.max_presign_seconds:
        return (f"it asks to be valid for {signed.expires} s, over aws.max_presign_seconds "
                f"({spec.max_presign_seconds})")  # fmt: skip
    start = datetime.strptime(signed.amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    skew = timedelta(seconds=spec.clock_skew_seconds)
    if now < start - skew:
        return f"it is dated {signed.amz_date}, in the future by egress's clock"
    if now > start + timedelta(seconds=signed.expires) + skew:
        return f"it expired at {(start + timedelta(seconds=signed.expires)):%Y-%m-%dT%H:%M:%SZ}"
    return None


class _Creds:
    """botocore's Credentials for one signing; built per request, never logged."""

    def __init__(self, value: SecretValue):
        from botocore.credentials import Credentials

        self.access_key_id = value.part("access_key_id") or ""
        self.token = value.part("session_token")
        self.botocore = Credentials(self.access_key_id, value.reveal(), self.token)

    def __repr__(self) -> str:
        return "_Creds(<redacted>)"


def _signer(service: str, region: str, creds: _Creds, payload: str, query: bool):  # type: ignore[no-untyped-def]
    from botocore import auth

    base = {(True, True): auth.S3SigV4QueryAuth, (True, False): auth.S3SigV4Auth,
            (False, True): auth.SigV4QueryAuth, (False, False): auth.SigV4Auth}[(service == "s3", query)]  # fmt: skip

    class Signer(base):  # type: ignore[misc, valid-type]
        # The payload hash the agent declared (or egress computed): botocore's S3 signer
        # would put its own in, and an aws-chunked upload would then be stored framed.
        def payload(self, request):  # type: ignore[no-untyped-def]
            return payload

    return Signer(creds.botocore, service, region)


def _request(method: str, authority: str, path: str, signed_headers: list[Header],
             params: list[tuple[str, str]]):  # type: ignore[no-untyped-def]  # fmt: skip
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method, url=f"https://{authority}{path.partition('?')[0]}")
    for k, v in signed_headers:
        request.headers[k] = v  # appends: a header sent twice is signed as AWS joins it
    request.params = params
    return request


def _signed_header_values(
    headers: tuple[Header, ...] | list[Header], names: tuple[str, ...], authority: str
) -> list[Header]:
    wanted = set(names) - HEADER_AUTH
    out = [(k.lower(), v) for k, v in headers if k.lower() in wanted]
    if "host" in wanted and not any(k == "host" for k, _ in out):
        out.append(("host", authority))  # HTTP/2: the :authority stands for Host
    return out


def _decoded(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(unquote(k), unquote(v)) for k, v in pairs]


def resign_header(
    signed: Signed, value: SecretValue, method: str, authority: str, path: str,
    headers: tuple[Header, ...] | list[Header], body: bytes | None, now: datetime,
) -> tuple[list[Header], str]:  # fmt: skip
    """The request's headers, signed again with the real credentials (header form), and
    the signature. ``body`` is needed only when the agent declared no payload hash."""
    out, signature, _ = _sign_header(signed, value, method, authority, path, headers, body, now)
    return out, signature


def resign_chunked(
    signed: Signed, value: SecretValue, method: str, authority: str, path: str,
    headers: tuple[Header, ...] | list[Header], body: bytes, now: datetime,
) -> tuple[list[Header], str, bytes]:  # fmt: skip
    """A request whose payload is STREAMING-AWS4-HMAC-SHA256-PAYLOAD: its headers signed
    again, and its body with each chunk signed again in the chain that starts from the new
    header signature (the seed), with botocore's key derivation. Signatures keep their
    length, so the Content-Length the agent sent stays true."""
    out, seed, (signer, request, scope) = _sign_header(signed, value, method, authority, path,
                                                       headers, None, now)  # fmt: skip
    stamp = request.context["timestamp"]
    empty = hashlib.sha256(b"").hexdigest()
    new_body = bytearray(body)
    previous = seed
    for at, start, end in chunk_layout(body):
        data_hash = hashlib.sha256(body[start:end]).hexdigest()
        string_to_sign = "\n".join(
            ["AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, previous, empty, data_hash]
        )
        previous = signer.signature(string_to_sign, request)
        new_body[at : at + 64] = previous.encode()
    return out, seed, bytes(new_body)


def chunk_layout(body: bytes) -> list[tuple[int, int, int]]:
    """(signature offset, data start, data end) of each chunk of a signed aws-chunked body
    (``hex-size;chunk-signature=<64 hex>\\r\\n<data>\\r\\n``...; the last has size 0).
    Anything else is refused (ValueError)."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    while True:
        end = body.find(b"\r\n", pos, pos + 100)
        if end < 0:
            raise ValueError("a chunk header egress cannot read")
        size_hex, sep, ext = body[pos:end].partition(b";")
        if (
            not sep
            or not ext.startswith(b"chunk-signature=")
            or not _HEX64.match(ext[16:].decode("latin-1"))
        ):
            raise ValueError("a chunk without its chunk-signature")
        if (
            not size_hex
            or len(size_hex) > 16
            or not all(c in b"0123456789abcdefABCDEF" for c in size_hex)
        ):
            raise ValueError("a chunk size that is not hex")
        size = int(size_hex, 16)
        start = end + 2
        if body[start + size : start + size + 2] != b"\r\n":
            raise ValueError("a chunk whose data does not end where its size says")
        out.append((pos + len(size_hex) + 1 + len(b"chunk-signature="), start, start + size))
        pos = start + size + 2
        if size == 0:
            if pos != len(body):
                raise ValueError("bytes after the last chunk")
            if any(end - start < MIN_CHUNK for _, start, end in out[:-2]):
                raise ValueError(
                    f"a chunk of less than {MIN_CHUNK} bytes before the last (S3 refuses it)"
                )
            return out


def _sign_header(
    signed: Signed, value: SecretValue, method: str, authority: str, path: str,
    headers: tuple[Header, ...] | list[Header], body: bytes | None, now: datetime,
) -> tuple[list[Header], str, tuple[Any, Any, str]]:  # fmt: skip
    if signed.payload_hash is not None:
        payload = signed.payload_hash
    else:
        payload = hashlib.sha256(body or b"").hexdigest()
    creds = _Creds(value)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    to_sign = _signed_header_values(headers, signed.signed_headers, authority)
    to_sign.append(("x-amz-date", stamp))
    if creds.token:
        to_sign.append(("x-amz-security-token", creds.token))
    _, _, query = path.partition("?")
    request = _request(method, authority, path, to_sign, _decoded(query_pairs(query)))
    request.context["timestamp"] = stamp
    signer = _signer(signed.service, signed.region, creds, payload, query=False)
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    names = signer.signed_headers(signer.headers_to_sign(request))
    scope = f"{stamp[:8]}/{signed.region}/{signed.service}/aws4_request"
    authorization = (f"{ALGORITHM} Credential={creds.access_key_id}/{scope}, "
                     f"SignedHeaders={names}, Signature={signature}")  # fmt: skip
    out = [(k, v) for k, v in headers if k.lower() not in HEADER_AUTH]
    out.append(("X-Amz-Date", stamp))
    if creds.token:
        out.append(("X-Amz-Security-Token", creds.token))
    out.append(("Authorization", authorization))
    return out, signature, (signer, request, scope)


def resign_query(
    signed: Signed, value: SecretValue, method: str, authority: str, path: str,
    headers: tuple[Header, ...] | list[Header], body: bytes | None, now: datetime,
) -> tuple[str, str]:  # fmt: skip
    """The request's path and query, signed again with the real credentials (a presigned
    URL), and the signature. The agent's own parameters keep their order and encoding. The
    new URL is used at once, so it is valid for what is left of the agent's window and at
    most PRESIGN_RESIGNED_SECONDS: an upstream that echoes it hands out little."""
    assert signed.expires is not None and signed.amz_date is not None
    start = datetime.strptime(signed.amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    left = int((start + timedelta(seconds=signed.expires) - now).total_seconds())
    expires = max(1, min(left, PRESIGN_RESIGNED_SECONDS))
    creds = _Creds(value)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    base, _, query = path.partition("?")
    own_raw = [p for p in query.split("&") if p and unquote(p.partition("=")[0]) not in _QUERY_AUTH]
    own = query_pairs("&".join(own_raw))
    to_sign = _signed_header_values(headers, signed.signed_headers, authority)
    payload = (
        "UNSIGNED-PAYLOAD" if signed.service == "s3" else hashlib.sha256(body or b"").hexdigest()
    )
    signer = _signer(signed.service, signed.region, creds, payload, query=True)
    request = _request(method, authority, path, to_sign, [])
    auth = [("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{creds.access_key_id}/{stamp[:8]}/{signed.region}/{signed.service}/aws4_request"),
            ("X-Amz-Date", stamp), ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", signer.signed_headers(signer.headers_to_sign(request)))]  # fmt: skip
    if creds.token:
        auth.append(("X-Amz-Security-Token", creds.token))
    request.params = _decoded(own) + auth
    request.context["timestamp"] = stamp
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    encoded = [(k, quote(v, safe="-_.~")) for k, v in auth]
    new_query = "&".join(
        [*own_raw, *(f"{k}={v}" for k, v in [*encoded, ("X-Amz-Signature", signature)])]
    )
    return f"{base}?{new_query}", signature
