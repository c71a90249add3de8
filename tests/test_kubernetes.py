"""The Kubernetes manifests, validated offline: every object against the Kubernetes OpenAPI
schema (strict: unknown fields are errors), the egress config in the ConfigMap by egress's
own loader, and the wiring between them (ports, UIDs, volumes, tokens, securityContexts)."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from egress import config
from egress.reasons import Reason
from tests.conftest import egress_cmd, proxy_env

DEPLOY = Path(__file__).parent.parent / "deploy" / "kubernetes"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
# Native sidecars (initContainers with restartPolicy: Always) need 1.29 or later.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
DOCKERFILE = (Path(__file__).parent.parent / "Dockerfile").read_text()


def _objects() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.relative_to(DEPLOY)}#{i}", doc)
            for p in MANIFESTS for i, doc in enumerate(yaml.safe_load_all(p.read_text())) if doc]  # fmt: skip


OBJECTS = _objects()


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [o for _, o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


POD = _one("Pod", "agent")
SPEC = POD["spec"]
REDIRECT, PROXY = SPEC["initContainers"]
(AGENT,) = SPEC["containers"]
EGRESS_YAML = _one("ConfigMap", "egress-config")["data"]["egress.yaml"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("where, obj", OBJECTS, ids=[w for w, _ in OBJECTS])
def test_schema_strict(where: str, obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_catches_a_misspelt_field() -> None:
    bad = copy.deepcopy(POD)
    bad["spec"]["initContainers"][1]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


def _args(container: dict[str, Any]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in container["args"] if a.startswith("--") and "=" in a)


def test_the_config_map_holds_a_valid_transparent_config(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(EGRESS_YAML)
    cfg = config.load(path)
    assert cfg.listen_mode == "transparent"
    assert cfg.vault is not None and cfg.vault.auth.method == "kubernetes"
    # egress check gives the decisions the pod will get, without Vault or any traffic.
    for url, code in (("https://api.github.com/user", 0), ("https://example.com/", 1)):
        r = subprocess.run(egress_cmd("check", "--no-secrets", "--config", str(path), url),
                           capture_output=True, text=True, env=proxy_env(), timeout=60)  # fmt: skip
        assert r.returncode == code, r.stdout + r.stderr
    assert Reason.HOST_NOT_ALLOWED.value in r.stdout


def test_ports_and_uids_agree_across_config_rules_image_and_probes(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(EGRESS_YAML)
    cfg = config.load(path)
    redirect = _args(REDIRECT)
    assert REDIRECT["args"][:2] == ["redirect", "apply"]
    # The rules send traffic to the proxy's transparent port and exempt the proxy's UID,
    # which is the image's fixed UID.
    assert int(redirect["proxy-port"]) == cfg.listen_port
    assert int(redirect["proxy-uid"]) == PROXY["securityContext"]["runAsUser"] == 1337
    assert re.search(r"^USER 1337:1337$", DOCKERFILE, re.MULTILINE)
    assert redirect["dns-from"] == "/etc/resolv.conf"
    assert cfg.admin is not None and redirect["inbound-ports"] == str(cfg.admin.port)
    # Probes hit the admin listener, on an address the kubelet reaches.
    assert cfg.admin is not None and cfg.admin.host == "0.0.0.0"
    (admin_port,) = [p for p in PROXY["ports"] if p["name"] == "admin"]
    assert admin_port["containerPort"] == cfg.admin.port
    assert PROXY["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert PROXY["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert PROXY["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert PROXY["args"] == ["run", "--config", "/etc/egress/egress.yaml"]


def test_the_sidecar_knows_its_workload_from_the_downward_api(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(EGRESS_YAML)
    cfg = config.load(path)
    assert cfg.identity is not None
    fields = {"pod": "metadata.name", "namespace": "metadata.namespace",
              "service_account": "spec.serviceAccountName", "node": "spec.nodeName"}  # fmt: skip
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in PROXY["env"]}
    assert dict(cfg.identity.workload_env).keys() == fields.keys()
    for name, var in cfg.identity.workload_env:
        assert env[var] == fields[name], (name, var)


def test_egress_is_a_native_sidecar_started_after_the_redirect() -> None:
    assert REDIRECT["name"] == "egress-redirect" and "restartPolicy" not in REDIRECT
    assert PROXY["name"] == "egress" and PROXY["restartPolicy"] == "Always"
    assert "startupProbe" in PROXY  # the agent container starts only once egress is ready


def _mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def test_volumes_keep_the_token_and_private_state_away_from_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(EGRESS_YAML)
    cfg = config.load(path)
    volumes = {v["name"]: v for v in SPEC["volumes"]}
    proxy, agent = _mounts(PROXY), _mounts(AGENT)
    # The shared directory: written by egress, read-only for the agent, at the agent.dir path.
    assert proxy["agent-shared"]["mountPath"] == str(cfg.agent_dir)
    assert agent["agent-shared"] == {
        "name": "agent-shared",
        "mountPath": str(cfg.agent_dir),
        "readOnly": True,
    }
    assert str(cfg.ca_cert_path).startswith(str(cfg.agent_dir) + "/")
    assert f". {cfg.agent_dir}/egress.env" in AGENT["command"][-1]
    # The agent mounts nothing else: no config, no private state, no token.
    assert set(agent) == {"agent-shared"}
    assert proxy["egress-private"]["mountPath"] == "/tmp"  # the image's TMPDIR
    assert "TMPDIR=/tmp" in DOCKERFILE
    # Vault: a token with audience "vault", projected into the proxy only, where the config
    # reads it; no automatically mounted service-account token anywhere.
    (source,) = volumes["vault-token"]["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["audience"] == "vault" and token["expirationSeconds"] <= 3600
    assert cfg.vault is not None
    assert str(cfg.vault.auth.jwt_file) == f"{proxy['vault-token']['mountPath']}/{token['path']}"
    assert proxy["vault-token"]["readOnly"] is True
    assert SPEC["automountServiceAccountToken"] is False
    assert _one("ServiceAccount", "agent")["automountServiceAccountToken"] is False
    assert SPEC["shareProcessNamespace"] is False
    for c in (REDIRECT, PROXY, AGENT):
        for m in c.get("volumeMounts", []):
            assert "serviceaccount" not in m["mountPath"]


@pytest.mark.parametrize("container", [REDIRECT, PROXY, AGENT], ids=lambda c: c["name"])
def test_security_contexts_and_resources(container: dict[str, Any]) -> None:
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    if container is REDIRECT:
        assert sc["capabilities"]["add"] == ["NET_ADMIN"]  # and only that
    else:
        assert "add" not in sc["capabilities"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert SPEC["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


def test_network_policy_is_a_second_fence_around_the_agent_pod() -> None:
    np = _one("NetworkPolicy", "agent-egress")["spec"]
    assert set(np["podSelector"]["matchLabels"].items()) <= set(POD["metadata"]["labels"].items())
    assert np["policyTypes"] == ["Ingress", "Egress"] and np["ingress"] == []
    blocks = [t["ipBlock"] for rule in np["egress"] for t in rule["to"] if "ipBlock" in t]
    v4 = next(b for b in blocks if b["cidr"] == "0.0.0.0/0")
    # Cluster-internal ranges and the cloud metadata address stay out of reach.
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(v4["except"])
    for rule in np["egress"]:
        assert rule["ports"], "every egress rule names its ports"
