"""The agent under ``egress exec`` runs as egress's own user: it must not read the real
secrets out of egress's process (/proc/<pid>/environ, /mem) nor find them in egress's
environment block. The agent is modelled as a process of the same UID without
capabilities (root without CAP_SYS_PTRACE obeys the same ptrace rules as any user)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SECRET, base_config, egress_cmd, proxy_env, write_config
from tests.upstream import Upstream

needs_setpriv = pytest.mark.skipif(
    shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"
)
NO_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]

# The agent: read what it can of its parent (egress) and print it.
PROBE = r"""
import os, re
pid = os.getppid()
out = []
for name in ("environ", "cmdline", "maps"):
    try:
        out.append(f"{name}: " + open(f"/proc/{pid}/{name}", "rb").read().decode(errors="replace").replace("\0", "\n"))
    except OSError as e:
        out.append(f"{name}: {e.strerror}")
try:
    maps = open(f"/proc/{pid}/maps").read()
    with open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps.splitlines():
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if "rw" in line.split()[1] and end - start < 1 << 28:
                try:
                    mem.seek(start)
                    out.append(mem.read(end - start).decode("latin-1"))
                except OSError:
                    pass
except OSError as e:
    out.append(f"mem: {e.strerror}")
print("\n".join(out))
"""


@pytest.fixture
def cfg(tmp_path: Path, upstream: Upstream, test_ca_file: Path) -> Path:
    return write_config(tmp_path, base_config(tmp_path, test_ca_file, upstream.port))


@needs_setpriv
def test_the_probe_reads_a_process_that_does_not_protect_itself() -> None:
    # The control: without egress's protection the same probe finds the value, so the
    # test below can fail.
    parent = "import os, subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1]])"
    r = subprocess.run([*NO_CAPS, sys.executable, "-c", parent, PROBE], capture_output=True, text=True,
                       env=proxy_env(), timeout=60)  # fmt: skip
    assert SECRET in r.stdout


@needs_setpriv
def test_the_agent_cannot_read_secrets_out_of_egress(cfg: Path) -> None:
    # The default exec: root without capabilities cannot make the namespaces (Linux 5.12+:
    # mapping uid 0 needs CAP_SETFCAP), so exec warns and runs the agent unisolated; egress's
    # own protection must hold there. Where isolation does apply, the agent's parent is the
    # sandbox's non-dumpable init and egress is not visible: the assertions hold as well.
    r = subprocess.run([*NO_CAPS, *egress_cmd("exec", "--config", str(cfg), "--", sys.executable, "-c", PROBE)],
                       capture_output=True, text=True, env=proxy_env(), timeout=90)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "environ: Permission denied" in r.stdout, r.stdout[:500]
    assert "mem: Permission denied" in r.stdout or "maps: Permission denied" in r.stdout
    assert SECRET not in r.stdout and SECRET not in r.stderr


def test_a_privileged_reader_finds_no_value_in_egress_environment(cfg: Path) -> None:
    # Root with every capability may read /proc/<pid>/environ of anything; the value is
    # overwritten there all the same.
    script = "import os; print(open(f'/proc/{os.getppid()}/environ','rb').read().decode(errors='replace'))"
    # --no-isolate: this is about egress's own process as the unisolated child sees it (its
    # parent). Isolated, egress is not in the child's PID namespace at all
    # (tests/test_isolate.py) and its parent is the sandbox's non-dumpable init.
    r = subprocess.run(egress_cmd("exec", "--no-isolate", "--config", str(cfg), "--", sys.executable, "-c", script),
                       capture_output=True, text=True, env=proxy_env(), timeout=90)  # fmt: skip
    assert r.returncode == 0, r.stderr
    if "EGRESS_TEST_API_TOKEN" not in r.stdout:
        pytest.skip("this process cannot read /proc/<pid>/environ of egress (not root)")
    assert SECRET not in r.stdout
    assert "EGRESS_TEST_API_TOKEN=" + "*" * len(SECRET) in r.stdout


def test_scrub_environ_overwrites_the_block_and_os_environ() -> None:
    code = r"""
import os, sys
from egress.hardening import scrub_environ
print(scrub_environ(["SCRUB_ME", "ABSENT"]))
print("SCRUB_ME" in os.environ)
print(open("/proc/self/environ", "rb").read().count(b"value-to-hide"))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**proxy_env(), "SCRUB_ME": "value-to-hide"}, timeout=60)  # fmt: skip
    assert r.stdout.split() == ["['SCRUB_ME']", "False", "0"], r.stdout + r.stderr


def test_the_vault_token_variable_is_egress_secret_material(tmp_path: Path) -> None:
    from egress import config
    from egress.cli import secret_env_vars

    class Store:  # the smallest stand-in: only the consumed variables matter here
        def env_vars_consumed(self) -> set[str]:
            return {"A_SECRET"}

    class Rt:
        secrets = Store()

    cases = [
        ("vault: {auth: {method: token}}\n", {"A_SECRET", "VAULT_TOKEN"}),
        ("vault: {auth: {method: token, token_env: MY_VT}}\n", {"A_SECRET", "MY_VT"}),
        ("vault: {auth: {method: token, token_file: t}}\n", {"A_SECRET"}),
        ("", {"A_SECRET"}),
    ]
    for text, expected in cases:
        (tmp_path / "e.yaml").write_text(text + "allow: [a.example]\n")
        assert secret_env_vars(config.load(tmp_path / "e.yaml"), Rt()) == expected  # type: ignore[arg-type]


def test_scrub_environ_with_no_environ_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no environ array can be read (Debian's python3 keeps its own copy, leaving
    libc's symbol NULL: reading it raised at start-up in the container image), the values
    still leave os.environ and nothing raises. The block itself is overwritten where found
    (the test above)."""
    import ctypes

    from egress import hardening

    null = ctypes.POINTER(ctypes.c_void_p)()
    assert not null  # what in_dll gave on that Python
    monkeypatch.setattr(hardening, "_environ_block", lambda: None)
    monkeypatch.setenv("SCRUB_ME_TOO", "another-value")
    assert hardening.scrub_environ(["SCRUB_ME_TOO"]) == []
    assert "SCRUB_ME_TOO" not in os.environ


def test_the_environ_block_is_the_one_the_process_uses() -> None:
    from egress import hardening

    block = hardening._environ_block()
    assert block is not None and block[0] is not None  # a readable, non-empty array here
