"""The conformance table (tests/conformance.yaml), at two levels: the pure decision and the
real proxy. The same rows must give the same reason codes at both."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from egress.config import parse
from egress.decide import decide_url
from egress.policy import Allowlist
from egress.runtime import address_policy
from tests.conftest import RunningProxy, start_proxy, write_config
from tests.upstream import Upstream

TABLE = yaml.safe_load((Path(__file__).parent / "conformance.yaml").read_text())
PURE_PORT = 8443


def world(port: int) -> dict[str, Any]:
    text = yaml.safe_dump(TABLE["world"]).replace("PORT", str(port))
    return yaml.safe_load(text)


def cases(level: str) -> list[Any]:
    rows = [c for c in TABLE["cases"] if level in c.get("levels", ["pure", "e2e"])]
    return [pytest.param(c, id=c["name"]) for c in rows]


@pytest.mark.parametrize("case", cases("pure"))
def test_pure(case: dict[str, Any]) -> None:
    w = world(PURE_PORT)
    cfg = parse(
        {"allow": w["allow"], "upstream": {"allow_private": w["allow_private"]}},
        "conformance",
        Path("/"),
    )
    out = decide_url(Allowlist(cfg.rules), case.get("method", "GET"), case["url"].replace("PORT", str(PURE_PORT)),
                     w["dns"], address_policy(cfg), list(case.get("headers", {}).items()))  # fmt: skip
    assert out.decision.reason.value == case["expect"], out.decision.detail
    if "dial" in case:
        assert str(out.address) == case["dial"]


@pytest.fixture(scope="module")
def world_upstream(test_ca: trustme.CA) -> Iterator[Upstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("exact.test", "*.wild.test", "a.b.wild.test", "xn--bcher-kva.test", "api.test", "multi.test",
                       "127.0.0.1").configure_cert(ctx)  # fmt: skip
    with Upstream(ctx) as up:
        yield up


@pytest.fixture(scope="module")
def world_proxy(tmp_path_factory: pytest.TempPathFactory, world_upstream: Upstream,
                test_ca_file: Path) -> Iterator[RunningProxy]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("conformance")
    w = world(world_upstream.port)
    cfg = {
        "listen": {"port": 0},
        "ca": {"cert_path": str(tmp / "egress-ca.pem")},
        "upstream": {
            "ca_files": [str(test_ca_file)],
            "resolve": w["dns"],
            "allow_private": w["allow_private"],
            "dns": "static",
        },  # fmt: skip
        "allow": w["allow"],
        "audit": {"path": str(tmp / "audit.jsonl")},
    }
    p = start_proxy(write_config(tmp, cfg), tmp)
    yield p
    assert p.stop() == 0


@pytest.mark.parametrize("case", cases("e2e"))
def test_e2e(world_proxy: RunningProxy, world_upstream: Upstream, case: dict[str, Any]) -> None:
    world_upstream.recorder.clear()
    url = case["url"].replace("PORT", str(world_upstream.port))
    before = len(world_proxy.audit())
    headers = [a for k, v in case.get("headers", {}).items() for a in ("-H", f"{k}: {v}")]
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "15", "-X", case.get("method", "GET"), "--proxy", world_proxy.url,
         "--cacert", str(world_proxy.ca), "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
         *headers, url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    records = world_proxy.audit()[before:]
    if case["expect"] == "allowed":
        assert r.stdout == "200", r.stderr
        assert len(world_upstream.requests) == 1
        assert records and records[-1]["decision"] == "allow"
        return
    assert world_upstream.requests == [], "a denied request reached the upstream"
    assert records, f"no audit record: {r.stdout} {r.stderr}"
    assert records[-1]["reason"] == case["expect"], records[-1]
    if records[-1]["event"] == "connect":
        # Refused at CONNECT: the destination never got a TCP connection.
        assert world_upstream.connections == 0


def test_every_class_is_tested_at_both_levels(request: pytest.FixtureRequest) -> None:
    """The class index (tests/conformance.yaml: classes) names, for every class of attack,
    the tests that close it at the pure level and end to end; each must exist."""
    import importlib

    missing = []
    for cls in TABLE["classes"]:
        assert cls.get("pure") and cls.get("e2e"), f"{cls['name']}: needs both levels"
        for ref in [*cls["pure"], *cls["e2e"]]:
            module, _, name = ref.partition("::")
            mod = importlib.import_module(module.replace("/", ".").removesuffix(".py"))
            if not callable(getattr(mod, name.split("[")[0], None)):
                missing.append(f"{cls['name']}: {ref}")
    assert not missing, missing
