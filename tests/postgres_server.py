"""A real PostgreSQL server on loopback, for Vault's database engine (dynamic credentials).

The postmaster runs as a child of the test process (not daemonized by pg_ctl), so ``stop``
can wait for it and it dies with the test process even if that is killed outright. ``start``
returns once a password login over TCP works and stops the server again if it fails;
``stop`` shuts it down, kills whatever is left (backends, a stray initdb) and waits, so no
``postgres -D`` outlives the test.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.vault_server import free_port

SUPERUSER_PASSWORD = "pg-test-superuser-pw"  # noqa: S105 (a throwaway test server)
READY_SECONDS = 180.0  # generous, for a loaded machine; a healthy start takes a few seconds


def pg_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    return None


class PostgresServer:
    def __init__(self) -> None:
        bindir = pg_bindir()
        assert bindir is not None
        self.bin = bindir
        # The server must not run as root; its folder must be reachable by its own user.
        self.dir = Path(tempfile.mkdtemp(prefix="egress-pg-"))
        self.port = free_port()
        self.as_user: list[str] = []
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"
        self.proc: subprocess.Popen[bytes] | None = None

    def _run(self, *args: str) -> str:
        r = subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, timeout=READY_SECONDS
        )
        assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout}{r.stderr}"
        return r.stdout

    def log_tail(self, lines: int = 40) -> str:
        path = self.dir / "log"
        text = path.read_text(errors="replace") if path.exists() else "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        """Create the cluster, start it and wait until a password login works. On failure
        the server is stopped (and its folder removed) before the error propagates."""
        assert self.proc is None, "already started"
        try:
            self._start()
        except BaseException as e:
            tail = self.log_tail()
            self.stop()
            if isinstance(e, Exception):
                raise AssertionError(
                    f"PostgreSQL on port {self.port} failed to start: {type(e).__name__}: {e}\n"
                    f"its log ends with:\n{tail}"
                ) from e
            raise

    def _start(self) -> None:
        pwfile = self.dir / "pw"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if self.as_user:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", f"--pwfile={pwfile}")  # fmt: skip
        cmd = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
               "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1"]  # fmt: skip
        if shutil.which("setpriv"):
            # setpriv execs the server (it stays our child), kills it should the test process
            # die, and as root runs it as postgres.
            user = ["--reuid=postgres", "--regid=postgres", "--init-groups"] if self.root else []
            cmd = ["setpriv", "--pdeathsig", "KILL", *user, "--", *cmd]
        else:
            cmd = [*self.as_user, *cmd]
        with (self.dir / "log").open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + READY_SECONDS
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"postgres exited with {code}")
            try:
                r = self.psql("SELECT 1")
                if r.returncode == 0 and r.stdout.strip() == "1":
                    return
                last = r.stderr.strip()
            except subprocess.TimeoutExpired as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no password login over TCP within {READY_SECONDS:.0f} s: {last}"
                )
            time.sleep(0.2)

    def _processes(self) -> list[int]:
        """What else runs on this data folder (an initdb a failed start left behind, say)."""
        return [int(p.name) for p in Path("/proc").glob("[0-9]*") if _runs_on(p, self.data)]

    def stop(self) -> None:
        """Shut the server down, kill whatever is left of it, wait, and remove its folder.
        Safe to call twice, or after a failed start."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                backends = _children(proc.pid)  # each in its own session: not one group
                proc.send_signal(signal.SIGQUIT)  # immediate shutdown, backends included
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=60)
                # They exit with their postmaster; any left are killed (checked by name
                # first: a pid freed meanwhile could have been reused).
                _kill_and_wait([pid for pid in backends if _cmdline(pid).startswith(b"postgres")])
        finally:
            try:
                for pid in self._processes():
                    _kill_and_wait([pid, *_children(pid)])
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)

    def psql(
        self, sql: str, user: str = "postgres", password: str = SUPERUSER_PASSWORD
    ) -> subprocess.CompletedProcess[str]:
        """Run SQL over TCP with password authentication (so a login proves the password)."""
        env = {**os.environ, "PGPASSWORD": password}
        return subprocess.run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", user, "-d", "postgres",
             "-tAc", sql],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip

    def dynamic_roles(self) -> list[str]:
        r = self.psql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%' ORDER BY 1")
        assert r.returncode == 0, r.stderr
        return [line for line in r.stdout.splitlines() if line]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _runs_on(proc: Path, data: Path) -> bool:
    """``proc`` (/proc/PID) is alive with ``-D data`` among its arguments."""
    return str(data).encode() in _cmdline(int(proc.name)).split(b"\0") and _alive(int(proc.name))


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


def _kill_and_wait(pids: list[int]) -> None:
    """SIGKILL ``pids`` and wait until all are gone (not our children: poll, not waitpid)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"postgres processes {pids} survived SIGKILL"
        time.sleep(0.05)
