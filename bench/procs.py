"""Child processes of the harness: started in their own process group, all stopped on exit,
on Ctrl-C and on failure; their CPU and memory read from /proc."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


class Procs:
    """Everything the harness starts; ``stop_all`` kills each process group, newest first."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.cleanups: list[Callable[[], None]] = []

    def start(self, name: str, cmd: list[str], log: Path, **kw: object) -> subprocess.Popen[bytes]:
        if shutil.which("setpriv"):
            # Should the harness be killed outright, the child goes too (setpriv execs it,
            # so the pid is the child's own).
            cmd = ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
                **kw,  # type: ignore[arg-type]
            )  # fmt: skip
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             group: bool = True) -> None:  # fmt: skip
        self.procs = [(n, p) for n, p in self.procs if p is not proc]
        if proc.poll() is None:
            if group:
                _killpg(proc.pid, sig)
            else:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                pass
        _killpg(proc.pid, signal.SIGKILL)  # anything left in its group
        if proc.poll() is None:
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.procs)):
            try:
                # SIGINT to the leader: a fast, clean stop for nginx, bao, mitmproxy and egress
                # (SIGTERM would make egress drain for admin.drain_seconds first)
                self.stop(proc, signal.SIGINT, group=False)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                print(f"bench: stopping {proc.args}: {e}", file=sys.stderr)
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                print(f"bench: cleanup: {e}", file=sys.stderr)
        self.cleanups.clear()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until(what: str, check: Callable[[], bool], timeout: float,
               proc: subprocess.Popen[bytes] | None = None, log: Path | None = None,
               interval: float = 0.01) -> float:  # fmt: skip
    """Poll ``check`` until true; return the seconds it took. Fails if ``proc`` exits."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        if time.monotonic() - start > timeout:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s\n{tail}")
        time.sleep(interval)


# --- /proc ---------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (a proxy with worker processes counts whole)."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants (plus children it has reaped)."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the ")": state=0 ... utime=11 stime=12 cutime=13 cstime=14
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def _status_kib(pid: int, field: str) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _private_kib(pid: int) -> int:
    total = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    except OSError:
        pass
    return total


def rss_mib(pid: int) -> float:
    """The memory of a process tree: the leader's RSS plus each descendant's private pages.
    (Summing RSS would count the pages forked workers share with the leader several times.)
    For a single process: its RSS."""
    procs = tree(pid)
    kib = _status_kib_one(pid, "VmRSS") + sum(_private_kib(p) for p in procs[1:])
    return kib / 1024


def _status_kib_one(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mib(pid: int) -> float:
    """VmHWM summed over the tree: exact for one process, an upper bound with workers."""
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``); False if denied."""
    ok = True
    for p in tree(pid):
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok
