"""A real PostgreSQL server on loopback, for Vault's database engine (dynamic credentials)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.vault_server import free_port

SUPERUSER_PASSWORD = "pg-test-superuser-pw"  # noqa: S105 (a throwaway test server)


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
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"

    def _run(self, *args: str) -> str:
        r = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def start(self) -> None:
        pwfile = self.dir / "pw"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if self.as_user:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", f"--pwfile={pwfile}")  # fmt: skip
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "start",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1")  # fmt: skip

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
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
