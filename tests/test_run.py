"""egress run: start-up, the banner, clean shutdown, refusals before listening."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import base_config, egress_cmd, proxy_env, start_proxy, write_config
from tests.upstream import Upstream


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_clean_shutdown(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path, sig: signal.Signals
) -> None:
    p = start_proxy(
        write_config(tmp_path, base_config(tmp_path, test_ca_file, upstream.port)), tmp_path
    )
    banner = p.stderr_path.read_text()
    assert f"CA certificate: {p.ca}" in banner
    assert f"export HTTPS_PROXY={p.url}" in banner
    # The whole client setup, for a shell next to this proxy (egress env, docs/clients.md).
    assert f'eval "$(egress env --config {p.config} --proxy-url {p.url})"' in banner
    assert "API_TOKEN=egress-api_token-placeholder" in banner
    p.proc.send_signal(sig)
    assert p.proc.wait(timeout=15) == 0
    err = p.stderr_path.read_text()
    assert "Traceback" not in err and "egress: stopped" in err


def test_missing_required_secret_refuses_to_start(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = write_config(tmp_path, base_config(tmp_path, test_ca_file, upstream.port))
    env = proxy_env()
    del env["EGRESS_TEST_API_TOKEN"]
    r = subprocess.run(
        egress_cmd("run", "--config", str(cfg)), capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 2
    assert (
        "secret 'api_token' (env:EGRESS_TEST_API_TOKEN): $EGRESS_TEST_API_TOKEN is not set"
        in r.stderr
    )
    assert "listening" not in r.stderr and "Traceback" not in r.stderr


def test_port_in_use_is_a_clear_error(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        c = base_config(tmp_path, test_ca_file, upstream.port)
        c["listen"]["port"] = busy.getsockname()[1]
        r = subprocess.run(egress_cmd("run", "--config", str(write_config(tmp_path, c))),
                           capture_output=True, text=True, env=proxy_env(), timeout=60)  # fmt: skip
    assert r.returncode == 2 and "could not listen on 127.0.0.1:" in r.stderr
    assert "Traceback" not in r.stderr
    assert "--mode" not in r.stderr  # mitmproxy's advice names flags egress does not have


def test_embedded_default_config_starts_without_any_file(tmp_path: Path) -> None:
    """The README's first command, with a fresh HOME: no config, no secrets file, no Vault."""
    env = proxy_env(HOME=str(tmp_path))
    proc = subprocess.Popen(egress_cmd("run", "--port", "0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        err = ""
        assert proc.stderr is not None
        while "ready;" not in err and time.monotonic() < deadline:
            err += proc.stderr.readline()
        assert "<embedded default config>" in err and "ready;" in err, err
        assert (tmp_path / ".config" / "egress" / "egress-ca.pem").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "Traceback" not in err + rest
    assert "optional secret github_token is not loaded" in err
    assert os.path.exists(tmp_path / ".config" / "egress" / "egress-ca.pem")
