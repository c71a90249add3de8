"""The ``aws:`` block of a secret with ``scheme: aws_sigv4``."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from egress.config.checker import Checker
from egress.config.model import AwsSpec
from egress.hostnames import HostPattern, parse_host_pattern

# An access key id as the SDKs and the AWS CLI accept it (they check nothing but the
# characters of the Credential scope: no '/', no space): upper-case letters and digits.
AWS_PLACEHOLDER = re.compile(r"^[A-Z0-9]{16,128}$")
_REGION = re.compile(r"^[a-z0-9-]{2,32}$")
_SERVICE = re.compile(r"^[a-z0-9-]{2,64}$")
# What egress exec/env give the agent as its secret access key: its SDK signs with it,
# egress throws that signature away. Deliberately not a secret.
AGENT_SECRET_KEY = "egress-re-signs-this-request-not-a-secret"  # noqa: S105


def default_aws_placeholder(name: str) -> str:
    """A key id shaped like a real one (AKIA + 16), the same for the same secret name."""
    return "AKIAEGRESS" + hashlib.sha256(name.encode()).hexdigest().upper()[:10]


def parse_aws(c: Checker, node: Any, key: str) -> AwsSpec | None:
    known = ("regions", "services", "presigned", "max_presign_seconds", "clock_skew_seconds",
             "endpoints", "allow_credential_actions")  # fmt: skip
    m = c.mapping(node, key, known)
    if m is None:
        return None
    start = len(c.problems)
    regions = c.str_list(m, key, "regions")
    services = c.str_list(m, key, "services")
    for what, values, pattern in (("regions", regions, _REGION), ("services", services, _SERVICE)):
        for j, v in enumerate(values or []):
            if not pattern.match(v):
                c.err(f"{key}.{what}[{j}]", f"{v!r} is not an AWS {what[:-1]} name")
    max_presign = c.typed(m, key, "max_presign_seconds", int, 3600)
    if max_presign is not None and not 1 <= max_presign <= 604800:
        c.err(f"{key}.max_presign_seconds", "must be 1-604800 (AWS's own maximum is 7 days)")
    skew = c.typed(m, key, "clock_skew_seconds", int, 300)
    if skew is not None and not 0 <= skew <= 900:
        c.err(f"{key}.clock_skew_seconds", "must be 0-900 (AWS refuses requests 15 minutes off)")
    endpoints: list[tuple[HostPattern, str, str]] = []
    node_e = m.get("endpoints") or {}
    if not isinstance(node_e, dict):
        c.err(f"{key}.endpoints", "must be a mapping of host: {region: ..., service: ...}")
        node_e = {}
    for host, spec in node_e.items():
        k = f"{key}.endpoints.{host}"
        e = c.mapping(spec, k, ("region", "service"), ("region", "service"))
        if e is None:
            continue
        region, service = c.typed(e, k, "region", str, None), c.typed(e, k, "service", str, None)
        try:
            pattern = parse_host_pattern(str(host))
        except ValueError as err:
            c.err(k, str(err))
            continue
        if region is None or service is None:
            continue
        if not _REGION.match(region) or not _SERVICE.match(service):
            c.err(k, "region and service must be AWS names (e.g. us-east-1, s3)")
            continue
        endpoints.append((pattern, region, service))
    if len(c.problems) > start:
        return None
    return AwsSpec(
        regions=tuple(regions) if regions else None,
        services=tuple(services) if services else None,
        presigned=c.typed(m, key, "presigned", bool, True),
        max_presign_seconds=max_presign,
        clock_skew_seconds=skew,
        endpoints=tuple(endpoints),
        allow_credential_actions=c.typed(m, key, "allow_credential_actions", bool, False),
    )
