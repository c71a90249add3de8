"""The addons loaded into a plain mitmdump with -s, as a user of their own mitmproxy would."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import API, SECRET, base_config, proxy_env, write_config
from tests.upstream import Upstream

ADDONS = Path(__file__).parent.parent / "addons" / "egress_addons.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mitmdump_with_egress_addons(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = write_config(tmp_path, base_config(tmp_path, test_ca_file, upstream.port))
    port = free_port()
    confdir = tmp_path / "mitmproxy-conf"
    cmd = [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()",
           "-q", "--listen-host", "127.0.0.1", "-p", str(port), "-s", str(ADDONS),
           "--set", f"egress_config={cfg}", "--set", f"confdir={confdir}"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=proxy_env(), text=True
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        ca = tmp_path / "agent" / "egress-ca.pem"
        r = subprocess.run(
            ["curl", "-sS", "--proxy", f"http://127.0.0.1:{port}", "--cacert", str(ca),
             "-H", "Authorization: Bearer egress-api_token-placeholder", f"https://{API}:{upstream.port}/mitmdump"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert upstream.requests[0].headers["authorization"] == f"Bearer {SECRET}"
        assert SECRET not in r.stdout
        denied = subprocess.run(
            ["curl", "-sS", "--proxy", f"http://127.0.0.1:{port}", "--cacert", str(ca), "https://nope.egress.test/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "response 403" in denied.stderr
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0]
    assert SECRET not in out
