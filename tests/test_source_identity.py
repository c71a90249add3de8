"""Agents known by their source addresses: transparent mode on a shared node
(identity.source_addresses; docs/agents.md: Source addresses).

The node is a network namespace running one egress; each agent is a namespace of its own,
linked to the node by a veth pair on a /30, routed through it. The node's rules are the
recipe in docs/agents.md: PREROUTING REDIRECT of the agents' TCP 80/443 to egress, no
forwarding, and strict reverse-path filtering so that no agent can send from another's
address. The upstream is a recording HTTPS server in a namespace behind the node.
"""

from __future__ import annotations

import shutil
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from egress.identity import source_agent
from tests.conftest import SECRET, RunningProxy, assert_no_secret, start_proxy, write_config
from tests.netns import call_in, missing_tools, run
from tests.upstream import Upstream

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))

API = "api.node.test"
PLACEHOLDER = "egress-api_token-placeholder"
PORT = 15001


@dataclass
class Node:
    tag: str
    node: str  # egress's namespace
    upstream_ns: str
    agents: dict[str, str]  # name -> namespace
    addresses: dict[str, str]  # name -> the agent's own address
    upstream_ip: str
    proxy: RunningProxy
    upstream: Upstream
    ca: Path

    def curl(self, agent: str, args: str, timeout: float = 20) -> tuple[int, str, str]:
        done = run("ip", "netns", "exec", self.agents[agent], "sh", "-c",
                   f"curl -sS --max-time 8 --cacert {self.ca} {args}", check=False, timeout=timeout)  # fmt: skip
        assert_no_secret(done.stdout, done.stderr)
        return done.returncode, done.stdout, done.stderr

    def records(self, n: int) -> list[dict[str, object]]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if len(found := self.proxy.audit()[n:]) > 0:
                return found
            time.sleep(0.05)
        return []


def _node_rules(interfaces: list[str], addresses: list[str]) -> str:
    """The docs' recipe, for these agent-facing interfaces and their agents' addresses."""
    lines = ["*raw"]
    for dev, addr in zip(interfaces, addresses, strict=True):
        lines.append(f"-A PREROUTING -i {dev} ! -s {addr} -j DROP")
    lines += ["COMMIT", "*nat"]
    for dev in interfaces:
        lines.append(
            f"-A PREROUTING -i {dev} -p tcp -m multiport --dports 80,443 -j REDIRECT --to-ports {PORT}"
        )
    lines += ["COMMIT", "*filter", ":FORWARD DROP [0:0]"]
    for dev in interfaces:
        lines.append(f"-A INPUT -i {dev} -p tcp --dport {PORT} -j ACCEPT")
        lines.append(f"-A INPUT -i {dev} -j DROP")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA,
                test_ca_file: Path) -> Iterator[Node]:  # fmt: skip
    tag = uuid.uuid4().hex[:5]
    o = int(tag[:2], 16) % 200 + 20
    node, up = f"egN{tag}", f"egUp{tag}"
    agents = {name: f"eg{name[:3]}{tag}" for name in ("researcher", "reviewer", "stranger")}
    addresses: dict[str, str] = {}
    made = [node, up, *agents.values()]
    tmp = tmp_path_factory.mktemp("shared-node")
    servers: list[Upstream] = []
    proxy = None
    try:
        for ns in made:
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
        run("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.conf.default.rp_filter=1")
        interfaces = []
        for i, (name, ns) in enumerate(agents.items()):
            inside, outside = f"ea{i}{tag}", f"en{i}{tag}"
            run("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
            run("ip", "link", "set", inside, "netns", ns)
            run("ip", "link", "set", outside, "netns", node)
            gw, me = f"10.236.{o}.{4 * i + 1}", f"10.236.{o}.{4 * i + 2}"
            run("ip", "-n", node, "addr", "add", f"{gw}/30", "dev", outside)
            run("ip", "-n", node, "link", "set", outside, "up")
            run(
                "ip", "netns", "exec", node, "sysctl", "-qw", f"net.ipv4.conf.{outside}.rp_filter=1"
            )
            run("ip", "-n", ns, "addr", "add", f"{me}/30", "dev", inside)
            run("ip", "-n", ns, "link", "set", inside, "up")
            run("ip", "-n", ns, "route", "add", "default", "via", gw)
            addresses[name] = me
            interfaces.append(outside)
        upstream_ip = f"10.237.{o}.2"
        run("ip", "link", "add", f"eu{tag}", "type", "veth", "peer", "name", f"ev{tag}")
        run("ip", "link", "set", f"eu{tag}", "netns", node)
        run("ip", "link", "set", f"ev{tag}", "netns", up)
        run("ip", "-n", node, "addr", "add", f"10.237.{o}.1/24", "dev", f"eu{tag}")
        run("ip", "-n", up, "addr", "add", f"{upstream_ip}/24", "dev", f"ev{tag}")
        run("ip", "-n", node, "link", "set", f"eu{tag}", "up")
        run("ip", "-n", up, "link", "set", f"ev{tag}", "up")
        rules = tmp / "rules"
        rules.write_text(_node_rules(interfaces, list(addresses.values())))
        run("ip", "netns", "exec", node, "iptables-restore", str(rules))
        for ns in agents.values():  # names for curl, never the machine's resolver
            d = Path("/etc/netns") / ns
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text(f"127.0.0.1 localhost\n{upstream_ip} {API}\n")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        test_ca.issue_cert(API).configure_cert(ctx)
        servers.append(call_in(up, lambda: Upstream(ctx, host="0.0.0.0", port=443)).__enter__())
        agent_dir = tmp / "agent"
        cfg = {
            "listen": {"mode": "transparent", "host": "0.0.0.0", "port": PORT},
            "ca": {"cert_path": str(agent_dir / "egress-ca.pem")},
            "upstream": {"ca_files": [str(test_ca_file)], "resolve": {API: upstream_ip},
                         "allow_private": [f"10.237.{o}.0/24"], "dns": "static"},  # fmt: skip
            "allow": [{"host": API}],
            "identity": {"source_addresses": True},
            "agents": [
                {"name": "researcher", "source_addresses": [addresses["researcher"]], "secrets": ["api_token"]},
                {"name": "reviewer", "source_addresses": [f"{addresses['reviewer']}/32"]},
            ],
            "secrets": [{"name": "api_token", "source": {"env": "EGRESS_TEST_API_TOKEN"}, "hosts": [API]}],
            "audit": {"path": str(tmp / "audit.jsonl")},
            "workers": 1,
        }  # fmt: skip
        proxy = start_proxy(write_config(tmp, cfg), tmp, prefix=("ip", "netns", "exec", node))
        agent_dir.chmod(0o755)
        yield Node(
            tag,
            node,
            up,
            agents,
            addresses,
            upstream_ip,
            proxy,
            servers[0],
            agent_dir / "egress-ca.pem",
        )
        code = proxy.stop()
        assert code == 0, proxy.stderr_path.read_text()
        assert "Traceback" not in proxy.stderr_path.read_text()
    finally:
        if proxy is not None and proxy.proc.poll() is None:
            proxy.proc.kill()
        for s in servers:
            s.__exit__(None, None, None)
        for ns in made:
            run("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def test_each_agent_is_its_address_and_gets_only_its_own(shared_node: Node) -> None:
    n = shared_node
    up = n.upstream
    up.recorder.clear()
    start = len(n.proxy.audit())
    code, out, err = n.curl(
        "researcher", f"-H 'Authorization: Bearer {PLACEHOLDER}' https://{API}/a"
    )
    assert code == 0, err
    assert [r.headers["authorization"] for r in up.requests] == [f"Bearer {SECRET}"]
    # reviewer reaches the shared host but was granted no secret: refused before the upstream.
    up.recorder.clear()
    code, out, err = n.curl(
        "reviewer",
        f"-o /dev/null -w '%{{http_code}}' -H 'Authorization: Bearer {PLACEHOLDER}' https://{API}/b",
    )
    assert out == "403", (out, err)
    assert up.requests == []
    records = [r for r in n.records(start) if r.get("event") == "request"]
    assert [(r["agent"], r["reason"]) for r in records] == [
        ("researcher", "allowed"),
        ("reviewer", "secret_not_granted"),
    ]
    assert records[0]["client"].startswith(n.addresses["researcher"] + ":")  # type: ignore[union-attr]


def test_an_address_of_no_agent_is_refused_and_audited(shared_node: Node) -> None:
    n = shared_node
    n.upstream.recorder.clear()
    start = len(n.proxy.audit())
    code, _, err = n.curl("stranger", f"https://{API}/")
    assert code == 35, err  # the TLS handshake is refused (access denied)
    assert n.upstream.recorder.connections == 0
    record = n.records(start)[-1]
    assert (record["decision"], record["reason"], record["agent"]) == (
        "deny",
        "proxy_auth_required",
        None,
    )


def test_an_agent_cannot_send_from_another_agents_address(shared_node: Node) -> None:
    """The table is only as good as the network's anti-spoofing: the node's raw rule (and
    strict reverse-path filtering) drops what an agent's interface carries from another's
    address."""
    n = shared_node
    ns = n.agents["researcher"]
    reviewer = n.addresses["reviewer"]
    dev = (
        run("ip", "-n", ns, "-o", "link", "show", "type", "veth")
        .stdout.split(":")[1]
        .strip()
        .split("@")[0]
    )
    run("ip", "-n", ns, "addr", "add", f"{reviewer}/32", "dev", dev)
    try:
        n.upstream.recorder.clear()
        start = len(n.proxy.audit())
        code, _, err = n.curl(
            "researcher", f"--interface {reviewer} --max-time 1.5 https://{API}/spoofed", timeout=10
        )
        assert code == 28, err  # no answer: dropped on the node, never reached egress
        assert n.upstream.recorder.connections == 0
        assert n.proxy.audit()[start:] == []
    finally:
        run("ip", "-n", ns, "addr", "del", f"{reviewer}/32", "dev", dev, check=False)


SOURCES = [
    ("10.0.0.5", "a"),
    ("::ffff:10.0.0.5", "a"),  # a dual-stack socket's view of an IPv4 peer
    ("10.0.1.7", "b"),
    ("10.0.1.16", None),
    ("fd00::1%eth0", None),  # a zone: link-scoped, no one's
    ("fe80::aa", None),  # link-local: the same address on every agent's link
    ("fe80::aa%veth-a", None),
    ("fd00::2", None),
    ("not-an-address", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("address", "agent"), SOURCES)
def test_source_lookup(address: str | None, agent: str | None) -> None:
    import ipaddress

    table = (
        (ipaddress.ip_network("10.0.0.5/32"), "a"),
        (ipaddress.ip_network("10.0.1.0/28"), "b"),
        (ipaddress.ip_network("fd00::1/128"), "c"),
        (ipaddress.ip_network("fe80::aa/128"), "d"),  # refused by the config; inert even so
    )
    assert source_agent(address, table) == agent  # type: ignore[arg-type]


def _cfg(**change: object) -> dict[str, object]:
    cfg: dict[str, object] = {
        "listen": {"mode": "transparent", "host": "0.0.0.0"},
        "identity": {"source_addresses": True},
        "agents": [
            {"name": "a", "source_addresses": ["10.0.0.2"]},
            {"name": "b", "source_addresses": ["10.0.0.4/30"]},
        ],  # fmt: skip
    }
    cfg.update(change)
    return cfg


BAD = [
    ("explicit mode", _cfg(listen={"host": "127.0.0.1"}), "identity.source_addresses", "transparent mode"),
    ("overlap", _cfg(agents=[{"name": "a", "source_addresses": ["10.0.0.0/29"]},
                             {"name": "b", "source_addresses": ["10.0.0.4/30"]}]),
     "agents[1].source_addresses", "overlaps 10.0.0.0/29 of agent 'a'"),
    ("none for an agent", _cfg(agents=[{"name": "a"}]), "agents[0].source_addresses", "needs its source"),
    ("host bits", _cfg(agents=[{"name": "a", "source_addresses": ["10.0.0.1/24"]}]),
     "agents[0].source_addresses[0]", "host bits"),
    ("mapped IPv6", _cfg(agents=[{"name": "a", "source_addresses": ["::ffff:10.0.0.1"]}]),
     "agents[0].source_addresses[0]", "as IPv4"),
    ("without the identity", _cfg(identity={"fixed": "a"}, agents=[{"name": "a", "source_addresses": ["10.0.0.1"]}]),
     "agents[0].source_addresses", "read only with identity.source_addresses"),
    ("link-local", _cfg(agents=[{"name": "a", "source_addresses": ["fe80::aa"]}]),
     "agents[0].source_addresses[0]", "link-local"),
    ("link-local v4", _cfg(agents=[{"name": "a", "source_addresses": ["169.254.1.2"]}]),
     "agents[0].source_addresses[0]", "link-local"),
    ("loopback", _cfg(agents=[{"name": "a", "source_addresses": ["127.0.0.1"]}]),
     "agents[0].source_addresses[0]", "loopback"),
    ("everything", _cfg(agents=[{"name": "a", "source_addresses": ["0.0.0.0/0"]}]),
     "agents[0].source_addresses[0]", "unspecified"),
    ("multicast", _cfg(agents=[{"name": "a", "source_addresses": ["224.0.0.0/4"]}]),
     "agents[0].source_addresses[0]", "multicast"),
    ("too wide", _cfg(agents=[{"name": "a", "source_addresses": ["10.0.0.0/8"]}]),
     "agents[0].source_addresses[0]", "too wide"),
    ("a shared node without it", {"listen": {"mode": "transparent", "host": "0.0.0.0"}}, "listen.host",
     "identify agents by identity.source_addresses"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "cfg", "key", "said"), BAD, ids=[b[0] for b in BAD])
def test_bad_configs_name_the_key(
    tmp_path: Path, what: str, cfg: dict[str, object], key: str, said: str
) -> None:
    from egress.config import parse
    from egress.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse(cfg, str(tmp_path / "egress.yaml"), tmp_path)
    assert key in str(e.value) and said in str(e.value), str(e.value)


def test_a_good_config_builds_the_table(tmp_path: Path) -> None:
    from egress.config import parse
    from egress.policyset import build_policy

    policy = build_policy(parse(_cfg(), str(tmp_path / "egress.yaml"), tmp_path), None)
    assert [(str(n), a) for n, a in policy.sources] == [("10.0.0.2/32", "a"), ("10.0.0.4/30", "b")]
