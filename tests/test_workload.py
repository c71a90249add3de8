"""A sidecar's workload from the Downward API in every audit record (identity.workload_env;
docs/agents.md: Workload)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from egress.config import parse
from egress.errors import ConfigError
from tests.conftest import API, base_config, egress_cmd, proxy_env, start_proxy, write_config
from tests.upstream import Upstream

WORKLOAD = {"POD_NAME": "agent-7d9f", "POD_NAMESPACE": "agents", "POD_SERVICE_ACCOUNT": "agent"}


def _cfg(tmp: Path, ca_file: Path, port: int, fmt: str = "egress") -> dict[str, Any]:
    cfg = base_config(tmp, ca_file, port)
    cfg["identity"] = {"workload_env": {"pod": "POD_NAME", "namespace": "POD_NAMESPACE",
                                        "service_account": "POD_SERVICE_ACCOUNT"}}  # fmt: skip
    cfg["audit"]["format"] = fmt
    return cfg


@pytest.mark.parametrize("fmt", ["egress", "ocsf"])
def test_every_record_names_the_workload(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path, fmt: str
) -> None:
    p = start_proxy(write_config(tmp_path, _cfg(tmp_path, test_ca_file, upstream.port, fmt)), tmp_path,
                    proxy_env(**WORKLOAD))  # fmt: skip
    try:
        import ssl

        with httpx.Client(
            proxy=p.url, verify=ssl.create_default_context(cafile=str(p.ca)), timeout=20
        ) as c:
            assert c.get(f"https://{API}:{upstream.port}/w").status_code == 200
            assert c.get(f"https://denied.example:{upstream.port}/w").status_code == 403
    except httpx.ProxyError:
        pass  # the denied CONNECT: its record is what counts
    finally:
        assert p.stop() == 0
    records = p.audit()
    assert len(records) >= 2
    want = {"pod": "agent-7d9f", "namespace": "agents", "service_account": "agent"}
    for r in records:
        got = r["unmapped"]["workload"] if fmt == "ocsf" else r["workload"]
        assert got == want, r
    if fmt == "ocsf":
        from tests.test_audit_sinks import assert_ocsf

        for r in records:
            assert_ocsf(r)


def test_an_unset_variable_stops_the_start_with_the_fix(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    path = write_config(tmp_path, _cfg(tmp_path, test_ca_file, upstream.port))
    env = proxy_env(**{k: v for k, v in WORKLOAD.items() if k != "POD_NAMESPACE"})
    run = subprocess.run(
        egress_cmd("run", "--config", str(path)),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode != 0
    assert "identity.workload_env.namespace: $POD_NAMESPACE is not set" in run.stderr
    assert "fieldPath: metadata.namespace" in run.stderr and "Traceback" not in run.stderr


BAD = [
    (
        {"workload_env": {"pod": "POD NAME"}},
        "identity.workload_env.pod",
        "not an environment variable name",
    ),
    ({"workload_env": {"image": "X"}}, "identity.workload_env.image", "unknown key"),
    ({"workload_env": {}}, "identity.workload_env", "at least one"),
    (
        {"proxy_authorization": True, "workload_env": {"pod": "POD_NAME"}},
        "identity.workload_env",
        "only with 'fixed",
    ),
]


@pytest.mark.parametrize(("identity", "key", "said"), BAD, ids=[b[2] for b in BAD])
def test_bad_workload_configs(
    tmp_path: Path, identity: dict[str, Any], key: str, said: str
) -> None:
    cfg: dict[str, Any] = {"allow": [{"host": API}], "identity": identity}
    if "proxy_authorization" in identity:
        cfg["agents"] = [{"name": "a", "token": {"sha256": "0" * 64}}]
    with pytest.raises(ConfigError) as e:
        parse(json.loads(json.dumps(cfg)), str(tmp_path / "egress.yaml"), tmp_path)
    assert key in str(e.value) and said in str(e.value), str(e.value)


@pytest.mark.parametrize("value", ["a b", "Agent", "раd", "x\ny", "a" * 254, "-a"])
def test_a_value_that_is_no_kubernetes_name_stops_the_start(value: str) -> None:
    from egress.agents import read_workload
    from egress.errors import CredentialLoadError

    cfg = parse({"allow": [{"host": API}], "identity": {"workload_env": {"pod": "POD_NAME"}}},
                "egress.yaml", Path("."))  # fmt: skip
    assert read_workload(cfg, {"POD_NAME": "agent-7d9f.x"}) == {"pod": "agent-7d9f.x"}
    with pytest.raises(CredentialLoadError, match="not a Kubernetes name"):
        read_workload(cfg, {"POD_NAME": value})
