#!/usr/bin/env python3
"""A CycloneDX 1.6 SBOM of egress's container image, from its exported root file system.

    deploy/image/sbom.py ROOTFS -o sbom.cdx.json [--version 0.1.0]

- Python packages: CycloneDX's own generator (cyclonedx-bom, ``cyclonedx-py environment``)
  reads the image's /opt/egress environment. It runs under bubblewrap on the image's own
  Python with the image as its root (no network), so it sees exactly what the image holds
  whatever Python the build machine has; the generator is installed once into a cache
  directory outside the image (uv, for the image's Python version and architecture) and
  bound in read-only, so nothing is added to the image.
- Debian packages: every package dpkg lists in the image, as ``pkg:deb`` purls.
- The result is checked against the CycloneDX 1.6 JSON schema (strict) by the same
  library before it is written.

Needs bwrap (Debian: bubblewrap) and uv (pip install uv). ``./build.sh --export DIR`` gives
DIR/rootfs.
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
import uuid
from pathlib import Path
from typing import Any

GENERATOR = "cyclonedx-bom==7.5.0"
CACHE = Path(os.environ.get("EGRESS_IMAGE_CACHE", "/var/cache/egress-image"))
TOOLS_INSIDE = "/mnt/sbom-tools"  # a tmpfs over the image's /mnt holds the mount point


def image_python(rootfs: Path) -> str:
    """The image environment's Python version, e.g. "3.11"."""
    found = sorted(p.name for p in rootfs.glob("opt/egress/lib/python3.*"))
    if len(found) != 1:
        raise SystemExit(f"sbom: expected one Python under {rootfs}/opt/egress/lib, found {found}")
    return found[0].removeprefix("python")


def tools(python: str) -> Path:
    """cyclonedx-bom installed for the image's Python and this machine's architecture."""
    target = CACHE / "tools" / f"{GENERATOR.replace('==', '-')}-py{python}-{platform.machine()}"
    if not (target / "cyclonedx_py").is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".part"))
        try:
            subprocess.run(["uv", "pip", "install", "-q", "--target", str(part), "--python-version", python,
                            "--python-platform", f"{platform.machine()}-manylinux_2_28", GENERATOR], check=True)  # fmt: skip
            part.rename(target)
        except OSError:  # another run installed it first
            if not (target / "cyclonedx_py").is_dir():
                raise
        finally:
            shutil.rmtree(part, ignore_errors=True)
    return target


def _sandbox(rootfs: Path, tool_dir: Path) -> list[str]:
    """bubblewrap with the image as the root file system (read-only), the generator bound in,
    no network and a clean environment."""
    return [
        "bwrap", "--ro-bind", str(rootfs), "/", "--tmpfs", "/mnt",
        "--ro-bind", str(tool_dir), TOOLS_INSIDE, "--proc", "/proc", "--dev", "/dev",
        "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
        "--setenv", "PATH", "/opt/egress/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--",
    ]  # fmt: skip


def in_image(rootfs: Path, tool_dir: Path, *argv: str, stdin: str | None = None) -> str:
    """Run ``argv`` inside the image (``_sandbox``); its standard output."""
    done = subprocess.run([*_sandbox(rootfs, tool_dir), *argv], input=stdin, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(
            f"sbom: {' '.join(argv[:3])} failed in the image ({done.returncode}):\n{done.stderr}"
        )
    return done.stdout


def _with_tools(code: str) -> str:
    return f"import sys; sys.path.insert(0, {TOOLS_INSIDE!r}); {code}"


def python_sbom(rootfs: Path, tool_dir: Path) -> dict[str, Any]:
    """``cyclonedx-py environment /opt/egress/bin/python``, run inside the image. The
    generator asks that interpreter for its sys.path in a child process, which does not
    inherit the generator's own path, so the generator's packages stay out of the SBOM."""
    argv = ["cyclonedx-py", "environment", "--output-format", "JSON", "--output-file", "-",
            "/opt/egress/bin/python"]  # fmt: skip
    code = _with_tools(
        f"import runpy; sys.argv = {argv!r}; runpy.run_module('cyclonedx_py', run_name='__main__')"
    )
    return json.loads(in_image(rootfs, tool_dir, "/opt/egress/bin/python", "-c", code))


def debian_packages(rootfs: Path, tool_dir: Path) -> list[dict[str, str]]:
    out = in_image(
        rootfs,
        tool_dir,
        "dpkg-query",
        "-W",
        "-f",
        "${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n",
    )
    packages = []
    for line in out.splitlines():
        name, version, arch, status = line.split("\t")
        # Every package with files on disk: installed, held, half-installed, half-configured,
        # awaiting triggers; not those removed (n) or with only config files left (c).
        if len(status) > 1 and status[1] not in "nc":
            packages.append({"name": name, "version": version, "arch": arch})
    return packages


def os_release(rootfs: Path) -> dict[str, str]:
    path = rootfs / "etc" / "os-release"
    if path.is_symlink() or not path.exists():
        path = rootfs / "usr" / "lib" / "os-release"
    pairs = re.findall(r'^([A-Z_]+)="?([^"\n]*)"?$', path.read_text(), re.M)
    return dict(pairs)


def image_sbom(rootfs: Path, version: str) -> dict[str, Any]:
    tool_dir = tools(image_python(rootfs))
    bom = python_sbom(rootfs, tool_dir)
    release = os_release(rootfs)
    distro = f"{release.get('ID', 'debian')}-{release.get('VERSION_ID', '')}"
    bom["components"].append({
        "type": "operating-system", "bom-ref": "os", "name": release.get("ID", "debian"),
        "version": release.get("VERSION_ID", ""), "description": release.get("PRETTY_NAME", ""),
    })  # fmt: skip
    for pkg in debian_packages(rootfs, tool_dir):
        purl = f"pkg:deb/{release.get('ID', 'debian')}/{pkg['name']}@{pkg['version']}?arch={pkg['arch']}&distro={distro}"
        bom["components"].append({"type": "library", "bom-ref": purl, "name": pkg["name"],
                                  "version": pkg["version"], "purl": purl})  # fmt: skip
    bom["metadata"]["component"] = {
        "type": "container", "bom-ref": "egress-image", "name": "egress", "version": version,
        "description": "egress's container image (Dockerfile)",
    }  # fmt: skip
    bom["serialNumber"] = f"urn:uuid:{uuid.uuid4()}"
    return bom


def validate(rootfs: Path, text: str) -> None:
    """Check ``text`` against the CycloneDX 1.6 JSON schema, strict, with CycloneDX's own
    library (run inside the image, where it is installed)."""
    tool_dir = tools(image_python(rootfs))
    code = _with_tools(
        "from cyclonedx.schema import SchemaVersion; "
        "from cyclonedx.validation.json import JsonStrictValidator; "
        "e = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sys.stdin.read()); "
        "print(e or 'valid')"
    )
    verdict = in_image(rootfs, tool_dir, "/opt/egress/bin/python", "-c", code, stdin=text)
    if verdict.strip() != "valid":
        raise SystemExit(f"sbom: the SBOM is not valid CycloneDX 1.6: {verdict}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rootfs", type=Path, help="the image's exported root file system")
    ap.add_argument(
        "-o", "--output", type=Path, required=True, help="where to write the SBOM (JSON)"
    )
    ap.add_argument("--version", default="0.1.0", help="the image's version (default: 0.1.0)")
    args = ap.parse_args(argv)
    text = json.dumps(image_sbom(args.rootfs, args.version), indent=2, sort_keys=True) + "\n"
    validate(args.rootfs, text)
    args.output.write_text(text)
    print(f"sbom: {args.output}: {len(json.loads(text)['components'])} components", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
