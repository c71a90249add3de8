"""Azure Storage Shared Key (``scheme: azure_shared_key``): the Azure SDK for Python as the
agent, holding a placeholder account key; egress signs each request again with the real
key; Azurite (Microsoft's storage emulator, from npm) over TLS as the upstream, with the
real key as its account key, so its 201/200 is the proof that the signature is right.

The string to sign is also checked, without a server, against the SDK's own signer for a
table of requests (egress does not import the SDK: it is only the reference here).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import trustme

from egress import azuresign
from egress.config import parse
from egress.injection import Denial, Injection, RequestParts, plan
from egress.reasons import Reason
from egress.secrets import SecretValue
from tests.canary import CANARIES, OUTPUTS
from tests.conftest import RunningProxy, base_config, proxy_env, start_proxy, write_config

ACCOUNT = "egressacct"
HOST = f"{ACCOUNT}.blob.core.windows.net"
REAL_KEY = base64.b64encode(b"real-azure-account-key-" + bytes(range(41))).decode()
CANARIES.add(REAL_KEY)


def azurite_binary() -> str | None:
    for candidate in (shutil.which("azurite-blob"), "/opt/azurite/node_modules/.bin/azurite-blob"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


SDK_CASES = [
    ("PUT", "/cont1?restype=container", {"x-ms-version": "2025-01-05", "Content-Length": "0"}),
    ("PUT", "/cont1/a%20b/%C3%BC.txt", {"x-ms-version": "2025-01-05", "x-ms-blob-type": "BlockBlob",
                                        "Content-Type": "text/plain", "Content-Length": "5",
                                        "x-ms-meta-b": "2", "x-ms-meta-a": "1"}),
    ("GET", "/?comp=list&prefix=c&maxresults=5&include=metadata", {"x-ms-version": "2025-01-05"}),
    ("GET", "/cont1/x?comp=blocklist&blocklisttype=all", {"x-ms-version": "2025-01-05", "x-ms-range": "bytes=0-9",
                                                          "If-None-Match": '"abc"'}),
]  # fmt: skip


@pytest.mark.parametrize("method,path,headers", SDK_CASES)
def test_string_to_sign_is_the_sdks(method: str, path: str, headers: dict[str, str]) -> None:
    pytest.importorskip("azure.storage.blob")
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.rest import HttpRequest
    from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy

    now = datetime(2026, 12, 3, 20, 0, tzinfo=UTC)
    req = HttpRequest(
        method,
        f"https://{HOST}{path}",
        headers={**headers, "x-ms-date": format_datetime(now, usegmt=True)},
    )
    SharedKeyCredentialPolicy(ACCOUNT, REAL_KEY).on_request(
        PipelineRequest(req, PipelineContext(None))
    )
    out, signature = azuresign.sign(
        SecretValue(REAL_KEY), ACCOUNT, method, path, list(headers.items()), now
    )
    assert (
        dict(out)["Authorization"]
        == req.headers["Authorization"]
        == f"SharedKey {ACCOUNT}:{signature}"
    )


CFG = parse({
    "allow": [HOST, "other.blob.core.windows.net"],
    "secrets": [{"name": "az", "scheme": "azure_shared_key", "hosts": [HOST], "source": {"env": "K"},
                 "azure": {"account": ACCOUNT}}],
}, "t.yaml", Path("/"))  # fmt: skip
SIG = "A" * 43 + "="

PLAN = [
    ("signed for the account", (("Authorization", f"SharedKey {ACCOUNT}:{SIG}"),), HOST, "sign"),
    ("another account", (("Authorization", f"SharedKey someoneelse:{SIG}"),), HOST, Reason.FOREIGN_CREDENTIAL),
    ("SharedKeyLite", (("Authorization", f"SharedKeyLite {ACCOUNT}:{SIG}"),), HOST, Reason.SIGNATURE_SCHEME_UNSUPPORTED),
    ("two Authorization", (("Authorization", f"SharedKey {ACCOUNT}:{SIG}"),) * 2, HOST, Reason.SIGNATURE_SCHEME_UNSUPPORTED),
    ("a signed header not ASCII", (("Authorization", f"SharedKey {ACCOUNT}:{SIG}"), ("x-ms-meta-a", "é")), HOST, Reason.MALFORMED_REQUEST),
    ("an x-ms header twice", (("Authorization", f"SharedKey {ACCOUNT}:{SIG}"), ("x-ms-meta-a", "1"), ("x-ms-meta-a", "2")), HOST, Reason.MALFORMED_REQUEST),
    ("an x-ms header name outside a-z0-9-", (("Authorization", f"SharedKey {ACCOUNT}:{SIG}"), ("x-ms-meta.a", "1")), HOST, Reason.MALFORMED_REQUEST),
    ("no signature: nothing to do", (), HOST, "nothing"),
    ("unbound host: not egress's to sign", (("Authorization", f"SharedKey {ACCOUNT}:{SIG}"),), "other.blob.core.windows.net", "nothing"),
]  # fmt: skip


QUERIES = [
    ("/cont1?comp=list", "sign"),
    ("/cont1?a=1%0Ab:2", Reason.MALFORMED_REQUEST),  # would read as a second line a:1 / b:2
    ("/cont1?a%3Ab=c", Reason.MALFORMED_REQUEST),  # name a:b
    ("/cont1?a=%ff", Reason.MALFORMED_REQUEST),
    ("/cont1?a=b+c", Reason.MALFORMED_REQUEST),
    (
        "/cont\udcff1",
        Reason.MALFORMED_REQUEST,
    ),  # bytes that are not UTF-8 (as mitmproxy gives them)
]


@pytest.mark.parametrize("path,expected", QUERIES)
def test_paths_and_queries_that_would_read_twice(path: str, expected: object) -> None:
    got = plan(RequestParts("https", HOST, "GET", path, (("Authorization", f"SharedKey {ACCOUNT}:{SIG}"),), None),
               [(CFG.secrets[0], SecretValue(REAL_KEY))])  # fmt: skip
    if expected == "sign":
        assert isinstance(got, Injection) and got.sign_azure is not None
    else:
        assert isinstance(got, Denial) and got.reason == expected, got


def test_hosts_must_be_the_accounts_own_endpoints() -> None:
    """Shared Key does not cover the host: a signature made for any bound host works at the
    account's endpoints, so only those may be bound unless azure.other_hosts says so."""
    from egress.errors import ConfigError

    secret = {"name": "az", "scheme": "azure_shared_key", "hosts": ["attacker.example"], "source": {"env": "K"},
              "azure": {"account": ACCOUNT}}  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"secrets\[0\]\.hosts\[0\]: 'attacker.example' is not an endpoint"
    ):
        parse({"allow": ["attacker.example"], "secrets": [secret]}, "t.yaml", Path("/"))
    secret["azure"] = {"account": ACCOUNT, "other_hosts": True}
    assert (
        parse({"allow": ["attacker.example"], "secrets": [secret]}, "t.yaml", Path("/"))
        .secrets[0]
        .azure_account
    )


@pytest.mark.parametrize("headers,host,expected", [c[1:] for c in PLAN], ids=[c[0] for c in PLAN])
def test_plan(headers: tuple[tuple[str, str], ...], host: str, expected: object) -> None:
    got = plan(RequestParts("https", host, "GET", "/cont1", headers, None),
               [(CFG.secrets[0], SecretValue(REAL_KEY))])  # fmt: skip
    if expected == "sign":
        assert isinstance(got, Injection) and got.sign_azure is not None
    elif expected == "nothing":
        assert isinstance(got, Injection) and got.sign_azure is None and not got.injected
    else:
        assert isinstance(got, Denial) and got.reason == expected, got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA) -> Iterator[int]:
    binary = azurite_binary()
    if binary is None:
        pytest.skip("needs Azurite (npm install azurite; .ci/run installs it into /opt/azurite)")
    pytest.importorskip("azure.storage.blob")
    d = tmp_path_factory.mktemp("azurite")
    cert = test_ca.issue_cert(HOST, "127.0.0.1")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    port = free_port()
    log = d / "azurite.log"
    proc = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--cert", str(d / "cert.pem"),
         "--key", str(d / "key.pem"), "--location", str(d / "data"), "--skipApiVersionCheck", "--debug", str(d / "debug.log")],
        env={**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{REAL_KEY}"},
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("Azurite did not start:\n" + log.read_text()) from None
                time.sleep(0.2)
        yield port
    finally:
        # Its data is throwaway, and a graceful stop waits out the SDK's kept-alive
        # connections (15 s): kill its process group.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def az_proxy(
    tmp_path_factory: pytest.TempPathFactory, azurite: int, test_ca_file: Path
) -> Iterator[RunningProxy]:
    tmp = tmp_path_factory.mktemp("egress-azure")
    cfg = base_config(tmp, test_ca_file, azurite)
    cfg["allow"].append({"host": HOST, "ports": [azurite]})
    cfg["upstream"]["resolve"][HOST] = "127.0.0.1"
    cfg["secrets"].append({"name": "az", "scheme": "azure_shared_key", "hosts": [HOST],
                           "source": {"env": "EGRESS_TEST_AZURE_KEY"}, "azure": {"account": ACCOUNT}})  # fmt: skip
    p = start_proxy(write_config(tmp, cfg), tmp, env=proxy_env(EGRESS_TEST_AZURE_KEY=REAL_KEY))
    try:
        yield p
    finally:
        assert p.stop() == 0, p.stderr_path.read_text()


def agent_client(p: RunningProxy, port: int, key: str) -> Any:
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient(f"https://{HOST}:{port}", credential={"account_name": ACCOUNT, "account_key": key},
                             proxies={"https": p.url, "http": p.url}, connection_verify=str(p.ca))  # fmt: skip


def test_azure_sdk_through_egress(az_proxy: RunningProxy, azurite: int) -> None:
    placeholder = next(s for s in CFG.secrets if s.name == "az").placeholder
    client = agent_client(az_proxy, azurite, placeholder)
    client.create_container("cont1")
    blob = client.get_blob_client("cont1", "dir/ü b.txt")
    blob.upload_blob(b"signed again by egress", metadata={"b": "2", "a": "1"})
    assert blob.download_blob().readall() == b"signed again by egress"
    assert [c.name for c in client.list_containers()] == ["cont1"]
    assert blob.get_blob_properties().metadata == {"b": "2", "a": "1"}
    records = az_proxy.audit()
    assert records and all(r["secrets"] == ["az"] for r in records if r.get("event") != "tunnel")
    OUTPUTS.append(az_proxy.audit_path)
    assert REAL_KEY not in az_proxy.outputs()


def test_negative_control_the_placeholder_key_is_refused_by_azurite(
    azurite: int, test_ca_file: Path
) -> None:
    """Straight to Azurite (no egress), the placeholder key fails: a 2xx through egress is
    Azurite accepting egress's signature."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobServiceClient

    placeholder = CFG.secrets[0].placeholder
    direct = BlobServiceClient(f"https://127.0.0.1:{azurite}/{ACCOUNT}",
                               credential={"account_name": ACCOUNT, "account_key": placeholder},
                               connection_verify=str(test_ca_file))  # fmt: skip
    with pytest.raises(HttpResponseError) as e:
        direct.create_container("nope")
    assert e.value.status_code == 403
