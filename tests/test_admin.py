"""The admin listener: liveness, readiness and metrics, and the drain on SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.conftest import API, base_config, egress_cmd, proxy_env, start_proxy, write_config
from tests.upstream import Upstream

PH = "egress-api_token-placeholder"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (loopback)
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def admin_url(stderr: Path) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"admin listener on (http://127\.0\.0\.1:\d+)", stderr.read_text())
        if m:
            return m.group(1)
        time.sleep(0.05)
    raise AssertionError(stderr.read_text())


def test_not_ready_while_secrets_load(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    # A "Vault" that accepts connections and never answers: loading takes timeout_seconds.
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        cfg = base_config(tmp_path, test_ca_file, upstream.port)
        cfg["admin"] = {"port": 0}
        cfg["vault"] = {"address": f"http://127.0.0.1:{blackhole.getsockname()[1]}", "timeout_seconds": 4,
                        "auth": {"method": "token", "token_env": "T"}}  # fmt: skip
        cfg["secrets"][0]["source"] = {"vault": {"path": "a", "key": "k"}}
        err = tmp_path / "stderr"
        proc = subprocess.Popen(egress_cmd("run", "--config", str(write_config(tmp_path, cfg))),
                                stderr=err.open("w"), env=proxy_env(T="t"))  # fmt: skip
        try:
            url = admin_url(err)
            assert get(url + "/healthz") == (200, "ok\n")
            status, body = get(url + "/readyz")
            assert status == 503 and "loading secrets" in body
            assert "egress_ready 0.0" in get(url + "/metrics")[1]
        finally:
            assert proc.wait(timeout=30) == 2  # Vault never answered: refused to start
    assert "no answer from" in err.read_text()


def test_ready_and_metrics_move_with_traffic(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["admin"] = {"port": 0}
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        url = admin_url(p.stderr_path)
        assert get(url + "/readyz") == (200, "ready\n")
        for args in (["-H", f"Authorization: Bearer {PH}", f"https://{API}:{upstream.port}/m"],
                     [f"https://nope.egress.test:{upstream.port}/"]):  # fmt: skip
            subprocess.run(
                ["curl", "-sS", "--proxy", p.url, "--cacert", str(p.ca), *args],
                capture_output=True,
                timeout=20,
            )
        status, metrics = get(url + "/metrics")
        assert status == 200
        assert 'egress_requests_total{decision="allow",reason="allowed"} 1.0' in metrics
        assert 'egress_requests_total{decision="deny",reason="host_not_allowed"} 1.0' in metrics
        assert 'egress_secrets_injected_total{secret="api_token"} 1.0' in metrics
        assert "egress_upstream_seconds_count 1.0" in metrics and "egress_ready 1.0" in metrics
        assert "egress.test" not in metrics  # no host names as label values
        assert get(url + "/nope")[0] == 404
    finally:
        assert p.stop() == 0


def test_sigterm_drains_then_a_second_signal_stops(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["admin"] = {"port": 0, "drain_seconds": 30}
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    url = admin_url(p.stderr_path)
    p.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while get(url + "/readyz")[0] != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get(url + "/readyz") == (503, "not ready: draining\n")
    # Still serving while draining.
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.url, "--cacert",
                        str(p.ca), f"https://{API}:{upstream.port}/drain"], capture_output=True, text=True, timeout=20)  # fmt: skip
    assert r.stdout == "200"
    start = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(timeout=10) == 0
    assert time.monotonic() - start < 5  # did not wait out the 30 s drain
    assert "draining for 30 s" in p.stderr_path.read_text()
