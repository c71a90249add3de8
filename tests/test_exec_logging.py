"""Under ``egress exec`` the audit log goes to a file (not the agent's screen), named at
start; a refused request gets one readable line on stderr when stderr is not a terminal
or when asked."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import API, assert_no_secret, base_config, egress_cmd, proxy_env, write_config
from tests.upstream import Upstream

DENIED = "denied.egress.test"


@pytest.fixture
def cfg(tmp_path: Path, upstream: Upstream, test_ca_file: Path) -> Path:
    data = base_config(tmp_path, test_ca_file, upstream.port)
    data["audit"] = {"path": "stdout"}  # the default
    return write_config(tmp_path, data)


def agent_script(port: int) -> str:
    return (f"curl -sS -o /dev/null https://{API}:{port}/ok -H \"Authorization: Bearer $API_TOKEN\"; "
            f"curl -sS -o /dev/null https://{DENIED}:{port}/nope; true")  # fmt: skip


def run_exec(
    cfg: Path, tmp: Path, port: int, *options: str, stderr_tty: bool = False
) -> tuple[str, str]:
    """(stdout, stderr) of ``egress exec`` running a curl agent; stderr optionally a pty."""
    env = proxy_env(XDG_STATE_HOME=str(tmp / "state"))
    argv = egress_cmd("exec", "--config", str(cfg), *options, "--", "sh", "-c", agent_script(port))
    if not stderr_tty:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=90)
        assert r.returncode == 0, r.stderr
        return r.stdout, r.stderr
    leader, follower = pty.openpty()
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=follower, env=env, timeout=90)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the pty's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert r.returncode == 0
    return r.stdout.decode(), b"".join(chunks).decode(errors="replace")


CASES = [
    # (options, stderr a terminal?, audit where, a denial line on stderr?)
    ((), False, "state", True),
    ((), True, "state", False),  # the agent's screen: nothing painted over it
    (("--log-level", "deny"), True, "state", True),
    (("--log-level", "quiet"), False, "state", False),
    (("--audit", "-"), False, "stderr", False),
    (("--audit", "mine.jsonl"), False, "mine", True),
]  # fmt: skip


@pytest.mark.parametrize(("options", "tty", "where", "line"), CASES)
def test_exec_audit_and_denial_lines(
    cfg: Path,
    tmp_path: Path,
    upstream: Upstream,
    options: tuple[str, ...],
    tty: bool,
    where: str,
    line: bool,
) -> None:
    options = tuple(str(tmp_path / o) if o.endswith(".jsonl") else o for o in options)
    out, err = run_exec(cfg, tmp_path, upstream.port, *options, stderr_tty=tty)
    state_file = tmp_path / "state" / "egress" / "exec-audit.jsonl"
    files = {"state": state_file, "mine": tmp_path / "mine.jsonl"}
    if where == "stderr":
        records = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
        assert not state_file.exists()
    else:
        path = files[where]
        assert f"egress: audit log: {path}" in err
        records = [json.loads(x) for x in path.read_text().splitlines()]
        assert not any(x.lstrip().startswith("{") for x in err.splitlines()), err
    assert [(r["host"], r["decision"]) for r in records] == [(API, "allow"), (DENIED, "deny")]
    shown = f"egress: refused CONNECT https://{DENIED}:{upstream.port}: host_not_allowed (403)"
    assert (shown in err) is line, err
    assert "{" not in out  # CMD's stdout: only what CMD wrote (curl -o /dev/null: nothing)
    assert_no_secret(out, err, *(p.read_text() for p in files.values() if p.exists()))


def test_a_config_audit_file_is_kept(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    data = base_config(tmp_path, test_ca_file, upstream.port)
    cfg = write_config(tmp_path, data)
    _, err = run_exec(cfg, tmp_path, upstream.port)
    assert f"egress: audit log: {yaml.safe_load(cfg.read_text())['audit']['path']}" in err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("record", "line"),
    [
        ({"decision": "allow"}, None),
        ({"decision": "deny", "event": "connect", "method": "CONNECT", "scheme": "https", "host": "x.example",
          "port": 443, "path": "", "reason": "host_not_allowed", "status": 403, "detail": "no rule allows host 'x.example'"},
         "egress: refused CONNECT https://x.example: host_not_allowed (403): no rule allows host 'x.example'"),
        ({"decision": "error", "method": "GET", "scheme": "https", "host": "a.example", "port": 8443,
          "path": "/p?q=REDACTED", "reason": "secret_unavailable", "status": 503, "detail": "line one\nline two"},
         "egress: refused GET https://a.example:8443/p?q=REDACTED: secret_unavailable (503): line one line two"),
    ],
)  # fmt: skip
def test_denial_line(record: dict[str, object], line: str | None) -> None:
    from egress.localdev import denial_line

    assert denial_line(record) == line
