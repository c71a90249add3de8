#!/usr/bin/env python3
"""Known-vulnerability scan of the Python packages in egress's image.

    deploy/image/vulnscan.py [--lock deploy/image/requirements-py311.txt ...]

pip-audit (PyPA) checks every locked dependency (the image holds exactly these: tests/
test_image_run.py) against OSV, then PyPI's advisory data if OSV cannot be reached.
No scanner with a bundled, offline vulnerability database installs from the package
registries (grype and trivy fetch theirs from their own servers; the npm "osv-offline"
packages download it from GitHub at run time; safety-db stopped in 2021), so the scan
needs one of those services:

- exit 0: every package audited, no known vulnerability;
- exit 1: known vulnerabilities (listed), or a package that could not be audited while
  the service answered;
- exit 3: neither service answers from this machine: the scan is reported as skipped,
  never as a pass.

Debian packages are not scanned (debsecan needs security-tracker.debian.org); the image's
base is rebuilt weekly with bookworm-security applied (build-base.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
AUDITOR = "pip-audit==2.10.1"
CACHE = Path(os.environ.get("EGRESS_IMAGE_CACHE", "/var/cache/egress-image"))
# How pip-audit's last line reads when the service never answered (a traceback's last line).
UNREACHABLE = re.compile(
    r"^requests\.exceptions\.(ConnectionError|ConnectTimeout|ReadTimeout|SSLError)\b"
)
NOT_FOUND = "Dependency not found on PyPI"


def auditor() -> Path:
    """pip-audit installed once into a cache directory, apart from any project environment."""
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = CACHE / "tools" / f"{AUDITOR.replace('==', '-')}-py{v}-{platform.machine()}"
    if not (target / "pip_audit").is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".part"))
        try:
            subprocess.run(
                [
                    "uv",
                    "pip",
                    "install",
                    "-q",
                    "--target",
                    str(part),
                    "--python-version",
                    v,
                    AUDITOR,
                ],
                check=True,
            )
            part.rename(target)
        except OSError:  # another run installed it first
            if not (target / "pip_audit").is_dir():
                raise
        finally:
            shutil.rmtree(part, ignore_errors=True)
    return target


def audit(lock: Path, service: str, tool: Path) -> tuple[str, list[str]]:
    """("clean" | "vulnerable" | "unreachable", lines to print) for one lock and service."""
    cmd = [sys.executable, "-m", "pip_audit", "--disable-pip", "--no-deps", "--require-hashes",
           "-r", str(lock), "-s", service, "-f", "json", "--progress-spinner", "off"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tool)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    return classify(service, done.returncode, done.stdout, done.stderr)


def classify(service: str, code: int, stdout: str, stderr: str) -> tuple[str, list[str]]:
    """What one pip-audit run found. Fails closed: only a run that audited every package
    and found nothing is clean; "unreachable" needs evidence that the service never
    answered (a connection error, or every single package "not found")."""
    try:
        report = json.loads(stdout)
    except ValueError:
        report = None
    if not isinstance(report, dict):
        last = stderr.strip().splitlines()[-1][:300] if stderr.strip() else f"exit {code}"
        if UNREACHABLE.match(last):
            return "unreachable", [f"{service}: {last}"]
        return "vulnerable", [f"{service}: pip-audit failed: {last}"]
    deps = report.get("dependencies", [])
    found = []
    for dep in deps:
        for vuln in dep.get("vulns", []):
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fix yet"
            found.append(f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed})")
    skipped = [d for d in deps if d.get("skip_reason")]
    if deps and all(NOT_FOUND in d["skip_reason"] for d in skipped) and len(skipped) == len(deps):
        # Every package "not found": the service answers nothing here (PyPI's JSON API is
        # not served through this machine's registry mirror), not a verdict.
        return "unreachable", [f"{service}: {skipped[0]['skip_reason'][:200]}"]
    found += [
        f"{d['name']} {d.get('version', '')}: could not be audited: {d['skip_reason']}"
        for d in skipped
    ]
    if not deps:
        found.append(f"{service}: pip-audit reported no packages at all")
    if found or code != 0:
        return "vulnerable", found or [f"{service}: pip-audit exited {code}: {stderr[-500:]}"]
    return "clean", [f"{service}: {len(deps)} packages, no known vulnerability"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lock", type=Path, action="append",
                    help="a hash lock to scan (default: every deploy/image/requirements-py*.txt)")  # fmt: skip
    args = ap.parse_args(argv)
    locks = args.lock or sorted(HERE.glob("requirements-py*.txt"))
    tool = auditor()
    worst = 0
    for lock in locks:
        for service in ("osv", "pypi"):
            outcome, lines = audit(lock, service, tool)
            if outcome != "unreachable":
                break
        name = lock.name
        if outcome == "clean":
            print(f"vulnscan: {name}: {lines[0]}")
        elif outcome == "vulnerable":
            print(f"vulnscan: {name}: FAILED\n  " + "\n  ".join(lines)
                  + "\n  re-lock with newer versions (deploy/image/lock.sh) and rebuild the image")  # fmt: skip
            worst = max(worst, 1)
        else:
            print(f"vulnscan: {name}: skipped: no vulnerability service answers from this machine "
                  f"(OSV and PyPI's advisory API; {'; '.join(lines)})")  # fmt: skip
            worst = 3 if worst == 0 else worst
    return worst


if __name__ == "__main__":
    sys.exit(main())
