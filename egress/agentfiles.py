"""Files for the agent, in a directory it mounts read-only (the sidecar's shared volume):
the CA certificate alone, a bundle of the system roots plus the CA, and an env file with each
secret's placeholder and the usual CA variables (and proxy variables, if asked for), so that
the agent container only needs to source one file."""

from __future__ import annotations

import os
from pathlib import Path

from egress.config import Config

# Variables that replace a tool's whole trust store get the bundle (system roots + the CA);
# NODE_EXTRA_CA_CERTS adds to Node's store, so it gets the CA alone.
BUNDLE_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT",
               "AWS_CA_BUNDLE", "NPM_CONFIG_CAFILE", "CARGO_HTTP_CAINFO", "DENO_CERT")  # fmt: skip


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)  # atomic: the agent never reads a half-written file


def write_agent_files(cfg: Config, ca_pem: bytes, system_bundle: Path) -> None:
    d = cfg.agent_dir
    if d is None:
        return
    d.mkdir(parents=True, exist_ok=True)
    ca, bundle = d / "egress-ca.pem", d / "ca-bundle.pem"
    if ca.resolve() != cfg.ca_cert_path.resolve():  # that one is written (and held) by Runtime
        _write(ca, ca_pem)
    _write(bundle, system_bundle.read_bytes().rstrip(b"\n") + b"\n" + ca_pem)
    lines = [
        "# Written by egress at start-up; source it in the agent: set -a; . ./egress.env; set +a"
    ]
    lines += [f"{var}={bundle}" for var in BUNDLE_VARS]
    lines.append(f"NODE_EXTRA_CA_CERTS={ca}")
    if cfg.agent_proxy_url:
        for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            lines.append(f"{var}={cfg.agent_proxy_url}")
        lines += ["NO_PROXY=localhost,127.0.0.1,::1", "no_proxy=localhost,127.0.0.1,::1"]
    for spec in cfg.secrets:
        if spec.env:
            lines.append(f"{spec.env}={spec.placeholder}")  # placeholders only, never a value
        lines += [f"{k}={v}" for k, v in spec.agent_env]
    for canary in cfg.tripwires.canaries if cfg.tripwires else ():
        if canary.env:
            lines.append(f"{canary.env}={canary.value}")  # a planted canary (docs/tripwires.md)
    _write(d / "egress.env", ("\n".join(lines) + "\n").encode())
