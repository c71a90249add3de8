"""egress exec --isolate: CMD's only way out is egress, and egress is invisible to it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egress import isolate
from tests.conftest import (
    API,
    OTHER_SECRET,
    SECRET,
    assert_no_secret,
    base_config,
    egress_cmd,
    proxy_env,
    write_config,
)
from tests.upstream import Upstream

WHY = isolate.unsupported_reason() if sys.platform.startswith("linux") else "not Linux"
needs_ns = pytest.mark.skipif(WHY is not None, reason=f"no namespaces for --isolate: {WHY}")


# ---- the pure planning ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secrets", "keep", "dirs", "files"),
    [
        # a secrets directory of its own: hidden whole
        (["/etc/egress/s.env"], ["/home/u/proj", "/home/u"], ["/etc/egress"], []),
        # in the working directory or $HOME (or an ancestor): only the file itself
        (["/home/u/proj/.env"], ["/home/u/proj", "/home/u"], [], ["/home/u/proj/.env"]),
        (["/home/u/s.env"], ["/home/u/proj", "/home/u"], [], ["/home/u/s.env"]),
        (["/s.env"], ["/work"], [], ["/s.env"]),
        # nested directories collapse; a file in a hidden directory needs nothing more
        (["/a/b/s1", "/a/s2", "/a/b/c/s3"], ["/w"], ["/a"], []),
        (["/a/s", "/a/s"], ["/w"], ["/a"], []),
    ],
)
def test_hide_plan(secrets: list[str], keep: list[str], dirs: list[str], files: list[str]) -> None:
    assert isolate.hide_plan([Path(s) for s in secrets], [Path(k) for k in keep]) == (dirs, files)


def test_published_files_are_the_ones_the_environment_names(tmp_path: Path) -> None:
    for name in ("egress-ca.pem", "wgetrc", "upstream-trust.pem", "dhparam.pem"):
        (tmp_path / name).write_text("x")
    env = {"SSL_CERT_FILE": str(tmp_path / "egress-ca.pem"), "WGETRC": str(tmp_path / "wgetrc")}
    assert isolate.published_files(env, tmp_path) == [str(tmp_path / "egress-ca.pem"),
                                                       str(tmp_path / "wgetrc")]  # fmt: skip


def test_unsupported_message_names_what_is_missing_and_the_way_out() -> None:
    msg = isolate.unsupported_message(
        "unshare(user, mount, pid, net namespaces): Operation not permitted"
    )
    assert "Operation not permitted" in msg and "user namespaces" in msg
    assert "--no-isolate" in msg


def test_not_isolated_notice_is_one_line_naming_cause_consequence_and_silencer() -> None:
    msg = isolate.not_isolated_notice("unshare: Operation not permitted")
    assert "\n" not in msg
    assert "unshare: Operation not permitted" in msg and "unisolated" in msg
    assert "--no-isolate" in msg


# ---- end to end -----------------------------------------------------------------------------


@pytest.fixture
def cfg(tmp_path: Path, upstream: Upstream, test_ca_file: Path) -> Path:
    return write_config(tmp_path, base_config(tmp_path, test_ca_file, upstream.port))


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory CMD can see (the config's own is hidden: the secrets file is there)."""
    return tmp_path_factory.mktemp("isolate-out")


def egress(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        egress_cmd(*args), capture_output=True, text=True, env=proxy_env(), timeout=timeout
    )


def _leftovers(token: str) -> str:
    r = subprocess.run(["pgrep", "-af", token], capture_output=True, text=True)
    return "\n".join(line for line in r.stdout.splitlines() if "pgrep" not in line)


@needs_ns
def test_proxied_client_works_and_upstream_gets_the_secret(cfg: Path, upstream: Upstream) -> None:
    script = (f'curl -sS --fail-with-body https://{API}:{upstream.port}/isolated '
              '-H "Authorization: Bearer $API_TOKEN"')  # fmt: skip
    r = egress("exec", "--isolate", "--config", str(cfg), "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert [q.path for q in upstream.requests] == ["/isolated"]
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert json.loads(r.stdout)["headers"]["authorization"] == "Bearer egress-api_token-placeholder"
    assert_no_secret(r.stdout, r.stderr)


BYPASS = r"""
import json, socket, subprocess, sys
port, outside_port = int(sys.argv[1]), int(sys.argv[2])
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "connected"
    except OSError as e:
        out[name] = type(e).__name__ + ":" + str(e.errno)
attempt("raw_upstream", lambda: socket.create_connection(("127.0.0.1", port), timeout=3).close())
attempt("raw_outside", lambda: socket.create_connection(("127.0.0.1", outside_port), timeout=3).close())
attempt("raw_testnet", lambda: socket.create_connection(("192.0.2.1", 443), timeout=3).close())
curl = subprocess.run(["curl", "-sS", "--noproxy", "*", "-m", "5", f"https://127.0.0.1:{port}/direct"],
                      capture_output=True, text=True)
out["curl_noproxy"] = [curl.returncode, curl.stderr.strip()]
node = subprocess.run(["node", "-e", f"fetch('https://127.0.0.1:{port}/node').then(() => "
                       "console.log('fetched'), e => {console.log('failed', e.cause && e.cause.code); "
                       "process.exit(3)})"], capture_output=True, text=True, timeout=20)
out["node_fetch"] = [node.returncode, node.stdout.strip()]
print(json.dumps(out))
"""


@needs_ns
def test_clients_that_ignore_the_proxy_have_no_route(cfg: Path, upstream: Upstream) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    with socket.socket() as listener:  # a listener outside, on the host's loopback
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0)
        r = egress("exec", "--isolate", "--config", str(cfg), "--", sys.executable, "-c", BYPASS,
                   str(upstream.port), str(listener.getsockname()[1]))  # fmt: skip
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["raw_upstream"] == "ConnectionRefusedError:111", out  # only the sandbox's loopback
    assert out["raw_outside"] == "ConnectionRefusedError:111", out
    assert out["raw_testnet"] == "OSError:101", out  # ENETUNREACH: no route at all
    assert out["curl_noproxy"][0] == 7, out  # couldn't connect
    assert out["node_fetch"] == [3, "failed ECONNREFUSED"], out
    assert upstream.connections == 0 and upstream.requests == []
    assert_no_secret(r.stdout, r.stderr)


PEEK = r"""
import json, os, sys, time
marker = sys.argv[1]
deadline = time.time() + 20
while not os.path.exists(marker) and time.time() < deadline:
    time.sleep(0.02)
pid = open(marker).read().strip()
priv = os.path.dirname(os.environ["SSL_CERT_FILE"])
out = {"pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
       "egress_proc": os.path.exists(f"/proc/{pid}"),
       "private": sorted(os.listdir(priv)), "uid": os.getuid()}
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return type(e).__name__
out["secrets_file"] = read(sys.argv[2])
out["config"] = read(sys.argv[3])
# Undoing the hiding is refused (the mounts are locked in CMD's namespace).
out["umount"] = os.system(f"umount {priv} 2>/dev/null")
print(json.dumps(out))
"""


@needs_ns
def test_egress_its_private_directory_and_the_secrets_file_are_invisible(
    cfg: Path, outside: Path
) -> None:
    marker = outside / "egress.pid"
    secrets = cfg.parent / "secrets.env"
    proc = subprocess.Popen(
        egress_cmd("exec", "--isolate", "--config", str(cfg), "--", sys.executable, "-c", PEEK,
                   str(marker), str(secrets), str(cfg)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=proxy_env(),
    )  # fmt: skip
    marker.write_text(str(proc.pid))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    out = json.loads(stdout)
    assert out["egress_proc"] is False and proc.pid not in out["pids"]
    assert max(out["pids"]) < 100, out["pids"]  # a PID namespace of its own
    assert out["private"] == [".empty", "egress-ca.pem", "egress-truststore.p12", "wgetrc"]
    assert out["secrets_file"] == "FileNotFoundError"  # its directory is hidden
    assert out["config"] == "FileNotFoundError"
    assert out["uid"] == os.getuid()
    assert out["umount"] != 0
    assert_no_secret(stdout, stderr)
    assert OTHER_SECRET not in stdout


@needs_ns
def test_a_secrets_file_in_the_working_directory_is_covered(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = write_config(tmp_path, base_config(tmp_path, test_ca_file, upstream.port))
    r = subprocess.run(
        egress_cmd("exec", "--isolate", "--config", str(cfg), "--", "sh", "-c",
                   "cat secrets.env; echo rc=$?; ls egress.yaml"),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=proxy_env(PYTHONPATH=str(Path(__file__).resolve().parents[1])),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["rc=0", "egress.yaml"]  # empty file; the rest stays
    assert OTHER_SECRET not in r.stdout + r.stderr


@needs_ns
@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137)])
def test_exit_code_is_passed_through(cfg: Path, script: str, code: int) -> None:
    r = egress("exec", "--isolate", "--config", str(cfg), "--", "sh", "-c", script)
    assert r.returncode == code, r.stderr


@needs_ns
def test_command_not_found(cfg: Path) -> None:
    r = egress("exec", "--isolate", "--config", str(cfg), "--", "no-such-command-egress")
    assert r.returncode == 127 and "no-such-command-egress" in r.stderr


@needs_ns
def test_sigterm_reaches_the_command_and_nothing_is_left(cfg: Path, outside: Path) -> None:
    token = f"9{os.getpid()}.{time.monotonic_ns() % 1000}"
    ready = outside / "ready"
    script = (f'trap "echo got-term; exit 42" TERM; sleep {token} & '
              f'(sleep {token}; true) & touch {ready}; wait')  # fmt: skip
    proc = subprocess.Popen(
        egress_cmd("exec", "--isolate", "--config", str(cfg), "--", "sh", "-c", script),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=proxy_env(),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    assert _leftovers(token)  # the sleeps run
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 42, stderr
    assert "got-term" in stdout
    deadline = time.monotonic() + 5
    while (left := _leftovers(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == ""
    assert _leftovers(f"isolate.py run .*{cfg.parent}") == ""


NO_NS = ("import sys, egress.isolate as i; "
         "i.unsupported_reason = lambda: 'unshare: Operation not permitted'; "
         "from egress.cli import main; sys.exit(main())")  # fmt: skip


def test_isolate_unavailable_fails_clearly_and_runs_nothing(cfg: Path, outside: Path) -> None:
    """Where the namespaces cannot be made, an explicit exec --isolate refuses: never
    un-isolated."""
    ran = outside / "ran"
    r = subprocess.run(
        [sys.executable, "-c", NO_NS, "exec", "--isolate", "--config", str(cfg), "--",
         "touch", str(ran)],
        capture_output=True, text=True, env=proxy_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "--isolate is not available here: unshare: Operation not permitted" in r.stderr
    assert "--no-isolate" in r.stderr
    assert not ran.exists()


@pytest.mark.parametrize(
    ("flags", "notice"),
    [
        ([], True),  # the default: a one-line notice, then CMD unisolated
        (["--no-isolate"], False),  # asked for: no notice
    ],
)
def test_default_where_unavailable_runs_unisolated_with_one_line(
    cfg: Path, outside: Path, flags: list[str], notice: bool
) -> None:
    ran = outside / "ran"
    r = subprocess.run(
        [sys.executable, "-c", NO_NS, "exec", *flags, "--config", str(cfg), "--",
         "touch", str(ran)],
        capture_output=True, text=True, env=proxy_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert ran.exists()
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("egress: audit log:")]
    if notice:
        assert len(lines) == 1, r.stderr
        assert "unshare: Operation not permitted" in lines[0] and "unisolated" in lines[0]
        assert "--no-isolate" in lines[0]
    else:
        assert lines == [], r.stderr


@needs_ns
@pytest.mark.parametrize(("flags", "isolated"), [([], True), (["--isolate"], True),
                                                 (["--no-isolate"], False)])  # fmt: skip
def test_isolated_by_default_where_possible(cfg: Path, flags: list[str], isolated: bool) -> None:
    r = egress("exec", *flags, "--config", str(cfg), "--", "sh", "-c", "echo $$")
    assert r.returncode == 0, r.stderr
    assert (int(r.stdout) < 100) is isolated  # PID 2 or so in a PID namespace of its own
    assert "not isolating" not in r.stderr


AIOHTTP = r"""
import asyncio, json, os, sys
import aiohttp
AUTH = {"Authorization": "Bearer " + os.environ["API_TOKEN"]}
async def main(url):
    out = {}
    for name, trust_env in (("default", False), ("trust_env", True)):
        try:
            async with aiohttp.ClientSession(trust_env=trust_env) as s:
                async with s.get(url, headers=AUTH, timeout=aiohttp.ClientTimeout(total=10)) as r:
                    out[name] = [r.status, (await r.json())["headers"].get("authorization")]
        except aiohttp.ClientConnectorError as e:
            out[name] = ["connect-error", e.os_error.errno if e.os_error else None]
        except Exception as e:
            out[name] = ["error", type(e).__name__, str(e)[:200]]
    print(json.dumps(out))
asyncio.run(main(sys.argv[1]))
"""


@needs_ns
def test_aiohttp_ignoring_the_proxy_cannot_connect_and_with_trust_env_is_proxied(
    cfg: Path, upstream: Upstream, outside: Path
) -> None:
    """aiohttp ignores HTTPS_PROXY unless trust_env=True: under the default isolation it
    fails to connect (never goes direct); with trust_env it goes through egress."""
    pytest.importorskip("aiohttp")
    url = f"https://{API}:{upstream.port}/aiohttp"
    # aiohttp resolves the host itself without the proxy: name the loopback address so the
    # attempt is a real direct connection, not a DNS failure.
    direct = f"https://127.0.0.1:{upstream.port}/aiohttp-direct"
    (outside / "aio.py").write_text(AIOHTTP)
    script = f"{sys.executable} {outside}/aio.py {url}; {sys.executable} {outside}/aio.py {direct}"
    r = egress("exec", "--config", str(cfg), "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    by_name, by_addr = (json.loads(line) for line in r.stdout.splitlines())
    assert by_name["trust_env"] == [200, "Bearer egress-api_token-placeholder"], by_name
    assert by_name["default"][0] == "connect-error", by_name  # no DNS, no route
    assert by_addr["default"] == ["connect-error", 111], by_addr  # the sandbox's own loopback
    assert [q.path for q in upstream.requests] == ["/aiohttp"]
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert_no_secret(r.stdout, r.stderr)


SYSTEM_PY = "/usr/bin/python3"  # readable by other users (pyenv's, under /root, is not)


@needs_ns
@pytest.mark.skipif(
    os.getuid() != 0 or not os.path.exists(SYSTEM_PY) or shutil.which("setpriv") is None,
    reason="needs root, setpriv and a system python3 to run the sandbox as another user",
)
def test_an_unprivileged_user_gets_the_sandbox_with_its_own_uid() -> None:
    """What most users run: the namespaces made by a non-root user (here nobody)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="egress-isolate-test-"))
    try:
        d.chmod(0o755)
        script = d / "isolate.py"
        script.write_bytes(Path(isolate.__file__).read_bytes())
        private = d / "private"
        private.mkdir()
        (private / "ca.pem").write_text("public")
        (private / "key").write_text("hidden")
        private.chmod(0o755)
        sh = (f"id -u; ls {private}; cat /proc/1/environ >/dev/null 2>&1; echo environ=$?; "
              f"umount {private} 2>/dev/null; echo umount=$?; exit 4")  # fmt: skip
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "env", "PATH=/usr/bin:/bin", SYSTEM_PY, "-I", str(script), "run",
             "--sock", str(d / "none.sock"), "--port", "5555", "--private-dir", str(private),
             "--publish", str(private / "ca.pem"), "--uid", "65534", "--gid", "65534",
             "--", "/bin/sh", "-c", sh],
            capture_output=True, text=True, timeout=30, cwd=d,
        )  # fmt: skip
        assert r.returncode == 4, r.stderr
        assert r.stdout.split() == ["65534", "ca.pem", "environ=1", "umount=32"]
    finally:
        shutil.rmtree(d, ignore_errors=True)
