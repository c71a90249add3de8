"""``egress exec --isolate`` (Linux): CMD in its own user, mount, PID and network namespaces,
where the only way out is egress. See docs/isolation.md.

Three processes, no extra package (only the kernel's unprivileged user namespaces):

* egress (outside) serves its proxy on 127.0.0.1:PORT as usual, plus a Unix socket in a
  directory of its own that forwards each connection to that port (``UnixBridge``);
* the *holder* (``python -I egress/isolate.py run``), spawned by egress with the agent's
  environment, unshares user+mount+PID+network namespaces and forks
* the sandbox's *init* (PID 1): brings up loopback, hides egress's private directory and the
  secrets files behind tmpfs/empty mounts, listens on 127.0.0.1:PORT inside the new network
  namespace and forwards each connection to the Unix socket, then forks CMD into one more
  user+mount namespace (so the hiding mounts are locked: CMD cannot unmount them), forwards
  signals to it, reaps orphans and exits with CMD's status.

The network namespace has only its own loopback: a client that ignores HTTPS_PROXY gets
"network unreachable" or "connection refused", never a direct connection.

This module imports only the standard library: the init runs it after hiding directories.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18,
)  # fmt: skip
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
# The holder's exit status when the namespaces cannot be set up (as env's 125).
SETUP_FAILED = 125
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

_libc = ctypes.CDLL(None, use_errno=True)


class IsolateError(Exception):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise IsolateError(f"{what}: {os.strerror(e)} (errno {errno.errorcode.get(e, e)})")


def _unshare(flags: int, what: str) -> None:
    _check(_libc.unshare(flags), what)


def _mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(src.encode(), target.encode(), fstype.encode() if fstype else None,
                    ctypes.c_ulong(flags), data.encode() if data else None),
        f"mount {fstype or 'bind'} on {target}",
    )  # fmt: skip


def _prctl(option: int, arg: int) -> None:
    _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0)


def _map_ids(inside_uid: int, outside_uid: int, inside_gid: int, outside_gid: int) -> None:
    """Map one uid and one gid of a user namespace this process just entered."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{inside_uid} {outside_uid} 1"),
                       ("gid_map", f"{inside_gid} {outside_gid} 1")):  # fmt: skip
        try:
            Path(f"/proc/self/{name}").write_text(text)
        except OSError as e:
            hint = ""
            if name == "uid_map" and outside_uid == 0 and e.errno == errno.EPERM:
                # Linux 5.12+: mapping uid 0 of the parent namespace needs CAP_SETFCAP.
                hint = " (mapping uid 0 needs CAP_SETFCAP: root without capabilities)"
            raise IsolateError(f"writing /proc/self/{name} ({text!r}): {e.strerror}{hint}") from e


# ---- pure planning: what the sandbox hides and what it shows ---------------------------


@dataclass(frozen=True)
class Plan:
    """What the sandbox's init does before CMD runs. Paths are absolute."""

    sock: str  # egress's Unix socket (outside's directory, visible inside)
    port: int  # the proxy port CMD's proxy variables name; the bridge listens there
    private_dir: str  # egress's private directory: hidden, only ``publish`` shown again
    publish: tuple[str, ...] = ()  # files of private_dir CMD needs (CA, client setup)
    hide_dirs: tuple[str, ...] = ()  # tmpfs over each
    hide_files: tuple[str, ...] = ()  # an empty read-only file over each
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)

    def args(self) -> list[str]:
        out = ["--sock", self.sock, "--port", str(self.port), "--private-dir", self.private_dir,
               "--uid", str(self.uid), "--gid", str(self.gid)]  # fmt: skip
        for opt, paths in (("--publish", self.publish), ("--hide-dir", self.hide_dirs),
                           ("--hide-file", self.hide_files)):  # fmt: skip
            for p in paths:
                out += [opt, p]
        return out


def secret_paths(cfg: Any) -> list[Path]:
    """Files the config reads secrets, agents' proxy tokens or Vault credentials from."""
    paths = [s.source.file for s in cfg.secrets if s.source.kind == "file" and s.source.file]
    paths += [a.token.file for a in getattr(cfg, "agents", ()) if a.token and a.token.file]
    vault = getattr(cfg, "vault", None)
    if vault is not None:
        auth = vault.auth
        paths += [p for p in (auth.token_file, auth.secret_id_file, auth.jwt_file) if p]
    return [Path(os.path.abspath(p)) for p in paths]


def _is_within(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def hide_plan(secret_files: Iterable[Path], keep: Iterable[Path]) -> tuple[list[str], list[str]]:
    """(directories, files) to hide. A secret file's whole directory is hidden (it may hold
    more: backups, other keys) unless CMD needs it: when it is ``/`` or holds one of ``keep``
    (the working directory, $HOME), only the file itself is covered."""
    keep = [Path(os.path.abspath(k)) for k in keep]
    dirs: list[str] = []
    files: list[str] = []
    for f in secret_files:
        d = f.parent
        if d == Path("/") or any(_is_within(k, d) for k in keep):
            files.append(str(f))
        else:
            dirs.append(str(d))
    # Drop directories inside another hidden one, and files inside a hidden directory.
    dirs = sorted(set(dirs))
    dirs = [d for d in dirs if not any(o != d and _is_within(Path(d), Path(o)) for o in dirs)]
    files = [f for f in dict.fromkeys(files) if not any(_is_within(Path(f), Path(d)) for d in dirs)]
    return dirs, files


def published_files(env: Mapping[str, str], private_dir: Path) -> list[str]:
    """The files of ``private_dir`` that CMD's environment names (CA, truststore, wgetrc...):
    the only ones shown again inside."""
    if not private_dir.is_dir():
        return []
    text = "\n".join(env.values())
    return sorted(str(p) for p in private_dir.iterdir() if p.is_file() and str(p) in text)


# ---- outside: probe and the Unix socket egress serves ----------------------------------


def unsupported_reason() -> str | None:
    """None when this machine lets egress make the namespaces, else what is missing."""
    if not sys.platform.startswith("linux"):
        return f"--isolate needs Linux namespaces (this is {sys.platform})"
    # The probe in a forked child of this process (a few ms; a new Python costs ~100 ms on
    # every exec). The child only makes syscalls and writes to a pipe, so a fork of a process
    # with threads is safe here; where fork is not possible, the probe as a script.
    try:
        rfd, wfd = os.pipe()
        pid = os.fork()
    except OSError:
        return _probe_script()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            os.close(rfd)
            os.dup2(wfd, 2)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            code = _probe()
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        err = r.read().decode(errors="replace").strip()
    code = _status(os.waitpid(pid, 0)[1])
    if code == 0:
        return None
    return err or f"the namespace probe failed with status {code}"


def _probe_script() -> str | None:
    try:
        r = subprocess.run([*_self(), "probe"],
                           capture_output=True, text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the namespace probe did not run: {e}"
    if r.returncode == 0:
        return None
    return r.stderr.strip() or f"the namespace probe failed with status {r.returncode}"


_NEEDS = (
    "It needs unprivileged user namespaces (Linux: sysctl kernel.unprivileged_userns_clone=1 "
    "on Debian/Ubuntu kernels, user.max_user_namespaces > 0, and no AppArmor restriction "
    "kernel.apparmor_restrict_unprivileged_userns=1, or a container started with permission "
    "to make namespaces; root needs CAP_SYS_ADMIN and CAP_SETFCAP)."
)


def unsupported_message(reason: str) -> str:
    """An explicit --isolate that cannot be honoured: the error (exec stops, status 2)."""
    return (
        f"egress: error: --isolate is not available here: {reason}. {_NEEDS} To run without "
        "isolation (CMD can then read what your user can read and connect around the "
        "proxy), use --no-isolate."
    )


def not_isolated_notice(reason: str) -> str:
    """The default where isolation is not possible: one line, CMD runs unisolated."""
    return (
        f"egress: warning: not isolating CMD: {reason}; CMD runs unisolated (it can connect "
        "around the proxy and read your user's files; docs/isolation.md). --no-isolate "
        "silences this, --isolate makes it an error."
    )


class UnixBridge:
    """egress's side: a Unix socket in a new 0700 directory; each connection is forwarded to
    the proxy's TCP listener."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.dir = Path(tempfile.mkdtemp(prefix="egress-isolate-"))
        self.sock = self.dir / "proxy.sock"
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.sock))

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(self.host, self.port)
        except OSError:
            w.close()
            return
        await _splice(r, w, ur, uw)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        shutil.rmtree(self.dir, ignore_errors=True)


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        if w.can_write_eof():
            w.write_eof()
    except (OSError, asyncio.IncompleteReadError):
        pass


async def _splice(r1: asyncio.StreamReader, w1: asyncio.StreamWriter,
                  r2: asyncio.StreamReader, w2: asyncio.StreamWriter) -> None:  # fmt: skip
    try:
        await asyncio.gather(_pipe(r1, w2), _pipe(r2, w1))
    finally:
        for w in (w1, w2):
            with contextlib.suppress(Exception):
                w.close()


def command(plan: Plan, argv: Sequence[str]) -> list[str]:
    """The argv egress spawns (with CMD's environment) instead of CMD."""
    return [*_self(), "run", *plan.args(), "--", *argv]


def _self() -> list[str]:
    """This very file as a script (stdlib only; -I: no script directory, user site or
    PYTHON* variables on sys.path), whatever the working directory or sys.path of CMD."""
    return [sys.executable, "-I", os.path.abspath(__file__)]


# ---- inside -------------------------------------------------------------------------------


def _enter_namespaces() -> None:
    """This process: new user (our uid as root), mount, PID (for our next child) and network
    namespaces."""
    uid, gid = os.getuid(), os.getgid()
    _unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET,
             "unshare(user, mount, pid, net namespaces)")  # fmt: skip
    _map_ids(0, uid, 0, gid)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


def _prepare_mounts(opts: argparse.Namespace) -> None:
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back out
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # this PID ns only
    shown = {p: Path(p).read_bytes() for p in opts.publish}
    for d in opts.hide_dir:
        if os.path.isdir(d):
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
    priv = opts.private_dir
    _mount("tmpfs", priv, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    empty = os.path.join(priv, ".empty")
    Path(empty).write_bytes(b"")
    for f in opts.hide_file:
        if os.path.exists(f):
            _mount(empty, f, None, MS_BIND)
            _mount("none", f, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for path, data in shown.items():
        Path(path).write_bytes(data)
        os.chmod(path, 0o644)
    _mount("none", priv, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


async def _serve_bridge(listener: socket.socket, sock: str) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_unix_connection(sock)
        except OSError:
            w.close()
            return
        await _splice(r, w, ur, uw)

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def _enter_cmd_namespaces(uid: int, gid: int) -> None:
    _prctl(PR_SET_DUMPABLE, 1)  # else /proc/self/*_map belong to init's root, not to us
    _unshare(CLONE_NEWUSER | CLONE_NEWNS, "unshare(user, mount) for CMD")
    _map_ids(uid, 0, gid, 0)


def _exec_cmd(opts: argparse.Namespace) -> None:
    """In the forked child: one more user+mount namespace (locks the hiding mounts and gives
    CMD the caller's uid back, without privileges over the sandbox), then CMD."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        _enter_cmd_namespaces(opts.uid, opts.gid)
    except (IsolateError, OSError) as e:
        print(f"egress: --isolate: setting up CMD's namespace failed: {e}", file=sys.stderr,
              flush=True)  # fmt: skip
        os._exit(SETUP_FAILED)
    try:
        os.execvp(opts.cmd[0], opts.cmd)  # noqa: S606 (CMD, as egress exec runs it)
    except OSError as e:
        print(f"egress: cannot run {opts.cmd[0]!r}: {e.strerror}", file=sys.stderr, flush=True)
        os._exit(127)


def _status(st: int) -> int:
    if os.WIFSIGNALED(st):
        return 128 + os.WTERMSIG(st)
    return os.WEXITSTATUS(st)


def _init(opts: argparse.Namespace) -> int:
    """PID 1 of the sandbox."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the holder gone: the whole PID ns goes
    _prctl(PR_SET_DUMPABLE, 0)
    try:
        _prepare_mounts(opts)
        _loopback_up()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", opts.port))
        listener.listen(128)
    except (IsolateError, OSError) as e:
        print(f"egress: --isolate: setting up the sandbox failed: {e}", file=sys.stderr)
        return SETUP_FAILED
    child = os.fork()
    if child == 0:
        listener.close()
        _exec_cmd(opts)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches CMD directly
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: _kill(child, s))
    import threading

    threading.Thread(target=asyncio.run, args=(_serve_bridge(listener, opts.sock),),
                     daemon=True).start()  # fmt: skip
    while True:
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if pid == child:
            return _status(st)  # PID 1 exits: the kernel kills everything left in the ns


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _holder(opts: argparse.Namespace) -> int:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # egress gone: so is the sandbox
    try:
        _enter_namespaces()
    except (IsolateError, OSError) as e:
        print(f"egress: --isolate: {e}", file=sys.stderr)
        return SETUP_FAILED
    child = os.fork()
    if child == 0:
        code = 1
        try:
            code = _init(opts)
        finally:
            sys.stderr.flush()
            os._exit(code)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: _kill(child, s))
    while True:
        try:
            _, st = os.waitpid(child, 0)
            return _status(st)
        except ChildProcessError:
            return 1


def _probe() -> int:
    uid, gid = os.getuid(), os.getgid()
    try:
        _enter_namespaces()
    except (IsolateError, OSError) as e:
        print(e, file=sys.stderr)
        return 1
    child = os.fork()
    if child == 0:
        code = 0
        try:
            _mount("none", "/", None, MS_REC | MS_PRIVATE)
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            _loopback_up()
            _prctl(PR_SET_DUMPABLE, 0)
            if os.fork() == 0:  # the nested namespaces CMD will get
                try:
                    _enter_cmd_namespaces(uid, gid)
                except (IsolateError, OSError) as e:
                    print(e, file=sys.stderr)
                    os._exit(1)
                os._exit(0)
            code = _status(os.wait()[1])
        except (IsolateError, OSError) as e:
            print(e, file=sys.stderr)
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    return _status(os.waitpid(child, 0)[1])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="egress/isolate.py")
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("probe")
    run = sub.add_parser("run")
    run.add_argument("--sock", required=True)
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--private-dir", required=True)
    run.add_argument("--uid", type=int, required=True)
    run.add_argument("--gid", type=int, required=True)
    for opt in ("--publish", "--hide-dir", "--hide-file"):
        run.add_argument(opt, action="append", default=[])
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    opts = p.parse_args(argv)
    if opts.what == "probe":
        return _probe()
    if opts.cmd and opts.cmd[0] == "--":
        opts.cmd = opts.cmd[1:]
    if not opts.cmd:
        p.error("run needs a command")
    return _holder(opts)


if __name__ == "__main__":
    sys.exit(main())
