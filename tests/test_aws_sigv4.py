"""AWS SigV4 re-signing end to end: the real AWS SDK for Python (boto3) and the AWS CLI as
the agent, holding a placeholder key id and a dummy secret key; a real ``egress run``; and
moto's S3/IAM/STS server over TLS as the upstream, with authentication on: it recomputes
every header-form signature with the real key (tests/s3_upstream.py), so a 200 proves the
upstream verified egress's signature. Negative controls show that the agent's own signature,
and the real key id with a wrong secret, are refused by the same server.

moto cannot verify presigned URLs (it reads only the Authorization header), so a presigned
request goes to the suite's recording upstream, bound through ``aws.endpoints``, and what
it received is verified with botocore's canonical request and the real key.
"""

from __future__ import annotations

import hmac
import io
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest
import trustme

from tests.canary import CANARIES
from tests.conftest import API, RunningProxy, base_config, proxy_env, start_proxy, write_config
from tests.s3_upstream import REGION, S3_HOST, S3Upstream, moto_missing
from tests.upstream import Upstream

pytestmark = pytest.mark.skipif(moto_missing() is not None, reason=moto_missing() or "")

PH = "AKIAEGRESS0000000001"
IAM_HOST = "iam.amazonaws.com"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA) -> Iterator[S3Upstream]:
    up = S3Upstream(test_ca, tmp_path_factory.mktemp("moto-auth"), auth=True)
    up.start()
    try:
        assert up.real_access_key_id and up.real_secret_access_key
        CANARIES.update({up.real_access_key_id, up.real_secret_access_key})
        yield up
    finally:
        up.stop()


def aws_config(tmp: Path, ca_file: Path, s3: S3Upstream, upstream_port: int,
               token: bool = False) -> dict[str, Any]:  # fmt: skip
    cfg = base_config(tmp, ca_file, upstream_port)
    for host in (S3_HOST, IAM_HOST):
        cfg["allow"].append({"host": host, "ports": [s3.port]})
        cfg["upstream"]["resolve"][host] = "127.0.0.1"
    parts = {
        "access_key_id": "EGRESS_TEST_AWS_KEY_ID",
        "secret_access_key": "EGRESS_TEST_AWS_SECRET",
    }
    if token:
        parts["session_token"] = "EGRESS_TEST_AWS_TOKEN"
    cfg["secrets"].append({
        "name": "aws", "scheme": "aws_sigv4", "placeholder": PH, "source": {"env": parts},
        "hosts": [S3_HOST, IAM_HOST, API],
        "env": {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY"},
        "aws": {"regions": ["us-east-1"], "services": ["s3", "iam"],
                "endpoints": {API: {"region": "us-east-1", "service": "s3"}}},
    })  # fmt: skip
    return cfg


def run_proxy(tmp: Path, cfg: dict[str, Any], **env: str) -> RunningProxy:
    return start_proxy(write_config(tmp, cfg), tmp, env=proxy_env(**env))


@pytest.fixture(scope="module")
def aws_proxy(tmp_path_factory: pytest.TempPathFactory, s3: S3Upstream, upstream: Upstream,
              test_ca_file: Path) -> Iterator[RunningProxy]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("egress-aws")
    p = run_proxy(tmp, aws_config(tmp, test_ca_file, s3, upstream.port),
                  EGRESS_TEST_AWS_KEY_ID=s3.real_access_key_id or "",
                  EGRESS_TEST_AWS_SECRET=s3.real_secret_access_key or "")  # fmt: skip
    try:
        yield p
    finally:
        code = p.stop()
    assert code == 0, p.stderr_path.read_text()
    assert "Traceback" not in p.stderr_path.read_text()


AGENT_SECRET = "the-agent-never-knows-the-real-one"  # noqa: S105 (the agent's dummy key)


def agent(proxy: RunningProxy, s3: S3Upstream, service: str = "s3", *, key_id: str = PH,
          secret: str = AGENT_SECRET, host: str = S3_HOST) -> Any:  # fmt: skip
    """boto3 as the agent: through egress, trusting egress's CA, the placeholder key id."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        service, region_name=REGION, endpoint_url=s3.url(host), verify=str(proxy.ca),
        aws_access_key_id=key_id, aws_secret_access_key=secret,
        config=Config(proxies={"https": proxy.url}, s3={"addressing_style": "path"},
                      retries={"total_max_attempts": 1}),
    )  # fmt: skip


def reasons(proxy: RunningProxy, since: int) -> list[str]:
    return [r["reason"] for r in proxy.audit()[since:]]


def error_code(call: Any) -> str:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as e:
        call()
    return str(e.value.response["Error"]["Code"])


def test_negative_controls_moto_verifies_signatures(s3: S3Upstream) -> None:
    """Without egress, the same server refuses the agent's signature and a wrong secret: a 200
    through egress is moto accepting egress's signature."""
    assert (
        error_code(lambda: s3.client("s3", aws_access_key_id=PH).list_buckets())
        == "InvalidAccessKeyId"
    )
    wrong = s3.client("s3", aws_secret_access_key="not-the-real-secret-key-0000000000000000")
    assert error_code(wrong.list_buckets) == "SignatureDoesNotMatch"


def test_boto3_s3_through_egress(aws_proxy: RunningProxy, s3: S3Upstream) -> None:
    since = len(aws_proxy.audit())
    client = agent(aws_proxy, s3)
    client.create_bucket(Bucket="resigned")
    client.put_object(Bucket="resigned", Key="small.txt", Body=b"hello, re-signed")
    data = os.urandom(40_000)
    client.upload_fileobj(io.BytesIO(data), "resigned", "medium.bin")
    big = os.urandom(200_000)  # over limits.max_body_bytes: streamed, signed on its headers
    client.put_object(Bucket="resigned", Key="big.bin", Body=big)
    assert (
        client.get_object(Bucket="resigned", Key="small.txt")["Body"].read() == b"hello, re-signed"
    )
    assert client.head_object(Bucket="resigned", Key="medium.bin")["ContentLength"] == 40_000
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="resigned")["Contents"]]
    assert keys == ["big.bin", "medium.bin", "small.txt"]
    client.delete_object(Bucket="resigned", Key="small.txt")
    direct = s3.client("s3")  # read back with the real key, not through egress
    assert direct.get_object(Bucket="resigned", Key="medium.bin")["Body"].read() == data
    assert direct.get_object(Bucket="resigned", Key="big.bin")["Body"].read() == big
    records = aws_proxy.audit()[since:]
    assert {r["reason"] for r in records} == {"allowed"}
    assert all(r["secrets"] == ["aws"] for r in records if r.get("event") != "tunnel"), records


def test_non_s3_service_body_hashed(aws_proxy: RunningProxy, s3: S3Upstream) -> None:
    """IAM declares no payload hash: egress hashes the buffered body. Its answer lists the
    user's access key id, which the agent sees as the placeholder."""
    iam = agent(aws_proxy, s3, "iam", host=IAM_HOST)
    assert iam.get_user(UserName="agent")["User"]["UserName"] == "agent"
    keys = iam.list_access_keys(UserName="agent")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [PH]


def test_aws_cli_through_egress(aws_proxy: RunningProxy, s3: S3Upstream, tmp_path: Path) -> None:
    if shutil.which("aws") is None:
        pytest.skip("needs the aws CLI (pip install awscli; .ci/run installs it)")
    s3.client("s3").create_bucket(Bucket="cli-resigned")
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(30_000))
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n")
    env = proxy_env(
        HTTPS_PROXY=aws_proxy.url, AWS_CA_BUNDLE=str(aws_proxy.ca), AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_ACCESS_KEY_ID=PH,
        AWS_SECRET_ACCESS_KEY="agent-dummy", AWS_DEFAULT_REGION=REGION, AWS_MAX_ATTEMPTS="1",
    )  # fmt: skip
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(k, None)
    endpoint = ["--endpoint-url", s3.url(S3_HOST)]
    # Not `aws s3 ls s3://bucket/`: its delimiter=%2F makes moto itself miscompute the
    # canonical query (it fails with the real key and no egress too).
    for args in (["s3", "cp", str(src), "s3://cli-resigned/up.bin"], ["s3", "ls"],
                 ["s3api", "list-objects-v2", "--bucket", "cli-resigned"],
                 ["s3api", "head-object", "--bucket", "cli-resigned", "--key", "up.bin"]):  # fmt: skip
        run = subprocess.run(["aws", *args, *endpoint], env=env, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        assert s3.real_access_key_id not in run.stdout + run.stderr
    got = s3.client("s3").get_object(Bucket="cli-resigned", Key="up.bin")["Body"].read()
    assert got == src.read_bytes()


def test_credential_actions_are_refused(aws_proxy: RunningProxy, s3: S3Upstream) -> None:
    """iam:CreateAccessKey signed with the real key would give the agent a key of its own
    (the query API posts its Action in the body: read before signing)."""
    since = len(aws_proxy.audit())
    iam = agent(aws_proxy, s3, "iam", host=IAM_HOST)
    from botocore.exceptions import ClientError
    from botocore.parsers import ResponseParserError

    with pytest.raises((ClientError, ResponseParserError)) as e:  # IAM's parser reads XML only
        iam.create_access_key(UserName="agent")
    assert "403" in str(e.value) and "aws_credential_action" in str(e.value)
    assert reasons(aws_proxy, since)[-1] == "aws_credential_action"
    assert len(s3.client("iam").list_access_keys(UserName="agent")["AccessKeyMetadata"]) == 1


REFUSALS = [
    ("the agent's own key id", {"key_id": "AKIAAGENTSOWNKEY0001"}, "foreign_credential"),
    ("a region the secret does not sign for", {"region": "eu-west-1"}, "aws_scope_mismatch"),
]


@pytest.mark.parametrize("change,reason", [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refusals(
    aws_proxy: RunningProxy, s3: S3Upstream, change: dict[str, str], reason: str
) -> None:
    import boto3
    from botocore.config import Config

    since = len(aws_proxy.audit())
    client = boto3.session.Session().client(
        "s3", region_name=change.get("region", REGION), endpoint_url=s3.url(S3_HOST),
        verify=str(aws_proxy.ca), aws_access_key_id=change.get("key_id", PH),
        aws_secret_access_key="x", config=Config(proxies={"https": aws_proxy.url},
                                                 s3={"addressing_style": "path"},
                                                 retries={"total_max_attempts": 1}),
    )  # fmt: skip
    assert error_code(client.list_buckets) == "403"
    assert reasons(aws_proxy, since)[-1] == reason


def test_session_token(
    tmp_path: Path, s3: S3Upstream, upstream: Upstream, test_ca_file: Path
) -> None:
    """Real credentials from STS (key id, secret, session token): egress adds the real token,
    signed; the agent's placeholder token is dropped; a wrong real token is refused upstream."""
    creds = s3.assume_role()
    CANARIES.update({creds.secret_access_key, creds.session_token, creds.access_key_id})
    s3.client("s3").create_bucket(Bucket="sts-bucket")
    s3.client("s3").put_object(Bucket="sts-bucket", Key="k", Body=b"via sts")
    for token, expected in (
        (creds.session_token, None),
        (creds.session_token[:-4] + "AAAA", "InvalidToken"),
    ):
        d = tmp_path / ("ok" if expected is None else "bad")
        d.mkdir()
        p = run_proxy(d, aws_config(d, test_ca_file, s3, upstream.port, token=True),
                      EGRESS_TEST_AWS_KEY_ID=creds.access_key_id,
                      EGRESS_TEST_AWS_SECRET=creds.secret_access_key,
                      EGRESS_TEST_AWS_TOKEN=token)  # fmt: skip
        try:
            import boto3
            from botocore.config import Config

            client = boto3.session.Session().client(
                "s3", region_name=REGION, endpoint_url=s3.url(S3_HOST), verify=str(p.ca),
                aws_access_key_id=PH, aws_secret_access_key="x",
                aws_session_token="PLACEHOLDER-SESSION-TOKEN-FROM-THE-AGENT",
                config=Config(proxies={"https": p.url}, s3={"addressing_style": "path"},
                              retries={"total_max_attempts": 1}),
            )  # fmt: skip
            if expected is None:
                assert client.get_object(Bucket="sts-bucket", Key="k")["Body"].read() == b"via sts"
            else:
                assert (
                    error_code(lambda c=client: c.get_object(Bucket="sts-bucket", Key="k"))
                    == expected
                )
        finally:
            assert p.stop() == 0
        out = p.outputs()
        for value in (creds.secret_access_key, creds.session_token, creds.access_key_id):
            assert value not in out


def verify_presigned(path: str, host: str, key_id: str, secret: str) -> bool:
    """Recompute a presigned URL's signature from the URL as received (botocore's canonical
    request), with the real key: True when it matches."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    q = dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))
    akid, _, region, service, _ = q["X-Amz-Credential"].split("/")
    if akid != key_id:
        return False
    rest = [
        (k, v)
        for k, v in parse_qsl(urlsplit(path).query, keep_blank_values=True)
        if k != "X-Amz-Signature"
    ]
    request = AWSRequest(
        method="GET", url=f"https://{host}{urlsplit(path).path}", headers={"host": host}
    )
    request.params = rest
    request.context["timestamp"] = q["X-Amz-Date"]
    auth = S3SigV4QueryAuth(Credentials(akid, secret, q.get("X-Amz-Security-Token")), service, region,
                            expires=int(q["X-Amz-Expires"]))  # fmt: skip
    signature = auth.signature(
        auth.string_to_sign(request, auth.canonical_request(request)), request
    )
    return hmac.compare_digest(signature, q["X-Amz-Signature"])


def test_presigned_url(aws_proxy: RunningProxy, s3: S3Upstream, upstream: Upstream) -> None:
    import boto3
    from botocore.config import Config

    presigner = boto3.session.Session().client(
        "s3", region_name=REGION, endpoint_url=f"https://{API}:{upstream.port}",
        aws_access_key_id=PH, aws_secret_access_key="x",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )  # fmt: skip
    url = presigner.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "a b/ü.txt"},
                                           ExpiresIn=600)  # fmt: skip
    with httpx.Client(
        proxy=aws_proxy.url, verify=ssl.create_default_context(cafile=str(aws_proxy.ca))
    ) as c:
        r = c.get(url)
    assert r.status_code == 200, r.text
    got = upstream.requests[-1]
    host = f"{API}:{upstream.port}"
    assert verify_presigned(
        got.path, host, s3.real_access_key_id or "", s3.real_secret_access_key or ""
    )
    assert not verify_presigned(got.path, host, s3.real_access_key_id or "", "wrong")
    assert urlsplit(got.path).path == "/b/" + quote("a b/ü.txt")
    # The upstream echoes the query it received: the signature egress made, a credential for
    # that URL, is masked in what the agent gets; the URL was signed for 5 minutes at most.
    query = dict(parse_qsl(urlsplit(got.path).query))
    assert (
        query["X-Amz-Signature"] not in r.text and r.json()["query"]["X-Amz-Signature"] == "0" * 64
    )
    assert 0 < int(query["X-Amz-Expires"]) <= 300
    # The agent's URL signed with the placeholder would not verify with the real key.
    assert not verify_presigned(urlsplit(url).path + "?" + urlsplit(url).query, host,
                                s3.real_access_key_id or "", s3.real_secret_access_key or "")  # fmt: skip

    # A SigV2 presigned URL (boto3's default for custom endpoints) is refused with a hint.
    v2 = (
        boto3.session.Session()
        .client(
            "s3",
            region_name=REGION,
            endpoint_url=f"https://{API}:{upstream.port}",
            aws_access_key_id=PH,
            aws_secret_access_key="x",
            config=Config(signature_version="s3"),
        )
        .generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    )
    with httpx.Client(
        proxy=aws_proxy.url, verify=ssl.create_default_context(cafile=str(aws_proxy.ca))
    ) as c:
        r = c.get(v2)
    assert r.status_code == 403 and r.headers["x-egress-reason"] == "signature_scheme_unsupported"
    assert "s3v4" in r.text


def test_credentials_from_vault_kv(tmp_path: Path, s3: S3Upstream, upstream: Upstream,
                                   test_ca_file: Path, vault: Any) -> None:  # fmt: skip
    """The three parts read together from one real OpenBao KV v2 secret, keys named as
    Vault's AWS engine names them (access_key, secret_key, security_token: null for an IAM
    user), with a token that may read only that path."""
    vault.kv2_put("agents/aws", {"access_key": s3.real_access_key_id or "",
                                 "secret_key": s3.real_secret_access_key or "",
                                 "region": "us-east-1"})  # fmt: skip
    vault.policy("egress-aws", 'path "secret/data/agents/aws" { capabilities = ["read"] }')
    cfg = aws_config(tmp_path, test_ca_file, s3, upstream.port)
    cfg["secrets"][-1]["source"] = {"vault": {"path": "agents/aws", "keys": {
        "access_key_id": "access_key", "secret_access_key": "secret_key",
        "session_token": "security_token"}}}  # fmt: skip
    cfg["vault"] = {"address": vault.address, "ca_file": str(vault.ca_file), "timeout_seconds": 5,
                    "auth": {"method": "token", "token_env": "EGRESS_VAULT_TOKEN"}}  # fmt: skip
    p = run_proxy(tmp_path, cfg, EGRESS_VAULT_TOKEN=vault.token(["egress-aws"]))
    try:
        client = agent(p, s3)
        client.create_bucket(Bucket="from-vault")
        client.put_object(Bucket="from-vault", Key="k", Body=b"signed with a key from OpenBao")
        assert s3.client("s3").get_object(Bucket="from-vault", Key="k")["Body"].read() == (
            b"signed with a key from OpenBao"
        )
    finally:
        assert p.stop() == 0
    assert s3.real_secret_access_key not in p.outputs()


def test_signed_chunks_through_egress(aws_proxy: RunningProxy, s3: S3Upstream) -> None:
    """An upload signed per chunk (other SDKs' way; boto3 never sends it), hand-built as the
    agent: egress signs the seed and every chunk again. moto checks the seed signature and
    strips the chunk framing (it does not check chunk signatures: tests/test_sigv4.py checks
    those against AWS's published example)."""
    s3.client("s3").create_bucket(Bucket="chunked")
    data = [os.urandom(8192), os.urandom(24)]  # S3: 8 KiB at least but the last
    body = b"".join(
        f"{len(d):x};chunk-signature={'3' * 64}\r\n".encode() + d + b"\r\n" for d in [*data, b""]
    )
    host = f"{S3_HOST}:{s3.port}"
    names = "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length"
    headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": "8216",
               "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
               "x-amz-date": "20261203T000000Z",
               "Authorization": f"AWS4-HMAC-SHA256 Credential={PH}/20261203/us-east-1/s3/aws4_request, "
                                f"SignedHeaders={names}, Signature={'4' * 64}"}  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(aws_proxy.ca))
    with httpx.Client(proxy=aws_proxy.url, verify=ctx) as c:
        r = c.put(f"https://{host}/chunked/obj", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert s3.client("s3").get_object(Bucket="chunked", Key="obj")["Body"].read() == b"".join(data)
