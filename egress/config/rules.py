"""The ``allow:`` rules."""

from __future__ import annotations

import re
from typing import Any

from egress.config.checker import Checker
from egress.config.model import _METHOD, DEFAULT_PORTS, SCHEMES, Rule
from egress.hostnames import HostPattern, parse_host_pattern

# A request path on the wire is ASCII: anything else is percent-encoded, so a prefix with
# raw non-ASCII never matches; and bidi or zero-width characters would show a reviewer a
# path that is not the one written.
_VISIBLE_ASCII = re.compile(r"^[!-~]+$")


def parse_rule(c: Checker, node: Any, i: int, scope: str = "") -> Rule | None:
    """The rule at ``{scope}allow[i]`` ("" for the shared allow:, "agents[2]." for an agent's)."""
    key = f"{scope}allow[{i}]"
    if isinstance(node, str):
        node = {"host": node}
    m = c.mapping(
        node, key, ("host", "ports", "schemes", "methods", "paths", "websocket"), ("host",)
    )
    if m is None or "host" not in m:
        return None
    ok = True
    try:
        host = parse_host_pattern(m["host"])
    except ValueError as e:
        c.err(f"{key}.host", str(e))
        ok = False
    schemes = c.str_list(m, key, "schemes") or ["https"]
    for j, s in enumerate(schemes):
        if s not in SCHEMES:
            c.err(f"{key}.schemes[{j}]", f"{s!r} is not a scheme egress proxies: use https or http")
            ok = False
    ports: list[int] = []
    raw_ports = c.str_list(m, key, "ports")
    if raw_ports is None:
        ports = sorted({DEFAULT_PORTS[s] for s in schemes if s in DEFAULT_PORTS})
    else:
        for j, p in enumerate(raw_ports):
            if not p.isdigit() or not 0 < int(p) < 65536:
                c.err(f"{key}.ports[{j}]", f"{p!r} is not a port number (1-65535)")
                ok = False
            else:
                ports.append(int(p))
    methods = c.str_list(m, key, "methods")
    if methods is not None:
        methods = [x.upper() for x in methods]
        for j, x in enumerate(methods):
            if not _METHOD.match(x):
                c.err(f"{key}.methods[{j}]", f"{x!r} is not an HTTP method")
                ok = False
    paths = c.str_list(m, key, "paths")
    for j, p in enumerate(paths or []):
        if not p.startswith("/") or "?" in p or "#" in p or not _VISIBLE_ASCII.match(p):
            c.err(
                f"{key}.paths[{j}]",
                f"{p!r} must be a path prefix starting with '/' (no query; visible ASCII only: percent-encode other characters as clients send them)",
            )
            ok = False
    if not ok:
        return None
    return Rule(
        index=i,
        host=host,
        ports=tuple(ports),
        schemes=tuple(schemes),
        methods=tuple(methods) if methods is not None else None,
        paths=tuple(paths) if paths is not None else None,
        websocket=c.typed(m, key, "websocket", bool, False),
        scope=scope,
    )


def covers(rule: HostPattern, pattern: HostPattern) -> bool:
    """Does an allow rule's host pattern allow every host the secret pattern names?"""
    if pattern.kind == "wildcard":
        return rule.kind == "wildcard" and pattern.text.endswith(rule.text[1:])
    if pattern.kind == "address":
        assert pattern.network is not None
        return (
            rule.kind == "address"
            and rule.network is not None
            and pattern.network.version == rule.network.version
            and pattern.network.subnet_of(rule.network)  # type: ignore[arg-type]
        )
    return rule.matches(pattern.text)
