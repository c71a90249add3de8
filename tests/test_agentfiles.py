"""The sidecar's agent-side files: all an agent needs, and no secret."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import API, SECRET, assert_no_secret, base_config, start_proxy, write_config
from tests.upstream import Upstream


def test_an_agent_that_sources_the_env_file_gets_injected(tmp_path: Path, upstream: Upstream,
                                                          test_ca_file: Path) -> None:  # fmt: skip
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["agent"] = {"dir": str(tmp_path / "shared"), "proxy_url": "http://127.0.0.1:8080"}
    cfg["secrets"][0].update(
        placeholder="auto", placeholder_prefix="sk-test-", placeholder_length=40
    )
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        shared = tmp_path / "shared"
        assert sorted(f.name for f in shared.iterdir()) == [
            "ca-bundle.pem",
            "egress-ca.pem",
            "egress.env",
        ]
        env = dict(
            line.split("=", 1)
            for line in (shared / "egress.env").read_text().splitlines()
            if "=" in line
        )
        assert (
            env["API_TOKEN"].startswith("sk-test-") and len(env["API_TOKEN"]) == 40
        )  # made at this start
        assert env["SSL_CERT_FILE"] == str(shared / "ca-bundle.pem")
        assert env["NODE_EXTRA_CA_CERTS"] == str(shared / "egress-ca.pem")
        assert env["HTTPS_PROXY"] == "http://127.0.0.1:8080"
        bundle = (shared / "ca-bundle.pem").read_text()
        assert bundle.count("BEGIN CERTIFICATE") > 1 and bundle.endswith(
            (shared / "egress-ca.pem").read_text()
        )
        # The agent: source the file, then talk through the proxy (here on its test port).
        script = (f'set -a; . "{shared / "egress.env"}"; set +a; '
                  f'curl -sS --fail-with-body --proxy {p.url} https://{API}:{upstream.port}/agent '
                  '-H "Authorization: Bearer $API_TOKEN"')  # fmt: skip
        r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert upstream.requests[0].headers["authorization"] == f"Bearer {SECRET}"
        for f in shared.iterdir():
            assert_no_secret(f.read_text())
        assert_no_secret(r.stdout, r.stderr)
    finally:
        assert p.stop() == 0
