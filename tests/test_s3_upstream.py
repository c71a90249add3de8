"""The moto S3 upstream itself: it starts, answers over TLS, stops, and with ``auth=True``
checks what its docstring says it checks (and nothing more is assumed of it)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from tests.s3_upstream import REGION, S3Upstream, moto_missing


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA) -> Iterator[S3Upstream]:
    if moto_missing():
        pytest.skip(moto_missing() or "")
    up = S3Upstream(test_ca, tmp_path_factory.mktemp("moto-auth"), auth=True)
    up.start()
    try:
        yield up
    finally:
        up.stop()


def error_of(call: Any) -> tuple[str, int]:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        call()
    err = info.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def test_start_and_stop(tmp_path: Path, test_ca: trustme.CA) -> None:
    if moto_missing():
        pytest.skip(moto_missing() or "")
    with S3Upstream(test_ca, tmp_path, auth=False) as up:
        proc = up.proc
        assert proc is not None
        c = up.client("s3", aws_access_key_id="anything", aws_secret_access_key="anything")
        c.create_bucket(Bucket="free-for-all")
        assert [b["Name"] for b in c.list_buckets()["Buckets"]] == ["free-for-all"]
        assert "secret" not in repr(up) or "<redacted>" in repr(up)
    assert proc.poll() is not None  # stopped and reaped
    up.stop()  # twice is fine


def test_real_key_works(authed: S3Upstream) -> None:
    assert authed.real_access_key_id.startswith("AKIA")
    s3 = authed.client("s3")
    s3.create_bucket(Bucket="authed")
    s3.put_object(Bucket="authed", Key="k", Body=b"v")
    assert s3.get_object(Bucket="authed", Key="k")["Body"].read() == b"v"


def test_unknown_key_and_wrong_secret_are_refused(authed: S3Upstream) -> None:
    unknown = authed.client("s3", aws_access_key_id="AKIAUNKNOWNUNKNOWN00")
    assert error_of(unknown.list_buckets) == ("InvalidAccessKeyId", 403)
    wrong = authed.client("s3", aws_secret_access_key="not-the-secret")
    assert error_of(wrong.list_buckets) == ("SignatureDoesNotMatch", 403)


def test_temporary_credentials_and_session_token(authed: S3Upstream) -> None:
    tc = authed.assume_role()
    assert tc.access_key_id.startswith("ASIA") and tc.secret_access_key not in repr(tc)

    def s3(**kw: Any) -> Any:
        kw.setdefault("aws_session_token", tc.session_token)
        return authed.client("s3", aws_access_key_id=tc.access_key_id,
                             aws_secret_access_key=tc.secret_access_key, **kw)  # fmt: skip

    s3().list_buckets()
    tampered = tc.session_token[:-4] + ("AAAA" if not tc.session_token.endswith("AAAA") else "BBBB")
    assert error_of(s3(aws_session_token=tampered).list_buckets) == ("InvalidToken", 400)
    assert error_of(s3(aws_session_token=None).list_buckets)[1] == 403


def test_presigned_urls_are_not_supported(authed: S3Upstream) -> None:
    s3 = authed.client("s3")
    s3.create_bucket(Bucket="presign")
    url = s3.generate_presigned_url("list_objects_v2", Params={"Bucket": "presign"})
    assert requests.get(url, verify=str(authed.ca_file), timeout=30).status_code == 500


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def test_chunk_signatures_are_not_verified(authed: S3Upstream) -> None:
    """A correctly signed seed request (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) whose chunk
    signatures are garbage is stored all the same: moto checks only the Authorization header."""
    authed.client("s3").create_bucket(Bucket="chunksig")
    body = f"5;chunk-signature={'0' * 64}\r\nhello\r\n0;chunk-signature={'1' * 64}\r\n\r\n"
    now = datetime.now(UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = f"127.0.0.1:{authed.port}"
    headers = {
        "content-encoding": "aws-chunked",
        "host": host,
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "x-amz-date": amz_date,
        "x-amz-decoded-content-length": "5",
    }
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        ["PUT", "/chunksig/k", "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed,
         headers["x-amz-content-sha256"]]
    )  # fmt: skip
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + authed.real_secret_access_key).encode()
    for part in (day, REGION, "s3", "aws4_request"):
        key = _sign(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={authed.real_access_key_id}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    r = requests.put(f"{authed.endpoint}/chunksig/k", data=body.encode(), headers=headers,
                     verify=str(authed.ca_file), timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    got = authed.client("s3").get_object(Bucket="chunksig", Key="k")["Body"].read()
    assert got == b"hello"
