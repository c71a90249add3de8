"""A real S3 (and IAM, STS) upstream for the tests: moto's server over TLS, in a subprocess.

moto runs in its own process (this file, run as a script), so its settings, environment
and global state never touch the pytest process. It listens on 127.0.0.1 on an ephemeral
port, with a certificate from the test CA for the names the caller gives (by default the S3,
IAM and STS names of us-east-1, a wildcard for virtual-hosted buckets, and 127.0.0.1);
egress reaches those names through ``upstream.resolve``.

Two modes:

- ``auth=False``: moto checks no credential at all (any key id and signature is accepted).
- ``auth=True``: moto lets exactly three requests through unchecked
  (``INITIAL_NO_AUTH_ACTION_COUNT=3``); ``start`` spends them on creating the IAM user
  ``agent``, its access key and an allow-everything inline policy, and exposes that key as
  ``real_access_key_id`` / ``real_secret_access_key``. Every later request must carry a
  valid SigV4 signature by a known key: an unknown key id is refused with
  ``InvalidAccessKeyId`` (403), a wrong secret with ``SignatureDoesNotMatch`` (403).

What moto 5.2 verifies, and what it does not:

- It reads only the ``Authorization`` header (SigV4 header form): the key id, and the
  signature recomputed over the method, path, query, the signed headers and the body hash
  the request declares in ``x-amz-content-sha256``.
- Temporary credentials from ``assume_role``: the key id must be one STS issued and the
  signature must use its secret; a tampered session token (``X-Amz-Security-Token``) is
  refused with 400 (``test_s3_upstream.py`` checks this).
- Presigned URLs (query-string signatures) are not supported: moto answers 500.
- It does not verify aws-chunked framing signatures (``chunk-signature=`` on each chunk,
  ``x-amz-trailer-signature``) nor, for unsigned payloads, the body against anything: only
  the seed signature in the ``Authorization`` header counts.
"""

from __future__ import annotations

import atexit
import http.client
import os
import selectors
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

S3_HOST = "s3.us-east-1.amazonaws.com"
REGION = "us-east-1"
DEFAULT_NAMES = (
    S3_HOST,
    f"*.{S3_HOST}",  # virtual-hosted buckets
    "s3.amazonaws.com",
    "iam.amazonaws.com",
    "sts.amazonaws.com",
    f"sts.{REGION}.amazonaws.com",
    "localhost",
    "127.0.0.1",
)
NO_AUTH_FOREVER = 10**12  # INITIAL_NO_AUTH_ACTION_COUNT: no request is ever checked
SETUP_CALLS = 3  # create_user, create_access_key, put_user_policy
AGENT_USER = "agent"
ALLOW_ALL = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
)
TRUST_ANYONE = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
    '"Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}'
)
READY_SECONDS = 60.0  # importing moto takes a few seconds; a loaded machine, more
STOP_SECONDS = 15.0

_RUNNING: set[S3Upstream] = set()


def moto_missing() -> str | None:
    """Why the moto server cannot run here, or None when it can."""
    import importlib.util

    for mod in ("moto", "werkzeug", "flask", "boto3"):
        if importlib.util.find_spec(mod) is None:
            return f"needs {mod} (pip install 'moto[server]' boto3; .ci/run installs them)"
    return None


@atexit.register
def _stop_leftovers() -> None:
    """Last resort, should a test forget to stop a server: none outlives the test process."""
    for server in list(_RUNNING):
        server.stop()


@dataclass(frozen=True)
class TemporaryCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str

    def __repr__(self) -> str:
        return f"TemporaryCredentials(access_key_id={self.access_key_id!r}, secret=<redacted>)"


class S3Upstream:
    """moto's server over TLS in a child process; a context manager (``start``/``stop``).

    ``ca``: the test CA (``trustme.CA``) that issues the server certificate; ``workdir``: a
    directory for the certificate, key, CA file and the server log; ``names``: what the
    certificate covers. After ``start``: ``port``, ``endpoint`` (https://127.0.0.1:port),
    ``ca_file`` (the CA to verify it with), and with ``auth=True`` the IAM user's key in
    ``real_access_key_id`` / ``real_secret_access_key``."""

    def __init__(
        self,
        ca: trustme.CA,
        workdir: Path,
        *,
        auth: bool = False,
        names: Sequence[str] = DEFAULT_NAMES,
        ready_seconds: float = READY_SECONDS,
    ):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.names = tuple(names)
        self.ready_seconds = ready_seconds
        self.ca_file = self.dir / "s3-ca.pem"
        self.cert_file, self.key_file = self.dir / "s3-cert.pem", self.dir / "s3-key.pem"
        self.log = self.dir / "moto.log"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert = ca.issue_cert(*self.names)
        cert.private_key_pem.write_to_path(str(self.key_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(str(self.cert_file), append=True)
        self.key_file.chmod(0o600)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.real_access_key_id = ""
        self.real_secret_access_key = ""
        self._role_arn = ""

    def __repr__(self) -> str:
        return f"S3Upstream(port={self.port}, auth={self.auth}, secret=<redacted>)"

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def url(self, host: str = S3_HOST) -> str:
        """The endpoint under a name (for clients that reach it through egress)."""
        return f"https://{host}:{self.port}"

    # --- life cycle ----------------------------------------------------------------

    def __enter__(self) -> S3Upstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start moto and return once it answers over TLS (and, with auth, is set up).
        Whatever goes wrong, the child is stopped before the error propagates."""
        assert self.proc is None, "already started"
        count = SETUP_CALLS if self.auth else NO_AUTH_FOREVER
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
               str(self.cert_file), str(self.key_file), str(count)]  # fmt: skip
        if shutil.which("setpriv"):
            # Should the test process be killed outright, take the server with it (setpriv
            # execs Python, so the pid stays the server's).
            cmd = ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
        env = {k: v for k, v in os.environ.items()
               if not k.lower().endswith("_proxy") and not k.startswith(("AWS_", "MOTO_"))}  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # its own process group: stop() kills all of it
            )  # fmt: skip
        _RUNNING.add(self)
        try:
            deadline = time.monotonic() + self.ready_seconds
            self.port = self._read_port(deadline)
            self._wait_answers(deadline)
            if self.auth:
                self._set_up_user()
        except BaseException as e:
            self.stop()
            if isinstance(e, AssertionError | KeyboardInterrupt):
                raise
            raise AssertionError(
                f"moto failed to start: {type(e).__name__}: {e}\n{self.log_tail()}"
            ) from e

    def stop(self) -> None:
        """Kill the server's process group and wait for it; safe to call more than once."""
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, STOP_SECONDS)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        proc.wait(timeout=STOP_SECONDS)  # reaped only now, so the group id was still ours
        if proc.stdout:
            proc.stdout.close()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"moto log {self.log} ends with:\n" + "\n".join(text.splitlines()[-lines:])

    def _read_port(self, deadline: float) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"moto printed no port within {self.ready_seconds:.0f} s")
                if not sel.select(timeout=min(left, 0.5)):
                    continue
                byte = os.read(self.proc.stdout.fileno(), 1)
                if not byte:
                    code = self.proc.wait(timeout=5)
                    raise AssertionError(f"moto exited with {code} before it listened")
                line += byte
        text = line.decode().strip()
        assert text.startswith("port "), f"moto printed {text!r}, not its port"
        return int(text.split()[1])

    def _wait_answers(self, deadline: float) -> None:
        """A TLS handshake verified against the CA and an HTTP answer: moto's own API, which
        is not an AWS action, so it does not use up the unauthenticated requests."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        last: BaseException | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"moto exited with {self.proc.returncode}")
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=5)
            try:
                conn.request("GET", "/moto-api/data.json")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    return
                last = AssertionError(f"moto answered {resp.status}")
            except (OSError, http.client.HTTPException) as e:
                last = e
            finally:
                conn.close()
            time.sleep(0.1)
        raise AssertionError(f"moto did not answer within {self.ready_seconds:.0f} s: {last!r}")

    def _set_up_user(self) -> None:
        """Exactly the three unchecked requests moto allows: nothing else may come first."""
        iam = self.client("iam", aws_access_key_id="AKIASETUP", aws_secret_access_key="setup")
        iam.create_user(UserName=AGENT_USER)
        key = iam.create_access_key(UserName=AGENT_USER)["AccessKey"]
        self.real_access_key_id, self.real_secret_access_key = (
            key["AccessKeyId"],
            key["SecretAccessKey"],
        )
        iam.put_user_policy(UserName=AGENT_USER, PolicyName="all", PolicyDocument=ALLOW_ALL)

    # --- clients -----------------------------------------------------------------------

    def client(self, service: str, **kw: Any) -> Any:
        """A boto3 client straight to moto (not through egress), for setup and read-back.

        Signs with the IAM user's real key when there is one, else with dummy keys; retries
        nothing (every request counts with moto's auth)."""
        import boto3
        from botocore.config import Config

        kw.setdefault("aws_access_key_id", self.real_access_key_id or "AKIADUMMYDUMMYDUMMY0")
        kw.setdefault("aws_secret_access_key", self.real_secret_access_key or "dummy-secret")
        kw.setdefault("region_name", REGION)
        kw.setdefault("endpoint_url", self.endpoint)
        kw.setdefault("verify", str(self.ca_file))
        kw.setdefault(
            "config",
            Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )
        return boto3.session.Session().client(service, **kw)

    def assume_role(self, role: str = "egress-test-role") -> TemporaryCredentials:
        """Temporary credentials from moto's STS, asked for with the IAM user's key (the role,
        allowed everything, is created on first use)."""
        if not self._role_arn:
            iam = self.client("iam")
            try:
                self._role_arn = iam.get_role(RoleName=role)["Role"]["Arn"]
            except iam.exceptions.NoSuchEntityException:
                self._role_arn = iam.create_role(
                    RoleName=role, AssumeRolePolicyDocument=TRUST_ANYONE
                )["Role"]["Arn"]
                iam.put_role_policy(RoleName=role, PolicyName="all", PolicyDocument=ALLOW_ALL)
        creds = self.client("sts").assume_role(RoleArn=self._role_arn, RoleSessionName="egress")
        c = creds["Credentials"]
        return TemporaryCredentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])


def _child(cert_file: str, key_file: str, no_auth_count: str) -> None:
    """The server process: moto's settings read the environment at import time."""
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = no_auth_count
    import moto.server
    from werkzeug.serving import make_server

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    app = moto.server.DomainDispatcherApplication(moto.server.create_backend_app)
    srv = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ctx)
    sys.stdout.write(f"port {srv.server_port}\n")
    sys.stdout.flush()
    os.dup2(2, 1)  # nothing else goes to the pipe the parent stops reading
    srv.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "--child":
        sys.exit("usage: s3_upstream.py --child CERT KEY INITIAL_NO_AUTH_ACTION_COUNT")
    _child(*sys.argv[2:])
