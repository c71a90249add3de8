"""The container image itself: built by deploy/image/build.sh from a locally made Debian base
and run the way a pod runs it (tests/image_build.py builds it in the background).

``podman run`` cannot run containers on every kernel (crun needs a cgroup setup this one
lacks), so the image's exported root file system runs under bubblewrap with what the pod
manifest (deploy/kubernetes/20-agent-pod.yaml) asks of Kubernetes: the image's user (UID
1337, no supplementary groups), a read-only root, only the image's volumes writable, no
capabilities, no new privileges, the image's entrypoint, command and environment, and its
own PID namespace with egress as PID 1. The redirect init step runs from the same root as
UID 0 with only NET_ADMIN, in a network namespace the test makes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from tests.canary import OUTPUTS
from tests.conftest import API, SECRET, assert_no_secret
from tests.image_build import BUILD_ONCE, ROOT, Image, missing
from tests.netns import Pair, call_in
from tests.netns import missing_tools as netns_missing
from tests.upstream import Upstream

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

POD = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/20-agent-pod.yaml").read_text()))[1]
SIDECAR = next(c for c in POD["spec"]["initContainers"] if c["name"] == "egress")
REDIRECT = next(c for c in POD["spec"]["initContainers"] if c["name"] == "egress-redirect")
# What the kubelet sets from the Downward API for the sidecar's env (its fieldRefs).
_FIELDS = {"metadata.name": "agent", "metadata.namespace": "agents",
           "spec.serviceAccountName": "agent", "spec.nodeName": "node-1"}  # fmt: skip
DOWNWARD = {
    e["name"]: _FIELDS[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in SIDECAR.get("env", [])
}
LOCKS = ROOT / "deploy" / "image"
UID = 1337
PLACEHOLDER = "egress-api_token-placeholder"
# Measured on the Debian bookworm base (docs/kubernetes.md records it); a bound, not a target.
MAX_IMAGE_BYTES = 450_000_000


@pytest.fixture(scope="session")
def image() -> Image:
    return BUILD_ONCE.wait()


# --- what is in the image ---------------------------------------------------------------


def test_image_config_matches_the_pod_manifest(image: Image) -> None:
    cfg = image.config
    assert cfg["User"] == f"{UID}:{UID}"
    assert SIDECAR["securityContext"]["runAsUser"] == UID
    assert set(cfg["Volumes"]) == {"/etc/egress", "/var/run/egress", "/tmp"}
    # Every path the sidecar writes is one of the image's volumes.
    writable = {m["mountPath"] for m in SIDECAR["volumeMounts"] if not m.get("readOnly")}
    assert writable <= set(cfg["Volumes"])
    assert cfg["Entrypoint"] == ["egress"]
    assert cfg["Cmd"] == SIDECAR["args"] == ["run", "--config", "/etc/egress/egress.yaml"]
    assert image.env["TMPDIR"] == "/tmp" and image.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert image.inspect.get("Healthcheck", {}).get("Test", [None])[0] == "CMD"
    for volume in cfg["Volumes"]:  # a read-only root cannot get a mount point later
        assert (image.rootfs / image.path(volume).lstrip("/")).is_dir(), volume


@pytest.mark.parametrize(
    "what, glob",
    [
        ("a C compiler", "usr/bin/*gcc*"),
        ("a C compiler", "usr/bin/cc"),
        ("a C++ compiler", "usr/bin/*g++*"),
        ("make", "usr/bin/make"),
        ("an assembler or linker", "usr/bin/as"),
        ("an assembler or linker", "usr/bin/ld"),
        ("an assembler or linker", "usr/bin/x86_64-linux-gnu-ld*"),
        ("apt's package lists", "var/lib/apt/lists/*"),
        ("apt's package caches", "var/cache/apt/*.bin"),
        ("downloaded packages", "var/cache/apt/archives/*.deb"),
        ("pip's cache", "root/.cache/pip"),
        ("pip in the egress environment", "opt/egress/bin/pip*"),
        ("pip in the egress environment", "opt/egress/lib/python3*/site-packages/pip"),
        ("setuptools in the egress environment", "opt/egress/lib/python3*/site-packages/setuptools"),
        ("the build's own dependencies", "opt/build-deps"),
        ("the build's CA bundle mount point", "run/build-ca.crt"),
        ("the build's secrets", "run/secrets/*"),
        ("the build's source tree", "src"),
    ],
)  # fmt: skip
def test_image_holds_no_build_tools_or_caches(image: Image, what: str, glob: str) -> None:
    found = sorted(str(p.relative_to(image.rootfs)) for p in image.rootfs.glob(glob))
    assert found == [], f"the image holds {what}: {found}"


def test_image_has_no_setuid_program_file_capability_or_build_machine_data(image: Image) -> None:
    privileged, capable = [], []
    for path in image.rootfs.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        if path.stat().st_mode & 0o6000:
            privileged.append(str(path.relative_to(image.rootfs)))
        if "security.capability" in os.listxattr(path, follow_symlinks=False):
            capable.append(str(path.relative_to(image.rootfs)))
    assert privileged == [] and capable == []
    # debootstrap copies these from the build machine; the runtime provides its own.
    for name in ("etc/resolv.conf", "etc/hostname"):
        path = image.rootfs / name
        assert not path.exists() or path.stat().st_size == 0, f"{name} holds the build machine's"
    # No file in the image belongs to egress's user: outside its volumes it owns nothing.
    owned = [
        str(p) for p in image.rootfs.rglob("*") if not p.is_symlink() and p.stat().st_uid == UID
    ]
    assert owned == []


def _installed(image: Image) -> dict[str, str]:
    (site,) = image.rootfs.glob("opt/egress/lib/python3*/site-packages")
    found = {}
    # pyperclip has no wheel: pip installs it the legacy way, with an .egg-info.
    for meta in [*site.glob("*.dist-info/METADATA"), *site.glob("*.egg-info/PKG-INFO")]:
        head = meta.read_text(errors="replace").split("\n\n", 1)[0]
        name = re.search(r"^Name: (.+)$", head, re.M)
        version = re.search(r"^Version: (.+)$", head, re.M)
        assert name and version, meta
        found[_norm(name.group(1))] = version.group(1).strip()
    return found


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def test_image_holds_exactly_the_locked_dependencies(image: Image) -> None:
    (python,) = [p.name for p in image.rootfs.glob("opt/egress/lib/python3*")]
    lock = LOCKS / f"requirements-py{python.removeprefix('python').replace('.', '')}.txt"
    pinned = {
        _norm(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(), re.M)
    }
    installed = _installed(image)
    assert installed.pop("egress") == "0.1.0"
    assert installed == pinned


def test_image_size_is_within_the_recorded_bound(image: Image) -> None:
    size = image.inspect["Size"]
    assert 100_000_000 < size < MAX_IMAGE_BYTES, f"{size / 1e6:.0f} MB"


# --- the sidecar, run as the pod runs it ------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _mounts(pid: int) -> dict[str, str]:
    """Mount point -> per-mount options ("ro"/"rw", ...), as the process sees them."""
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        out[fields[4]] = fields[5]
    return out


@dataclass
class Pod:
    """The sidecar container: its volumes on the host and its running process."""

    image: Image
    root: Path  # what is mounted as / (the exported rootfs, or a writable overlay of it)
    volumes: dict[str, Path]  # path in the image -> host directory
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    read_only: bool
    trace: Path | None = None  # strace's record of failed file-system writes

    @property
    def egress_pid(self) -> int:
        """egress itself (bubblewrap's child, PID 1 of the pod's PID namespace): the first
        process under ours, breadth first, that runs /opt/egress/bin/egress."""
        queue = [self.proc.pid]
        while queue:
            pid = queue.pop(0)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"/opt/egress/bin/egress" in cmdline[:2]:
                return pid
            for task in Path(f"/proc/{pid}/task").iterdir():
                queue += [int(c) for c in (task / "children").read_text().split()]
        raise AssertionError("no egress process under the pod")

    def refused_writes(self) -> list[str]:
        """Writes the kernel refused (strace), outside the volumes: none may be tried."""
        if self.trace is None:
            return []
        refused = []
        write_open = re.compile(r"O_(WRONLY|RDWR|CREAT|TRUNC|APPEND)")
        for line in self.trace.read_text().splitlines():
            m = re.search(r"^\d+\s+(\w+)\((.*)\) = -1 (EROFS|EACCES|EPERM)\b", line)
            if not m:
                continue
            call, args = m.group(1), m.group(2)
            if call in ("open", "openat") and not write_open.search(args):
                continue
            refused.append(line)
        return refused

    def wait_ready(self, timeout: float = 60) -> str:
        """egress's standard error once it says it is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            err = self.stderr.read_text(errors="replace")
            if "ready;" in err:
                return err
            assert self.proc.poll() is None, f"egress exited with {self.proc.returncode}:\n{err}"
            time.sleep(0.1)
        raise AssertionError("egress did not become ready:\n" + self.stderr.read_text())

    def audit(self) -> list[dict[str, Any]]:
        """The audit records (the pod's config writes them to stdout, the container log)."""
        return [
            json.loads(line)
            for line in self.stdout.read_text().splitlines()
            if line.startswith("{")
        ]

    def outputs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def _volumes(base: Path, upstream_ca: Path, config: dict[str, Any]) -> dict[str, Path]:
    """The pod's volumes: the ConfigMap (root's, read-only to egress), the shared agent
    directory and the private /tmp (both emptyDirs the pod's fsGroup would give egress)."""
    vols = {"/etc/egress": base / "config", "/var/run/egress": base / "agent", "/tmp": base / "tmp"}
    for path in vols.values():
        path.mkdir()
    shutil.copy(upstream_ca, vols["/etc/egress"] / "upstream-ca.pem")
    (vols["/etc/egress"] / "egress.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ("/var/run/egress", "/tmp"):
        shutil.chown(vols[name], UID, UID)
    vols["/tmp"].chmod(0o700)
    return vols


def _sidecar_config(upstream_port: int) -> dict[str, Any]:
    """The shipped ConfigMap's shape (deploy/kubernetes/10-egress-config.yaml) pointed at the
    test's upstream: the agent directory and CA where the manifest puts them."""
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0, "drain_seconds": 2},
        "agent": {"dir": "/var/run/egress"},
        "ca": {"cert_path": "/var/run/egress/egress-ca.pem", "validity_hours": 24},
        "upstream": {
            "ca_files": ["/etc/egress/upstream-ca.pem"],
            "resolve": {API: "127.0.0.1"},
            "allow_private": ["127.0.0.1/32"],
            "dns": "static",
        },
        "allow": [{"host": API, "ports": [upstream_port]}],
        "secrets": [
            {
                "name": "api_token",
                "source": {"env": "EGRESS_TEST_API_TOKEN"},
                "hosts": [API],
                "env": "API_TOKEN",
            },
        ],  # fmt: skip
        "audit": {"path": "stdout"},
    }


def _run_sidecar(
    image: Image, root: Path, volumes: dict[str, Path], out: Path, *, read_only: bool,
    prefix: tuple[str, ...] = (), strace: bool = False,
) -> Pod:  # fmt: skip
    env = {**image.env, "EGRESS_TEST_API_TOKEN": SECRET, **DOWNWARD}
    binds = []
    for inside, host in volumes.items():
        kind = "--ro-bind" if inside == "/etc/egress" else "--bind"
        binds += [kind, str(host), image.path(inside)]
    argv = [
        *prefix, "setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
        "bwrap", "--ro-bind" if read_only else "--bind", str(root), "/",
        "--proc", "/proc", "--dev", "/dev", *binds,
        "--unshare-all", "--share-net", "--as-pid-1", "--die-with-parent", "--new-session",
        "--uid", str(UID), "--gid", str(UID), "--cap-drop", "ALL", "--clearenv",
        *[a for k, v in env.items() for a in ("--setenv", k, v)],
        "--", *image.argv,
    ]  # fmt: skip
    stdout, stderr = out / "egress.stdout", out / "egress.stderr"
    OUTPUTS.extend([stdout, stderr])
    trace = None
    if strace and shutil.which("strace"):
        # Every write the process tries and the kernel refuses: a read-only root would
        # refuse them silently, and egress might carry on without the file.
        trace = out / "strace.out"
        argv = ["strace", "-f", "-qq", "-o", str(trace), "-e", "status=failed",
                "-e", "trace=openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,"
                "unlinkat,rmdir,symlink,symlinkat,link,linkat,truncate,chmod,fchmodat,chown,fchownat,utimensat",
                *argv]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=stdout.open("wb"), stderr=stderr.open("wb"))
    return Pod(image, root, volumes, proc, stdout, stderr, read_only, trace)


def _stop(pod: Pod) -> None:
    if pod.proc.poll() is None:
        pod.proc.kill()  # bubblewrap's --die-with-parent takes egress with it
        pod.proc.wait(timeout=30)


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory UID 1337 can reach (pytest's own tmp directories are root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="egress-pod-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def overlay(image: Image, host_dir: Path) -> Iterator[tuple[Path, Path]]:
    """The image's root as a writable overlay: (the merged root, the upper directory that
    collects every write)."""
    upper, work, merged = (host_dir / "ovl" / d for d in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    opts = f"lowerdir={image.rootfs},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        yield merged, upper
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)


def _exercise(pod: Pod, upstream: Upstream) -> None:
    """What a pod needs of its sidecar, checked against the running image."""
    err = pod.wait_ready()
    port_found = re.search(r"listening on 127\.0\.0\.1:(\d+)", err)
    admin_found = re.search(r"admin listener on (http://127\.0\.0\.1:\d+)", err)
    assert port_found and admin_found, err
    port, admin = int(port_found.group(1)), admin_found.group(1)
    pid = pod.egress_pid
    status = _status(pid)
    assert status["Uid"].split() == [str(UID)] * 4 and status["Gid"].split() == [str(UID)] * 4
    assert status["Groups"].strip() == ""
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert int(status["CapBnd"], 16) == 0 and status["NoNewPrivs"].strip() == "1"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[-5:-1] == [b"/opt/egress/bin/egress", *map(str.encode, SIDECAR["args"])], cmdline
    mounts = _mounts(pid)
    assert mounts["/"].startswith("ro" if pod.read_only else "rw")
    assert mounts["/etc/egress"].startswith("ro") and mounts["/tmp"].startswith("rw")
    assert mounts[pod.image.path("/var/run/egress")].startswith("rw")

    # The probes the manifest declares.
    assert _get(admin + "/healthz")[0] == 200
    assert _get(admin + "/readyz") == (200, "ready\n")

    # The agent's side of the shared volume: CA certificate and env file, no private key.
    agent = pod.volumes["/var/run/egress"]
    assert {p.name for p in agent.iterdir()} >= {"egress-ca.pem", "egress.env"}
    for f in agent.iterdir():
        assert b"PRIVATE KEY" not in f.read_bytes(), f
    env = dict(line.split("=", 1) for line in (agent / "egress.env").read_text().splitlines()
               if "=" in line and not line.startswith("#"))  # fmt: skip
    assert env["API_TOKEN"].strip("'\"") == PLACEHOLDER

    # A real request: the agent holds the placeholder, the upstream gets the secret, the
    # agent gets the answer with the secret scrubbed back to the placeholder.
    upstream.recorder.clear()
    proxy = f"http://127.0.0.1:{port}"
    ca = str(agent / "egress-ca.pem")
    r = subprocess.run(["curl", "-sS", "--proxy", proxy, "--cacert", ca, "-H", f"Authorization: Bearer {PLACEHOLDER}",
                        f"https://{API}:{upstream.port}/reflect/headers"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [q.headers.get("Authorization") for q in upstream.recorder.requests] == [
        f"Bearer {SECRET}"
    ]
    assert PLACEHOLDER in r.stdout
    assert_no_secret(r.stdout, r.stderr)

    # Default deny, with the reason in the client's view.
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_connect}", "--proxy", proxy, "--cacert", ca,
                        f"https://denied.egress.test:{upstream.port}/"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.stdout == "403", r.stderr
    assert [a.get("reason") for a in pod.audit() if a.get("host") == "denied.egress.test"] == [
        "host_not_allowed"
    ]

    # SIGTERM, as the kubelet sends it to PID 1: not ready at once, then a clean exit 0.
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _get(admin + "/readyz")[0] != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _get(admin + "/readyz")[0] == 503
    assert pod.proc.wait(timeout=30) == 0, pod.outputs()
    assert "Traceback" not in pod.outputs()
    assert "Read-only file system" not in pod.outputs()
    assert_no_secret(pod.outputs())
    # The private per-start directory is gone with the process.
    assert list(pod.volumes["/tmp"].iterdir()) == []


def test_sidecar_runs_read_only_as_uid_1337(
    image: Image, host_dir: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    volumes = _volumes(host_dir, test_ca_file, _sidecar_config(upstream.port))
    pod = _run_sidecar(image, image.rootfs, volumes, host_dir, read_only=True, strace=True)
    try:
        _exercise(pod, upstream)
    finally:
        _stop(pod)
    assert pod.refused_writes() == []


def test_sidecar_writes_nothing_outside_its_volumes(
    image: Image, host_dir: Path, overlay: tuple[Path, Path], upstream: Upstream,
    test_ca_file: Path,
) -> None:  # fmt: skip
    """The same run on a writable overlay of the image's root: every write outside the
    volumes would land in the overlay's upper directory."""
    merged, upper = overlay
    volumes = _volumes(host_dir, test_ca_file, _sidecar_config(upstream.port))
    pod = _run_sidecar(image, merged, volumes, host_dir, read_only=False)
    try:
        _exercise(pod, upstream)
    finally:
        _stop(pod)
    written = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
    assert written == []


# --- the redirect init container -------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """An empty network namespace of the test's own, with loopback up."""
    name = f"egimg{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _run_init(
    image: Image, ns: str, args: list[str], caps: list[str], resolv: Path
) -> subprocess.CompletedProcess[str]:
    """The init container: UID 0 with only ``caps``, a read-only root, an emptyDir on /run
    (iptables' lock) and the cluster's resolv.conf, in the pod's network namespace."""
    argv = [
        "ip", "netns", "exec", ns,
        "bwrap", "--ro-bind", str(image.rootfs), "/", "--proc", "/proc", "--dev", "/dev",
        "--tmpfs", "/run", "--ro-bind", str(resolv), "/etc/resolv.conf",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
        "--as-pid-1", "--die-with-parent", "--new-session",
        "--cap-drop", "ALL", *[a for c in caps for a in ("--cap-add", c)], "--clearenv",
        *[a for k, v in image.env.items() for a in ("--setenv", k, v)],
        "--", *image.config["Entrypoint"], *args,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "backend, caps, code, expect",
    [
        # The manifest's own arguments (iptables, the default backend).
        ("iptables", ["CAP_NET_ADMIN"], 0, ["-A OUTPUT -j EGRESS_FILTER", "--uid-owner 1337 -j ACCEPT",
                                            "-d 10.96.0.10/32 -p udp -m udp --dport 53 -j ACCEPT",
                                            "--dports 80,443 -j REDIRECT --to-ports 15001"]),
        ("nftables", ["CAP_NET_ADMIN"], 0, ["table inet egress", "meta skuid 1337 accept",
                                            "redirect to :15001"]),
        # Without NET_ADMIN it stops with a message that says what is missing.
        ("iptables", [], 2, ["NET_ADMIN"]),
        ("nftables", [], 2, ["NET_ADMIN"]),
    ],
)  # fmt: skip
def test_redirect_init_runs_from_the_image_with_only_net_admin(
    image: Image, netns: str, host_dir: Path, backend: str, caps: list[str], code: int,
    expect: list[str],
) -> None:  # fmt: skip
    resolv = host_dir / "resolv.conf"
    resolv.write_text("search agents.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\n")
    args = list(REDIRECT["args"])
    assert REDIRECT["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    if backend == "nftables":
        args.append("--backend=nftables")
    done = _run_init(image, netns, args, caps, resolv)
    assert done.returncode == code, done.stdout + done.stderr
    if code == 0:
        shown = subprocess.run(["ip", "netns", "exec", netns, *(["iptables-save"] if backend == "iptables" else ["nft", "list", "ruleset"])],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    else:
        shown = done.stderr
    for text in expect:
        assert text in shown, shown
    # The machine's own rules are untouched.
    host = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "EGRESS_FILTER" not in host


# --- the SBOM ---------------------------------------------------------------------------


def _sbom_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "egress_image_sbom", ROOT / "deploy/image/sbom.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dpkg_installed(rootfs: Path) -> dict[str, str]:
    """The image's installed Debian packages, read straight from dpkg's status file."""
    found = {}
    for stanza in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
        if fields.get("Status", "").endswith(" installed"):
            found[fields["Package"]] = fields["Version"]
    return found


def test_sbom_lists_every_package_in_the_image(image: Image, host_dir: Path) -> None:
    if shutil.which("uv") is None:
        pytest.skip("needs uv to install the SBOM generator (pip install uv; a test dependency)")
    out = host_dir / "sbom.cdx.json"
    done = subprocess.run([sys.executable, str(ROOT / "deploy/image/sbom.py"), str(image.rootfs), "-o", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    bom = json.loads(out.read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    assert bom["metadata"]["component"]["type"] == "container"
    python = {
        _norm(c["name"]): c["version"]
        for c in bom["components"]
        if c.get("purl", "").startswith("pkg:pypi/")
    }
    python["egress"] = next(c["version"] for c in bom["components"] if c["name"] == "egress")
    assert python == _installed(image)  # every Python package, and nothing else (no generator)
    debian = {
        c["name"]: c["version"]
        for c in bom["components"]
        if c.get("purl", "").startswith("pkg:deb/debian/")
    }
    assert debian == _dpkg_installed(image.rootfs)
    assert {"libssl3", "iptables", "nftables"} <= set(debian)
    assert any(re.fullmatch(r"python3\.1\d", name) for name in debian)


def test_sbom_validation_refuses_an_invalid_document(image: Image) -> None:
    """The schema check sbom.py runs before writing is not a formality."""
    if shutil.which("uv") is None:
        pytest.skip("needs uv to install the SBOM generator (pip install uv; a test dependency)")
    sbom = _sbom_module()
    # (A valid document passes: test_sbom_lists_every_package_in_the_image, whose sbom.py
    # run validates before it writes.)
    good = {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1, "components": []}
    for bad in (
        {**good, "bomFormat": "SPDX"},
        {**good, "components": [{"name": "x"}]},
        {**good, "extra": 1},
    ):
        with pytest.raises(SystemExit, match="not valid CycloneDX 1.6"):
            sbom.validate(image.rootfs, json.dumps(bad))


# --- the whole pod: init container, sidecar and agent in one network namespace ----------


def _in_pod(image: Image, ns: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A command run in the sidecar container (its root, user and network namespace)."""
    cmd = [
        "ip", "netns", "exec", ns, "setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
        "bwrap", "--ro-bind", str(image.rootfs), "/", "--proc", "/proc", "--dev", "/dev",
        "--unshare-all", "--share-net", "--die-with-parent", "--cap-drop", "ALL", "--clearenv",
        *[a for k, v in image.env.items() for a in ("--setenv", k, v)], "--", *argv,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_the_pod_from_the_image_end_to_end(
    image: Image, host_dir: Path, test_ca: trustme.CA
) -> None:
    """deploy/kubernetes/20-agent-pod.yaml with the image: the redirect init container (UID 0,
    NET_ADMIN only) sets the rules in the pod's network namespace; the sidecar (UID 1337,
    read-only, no capabilities) runs the shipped ConfigMap's transparent config; the agent
    (UID 1000, no proxy setting) calls the upstream by name and gets the secret injected.
    The rules exempt UID 1337 and nothing else, so only the image's user reaches out."""
    missing_ns = netns_missing()
    if missing_ns:
        pytest.skip(missing_ns)
    pair = Pair.make()
    servers: list[Upstream] = []
    pod: Pod | None = None
    try:
        pair.set_hosts({API: [pair.upstream_ip]})
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        test_ca.issue_cert(API, pair.upstream_ip).configure_cert(ctx)
        for tls, port in ((ctx, 443), (ctx, 8443)):
            up = call_in(pair.upstream, lambda t=tls, p=port: Upstream(t, host="0.0.0.0", port=p))
            servers.append(up.__enter__())
        resolv = host_dir / "resolv.conf"
        resolv.write_text("nameserver 10.96.0.10\n")
        init = _run_init(image, pair.agent, list(REDIRECT["args"]), ["CAP_NET_ADMIN"], resolv)
        assert init.returncode == 0, init.stderr

        # The shipped ConfigMap, with the test's upstream in place of GitHub and Vault.
        cm = yaml.safe_load((ROOT / "deploy/kubernetes/10-egress-config.yaml").read_text())
        config = yaml.safe_load(cm["data"]["egress.yaml"])
        assert config["listen"] == {"mode": "transparent", "port": 15001}
        config["admin"]["drain_seconds"] = 1
        config.pop("vault")
        config["allow"] = [{"host": API}]
        config["secrets"] = [{"name": "api_token", "source": {"env": "EGRESS_TEST_API_TOKEN"},
                              "hosts": [API], "env": "API_TOKEN"}]  # fmt: skip
        config["upstream"] = {"ca_files": ["/etc/egress/upstream-ca.pem"], "resolve": {API: pair.upstream_ip},
                              "allow_private": [pair.net], "dns": "static"}  # fmt: skip
        test_ca_file = host_dir / "test-ca.pem"
        test_ca.cert_pem.write_to_path(str(test_ca_file))
        volumes = _volumes(host_dir, test_ca_file, config)
        pod = _run_sidecar(
            image, image.rootfs, volumes, host_dir, read_only=True, prefix=tuple(pair.in_agent())
        )
        pod.wait_ready()

        # The kubelet probes the pod IP on the admin port, from outside the pod; Docker runs
        # the image's HEALTHCHECK inside it.
        probe = call_in(pair.upstream, lambda: _get(f"http://{pair.agent_ip}:9901/readyz"))
        assert probe == (200, "ready\n")
        healthcheck = image.inspect["Healthcheck"]["Test"]
        assert healthcheck[0] == "CMD"
        assert _in_pod(image, pair.agent, healthcheck[1:]).returncode == 0

        agent_dir = volumes["/var/run/egress"]
        placeholder = dict(line.split("=", 1) for line in (agent_dir / "egress.env").read_text().splitlines()
                           if "=" in line and not line.startswith("#"))["API_TOKEN"].strip("'\"")  # fmt: skip

        def agent(*curl: str) -> subprocess.CompletedProcess[str]:
            cmd = pair.in_agent("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "env", "-i",
                                "PATH=/usr/bin:/bin", "curl", "-sS", "--max-time", "10", *curl)  # fmt: skip
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

        r = agent("--cacert", str(agent_dir / "egress-ca.pem"), "-H", f"Authorization: Bearer {placeholder}",
                  f"https://{API}/reflect/headers")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert [q.headers.get("Authorization") for q in servers[0].recorder.requests] == [
            f"Bearer {SECRET}"
        ]
        assert placeholder in r.stdout
        assert_no_secret(r.stdout, r.stderr)
        # A port the rules do not redirect is dropped; the agent cannot go around egress.
        r = agent("--max-time", "3", "-k", f"https://{API}:8443/")
        assert r.returncode == 28 and servers[1].recorder.requests == [], r.stderr
        records = [a for a in pod.audit() if a.get("host") == API]
        assert [(a["decision"], a.get("secrets")) for a in records] == [("allow", ["api_token"])]
        # The sidecar's workload, from the Downward API as the manifest wires it.
        assert records[0]["workload"] == {"pod": "agent", "namespace": "agents",
                                          "service_account": "agent", "node": "node-1"}  # fmt: skip

        os.kill(pod.egress_pid, signal.SIGTERM)
        assert pod.proc.wait(timeout=30) == 0, pod.outputs()
        assert_no_secret(pod.outputs())
        assert _in_pod(image, pair.agent, healthcheck[1:]).returncode == 1  # nothing answers
    finally:
        if pod is not None:
            _stop(pod)
        for up in servers:
            up.__exit__(None, None, None)
        pair.remove()


@pytest.mark.parametrize(
    "line, refused",
    [
        ('7 openat(AT_FDCWD, "/etc/x", O_WRONLY|O_CREAT|O_CLOEXEC, 0644) = -1 EROFS (Read-only file system)', True),
        ('7 openat(AT_FDCWD, "/var/tmp/x", O_RDWR, 0600) = -1 EACCES (Permission denied)', True),
        ('7 mkdir("/opt/egress/cache", 0777) = -1 EROFS (Read-only file system)', True),
        ('7 unlink("/etc/x") = -1 EPERM (Operation not permitted)', True),
        ('7 openat(AT_FDCWD, "/etc/x", O_RDONLY|O_CLOEXEC) = -1 EACCES (Permission denied)', False),
        ('7 openat(AT_FDCWD, "/usr/lib/locale/x", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file)', False),
        ('7 mkdir("/var/run/egress", 0700) = -1 EEXIST (File exists)', False),
    ],
)  # fmt: skip
def test_refused_writes_are_read_from_the_trace(tmp_path: Path, line: str, refused: bool) -> None:
    """The strace reading behind the read-only run's "no refused write" check."""
    trace = tmp_path / "strace.out"
    trace.write_text(line + "\n")
    pod = Pod(None, tmp_path, {}, None, tmp_path, tmp_path, True, trace)  # type: ignore[arg-type]
    assert pod.refused_writes() == ([line] if refused else [])
