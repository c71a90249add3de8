"""workers: N proxy processes on one port (egress.workers): real `egress run` with
`workers: 2`, real TLS clients (curl, Python ssl), a loopback HTTPS upstream, a secret
injected. What is checked: requests land on both workers, every leaf certificate is signed
by the one CA, the audit file has one whole JSON line per request under concurrent load,
/metrics sums the workers, SIGTERM lets a request in flight finish and leaves no process
behind, a killed worker is replaced, and `workers` is validated."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from egress.config.load import parse
from egress.errors import ConfigError
from egress.workers import available_cpus, cgroup_cpu_limit
from tests.canary import CANARIES
from tests.conftest import (
    API,
    SECRET,
    RunningProxy,
    assert_no_secret,
    base_config,
    egress_cmd,
    proxy_env,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream
from tests.vault_server import VaultServer

PH = "egress-api_token-placeholder"


def admin_url(p: RunningProxy) -> str:
    m = re.search(r"admin listener on (http://127\.0\.0\.1:\d+)", p.stderr_path.read_text())
    assert m, p.stderr_path.read_text()
    return m.group(1)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (loopback)
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str) -> dict[str, float]:
    """Samples of ``name`` by their label text ('' for none)."""
    out = {}
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(x) for x in children.read_text().split()] if children.exists() else []


def wait_for(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def curl_many(p: RunningProxy, urls: list[str], parallel: int = 16) -> list[str]:
    """Every URL through the proxy with curl --parallel (its own connections, trusting only
    the proxy's CA); returns the HTTP status of each."""
    cfg = "\n".join(f'url = "{u}"\noutput = "/dev/null"' for u in urls)
    r = subprocess.run(
        ["curl", "-sS", "--parallel", "--parallel-max", str(parallel), "--proxy", p.url,
         "--cacert", str(p.ca), "-H", f"Authorization: Bearer {PH}", "-w", "%{http_code}\\n",
         "--config", "-"],
        input=cfg, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def stop_and_check(p: RunningProxy) -> None:
    pids = worker_pids(p.proc.pid)
    code = p.stop()
    err = p.stderr_path.read_text()
    assert code == 0, err
    assert "Traceback" not in err
    for pid in pids:  # no orphan: every worker was reaped by the parent
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the proxy"


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream,
        test_ca_file: Path) -> Iterator[RunningProxy]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("workers")
    cfg = base_config(tmp, test_ca_file, upstream.port)
    cfg["workers"] = 2
    cfg["admin"] = {"port": 0, "drain_seconds": 0}
    p = start_proxy(write_config(tmp, cfg), tmp)
    try:
        yield p
    finally:
        stop_and_check(p)


def test_two_workers_serve_one_port(two: RunningProxy) -> None:
    assert ", 2 worker processes)" in two.stderr_path.read_text()
    assert len(worker_pids(two.proc.pid)) == 2
    assert get(admin_url(two) + "/readyz") == (200, "ready\n")


def test_load_spreads_audit_lines_whole_metrics_summed(
    two: RunningProxy, upstream: Upstream
) -> None:
    before = len(two.audit())
    # Long paths make long audit lines: a torn or interleaved write would show.
    n = 240
    urls = [f"https://{API}:{upstream.port}/load/{i}/{'x' * 1500}?token={PH}" for i in range(n)]
    statuses = curl_many(two, urls)
    assert statuses == ["200"] * n
    # The secret reached the upstream on every request, from both workers.
    got = [r for r in upstream.recorder.requests if r.path.startswith("/load/")]
    assert len(got) == n and all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in got)

    raw = two.audit_path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    records = [json.loads(line) for line in lines]  # every line one whole JSON object
    mine = [r for r in records[before:] if r["path"].startswith("/load/")]
    assert len(mine) == n
    assert sorted(int(r["path"].split("/")[2]) for r in mine) == list(range(n))
    assert all(r["decision"] == "allow" and r["secrets"] == ["api_token"] for r in mine)

    status, text = get(admin_url(two) + "/metrics")
    assert status == 200
    per_worker = metric(text, "egress_worker_requests")
    assert set(per_worker) == {'{worker="0"}', '{worker="1"}'}
    assert all(v > 0 for v in per_worker.values()), per_worker  # both workers served
    allowed = metric(text, "egress_requests_total")['{decision="allow",reason="allowed"}']
    assert allowed == sum(per_worker.values()) >= n  # the scrape sums both workers
    injected = metric(text, "egress_secrets_injected_total")['{secret="api_token"}']
    assert injected >= n
    assert metric(text, "egress_ready") == {"": 1.0}
    assert metric(text, "egress_workers_ready") == {"": 2.0}
    assert_no_secret(text, raw)


def test_a_second_egress_on_the_same_port_is_refused(
    two: RunningProxy, tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    """SO_REUSEPORT would let a second egress of the same user join the port and take a
    share of the connections: it must fail as on any busy port."""
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["listen"]["port"] = two.port
    cfg["workers"] = 2
    r = subprocess.run(egress_cmd("run", "--config", str(write_config(tmp_path, cfg))),
                       capture_output=True, text=True, env=proxy_env(), timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert f"could not listen on 127.0.0.1:{two.port} (is the port in use?" in r.stderr


def _leaf_over_proxy(p: RunningProxy, port: int) -> bytes:
    """One new connection: CONNECT, TLS trusting only the proxy's CA, one request; the
    leaf certificate the proxy presented."""
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        s.sendall(f"CONNECT {API}:{port} HTTP/1.1\r\nHost: {API}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx = ssl.create_default_context(cafile=str(p.ca))
        with ctx.wrap_socket(s, server_hostname=API) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(
                f"GET /leaf HTTP/1.1\r\nHost: {API}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            return der
    finally:
        s.close()


def test_every_leaf_is_signed_by_the_one_ca(two: RunningProxy, upstream: Upstream) -> None:
    ca = x509.load_pem_x509_certificate(two.ca.read_bytes())
    before = metric(get(admin_url(two) + "/metrics")[1], "egress_worker_requests")
    for _ in range(24):  # new connections: the kernel spreads them over both workers
        leaf = x509.load_der_x509_certificate(_leaf_over_proxy(two, upstream.port))
        leaf.verify_directly_issued_by(ca)  # raises if another key signed it
    after = metric(get(admin_url(two) + "/metrics")[1], "egress_worker_requests")
    # Both workers made some of these leaves, with the one CA key they inherited.
    assert all(after[w] > before.get(w, 0) for w in ('{worker="0"}', '{worker="1"}')), after


def test_sigterm_lets_a_request_in_flight_finish(tmp_path: Path, upstream: Upstream,
                                                 test_ca_file: Path) -> None:  # fmt: skip
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["workers"] = 2
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    pids = worker_pids(p.proc.pid)
    assert len(pids) == 2
    # An event stream: the first event now, the second after 3 s.
    curl = subprocess.Popen(
        ["curl", "-sS", "-N", "--proxy", p.url, "--cacert", str(p.ca), "-H", "x-pause: 3",
         "-H", f"Authorization: Bearer {PH}", f"https://{API}:{upstream.port}/reflect?as=sse"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert curl.stdout is not None
        first = curl.stdout.readline()
        assert b'"n": 1' in first
        p.proc.send_signal(signal.SIGTERM)
        out, err = curl.communicate(timeout=30)
        assert curl.returncode == 0, err
        assert b'"n": 2' in out  # the request in flight was finished, not cut
        assert_no_secret(first, out)
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait()
    assert p.proc.wait(timeout=30) == 0, p.stderr_path.read_text()
    assert "egress: stopped" in p.stderr_path.read_text()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the proxy"
    # New connections are refused once it stopped.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=5).close()


def test_a_killed_worker_is_replaced(tmp_path: Path, upstream: Upstream,
                                     test_ca_file: Path) -> None:  # fmt: skip
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["workers"] = 2
    cfg["admin"] = {"port": 0, "drain_seconds": 0}
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        url = admin_url(p)
        assert curl_many(p, [f"https://{API}:{upstream.port}/before/{i}" for i in range(20)]) \
            == ["200"] * 20  # fmt: skip
        before = metric(get(url + "/metrics")[1], "egress_requests_total")
        old = worker_pids(p.proc.pid)
        os.kill(old[0], signal.SIGKILL)
        wait_for(lambda: "died unexpectedly" in p.stderr_path.read_text(), "the death logged")
        new = wait_for(lambda: (w := worker_pids(p.proc.pid)) and len(w) == 2 and old[0] not in w
                       and get(url + "/readyz")[0] == 200 and w, "a replacement")  # fmt: skip
        assert old[1] in new
        err = p.stderr_path.read_text()
        assert "worker 0" in err and "killed by SIGKILL" in err and "starting a replacement" in err
        # Still one CA, still serving, on both workers.
        statuses = curl_many(p, [f"https://{API}:{upstream.port}/after/{i}" for i in range(40)])
        assert statuses == ["200"] * 40
        text = get(url + "/metrics")[1]
        assert metric(text, "egress_worker_restarts_total") == {"": 1.0}
        # The dead worker's counts stay in the sums: counters never go down.
        key = '{decision="allow",reason="allowed"}'
        assert metric(text, "egress_requests_total")[key] == before[key] + 40
        assert metric(text, "egress_workers_ready") == {"": 2.0}
    finally:
        stop_and_check(p)


def test_workers_that_keep_dying_stop_the_proxy(tmp_path: Path, upstream: Upstream,
                                                test_ca_file: Path) -> None:  # fmt: skip
    """Fail closed: more than MAX_RESTARTS deaths within RESTART_WINDOW: exit 1, nothing left."""
    from egress.workers import MAX_RESTARTS

    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["workers"] = 2
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    killed: set[int] = set()
    try:
        while p.proc.poll() is None and len(killed) <= MAX_RESTARTS + 2:
            for pid in worker_pids(p.proc.pid):
                if pid not in killed:
                    killed.add(pid)
                    os.kill(pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
        assert p.proc.wait(timeout=30) == 1
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
    err = p.stderr_path.read_text()
    assert "died unexpectedly" in err and "stopping (fail closed)" in err
    assert "Traceback" not in err
    for pid in killed:
        assert not _alive(pid)


def test_audit_to_stdout_from_two_workers(tmp_path: Path, upstream: Upstream,
                                          test_ca_file: Path) -> None:  # fmt: skip
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["workers"] = 2
    cfg["audit"] = {"path": "stdout"}
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        n = 120
        urls = [f"https://{API}:{upstream.port}/out/{i}/{'y' * 1000}" for i in range(n)]
        assert curl_many(p, urls) == ["200"] * n
    finally:
        stop_and_check(p)
    raw = p.stdout_path.read_bytes()
    records = [json.loads(line) for line in raw.split(b"\n")[:-1]]
    assert sorted(int(r["path"].split("/")[2]) for r in records if r["path"].startswith("/out/")) \
        == list(range(n))  # fmt: skip


def test_workers_stop_when_the_parent_is_killed(tmp_path: Path, upstream: Upstream,
                                               test_ca_file: Path) -> None:  # fmt: skip
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["workers"] = 2
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    pids = worker_pids(p.proc.pid)
    assert len(pids) == 2
    p.proc.kill()
    p.proc.wait(timeout=10)
    try:
        wait_for(lambda: not any(_alive(pid) for pid in pids), "the orphaned workers to stop")
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    "value, message",
    [
        (0, "workers: 0 is not a number of proxy processes: give 1 or more"),
        (-2, "workers: -2 is not a number of proxy processes: give 1 or more"),
        ("two", "workers: must be a whole number of proxy processes such as 2, not 'two'"),
        (1.5, "workers: must be a whole number of proxy processes such as 2, not 1.5"),
        (True, "workers: must be a whole number of proxy processes such as 2, not True"),
        (1000, "workers: 1000 is too many (at most 256)"),
    ],
)
def test_bad_workers_values(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"workers": value}, "egress.yaml", Path("."))
    assert f"egress.yaml: {message}" in str(e.value)
    assert "leave it out for one per CPU" in str(e.value)


@pytest.mark.parametrize("value, workers", [(None, None), (1, 1), (4, 4)])
def test_good_workers_values(value: object, workers: int | None) -> None:
    assert parse({"workers": value}, "egress.yaml", Path(".")).workers == workers


def test_bad_workers_refuse_to_start(tmp_path: Path, upstream: Upstream,
                                     test_ca_file: Path) -> None:  # fmt: skip
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["workers"] = 0
    path = write_config(tmp_path, cfg)
    r = subprocess.run(egress_cmd("run", "--config", str(path)), capture_output=True, text=True,
                       env=proxy_env(), timeout=60)  # fmt: skip
    assert r.returncode == 2 and f"{path}: workers: 0 is not a number" in r.stderr
    r = subprocess.run(egress_cmd("run", "--config", str(path), "--workers", "x"),
                       capture_output=True, text=True, env=proxy_env(), timeout=60)  # fmt: skip
    assert r.returncode == 2 and "--workers: must be a whole number" in r.stderr
    assert "Traceback" not in r.stderr


# How many by default: the affinity mask, capped by a cgroup CPU limit rounded up.


def _cgroup(tmp: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp / "cgroup").write_text(proc)
    return root, tmp / "cgroup"


@pytest.mark.parametrize(
    "proc, files, limit",
    [
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),  # v2 in a container (cgroupns)
        ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "max 100000\n",
                                    "kubepods/pod1/cpu.max": "200000 100000\n"}, 2.0),  # pod limit
        ("0::/a\n", {"a/cpu.max": "50000 100000\n", "cpu.max": "400000 100000\n"}, 0.5),
        ("4:cpu,cpuacct:/docker/x\n", {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "300000\n",
                                       "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}, 3.0),
        ("4:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                               "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),  # v1, none
        ("0::/\n", {"cpu.max": "garbage\n"}, None),
    ],
)  # fmt: skip
def test_cgroup_cpu_limit(
    tmp_path: Path, proc: str, files: dict[str, str], limit: float | None
) -> None:
    root, proc_file = _cgroup(tmp_path, proc, files)
    assert cgroup_cpu_limit(root, proc_file) == limit


def test_default_workers_is_the_usable_cpus() -> None:
    n = available_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_the_example_sidecar_sets_its_workers_by_its_cpu_limit() -> None:
    """deploy/kubernetes: without a CPU limit egress would start one worker per node CPU."""
    import math

    import yaml

    docs = yaml.safe_load_all(
        (Path(__file__).parent.parent / "deploy/kubernetes/20-agent-pod.yaml").read_text()
    )
    pod = next(d for d in docs if d and d.get("kind") == "Pod")
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "egress")
    cpu = str(proxy["resources"]["limits"]["cpu"])
    cpus = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    assert math.ceil(cpus) == 1  # one worker, as docs/kubernetes.md says


WK_VALUE = "vault-workers-token-00000001"
WK_ROTATED = "vault-workers-token-ROTATED2"
CANARIES.update({WK_VALUE, WK_ROTATED})


def test_only_the_parent_talks_to_vault_and_rotation_reaches_every_worker(
    tmp_path: Path, vault: VaultServer, upstream: Upstream, test_ca_file: Path
) -> None:
    vault.kv2_put("agent/workers", {"token": WK_VALUE})
    vault.policy("egress-workers", 'path "secret/data/agent/workers" { capabilities = ["read"] }')
    token = vault.token(["egress-workers"])
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["workers"] = 2
    cfg["admin"] = {"port": 0, "drain_seconds": 0}
    cfg["vault"] = {"address": vault.address, "ca_file": str(vault.ca_file),
                    "auth": {"method": "token", "token_env": "T"}, "refresh_seconds": 1}  # fmt: skip
    cfg["secrets"][0]["source"] = {"vault": {"path": "agent/workers", "key": "token"}}
    p = start_proxy(write_config(tmp_path, cfg), tmp_path, proxy_env(T=token))
    try:
        url = admin_url(p)

        def seen(prefix: str, n: int) -> set[str]:
            upstream.recorder.clear()
            urls = [f"https://{API}:{upstream.port}/{prefix}/{i}" for i in range(n)]
            assert curl_many(p, urls) == ["200"] * n
            return {r.headers["authorization"] for r in upstream.requests}

        assert seen("v1", 30) == {f"Bearer {WK_VALUE}"}
        vault.kv2_put("agent/workers", {"token": WK_ROTATED})
        wait_for(lambda: seen("probe", 4) == {f"Bearer {WK_ROTATED}"}, "the rotated value")
        time.sleep(0.5)  # the push reaches every worker within a tick
        before = metric(get(url + "/metrics")[1], "egress_worker_requests")
        # New connections, spread over both workers: every one carries the new value.
        assert seen("v2", 40) == {f"Bearer {WK_ROTATED}"}
        after = metric(get(url + "/metrics")[1], "egress_worker_requests")
        assert all(after[w] > before[w] for w in before), (before, after)
        # A worker that dies renews, revokes and logs in nothing: the parent's token lives on.
        os.kill(worker_pids(p.proc.pid)[0], signal.SIGKILL)
        wait_for(lambda: len(worker_pids(p.proc.pid)) == 2 and get(url + "/readyz")[0] == 200,
                 "a replacement")  # fmt: skip
        assert seen("v3", 20) == {f"Bearer {WK_ROTATED}"}
    finally:
        vault.kv2_put("agent/workers", {"token": WK_VALUE})
        stop_and_check(p)
    err = p.stderr_path.read_text()
    # One Vault client in the whole run: the parent's refresher stopped once.
    assert len(re.findall(r"vault: \d+ calls in this run", err)) == 1
    assert "revoked" not in err
    out = p.outputs()
    assert WK_VALUE not in out and WK_ROTATED not in out
