"""Linux network namespaces made by a test: an agent namespace and an upstream namespace
joined by a veth pair on test-only addresses (IPv4 and IPv6).

Sockets are bound inside a namespace from a short-lived thread that has entered it with
setns(2): the namespace is a per-thread property, and a socket keeps the namespace it was
made in, so in-process servers (the recording upstream) can listen inside the test's
namespace while the test itself stays outside.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def missing_tools() -> str | None:
    """Why the namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces and apply iptables rules"
    for tool in ("ip", "iptables-restore", "curl", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool} (.ci/run installs it)"
    return None


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr}")
    return done


def call_in(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has entered network namespace ``ns``."""
    out: dict[str, object] = {}

    def enter_and_call() -> None:
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            out["error"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=enter_and_call)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]  # type: ignore[return-value]


@dataclass
class Pair:
    """Two namespaces on one veth link: ``agent`` (.1) and ``upstream`` (.2)."""

    agent: str
    upstream: str
    agent_ip: str
    upstream_ip: str
    agent_ip6: str
    upstream_ip6: str
    net: str
    net6: str

    @classmethod
    def make(cls) -> Pair:
        tag = uuid.uuid4().hex[:6]
        octet = int(tag[:2], 16) % 200 + 20
        p = cls(
            agent=f"egA{tag}", upstream=f"egU{tag}",
            agent_ip=f"10.231.{octet}.1", upstream_ip=f"10.231.{octet}.2",
            agent_ip6=f"fd00:e6:{octet:x}::1", upstream_ip6=f"fd00:e6:{octet:x}::2",
            net=f"10.231.{octet}.0/24", net6=f"fd00:e6:{octet:x}::/64",
        )  # fmt: skip
        try:
            p._setup(tag)
        except BaseException:
            p.remove()
            raise
        return p

    def _setup(self, tag: str) -> None:
        a, u = f"ega{tag}", f"egu{tag}"
        run("ip", "netns", "add", self.agent)
        run("ip", "netns", "add", self.upstream)
        run("ip", "link", "add", a, "type", "veth", "peer", "name", u)
        run("ip", "link", "set", a, "netns", self.agent)
        run("ip", "link", "set", u, "netns", self.upstream)
        for ns, dev, ip4, ip6 in ((self.agent, a, self.agent_ip, self.agent_ip6),
                                  (self.upstream, u, self.upstream_ip, self.upstream_ip6)):  # fmt: skip
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")

    def set_hosts(self, hosts: dict[str, list[str]]) -> None:
        """Names for the agent: `ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts,
        so the machine's resolver is never touched."""
        d = Path("/etc/netns") / self.agent
        d.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{addr} {name}" for name, addrs in hosts.items() for addr in addrs]
        (d / "hosts").write_text("\n".join(lines) + "\n")

    def in_agent(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.agent, *cmd]

    def remove(self) -> None:
        for ns in (self.agent, self.upstream):
            run("ip", "netns", "del", ns, check=False)  # takes the veth pair with it
        shutil.rmtree(Path("/etc/netns") / self.agent, ignore_errors=True)


def connect_as(ns: str, uid: int, address: tuple[str, int], timeout: float = 10) -> socket.socket:
    """A TCP connection made from namespace ``ns`` as if by user ``uid``: the socket is made
    by a thread that entered the namespace and took ``uid`` as its file-system UID (a
    per-thread attribute; the kernel stamps a new socket with it, and iptables' owner match
    reads that). So the agent's redirect rules apply to it, while the test itself stays
    root and outside. The connected socket can be used from any thread."""

    def make() -> socket.socket:
        _libc.setfsuid(uid)
        s = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        s.settimeout(timeout)
        s.connect(address)
        return s

    return call_in(ns, make)
