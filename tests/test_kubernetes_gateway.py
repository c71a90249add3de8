"""The shared gateway (deploy/kubernetes/gateway/, docs/gateway.md).

Offline: the manifests' wiring (ports, selectors, probes, budgets, volumes, tokens, the
fences) and the ConfigMap's config read by egress's own loader (the schema itself is
checked with every manifest in tests/test_kubernetes.py). Then the gateway as deployed:
that config, pointed at loopback and a real OpenBao, run as two replicas behind one
address that spreads connections like a Service; agents that trust only the PKI issuer
and present their own tokens.
"""

from __future__ import annotations

import copy
import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from egress import config
from egress.proxy import IN_FLIGHT_GRACE
from tests.conftest import (
    API,
    OTHER,
    RunningProxy,
    proxy_env,
    start_proxy,
    write_config,
)
from tests.test_ca_pki import _mount_root, _policy
from tests.upstream import Upstream
from tests.vault_server import VaultServer

GATEWAY = Path(__file__).parent.parent / "deploy" / "kubernetes" / "gateway"
DOCS = {
    (d["kind"], d["metadata"]["name"]): d
    for p in sorted(GATEWAY.glob("*.yaml"))
    for d in yaml.safe_load_all(p.read_text())
    if d
}
NAMESPACE = DOCS[("Namespace", "egress-gateway")]
CONFIG_MAP = DOCS[("ConfigMap", "egress-gateway-config")]
DEPLOYMENT = DOCS[("Deployment", "egress-gateway")]
SERVICE = DOCS[("Service", "egress-gateway")]
HPA = DOCS[("HorizontalPodAutoscaler", "egress-gateway")]
PDB = DOCS[("PodDisruptionBudget", "egress-gateway")]
NP_CLIENTS = DOCS[("NetworkPolicy", "gateway-clients")]
NP_DEFAULT_DENY = DOCS[("NetworkPolicy", "agents-default-deny")]
NP_GATEWAY = DOCS[("NetworkPolicy", "egress-gateway")]
AGENT_POD = DOCS[("Pod", "researcher")]
POD_SPEC = DEPLOYMENT["spec"]["template"]["spec"]
(EGRESS,) = POD_SPEC["containers"]
(AGENT,) = AGENT_POD["spec"]["containers"]
POD_LABELS = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]


def _config(tmp: Path) -> config.Config:
    path = tmp / "egress.yaml"
    path.write_text(CONFIG_MAP["data"]["egress.yaml"])
    return config.load(path)


def _port(container: dict[str, Any], name: str) -> int:
    (p,) = [p for p in container["ports"] if p["name"] == name]
    return int(p["containerPort"])


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return set(selector["matchLabels"].items()) <= set(labels.items())


def test_the_config_is_a_gateway_config(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert cfg.listen_mode == "explicit" and cfg.listen_host == "0.0.0.0"
    assert cfg.identity is not None and cfg.identity.proxy_authorization
    assert cfg.ca_vault_pki is not None and cfg.vault is not None
    assert cfg.vault.auth.method == "kubernetes"
    assert cfg.reload.watch and cfg.audit_path == "stdout" and cfg.audit_format == "ocsf"
    # The ConfigMap holds nothing an agent could use: tokens as digests only, and the
    # example's digests match no token (all zeros, then 1).
    raw = yaml.safe_load(CONFIG_MAP["data"]["egress.yaml"])
    for agent in raw["agents"]:
        assert set(agent["token"]) == {"sha256"}
        assert int(agent["token"]["sha256"], 16) < 16
    assert [a.name for a in cfg.agents] == ["researcher", "reviewer"]


def test_ports_probes_and_the_service_agree(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert cfg.admin is not None and cfg.admin.host == "0.0.0.0"
    assert _port(EGRESS, "proxy") == cfg.listen_port
    assert _port(EGRESS, "admin") == cfg.admin.port
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/healthz")):  # fmt: skip
        assert EGRESS[probe]["httpGet"] == {"path": path, "port": "admin"}
    ports = {p["name"]: p for p in SERVICE["spec"]["ports"]}
    assert ports["proxy"]["targetPort"] == "proxy" and ports["admin"]["targetPort"] == "admin"
    assert _selects({"matchLabels": SERVICE["spec"]["selector"]}, POD_LABELS)
    # The agent's proxy URL is the Service's name, namespace and port.
    for var in ("HTTPS_PROXY", "HTTP_PROXY"):
        (env,) = [e for e in AGENT["env"] if e["name"] == var]
        url = urlsplit(env["value"])
        assert (
            url.hostname
            == f"{SERVICE['metadata']['name']}.{SERVICE['metadata']['namespace']}.svc.cluster.local"
        )
        assert url.port == ports["proxy"]["port"]
        assert url.username == AGENT_POD["metadata"]["name"]  # an agent of the config
        assert url.password == "$(EGRESS_PROXY_TOKEN)"
    assert AGENT_POD["metadata"]["name"] in [a.name for a in cfg.agents]


def test_reload_reaches_every_replica_and_shutdown_fits_its_budget(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    mounts = {m["name"]: m for m in EGRESS["volumeMounts"]}
    volumes = {v["name"]: v for v in POD_SPEC["volumes"]}
    # A folder mount: the kubelet's ..data swap reaches it; a subPath mount never changes.
    assert "subPath" not in mounts["config"]
    assert volumes["config"]["configMap"]["name"] == CONFIG_MAP["metadata"]["name"]
    assert EGRESS["args"] == ["run", "--config", f"{mounts['config']['mountPath']}/egress.yaml"]
    assert cfg.admin is not None
    assert POD_SPEC["terminationGracePeriodSeconds"] > cfg.admin.drain_seconds + IN_FLIGHT_GRACE
    rolling = DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_autoscaling_and_the_disruption_budget_fit_the_deployment() -> None:
    ref = HPA["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])
    assert (
        HPA["metadata"]["namespace"]
        == DEPLOYMENT["metadata"]["namespace"]
        == PDB["metadata"]["namespace"]
    )
    assert DEPLOYMENT["spec"]["replicas"] == HPA["spec"]["minReplicas"] >= 2
    assert PDB["spec"]["minAvailable"] < HPA["spec"]["minReplicas"]  # a node drain can proceed
    assert _selects(PDB["spec"]["selector"], POD_LABELS)
    assert _selects(DEPLOYMENT["spec"]["selector"], POD_LABELS)
    (metric,) = HPA["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # CPU utilization is a share of the request: docs/gateway.md's capacity per replica
    # holds where the request is the limit (the CPUs egress sizes its workers by).
    assert EGRESS["resources"]["requests"]["cpu"] == EGRESS["resources"]["limits"]["cpu"] == "2"


def test_files_tokens_and_security_contexts(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    mounts = {m["name"]: m for m in EGRESS["volumeMounts"]}
    volumes = {v["name"]: v for v in POD_SPEC["volumes"]}
    assert str(cfg.ca_cert_path).startswith(mounts["egress-files"]["mountPath"] + "/")
    assert (
        mounts["egress-private"]["mountPath"] == "/tmp" and "emptyDir" in volumes["egress-private"]
    )
    (source,) = volumes["vault-token"]["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["audience"] == "vault" and token["expirationSeconds"] <= 3600
    assert (
        cfg.vault is not None
        and str(cfg.vault.auth.jwt_file) == f"{mounts['vault-token']['mountPath']}/{token['path']}"
    )
    assert POD_SPEC["automountServiceAccountToken"] is False
    assert DOCS[("ServiceAccount", "egress-gateway")]["automountServiceAccountToken"] is False
    assert POD_SPEC["securityContext"]["runAsNonRoot"] is True
    for c, spec in ((EGRESS, POD_SPEC), (AGENT, AGENT_POD["spec"])):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert NAMESPACE["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_agent_pod_holds_no_credential(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    spec = AGENT_POD["spec"]
    assert spec["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in AGENT["env"]}
    # Its proxy token from a Secret of its own; every other variable a plain value.
    assert env["EGRESS_PROXY_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert [n for n, e in env.items() if "valueFrom" in e] == ["EGRESS_PROXY_TOKEN"]
    # The placeholder it holds is the one egress swaps, for the secret granted to it.
    (github,) = [s for s in cfg.secrets if s.name == "github_token"]
    assert env["GITHUB_TOKEN"]["value"] == github.placeholder
    assert "github_token" in cfg.agent("researcher").secrets  # type: ignore[union-attr]
    # It trusts the issuer, from the ConfigMap docs/gateway.md makes.
    mount = {m["name"]: m for m in AGENT["volumeMounts"]}["egress-root"]
    for var in ("SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert env[var]["value"] == f"{mount['mountPath']}/ca.pem"
    (vol,) = spec["volumes"]
    assert vol["configMap"]["name"] == "egress-agents-root"


def test_the_fences_leave_the_gateway_as_the_only_way_out(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    agent_labels = AGENT_POD["metadata"]["labels"]
    # Every pod of the agents namespace, labelled or not, is denied what no policy allows.
    deny = NP_DEFAULT_DENY["spec"]
    assert NP_DEFAULT_DENY["metadata"]["namespace"] == AGENT_POD["metadata"]["namespace"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    clients = NP_CLIENTS["spec"]
    assert NP_CLIENTS["metadata"]["namespace"] == AGENT_POD["metadata"]["namespace"]
    assert _selects(clients["podSelector"], agent_labels)
    assert clients["policyTypes"] == ["Ingress", "Egress"] and clients["ingress"] == []
    to_gateway, to_dns = clients["egress"]
    (peer,) = to_gateway["to"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": DEPLOYMENT["metadata"]["namespace"]}  # fmt: skip
    assert _selects(peer["podSelector"], POD_LABELS)
    # NetworkPolicy sees the pod's port (after the Service's translation).
    assert to_gateway["ports"] == [{"protocol": "TCP", "port": cfg.listen_port}]
    assert {p["port"] for p in to_dns["ports"]} == {53}
    gw = NP_GATEWAY["spec"]
    assert _selects(gw["podSelector"], POD_LABELS)
    from_agents, from_monitoring = gw["ingress"]
    (peer,) = from_agents["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": AGENT_POD["metadata"]["namespace"]}  # fmt: skip
    assert _selects(peer["podSelector"], agent_labels)
    assert from_agents["ports"] == [{"protocol": "TCP", "port": cfg.listen_port}]
    assert cfg.admin is not None and from_monitoring["ports"] == [
        {"protocol": "TCP", "port": cfg.admin.port}
    ]
    # The gateway reaches public addresses only (not the cluster's own ranges).
    public = gw["egress"][-1]
    assert "10.0.0.0/8" in public["to"][0]["ipBlock"]["except"]


# ---------------------------------------------------------- the gateway, as deployed


class Balancer:
    """One address in front of several replicas, a new connection to each in turn: what a
    Service's virtual IP does with connections (kube-proxy spreads them; it never moves one)."""

    def __init__(self, backends: list[int]):
        self.backends, self.counts = backends, [0] * len(backends)
        self.open: list[socket.socket] = []  # closed at stop: no connection outlives the test
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._next, self._closed = 0, threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            i = self._next % len(self.backends)
            self._next += 1
            self.counts[i] += 1
            upstream = socket.create_connection(("127.0.0.1", self.backends[i]), 5)
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self._closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)
        assert not self._thread.is_alive()
        for s in self.open:  # the replicas then stop at once, nothing in flight
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


GH_VALUE = "ghp_gateway0real0value0000000000000000"  # noqa: S105 (a test value)
AK_VALUE = "sk-ant-gateway-real-value-00000000"  # noqa: S105
TOKENS = {"researcher": "researcher-token-0123456789", "reviewer": "reviewer-token-9876543210"}


def _as_deployed(
    tmp: Path, vault: VaultServer, mount: str, test_ca_file: Path, port: int
) -> dict[str, Any]:
    """The ConfigMap's config, with what only a cluster has pointed at this test's own:
    loopback listeners, the test OpenBao (token auth), the upstream's names and the test
    tokens' digests. Identity, agents, grants, CA and audit format stay as deployed."""
    cfg = copy.deepcopy(yaml.safe_load(CONFIG_MAP["data"]["egress.yaml"]))
    cfg["listen"] = {"host": "127.0.0.1", "port": 0}
    cfg["admin"] = {"host": "127.0.0.1", "port": 0, "drain_seconds": 0}
    cfg["ca"]["cert_path"] = str(tmp / "files" / "egress-ca.pem")
    cfg["ca"]["vault_pki"]["mount"] = mount
    cfg["vault"] = {"address": vault.address, "ca_file": str(vault.ca_file),
                    "auth": {"method": "token", "token_env": "EGRESS_VAULT_TOKEN"}, "timeout_seconds": 5}  # fmt: skip
    names = {"api.github.com": API, "github.com": API, "api.anthropic.com": OTHER}
    for agent in cfg["agents"]:
        agent["token"] = {"sha256": hashlib.sha256(TOKENS[agent["name"]].encode()).hexdigest()}
        agent["allow"] = [{"host": names[r["host"]], "ports": [port]} for r in agent["allow"]]
    for s in cfg["secrets"]:
        s["hosts"] = sorted({names[h] for h in s["hosts"]})
    cfg["allow"] = []
    cfg["upstream"] = {"ca_files": [str(test_ca_file)], "resolve": {API: "127.0.0.1", OTHER: "127.0.0.1"},
                       "allow_private": ["127.0.0.1/32"], "dns": "static"}  # fmt: skip
    cfg["audit"] = {"path": str(tmp / "audit.jsonl"), "format": "ocsf"}
    cfg["workers"] = 1
    return cfg


@pytest.fixture
def gateway(
    tmp_path: Path, vault: VaultServer, upstream: Upstream, test_ca_file: Path
) -> Iterator[tuple[Balancer, Path]]:
    mount = "pki-gateway"
    root = _mount_root(vault, mount, "8760h")
    root_file = tmp_path / "egress-agents-root.pem"
    root_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    vault.kv2_put("agents/github", {"token": GH_VALUE})
    vault.kv2_put("agents/anthropic", {"api_key": AK_VALUE})
    vault.policy(
        "egress-gateway",
        _policy(mount, True) + 'path "secret/data/agents/*" { capabilities = ["read"] }\n',
    )
    env = proxy_env(EGRESS_VAULT_TOKEN=vault.token(["egress-gateway"]))
    replicas: list[RunningProxy] = []
    balancer = None
    try:
        for name in ("gw-0", "gw-1"):
            d = tmp_path / name
            d.mkdir()
            cfg = _as_deployed(d, vault, mount, test_ca_file, upstream.port)
            replicas.append(start_proxy(write_config(d, cfg), d, env))
        balancer = Balancer([p.port for p in replicas])
        balancer.start()
        yield balancer, root_file
    finally:
        if balancer is not None:
            balancer.stop()
        codes = [p.stop() for p in replicas]
    assert codes == [0] * len(replicas)
    for p in replicas:
        out = p.outputs()
        assert "Traceback" not in out
        for value in (GH_VALUE, AK_VALUE, *TOKENS.values()):
            assert value not in out


def _get(
    balancer: Balancer, root: Path, agent: str, token: str, host: str, port: int, **headers: str
) -> httpx.Response:
    with httpx.Client(proxy=f"http://{agent}:{token}@127.0.0.1:{balancer.port}",
                      verify=ssl.create_default_context(cafile=str(root)), timeout=20) as c:  # fmt: skip
        return c.get(f"https://{host}:{port}/gateway", headers=headers)


def test_agents_reach_any_replica_through_one_address(
    gateway: tuple[Balancer, Path], upstream: Upstream
) -> None:
    balancer, root = gateway
    # Each request a new connection, so each lands on the next replica; the agent trusts
    # the issuer only, and gets its own grant on every one of them.
    for _ in range(4):
        upstream.recorder.clear()
        r = _get(balancer, root, "researcher", TOKENS["researcher"], API, upstream.port,
                 authorization="Bearer egress-github_token-placeholder")  # fmt: skip
        assert r.status_code == 200, r.text
        assert upstream.requests[-1].headers["authorization"] == f"Bearer {GH_VALUE}"
        upstream.recorder.clear()
        r = _get(balancer, root, "reviewer", TOKENS["reviewer"], OTHER, upstream.port,
                 **{"x-api-key": "egress-anthropic_key-placeholder"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert upstream.requests[-1].headers["x-api-key"] == AK_VALUE
    assert min(balancer.counts) >= 4  # both replicas served
    # One agent's grant is not another's: reviewer may not reach API, researcher not OTHER.
    for agent, host in (("reviewer", API), ("researcher", OTHER)):
        with pytest.raises(httpx.ProxyError, match="403"):
            _get(balancer, root, agent, TOKENS[agent], host, upstream.port)
    # Another agent's token: 407, on every replica.
    for _ in range(2):
        with pytest.raises(httpx.ProxyError, match="407"):
            _get(balancer, root, "researcher", TOKENS["reviewer"], API, upstream.port)
