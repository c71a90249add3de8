"""The allowlist: default deny, decided on canonical host, port, scheme, method and path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from egress.config import Rule
from egress.hostnames import is_ip
from egress.reasons import Reason
from egress.routing import path_readings


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason
    rule: Rule | None = None  # the rule that allowed, or the closest rule that did not
    detail: str = ""

    @property
    def rule_label(self) -> str | None:
        return self.rule.label if self.rule else None


def path_matches(prefix: str, path: str) -> bool:
    """Segment-aware prefix: '/repos' matches '/repos' and '/repos/x', never '/reposx'."""
    if path == prefix or prefix == "/":
        return True
    return path.startswith(prefix if prefix.endswith("/") else prefix + "/")


class Allowlist:
    def __init__(self, rules: tuple[Rule, ...] | list[Rule]):
        self.rules = tuple(rules)

    def _host_rules(self, host: str) -> list[Rule]:
        return [r for r in self.rules if r.host.matches(host)]

    def restricts_methods(self, host: str) -> bool:
        return any(r.methods is not None for r in self._host_rules(host))

    def _no_rule(self, host: str) -> Decision:
        if is_ip(host):
            return Decision(False, Reason.IP_LITERAL, None,
                            f"the address {host} is not named by any rule (an address is allowed only "
                            "by a rule that names it or its range)")  # fmt: skip
        return Decision(False, Reason.HOST_NOT_ALLOWED, None, f"no rule allows host {host!r}")

    def decide_connect(self, host: str, port: int) -> Decision:
        """A CONNECT tunnel (or a new upstream connection): host and port only.

        Method and path are not known yet; they are decided per request inside the tunnel.
        """
        rules = self._host_rules(host)
        if not rules:
            return self._no_rule(host)
        for r in rules:
            if port in r.ports:
                return Decision(True, Reason.ALLOWED, r)
        ports = sorted({p for r in rules for p in r.ports})
        return Decision(
            False, Reason.PORT_NOT_ALLOWED, rules[0],
            f"host {host!r} is allowed on port(s) {ports}, not {port}",
        )  # fmt: skip

    def decide(
        self, scheme: str, host: str, port: int, method: str, path: str, websocket: bool = False,
        overrides: Sequence[str] = (),
    ) -> Decision:  # fmt: skip
        """Decide one request. ``host`` must be canonical; ``path`` may carry a query;
        ``websocket`` says it asks for a WebSocket upgrade; ``overrides`` are the methods the
        request names in override headers or ``_method`` parameters (egress.routing)."""
        rules = self._host_rules(host)
        if not rules:
            return self._no_rule(host)
        path_only = path.split("?", 1)[0] or "/"
        # Only work out a path's readings when a rule for this host restricts paths.
        readings, unjudgeable = (
            path_readings(path_only) if any(r.paths is not None for r in rules) else ([], None)
        )
        methods = list(dict.fromkeys([method.upper(), *overrides]))
        method_text = f"method {method}" + (
            f" (overridden to {', '.join(overrides)})" if overrides else ""
        )
        path_text = f"path {path_only}" + (f" ({unjudgeable})" if unjudgeable else "")
        # Check dimension by dimension, so that the reason names the first thing that failed
        # on the rules for this host.
        stages = (
            (Reason.PORT_NOT_ALLOWED, lambda r: port in r.ports, f"port {port}"),
            (Reason.SCHEME_NOT_ALLOWED, lambda r: scheme in r.schemes, f"scheme {scheme}"),
            (Reason.METHOD_NOT_ALLOWED,
             lambda r: r.methods is None or all(m in r.methods for m in methods), method_text),
            (Reason.PATH_NOT_ALLOWED,
             lambda r: path_allowed(r, readings, unjudgeable), path_text),
            (Reason.WEBSOCKET_NOT_ALLOWED, lambda r: r.websocket or not websocket, "a WebSocket upgrade"),
        )  # fmt: skip
        for reason, test, what in stages:
            passing = [r for r in rules if test(r)]
            if not passing:
                return Decision(False, reason, rules[0], f"{what} is not allowed for host {host!r}")
            rules = passing
        return Decision(True, Reason.ALLOWED, rules[0])


def path_allowed(rule: Rule, readings: list[str], unjudgeable: str | None) -> bool:
    """Every reading an upstream may route on must be under one of the rule's prefixes."""
    if rule.paths is None:
        return True
    if unjudgeable:
        return False
    return all(any(path_matches(p, r) for p in rule.paths) for r in readings)
