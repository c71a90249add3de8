"""A lighter start-up: a running `egress run` imports only the mitmproxy modules it runs
(egress.proxy registers mitmproxy.addons without its __init__, which would import every
addon mitmproxy ships: the Flask onboarding app, ldap3, passlib), and Vault's client only
when a secret comes from Vault."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import API, base_config, proxy_env, write_config
from tests.upstream import Upstream

PH = "egress-api_token-placeholder"
NEVER = ("flask", "ldap3", "passlib", "mitmproxy.addons.onboardingapp", "mitmproxy.tools.web")

# `egress run` itself, with a hook that writes sys.modules when it exits.
RUN = """
import atexit, json, sys
atexit.register(lambda: open(sys.argv[1], "w").write(json.dumps(sorted(sys.modules))))
from egress.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_running_proxy_never_imports_unused_mitmproxy_addons(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path, workers: int
) -> None:
    cfg = write_config(tmp_path, base_config(tmp_path, test_ca_file, upstream.port))
    modules, err = tmp_path / "modules.json", tmp_path / "stderr"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, str(modules), "run", "--config", str(cfg),
         "--workers", str(workers)],
        stderr=err.open("wb"), env=proxy_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "ready;" not in err.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, err.read_text()
            time.sleep(0.05)
        text = err.read_text()
        assert "ready;" in text, text
        port = text.split("listening on 127.0.0.1:", 1)[1].split()[0]
        # A request through it: the modules a served request needs are loaded too.
        r = subprocess.run(
            ["curl", "-sS", "--proxy", f"http://127.0.0.1:{port}", "--cacert",
             str(tmp_path / "agent" / "egress-ca.pem"), "-H", f"Authorization: Bearer {PH}",
             f"https://{API}:{upstream.port}/startup"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, err.read_text()
    loaded = set(json.loads(modules.read_text()))
    assert "mitmproxy.addons.proxyserver" in loaded  # it did run the proxy code
    assert "egress.proxy" in loaded
    for name in NEVER:
        assert not any(m == name or m.startswith(name + ".") for m in loaded), name
    # No secret from Vault in this config: no Vault client loaded either.
    assert "hvac" not in loaded and "egress.vault" not in loaded


def test_importing_the_proxy_loads_no_addon_it_does_not_run() -> None:
    code = (
        "import sys, egress.cli, egress.proxy; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'ldap3', 'passlib', 'hvac', 'requests')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
