"""The allowlist: default deny, decided on canonical host, port, scheme, method and path."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from egress.config import Rule
from egress.hostnames import HostPattern, is_ip
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


# Per-host answers are kept for recent hosts: the host (and the port and scheme) are the
# agent's, so the caches are bounded in entries and take only short strings; what they keep
# is a pure function of the key and of the rules, which an Allowlist never changes.
CACHE_ENTRIES = 2048
CACHE_MAX_CHARS = 300  # a canonical host is at most 253 characters


class Allowlist:
    def __init__(
        self, rules: tuple[Rule, ...] | list[Rule], locked: tuple[HostPattern, ...] = ()
    ) -> None:
        self._rules = tuple(rules)
        # Hosts no rule opens (locked.deny, docs/agents.md#the-locked-layer).
        self._locked = tuple(locked)
        self._host_rules_cached = functools.lru_cache(maxsize=CACHE_ENTRIES)(self._match_host)
        self._port_scheme_cached = functools.lru_cache(maxsize=CACHE_ENTRIES)(
            self._match_port_scheme
        )

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules, in config order (fixed: the caches depend on them)."""
        return self._rules

    def _match_host(self, host: str) -> tuple[Rule, ...]:
        return tuple(r for r in self._rules if r.host.matches(host))

    def _host_rules(self, host: str) -> tuple[Rule, ...]:
        if type(host) is str and len(host) <= CACHE_MAX_CHARS:
            return self._host_rules_cached(host)
        return self._match_host(host)

    def _match_port_scheme(
        self, host: str, port: int, scheme: str
    ) -> tuple[Decision | None, tuple[Rule, ...]]:
        """The first two stages of ``decide`` (the host has rules): the denial when no rule
        for the host allows the port, or the scheme, else the rules that allow both."""
        rules = self._host_rules(host)
        passing = tuple(r for r in rules if port in r.ports)
        if not passing:
            return Decision(False, Reason.PORT_NOT_ALLOWED, rules[0],
                            f"port {port} is not allowed for host {host!r}"), ()  # fmt: skip
        rules = passing
        passing = tuple(r for r in rules if scheme in r.schemes)
        if not passing:
            return Decision(False, Reason.SCHEME_NOT_ALLOWED, rules[0],
                            f"scheme {scheme} is not allowed for host {host!r}"), ()  # fmt: skip
        return None, passing

    def restricts_methods(self, host: str) -> bool:
        return any(r.methods is not None for r in self._host_rules(host))

    def _no_rule(self, host: str) -> Decision:
        if is_ip(host):
            return Decision(False, Reason.IP_LITERAL, None,
                            f"the address {host} is not named by any rule (an address is allowed only "
                            "by a rule that names it or its range)")  # fmt: skip
        return Decision(False, Reason.HOST_NOT_ALLOWED, None, f"no rule allows host {host!r}")

    def _locked_out(self, host: str) -> Decision | None:
        if self._locked and any(locks(p, host) for p in self._locked):
            return Decision(False, Reason.HOST_LOCKED, None,
                            f"host {host!r} is locked by the admin (locked.deny): no rule, and no "
                            "report mode, opens it")  # fmt: skip
        return None

    def decide_connect(self, host: str, port: int) -> Decision:
        """A CONNECT tunnel (or a new upstream connection): host and port only.

        Method and path are not known yet; they are decided per request inside the tunnel.
        """
        locked = self._locked_out(host)
        if locked is not None:
            return locked
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
        request names in override headers or ``_method`` parameters (egress.routing).

        Dimension by dimension, so that the reason names the first thing that failed on the
        rules for this host: port, scheme, method, path, WebSocket; a denial names the first
        rule still in play before the failing dimension."""
        locked = self._locked_out(host)
        if locked is not None:
            return locked
        rules: Sequence[Rule] = self._host_rules(host)
        if not rules:
            return self._no_rule(host)
        path_only = path.split("?", 1)[0] or "/"
        # Only work out a path's readings when a rule for this host restricts paths.
        readings, unjudgeable = (
            path_readings(path_only) if any(r.paths is not None for r in rules) else ([], None)
        )
        if (
            type(host) is str and type(port) is int and type(scheme) is str
            and len(host) <= CACHE_MAX_CHARS and len(scheme) <= 16
        ):  # fmt: skip
            denied, rules = self._port_scheme_cached(host, port, scheme)
        else:
            denied, rules = self._match_port_scheme(host, port, scheme)
        if denied is not None:
            return denied
        methods = list(dict.fromkeys([method.upper(), *overrides]))
        passing = [r for r in rules if r.methods is None or all(m in r.methods for m in methods)]
        if not passing:
            method_text = f"method {method}" + (
                f" (overridden to {', '.join(overrides)})" if overrides else ""
            )
            return Decision(False, Reason.METHOD_NOT_ALLOWED, rules[0],
                            f"{method_text} is not allowed for host {host!r}")  # fmt: skip
        rules = passing
        passing = [r for r in rules if path_allowed(r, readings, unjudgeable)]
        if not passing:
            path_text = f"path {path_only}" + (f" ({unjudgeable})" if unjudgeable else "")
            return Decision(False, Reason.PATH_NOT_ALLOWED, rules[0],
                            f"{path_text} is not allowed for host {host!r}")  # fmt: skip
        rules = passing
        passing = [r for r in rules if r.websocket or not websocket]
        if not passing:
            return Decision(False, Reason.WEBSOCKET_NOT_ALLOWED, rules[0],
                            f"a WebSocket upgrade is not allowed for host {host!r}")  # fmt: skip
        return Decision(True, Reason.ALLOWED, passing[0])


def locks(pattern: HostPattern, host: str) -> bool:
    """Does a locked.deny pattern cover ``host``? A deny entry takes a name and everything
    under it: ``pastebin.com`` and ``*.pastebin.com`` both deny pastebin.com and its
    subdomains (unlike an allow rule, where each covers only what it says)."""
    if pattern.kind == "address":
        return pattern.matches(host)
    base = pattern.text[2:] if pattern.kind == "wildcard" else pattern.text
    return host == base or host.endswith("." + base)


def path_allowed(rule: Rule, readings: list[str], unjudgeable: str | None) -> bool:
    """Every reading an upstream may route on must be under one of the rule's prefixes."""
    if rule.paths is None:
        return True
    if unjudgeable:
        return False
    return all(any(path_matches(p, r) for p in rule.paths) for r in readings)
