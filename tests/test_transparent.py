"""Sidecar end to end: an agent namespace whose outbound traffic the real redirect rules send
to the real egress in transparent mode, and a recording upstream in another namespace.

The agent is curl run as an unprivileged user with no proxy setting at all; it only sources
the env file egress wrote into the shared agent directory. The proxy runs as root in the
agent namespace, and the rules exempt UID 0 (in a pod: UID 1337), as Istio's do.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.conftest import (
    SECRET,
    RunningProxy,
    assert_no_secret,
    egress_cmd,
    start_proxy,
    write_config,
)
from tests.netns import Pair, call_in, missing_tools, run
from tests.upstream import Upstream

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))

API = "api.svc.test"  # allowed, with a secret bound to it
DENIED = "denied.svc.test"  # resolves to the same upstream, not allowed
PLACEHOLDER = "egress-api_token-placeholder"
AGENT_UID = 65534  # nobody
PROXY_PORT = 15001
ADMIN_PORT = 15020


@dataclass
class Sidecar:
    pair: Pair
    proxy: RunningProxy
    tls: Upstream  # HTTPS on 443 (IPv4 and IPv6)
    plain: Upstream  # HTTP on 80
    side: Upstream  # HTTPS on 8443, a port the rules do not redirect
    udp: socket.socket  # UDP 443 in the upstream namespace
    agent_dir: Path
    backend: str

    def agent(self, script: str, timeout: float = 30) -> tuple[int, str, str]:
        """Run a shell script as the unprivileged agent in the agent namespace, with the
        agent env file sourced and no proxy variable anywhere."""
        env_file = self.agent_dir / "egress.env"
        cmd = self.pair.in_agent(
            "setpriv", f"--reuid={AGENT_UID}", f"--regid={AGENT_UID}", "--clear-groups",
            "env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "sh", "-c",
            f"set -a; . {env_file}; set +a; {script}",
        )  # fmt: skip
        done = run(*cmd, check=False, timeout=timeout)
        assert_no_secret(done.stdout, done.stderr)
        return done.returncode, done.stdout, done.stderr

    def curl(self, args: str) -> tuple[int, str, str]:
        return self.agent(f"curl -sS --max-time 10 {args}")

    def audit_since(self, n: int) -> list[dict[str, object]]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            records = self.proxy.audit()[n:]
            if records:
                return records
            time.sleep(0.05)
        return []


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def sidecar(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    test_ca: trustme.CA, test_ca_file: Path,
) -> Iterator[Sidecar]:  # fmt: skip
    backend = request.param
    if backend == "nftables" and shutil.which("nft") is None:
        pytest.skip("needs nft (.ci/run installs nftables)")
    tmp = tmp_path_factory.mktemp(f"transparent-{backend}")
    pair = Pair.make()
    pair.set_hosts({API: [pair.upstream_ip, pair.upstream_ip6], DENIED: [pair.upstream_ip]})
    # The agent (another UID) must read the shared directory: not under pytest's 0700 tmp.
    agent_dir = Path(tempfile.mkdtemp(prefix="egress-agent-"))
    agent_dir.chmod(0o755)
    servers: list[Upstream] = []
    udp: socket.socket | None = None
    proxy: RunningProxy | None = None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        test_ca.issue_cert(API, DENIED, pair.upstream_ip, pair.upstream_ip6).configure_cert(ctx)
        for tls, port in ((ctx, 443), (None, 80), (ctx, 8443)):
            up = call_in(pair.upstream, lambda t=tls, p=port: Upstream(t, host="::", port=p))
            servers.append(up.__enter__())
        udp = call_in(pair.upstream, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        udp.bind(("0.0.0.0", 443))
        udp.setblocking(False)
        run(*pair.in_agent(*egress_cmd("redirect", "apply", "--backend", backend, "--proxy-port",
                                       str(PROXY_PORT), "--proxy-uid", "0", "--inbound-ports", str(ADMIN_PORT))))  # fmt: skip
        cfg = {
            "listen": {"mode": "transparent", "port": PROXY_PORT},
            "admin": {"host": "0.0.0.0", "port": ADMIN_PORT},  # the kubelet probes the pod IP
            "agent": {"dir": str(agent_dir)},
            "ca": {"cert_path": str(agent_dir / "egress-ca.pem")},
            "upstream": {
                "ca_files": [str(test_ca_file)],
                "resolve": {API: [pair.upstream_ip, pair.upstream_ip6], DENIED: [pair.upstream_ip]},
                "allow_private": [pair.net, pair.net6],
                "dns": "static",
            },
            "allow": [
                {"host": API, "ports": [443]},
                {"host": API, "ports": [80], "schemes": ["http"]},
            ],
            "secrets": [
                {
                    "name": "api_token",
                    "source": {"env": "EGRESS_TEST_API_TOKEN"},
                    "hosts": [API],
                    "env": "API_TOKEN",
                }
            ],
            "audit": {"path": str(tmp / "audit.jsonl")},
        }
        proxy = start_proxy(write_config(tmp, cfg), tmp, prefix=tuple(pair.in_agent()))
        yield Sidecar(pair, proxy, servers[0], servers[1], servers[2], udp, agent_dir, backend)
        code = proxy.stop()
        assert code == 0, proxy.stderr_path.read_text()
        assert "Traceback" not in proxy.stderr_path.read_text()
    finally:
        if proxy is not None and proxy.proc.poll() is None:
            proxy.proc.kill()
        for up in servers:
            up.__exit__(None, None, None)
        if udp is not None:
            udp.close()
        pair.remove()
        shutil.rmtree(agent_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _clear(request: pytest.FixtureRequest) -> None:
    if "sidecar" in request.fixturenames:
        s: Sidecar = request.getfixturevalue("sidecar")
        for up in (s.tls, s.plain, s.side):
            up.recorder.clear()


def test_allowed_https_gets_the_secret_injected(sidecar: Sidecar) -> None:
    n = len(sidecar.proxy.audit())
    code, out, err = sidecar.curl(f'-H "Authorization: Bearer $API_TOKEN" https://{API}/v1/me')
    assert code == 0, err
    # The upstream saw the real secret; the agent saw only the placeholder (scrubbed echo).
    assert sidecar.tls.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    assert json.loads(out)["headers"]["authorization"] == f"Bearer {PLACEHOLDER}"
    record = sidecar.audit_since(n)[-1]
    assert record["decision"] == "allow" and record["host"] == API
    assert record["secrets"] == ["api_token"] and record["scheme"] == "https"


@pytest.mark.parametrize(
    "flags, version, family",
    # This upstream speaks HTTP/1.1 only: an agent that asks for h2 is offered HTTP/1.1,
    # never an h2 that egress would translate (tests/test_transparent_identity.py has the
    # h2 upstream).
    [("-4 --http2", "1.1", 4), ("-4 --http1.1", "1.1", 4), ("-6 --http2", "1.1", 6), ("-6 --http1.1", "1.1", 6)],
)  # fmt: skip
def test_http2_http1_ipv4_and_ipv6_are_intercepted(
    sidecar: Sidecar, flags: str, version: str, family: int
) -> None:
    code, out, err = sidecar.curl(
        f"{flags} -w '\\n%{{http_version}} %{{remote_ip}}' "
        f'-H "Authorization: Bearer $API_TOKEN" https://{API}/v1/me'
    )
    assert code == 0, err
    got_version, remote = out.rsplit("\n", 1)[1].split()
    assert got_version == version
    # The agent believes it talks to the upstream's address; the kernel sent it to egress.
    assert remote == (sidecar.pair.upstream_ip if family == 4 else sidecar.pair.upstream_ip6)
    assert sidecar.tls.requests[-1].headers["authorization"] == f"Bearer {SECRET}"


def test_denied_host_gets_a_tls_access_denied_alert_and_an_audit_record(sidecar: Sidecar) -> None:
    n = len(sidecar.proxy.audit())
    code, _, err = sidecar.curl(f"https://{DENIED}/")
    assert code == 35, err  # CURLE_SSL_CONNECT_ERROR
    assert "access denied" in err.lower()
    assert sidecar.tls.connections == 0
    record = sidecar.audit_since(n)[-1]
    assert (record["event"], record["decision"], record["reason"]) == (
        "tunnel",
        "deny",
        "host_not_allowed",
    )
    assert record["host"] == DENIED and record["port"] == 443
    assert "allow" in str(record["detail"])  # says what to change


@pytest.mark.parametrize(
    "target, reason",
    [
        ("https://{ip}/", "ip_literal"),  # no SNI: decided on the address, not allowed
        ("--noproxy '*' https://{ip}/", "ip_literal"),
        ("-k https://{ip}/", "ip_literal"),
    ],
)
def test_the_upstream_cannot_be_reached_directly_by_ip(
    sidecar: Sidecar, target: str, reason: str
) -> None:
    n = len(sidecar.proxy.audit())
    code, _, err = sidecar.curl(target.format(ip=sidecar.pair.upstream_ip))
    assert code == 35, err
    assert sidecar.tls.connections == 0
    assert sidecar.audit_since(n)[-1]["reason"] == reason


@pytest.mark.parametrize("family", ["4", "6"])
def test_ports_that_are_not_redirected_are_dropped(sidecar: Sidecar, family: str) -> None:
    ip = sidecar.pair.upstream_ip if family == "4" else f"[{sidecar.pair.upstream_ip6}]"
    code, _, err = sidecar.agent(f"curl -sS -k --connect-timeout 2 https://{ip}:8443/")
    assert code == 28, err  # timed out: the SYN was dropped
    assert sidecar.side.connections == 0
    # Control: the proxy's own UID is exempt, so the port is reachable from the namespace.
    done = run(*sidecar.pair.in_agent("curl", "-sS", "-k", "--max-time", "5", f"https://{ip}:8443/"),
               check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sidecar.side.connections == 1


def _udp_received(sock: socket.socket) -> list[bytes]:
    time.sleep(0.5)
    got = []
    while True:
        try:
            got.append(sock.recv(100))
        except BlockingIOError:
            return got


def test_udp_443_is_dropped(sidecar: Sidecar) -> None:
    ip = sidecar.pair.upstream_ip
    _udp_received(sidecar.udp)
    sidecar.agent(f"printf quic-from-agent > /dev/udp/{ip}/443 || true")
    assert _udp_received(sidecar.udp) == []
    # Control: the same datagram from the proxy's UID arrives, so the receiver works.
    run(*sidecar.pair.in_agent("bash", "-c", f"printf from-proxy-uid > /dev/udp/{ip}/443"))
    assert _udp_received(sidecar.udp) == [b"from-proxy-uid"]


def test_plain_http_is_decided_on_the_host_header_and_never_injected(sidecar: Sidecar) -> None:
    code, out, err = sidecar.curl(f"-w '\\n%{{http_code}}' http://{API}/plain")
    assert code == 0 and out.endswith("\n200"), err
    assert sidecar.plain.requests[-1].path == "/plain"
    n = len(sidecar.proxy.audit())
    code, out, err = sidecar.curl(
        f"-w '\\n%{{http_code}}' -H \"Authorization: Bearer $API_TOKEN\" http://{API}/plain"
    )
    assert out.endswith("\n403"), (code, out, err)
    assert "plaintext_injection" in out and "transparent" in out
    assert len(sidecar.plain.requests) == 1  # the second request was not sent
    assert sidecar.audit_since(n)[-1]["reason"] == "plaintext_injection"


@pytest.mark.parametrize(
    "args, reason",
    [
        # HTTPS: the Host header must name the SNI's host
        (f"-H 'Host: {DENIED}' https://{API}/", "host_header_mismatch"),
        # plain HTTP: a host that is not allowed, on an address that serves an allowed one
        (f"http://{DENIED}/", "host_not_allowed"),
        ("http://{ip}/", "ip_literal"),
    ],
)
def test_identity_and_allowlist_denials_answer_403(
    sidecar: Sidecar, args: str, reason: str
) -> None:
    code, out, err = sidecar.curl(
        f"-w '\\n%{{http_code}}' {args.format(ip=sidecar.pair.upstream_ip)}"
    )
    assert code == 0, err
    assert out.endswith("\n403") and reason in out, out
    assert sidecar.tls.requests == [] and sidecar.plain.requests == []


def test_plain_http_connection_stays_on_its_first_host(sidecar: Sidecar) -> None:
    # Two requests on one connection: the second names another host in its Host header.
    code, out, err = sidecar.curl(
        f"-w '\\n%{{http_code}} %{{num_connects}}\\n' http://{API}/one --next "
        f"-w '\\n%{{http_code}} %{{num_connects}}\\n' -H 'Host: {DENIED}' http://{API}/two"
    )
    assert code == 0, err
    # 200 on a new connection, then 403 on the same one (no new connect)
    assert "\n200 1\n" in out and out.endswith("\n403 0\n"), out
    assert "host_header_mismatch" in out
    assert [r.path for r in sidecar.plain.requests] == ["/one"]


def test_the_original_destination_is_never_dialled_on_the_agents_word(sidecar: Sidecar) -> None:
    """The agent connects to an address that is not the name's: egress dials the address it
    resolved for the SNI, never the one the agent picked."""
    bogus = sidecar.pair.agent_ip  # the agent's own address: nothing listens on 443 there
    code, _, err = sidecar.curl(
        f'--resolve {API}:443:{bogus} -H "Authorization: Bearer $API_TOKEN" https://{API}/v1/me'
    )
    assert code == 0, err
    assert sidecar.tls.requests[-1].headers["authorization"] == f"Bearer {SECRET}"


def test_metrics_count_redirected_decisions(sidecar: Sidecar) -> None:
    sidecar.curl(f"https://{DENIED}/")
    done = run(*sidecar.pair.in_agent("curl", "-sS", f"http://127.0.0.1:{ADMIN_PORT}/metrics"))
    line = next(
        ln for ln in done.stdout.splitlines()
        if ln.startswith("egress_requests_total{") and 'reason="host_not_allowed"' in ln
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) >= 1
    ready = run(*sidecar.pair.in_agent("curl", "-sS", f"http://127.0.0.1:{ADMIN_PORT}/readyz"))
    assert "ready" in ready.stdout


def test_the_agent_directory_holds_no_private_key_and_no_secret(sidecar: Sidecar) -> None:
    files = sorted(p.name for p in sidecar.agent_dir.iterdir())
    assert files == ["ca-bundle.pem", "egress-ca.pem", "egress.env"]
    for f in sidecar.agent_dir.iterdir():
        assert b"PRIVATE KEY" not in f.read_bytes()
    assert SECRET not in (sidecar.agent_dir / "egress.env").read_text()


def test_non_http_to_a_redirected_port_is_closed_and_audited_with_its_destination(
    sidecar: Sidecar,
) -> None:
    n = len(sidecar.proxy.audit())
    ip = sidecar.pair.upstream_ip
    sidecar.agent(
        f"printf 'SSH-2.0-OpenSSH_9.2\\r\\n' | timeout 5 bash -c 'cat > /dev/tcp/{ip}/443'"
    )
    record = sidecar.audit_since(n)[-1]
    assert (record["event"], record["reason"]) == ("tunnel", "non_http_protocol")
    assert (record["host"], record["port"]) == (ip, 443)
    assert sidecar.tls.connections == 0


def test_only_the_admin_port_answers_inbound_connections(sidecar: Sidecar) -> None:
    """The kubelet probes egress's admin port on the pod IP; a port the agent listens on
    cannot answer anyone (no inbound channel around the proxy)."""
    import threading

    agent_ip = sidecar.pair.agent_ip
    probe = call_in(
        sidecar.pair.upstream, lambda: socket.create_connection((agent_ip, ADMIN_PORT), 5)
    )
    probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
    assert probe.recv(100).startswith(b"HTTP/1.1 200")
    probe.close()
    # The agent's listener answers "exfil" until it is told "quit" (over loopback, below);
    # `timeout` bounds it if the test fails first.
    listener = threading.Thread(target=sidecar.agent, args=(
        "timeout 6 /usr/bin/python3 -c 'import socket; s=socket.create_server((\"0.0.0.0\", 9000))\n"
        "while True:\n c, _ = s.accept(); c.sendall(b\"exfil\"); q = c.recv(4); c.close()\n"
        " if q == b\"quit\": break'",
    ))  # fmt: skip
    listener.start()

    def fetch(host: str, timeout: float = 3, send: bytes = b"") -> bytes:
        with socket.create_connection((host, 9000), timeout) as c:
            got = c.recv(10)
            c.sendall(send)
            return got

    deadline = time.monotonic() + 5
    while True:  # control: the agent's listener is up (from inside the pod, over loopback)
        try:
            assert call_in(sidecar.pair.agent, lambda: fetch("127.0.0.1")) == b"exfil"
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the agent's listener did not start"
            time.sleep(0.1)
    with pytest.raises(OSError):  # from outside: the SYN-ACK never leaves, so it times out
        call_in(sidecar.pair.upstream, lambda: fetch(agent_ip, 1.5))
    assert call_in(sidecar.pair.agent, lambda: fetch("127.0.0.1", send=b"quit")) == b"exfil"
    listener.join()
