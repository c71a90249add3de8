"""The arms: how each proxy is started, how to tell it is ready, where to send requests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.fixtures import HOST, PLACEHOLDER_FMT, mitmdump_binary
from bench.procs import Procs, free_port, port_open, rss_mib, wait_until

BENCH_DIR = Path(__file__).resolve().parent
ARM_NAMES = ("direct", "mitmdump", "core", "egress-1", "egress-20", "egress-100")
# the default: ARM_NAMES and egress-1-w1 (issue 13's workers: 2 vs workers: 1 target; egress's
# default is the cores it may use)
DEFAULT_ARMS = (*ARM_NAMES[:4], "egress-1-w1", *ARM_NAMES[4:])
START_TIMEOUT = 120.0
ARM_RE = re.compile(r"egress-(\d+)(?:-w(\d+))?")


def parse_arms(text: str) -> list[str]:
    """'direct,egress-1' -> names; egress-N takes any N >= 1; 'baseline' needs --baseline."""
    arms = [a.strip() for a in text.split(",") if a.strip()]
    for a in arms:
        if a in ARM_NAMES or a == "baseline":
            continue
        m = ARM_RE.fullmatch(a)
        if not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(2)) < 1):
            raise ValueError(f"unknown arm {a!r}: choose from {', '.join(ARM_NAMES)}, baseline, "
                             "egress-N (N secrets) or egress-N-wK (and workers: K)")  # fmt: skip
    if len(set(arms)) != len(arms):
        raise ValueError("an arm is listed twice")
    if not arms:
        raise ValueError("no arms")
    return arms


def secrets_of(arm: str) -> int:
    if arm == "baseline":
        return 20
    m = ARM_RE.fullmatch(arm)
    return int(m.group(1)) if m else 0


def workers_of(arm: str) -> int | None:
    """K of egress-N-wK; None: egress's default (the cores it may use)."""
    m = ARM_RE.fullmatch(arm)
    return int(m.group(2)) if m and m.group(2) else None


def proxy_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


@dataclass
class Arm:
    name: str
    kind: str  # direct | mitmdump | core | egress
    url_host: str
    upstream_port: int
    tmp: Path
    cmd: list[str] = field(default_factory=list)  # with {port} (and {admin}) to fill in
    env: dict[str, str] = field(default_factory=proxy_env)
    make_config: Callable[[str, int | None], Path] | None = None  # (tag, admin port)
    admin: bool = False
    info: dict[str, object] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def proxy(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.kind != "direct" else None

    def url(self, path: str = "/", port: int | None = None) -> str:
        return f"https://{self.url_host}:{port or self.upstream_port}{path}"

    def start(self, procs: Procs, tag: str = "") -> tuple[float, float]:
        """Start the proxy; return (seconds from spawn until a request through it
        succeeds, RSS MiB then)."""
        if self.kind == "direct":
            return 0.0, 0.0
        port, admin = free_port(), free_port()
        self.log = self.tmp / f"{self.name}{tag}.log"
        config = ""
        if self.make_config is not None:
            config = str(self.make_config(tag, admin if self.admin else None))
        cmd = [c.format(port=port, config=config) for c in self.cmd]
        t0 = time.monotonic()
        # Not the checkout as the working directory: ``python -m`` puts the working directory
        # first on sys.path, ahead of PYTHONPATH (the baseline's worktree).
        proc = procs.start(self.name, cmd, self.log, env=self.env, cwd=str(self.tmp))
        self.proc, self.port = proc, port
        if self.admin:
            wait_until(f"{self.name}: /readyz", lambda: _readyz(admin), START_TIMEOUT, proc,
                       self.log, interval=0.005)  # fmt: skip
        wait_until(f"{self.name}: port", lambda: port_open(port), START_TIMEOUT, proc, self.log,
                   interval=0.005)  # fmt: skip
        wait_until(f"{self.name}: first request", lambda: self.request_ok(), START_TIMEOUT, proc,
                   self.log, interval=0.02)  # fmt: skip
        return time.monotonic() - t0, rss_mib(proc.pid)

    def fetch(self, path: str) -> str:
        """The body of one GET through the arm (with the placeholder header)."""
        cmd = ["curl", "-sk", "--max-time", "10", "-H",
               f"Authorization: Bearer {PLACEHOLDER_FMT.format(0)}", self.url(path)]  # fmt: skip
        if self.proxy:
            cmd[1:1] = ["--proxy", self.proxy]
        return subprocess.run(cmd, capture_output=True, text=True, env=proxy_env()).stdout

    def request_ok(self, path: str = "/") -> bool:
        cmd = ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
               "-H", f"Authorization: Bearer {PLACEHOLDER_FMT.format(0)}", self.url(path)]  # fmt: skip
        if self.proxy:
            cmd[1:1] = ["--proxy", self.proxy]
        r = subprocess.run(cmd, capture_output=True, text=True, env=proxy_env())
        return r.stdout.strip() == "200"

    def stop(self, procs: Procs) -> None:
        if self.proc is not None:
            # SIGINT to the leader alone: egress and mitmproxy shut down cleanly (egress stops
            # its own workers); then whatever is left in the group is killed.
            procs.stop(self.proc, 2, group=False)
            self.proc = None


def _readyz(port: int) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def make_arm(name: str, tmp: Path, ca_file: Path, upstream_port: int,
             make_config: Callable[[str, int | None], Path] | None = None,
             baseline_dir: Path | None = None, extra_env: dict[str, str] | None = None) -> Arm:  # fmt: skip
    if name == "direct":
        return Arm(name, "direct", "127.0.0.1", upstream_port, tmp)
    if name == "mitmdump":
        binary = mitmdump_binary()
        assert binary
        confdir = tmp / "mitmdump-conf"
        return Arm(name, "mitmdump", "127.0.0.1", upstream_port, tmp, cmd=[
            binary, "-q", "--listen-host", "127.0.0.1", "-p", "{port}",
            "--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={ca_file}",
            "--set", "stream_large_bodies=1m"], info={"binary": binary})  # fmt: skip
    if name == "core":
        return Arm(name, "core", "127.0.0.1", upstream_port, tmp, cmd=[
            sys.executable, str(BENCH_DIR / "core_proxy.py"), "--port", "{port}",
            "--confdir", str(tmp / "core-conf"), "--trusted-ca", str(ca_file)])  # fmt: skip
    assert make_config is not None
    env = {**proxy_env(), **(extra_env or {})}
    info: dict[str, object] = {"secrets": secrets_of(name), "workers": workers_of(name)}
    if baseline_dir is not None:
        env["PYTHONPATH"] = str(baseline_dir)
        info["source"] = str(baseline_dir)
    return Arm(name, "egress", HOST, upstream_port, tmp,
               cmd=[sys.executable, "-m", "egress", "run", "--config", "{config}", "--port", "{port}"],
               env=env, make_config=make_config, admin=baseline_dir is None, info=info)  # fmt: skip
