"""egress's container image, built for the tests by deploy/image/build.sh (the script users
run offline) and exported to a directory: ``rootfs/`` (the image's file system) and
``image.json`` (``podman image inspect``: user, entrypoint, env, volumes, size).

The build starts in the background as soon as pytest has collected a test that needs it
(tests/conftest.py), so its one to two cold minutes overlap the rest of the suite; the
``image`` fixture waits for it. ``EGRESS_IMAGE_DIR`` names an export made beforehand
(``deploy/image/build.sh --export DIR``) and skips the build.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent
BUILD = ROOT / "deploy" / "image" / "build.sh"
TAG = "localhost/egress:test"
PREFIX = "egress-image-"
TOOLS = ("podman", "debootstrap", "bwrap", "setpriv", "tar")


def missing() -> str | None:
    """Why the image cannot be built and run here, or None."""
    if os.environ.get("EGRESS_IMAGE_DIR"):
        return None
    if os.geteuid() != 0:
        return "needs root: debootstrap, podman's storage and running the image as UID 1337"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install podman debootstrap bubblewrap; .ci/run installs them)"
    return None


@dataclass(frozen=True)
class Image:
    """An exported image: its root file system and its configuration."""

    rootfs: Path
    inspect: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.inspect["Config"]

    @property
    def argv(self) -> list[str]:
        return [*self.config["Entrypoint"], *self.config["Cmd"]]

    @property
    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.config.get("Env") or [])

    def path(self, inside: str) -> str:
        """``inside`` with the image's symbolic links resolved (``/var/run`` is ``/run`` on
        Debian): bubblewrap mounts onto the real directory, not through a link."""
        parts: list[str] = []
        for part in Path(inside).parts[1:]:
            host = self.rootfs.joinpath(*parts, part)
            if host.is_symlink():
                target = os.readlink(host)
                parts = list(Path(target).parts[1:]) if target.startswith("/") else [*parts, target]
            else:
                parts.append(part)
        return "/" + "/".join(parts)


class Build:
    """One background run of deploy/image/build.sh into a private export directory."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.started = 0.0

    def start(self) -> None:
        if self.proc is not None or os.environ.get("EGRESS_IMAGE_DIR") or missing():
            return
        _sweep()
        self.dir = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.dir.chmod(0o755)  # the image runs as UID 1337, which must reach rootfs/
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        self.log = self.dir / "build.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            ["bash", str(BUILD), "--tag", TAG, "--export", str(self.dir)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip

    def wait(self, timeout: float = 900) -> Image:
        """The exported image, once built; raises AssertionError with the log if it failed."""
        given = os.environ.get("EGRESS_IMAGE_DIR")
        export = Path(given) if given else None
        if export is None:
            self.start()
            assert self.proc is not None and self.dir is not None and self.log is not None
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                raise AssertionError(f"the image build took over {timeout:.0f} s") from None
            log = self.log.read_text(errors="replace")
            assert code == 0, f"deploy/image/build.sh failed ({code}):\n{log[-4000:]}"
            export = self.dir
        inspect = json.loads((export / "image.json").read_text())
        return Image(export / "rootfs", inspect[0] if isinstance(inspect, list) else inspect)

    def stop(self) -> None:
        """Stop a build still running and remove the export (the root file system is
        ~400 MB); the image stays in podman's storage, where its layers are the next
        build's cache."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _die_with_parent() -> None:
    """In the build's process: SIGTERM when pytest dies, however it dies (build.sh then
    stops podman and unmounts)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _sweep() -> None:
    """Remove exports left by test runs that were killed (their owner is gone): ~400 MB each."""
    for d in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            owner = int((d / "owner.pid").read_text())
            os.kill(owner, 0)
        except (OSError, ValueError):
            shutil.rmtree(d, ignore_errors=True)


BUILD_ONCE = Build()
