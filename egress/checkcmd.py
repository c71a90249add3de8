"""``egress check``: the proxy's decision on requests, without sending anything.

check builds each request the way a client sends it through the proxy (``Host``, the
headers given, the body, a WebSocket upgrade) and runs it through every check the proxy
runs, in the proxy's order (``egress.decide.decide_request``): URL, host name, allowlist,
address (from ``upstream.resolve`` only: check sends no DNS query), request grammar and
identity, then the secret checks. It loads the secrets the way ``egress run`` does, so a
config the proxy cannot start with fails here with the same message (exit 2), and the leak
guard looks for the real values too. No output ever shows a secret value.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from egress.addresses import AddressPolicy
from egress.agents import AgentView, agent_views, locked_networks
from egress.audit import AuditWriter
from egress.config import Config, SecretSpec
from egress.decide import (
    ALLOWLIST_REASONS,
    Request,
    RuleMatch,
    SecretMatch,
    Step,
    Verdict,
    decide_request,
)
from egress.errors import EgressError
from egress.hostnames import IPNetwork, is_ip
from egress.messages import how_to_allow
from egress.reasons import http_status
from egress.resolver import Picked, Refused, Resolver
from egress.runtime import Runtime, address_policy
from egress.secretindex import SecretIndex
from egress.secrets import SecretValue

# What a client adds to ask for a WebSocket upgrade (the key is any 16 bytes, base64).
WEBSOCKET_HEADERS = (
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "ZWdyZXNzLWNoZWNrLWtleQ=="),
)
FORM = "application/x-www-form-urlencoded"  # curl's content type for -d


class UsageError(EgressError):
    """Bad input to check itself (a header, a --file line): exit 2 like a config error."""


def add_arguments(ck: argparse.ArgumentParser, cfg_help: str) -> None:
    ck.add_argument("--config", "-c", help=cfg_help)
    ck.add_argument(
        "--method", "-X",
        help="the method for URLs given without one (default GET, or POST with --data)",
    )  # fmt: skip
    ck.add_argument(
        "--header", "-H", action="append", default=[], metavar="'NAME: VALUE'",
        help="a header the request carries (repeatable)",
    )  # fmt: skip
    ck.add_argument(
        "--data", "-d", metavar="DATA",
        help="the request body; @FILE reads it from FILE (its bytes as they are), @- from stdin. "
        f"Like curl: POST unless --method says otherwise, Content-Type {FORM} unless a header "
        "says otherwise",
    )  # fmt: skip
    ck.add_argument(
        "--websocket", action="store_true",
        help="the request asks for a WebSocket upgrade (also implied by ws:// and wss:// URLs)",
    )  # fmt: skip
    ck.add_argument(
        "--file", "-f", metavar="FILE", action="append", default=[],
        help="read requests from FILE, one '[METHOD] URL' a line ('#' starts a comment line)",
    )  # fmt: skip
    ck.add_argument(
        "--explain", action="store_true",
        help="list every check in the proxy's order, every rule and every secret, and why each "
        "matched or not",
    )  # fmt: skip
    ck.add_argument(
        "--agent", metavar="NAME",
        help="decide as this agent (agents: in the config): the shared rules and its own, and "
        "only the secrets granted to it. Required when the config defines agents",
    )  # fmt: skip
    ck.add_argument("--format", choices=["text", "json"], default="text")
    ck.add_argument(
        "--no-secrets", action="store_true",
        help="do not load the secrets (no Vault, env or file): the placeholder checks still run, "
        "the leak guard for real values does not, and a secret that cannot be loaded goes "
        "unnoticed",
    )  # fmt: skip
    ck.add_argument("url", nargs="*", help="the URLs to decide")


@dataclass(frozen=True)
class Asked:
    """One request to decide, as the user wrote it."""

    method: str
    url: str  # as given (ws:// and wss:// included)
    request: Request


def read_file(path: str) -> list[tuple[str | None, str]]:
    """``[METHOD] URL`` lines; blank lines and lines starting with '#' are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise UsageError(f"--file {path}: {why}") from None
    out: list[tuple[str | None, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 2:
            raise UsageError(f"{path}:{n}: expected '[METHOD] URL', got {line.strip()!r}")
        out.append((words[0], words[1]) if len(words) == 2 else (None, words[0]))
    return out


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or name != name.strip():
        raise UsageError(f"--header {text!r}: write it as 'Name: value'")
    return name, value.strip(" \t")


def read_data(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as e:
            raise UsageError(f"--data {data}: {e.strerror}") from None
    return data.encode("utf-8", "surrogateescape")


def build(
    method: str | None, url: str, headers: Sequence[tuple[str, str]], body: bytes | None,
    websocket: bool,
) -> Asked:  # fmt: skip
    """The request a client (curl, httpx) sends for this URL: ``Host`` from the URL unless
    given, the body with its Content-Type and Content-Length, the WebSocket upgrade."""
    method = (method or ("POST" if body is not None else "GET")).upper()
    parts = urlsplit(url)
    sent_url = url
    if parts.scheme.lower() in ("ws", "wss"):
        websocket = True
        sent_url = urlunsplit(
            parts._replace(scheme="https" if parts.scheme.lower() == "wss" else "http")
        )
    names = {k.lower() for k, _ in headers}
    out: list[tuple[str, str]] = []
    if "host" not in names:
        out.append(("Host", parts.netloc.rpartition("@")[2]))
    out += headers
    if body is not None:
        if "content-type" not in names:
            out.append(("Content-Type", FORM))
        if "content-length" not in names:
            out.append(("Content-Length", str(len(body))))
    if websocket and "upgrade" not in names:
        out += [h for h in WEBSOCKET_HEADERS if h[0].lower() not in names]
    return Asked(method, url, Request(method, sent_url, tuple(out), body))


def requests_from(args: argparse.Namespace) -> list[Asked]:
    headers = [parse_header(h) for h in args.header]
    body = read_data(args.data)
    wanted: list[tuple[str | None, str]] = [(None, u) for u in args.url]
    for path in args.file:
        wanted += read_file(path)
    if not wanted:
        raise UsageError("check needs a URL: egress check [options] URL... (or --file FILE)")
    return [build(m or args.method, u, headers, body, args.websocket) for m, u in wanted]


def static_resolve(
    cfg: Config, private: tuple[IPNetwork, ...] | None = None
) -> Callable[[str, int], Picked | Refused | None]:
    """The running proxy's resolver, asked only where it sends no DNS query: addresses,
    names in upstream.resolve, and every name with ``upstream.dns: static``. ``private``:
    an agent's private ranges (AgentView.private), instead of the shared ones."""
    policy = address_policy(cfg) if private is None else AddressPolicy(private)
    if cfg.listen_port:
        # The proxy never dials itself (Runtime.listening_on); with a fixed listen port,
        # check knows that listener too. (exec and port 0 pick theirs when they start.)
        own = (ipaddress.ip_address(cfg.listen_host), cfg.listen_port)
        policy = AddressPolicy(policy.allowed, (*policy.own, own))
    resolver = Resolver(cfg.resolve, policy, static_only=cfg.dns == "static",
                        locked=locked_networks(cfg))  # fmt: skip

    def resolve(host: str, port: int) -> Picked | Refused | None:
        if is_ip(host) or host in resolver.static or resolver.static_only:
            return asyncio.run(resolver.pick(host, port))
        return None

    return resolve


def agent_view(cfg: Config, name: str | None) -> AgentView:
    """The view to decide with, as the proxy has it: the agent's, or the one view of a
    config without agents. Raises UsageError when the agent is missing or unknown."""
    default, views = agent_views(cfg)
    if not cfg.agents:
        if name is not None:
            raise UsageError(f"--agent {name}: {cfg.path} defines no agents")
        return default
    names = ", ".join(views)
    if name is None:
        raise UsageError(
            f"{cfg.path} defines agents ({names}): say which one asks with --agent NAME"
        )
    if name not in views:
        raise UsageError(f"--agent {name}: not an agent of {cfg.path} (agents: {names})")
    return views[name]


def run(cfg: Config, args: argparse.Namespace) -> int:
    asked = requests_from(args)
    view = agent_view(cfg, getattr(args, "agent", None))
    if view.mode != cfg.mode:
        cfg = replace(cfg, mode=view.mode)  # the agent's own mode says what is enforced
    rt: Runtime | None = None
    if not args.no_secrets:
        # As egress exec starts: every secret loaded (Vault too) or the same error, a CA that
        # stays in a private directory, nothing listening, nothing written for clients.
        rt = Runtime.start(cfg, audit=AuditWriter("stderr"), private_ca=True)
    try:
        if rt is not None:
            secrets = [(s, rt.secrets.get(s.name)) for s in cfg.secrets]
            forms = rt.index()  # built once, as the proxy builds it
            redact: Callable[[str], str] = rt.redact
        else:
            # Placeholders only: a stand-in value lets the placeholder checks run through.
            secrets = [(s, SecretValue(s.placeholder)) for s in cfg.secrets]
            forms = SecretIndex([], cfg.secrets, {s.name: v for s, v in secrets})
            redact = _same
        resolve = static_resolve(cfg, view.private)
        verdicts = [
            decide_request(
                a.request,
                view.allowlist,
                secrets,
                forms,
                max_body_bytes=cfg.max_body_bytes,
                resolve=resolve,
                transparent=cfg.listen_mode == "transparent",
                granted=view.granted,
            )
            for a in asked
        ]
        if args.format == "json":
            items = [_as_json(cfg, a, v, args.explain, redact, rt is not None) for a, v in zip(asked, verdicts, strict=True)]  # fmt: skip
            text = json.dumps(items, indent=2) + "\n"
        else:
            blocks = [_as_text(cfg, a, v, args.explain, rt is not None) for a, v in zip(asked, verdicts, strict=True)]  # fmt: skip
            text = "\n".join(blocks)
        sys.stdout.write(redact(text))
        sys.stdout.flush()
    finally:
        if rt is not None:
            rt.close()
    return 0 if all(v.allowed for v in verdicts) else 1


def _join(items: tuple[object, ...]) -> str:
    """A rule's list as a person reads it: "GET, POST", not a Python list."""
    return ", ".join(str(i) for i in items)


def _same(text: str) -> str:
    return text


def _hint(a: Asked, v: Verdict) -> str | None:
    if v.reason not in ALLOWLIST_REASONS:
        return None
    return how_to_allow(v.reason, v.host, v.port, v.scheme, a.method, v.path, v.rule)


def _label(v: Verdict) -> str | None:
    return v.rule.label if v.rule else None


def _secrets_line(v: Verdict) -> str:
    if v.injected:
        label = {"aws_sigv4": "re-signed", "azure_shared_key": "re-signed", "hmac": "signed"}
        return ", ".join(f"{s.name} ({label.get(s.scheme, 'injected')})"
                         for m in v.secrets if (s := m.spec).name in v.injected)  # fmt: skip
    bound = [m.spec for m in v.secrets if m.bound]
    if not bound:
        return "none bound to this host"
    names = ", ".join(s.name + ("" if v.scheme == "https" or s.allow_http else " (https only)")
                      for s in bound)  # fmt: skip
    return f"{names} (bound to this host; injected where the request carries a placeholder, this one carries none)"  # fmt: skip


def _as_text(cfg: Config, a: Asked, v: Verdict, explain: bool, loaded: bool) -> str:
    lines: list[str] = []
    if v.allowed:
        r = v.rule
        assert r is not None
        lines.append(f"ALLOW {a.method} {a.url}")
        lines.append(f"  rule:    {r.label} (host {r.host}; ports {_join(r.ports)}; schemes {_join(r.schemes)}"
                     + (f"; methods {_join(r.methods)}" if r.methods else "")
                     + (f"; paths {_join(r.paths)}" if r.paths else "")
                     + ("; websocket" if r.websocket else "") + ")"
                     + (f" in {r.origin}" if r.origin else ""))  # fmt: skip
        lines.append(f"  secrets: {_secrets_line(v)}")
        if v.address is not None:
            where = "an address" if is_ip(v.host) else "from upstream.resolve"
            lines.append(f"  address: {v.address} ({where})")
        else:
            lines.append("  address: resolved and checked by the running proxy when it connects")
    else:
        lines.append(f"DENY {a.method} {a.url}")
        lines.append(f"  reason:  {v.reason.value} ({http_status(v.reason)})")
        if v.rule is not None:
            lines.append(
                f"  rule:    {v.rule.label}" + (f" in {v.rule.origin}" if v.rule.origin else "")
            )
        if v.secret:
            lines.append(f"  secret:  {v.secret}")
        lines.append(f"  why:     {v.detail}")
        hint = _hint(a, v)
        if hint:
            lines.append("  to allow it, " + hint.replace("\n", "\n    "))
        if cfg.mode == "report" and v.reason in ALLOWLIST_REASONS:
            lines.append(
                "  mode:    report: the running proxy lets it through and records would_deny"
            )
    if not loaded:
        lines.append(
            "  note:    secrets not loaded (--no-secrets): real values were not looked for"
        )
    lines.append(f"  config:  {cfg.path}")
    if explain:
        lines += _explain_text(v)
    return "\n".join(lines) + "\n"


def _result(step: Step) -> str:
    """pass, FAIL, ? (only the running proxy can know) or - (not reached)."""
    if not step.reached:
        return "-"
    return {True: "pass", False: "FAIL", None: "?"}[step.passed]


_JSON_RESULT = {"pass": "pass", "FAIL": "fail", "?": "unknown", "-": "not reached"}


def _explain_text(v: Verdict) -> list[str]:
    lines = ["  checks, in the proxy's order (FAIL: the first that failed decides; ?: only the running proxy knows):"]  # fmt: skip
    width = max(len(s.check) for s in v.steps)
    for s in v.steps:
        detail = f"{s.reason.value}: {s.detail}" if s.reason else s.detail
        lines.append(f"    {_result(s):4}  {s.check:{width}}  {detail}")
    if v.rules:
        methods = ", ".join(dict.fromkeys([v.request.method, *v.overrides]))
        lines.append(f"  rules, in order (host {v.host}, port {v.port}, scheme {v.scheme}, method {methods}, "
                     f"path {v.path.split('?', 1)[0]}, websocket {'yes' if v.websocket else 'no'}):")  # fmt: skip
        for m in v.rules:
            cols = "  ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in _columns(m))
            verdict = "allows" if m.allows else "does not allow"
            lines.append(f"    {m.rule.label} ({m.rule.host}): {cols}: {verdict}")
    elif not v.host or not any(s.check == "host" and s.passed for s in v.steps):
        lines.append("  rules: not compared (the URL has no valid host)")
    if v.secrets:
        lines.append("  secrets:")
        for sm in v.secrets:
            lines.append(f"    {sm.spec.name}: {_secret_text(v, sm)}")
    return lines


def _columns(m: RuleMatch) -> list[tuple[str, bool]]:
    return [("host", m.host), ("port", m.port), ("scheme", m.scheme), ("method", m.method),
            ("path", m.path), ("websocket", m.websocket)]  # fmt: skip


def _minted_from(spec: SecretSpec) -> str:
    """What a reviewer needs about a minted token: its kind, where it comes from, its scope."""
    m = spec.mint
    assert m is not None
    if m.type == "github_app":
        scope = (
            ", ".join([*m.repositories, *(f"{k}:{v}" for k, v in m.permissions)])
            or "the installation's"
        )
        return f"GitHub App installation token (app {m.app_id}, installation {m.installation_id}; {scope})"
    where = m.token_url or "the key file's token_uri"
    scopes = f"; scopes {' '.join(m.scopes)}" if m.scopes else ""
    return f"{m.type} token minted from {where}{scopes}"


def _secret_text(v: Verdict, sm: SecretMatch) -> str:
    spec = sm.spec
    where = f"in the {', '.join(sm.placeholder_in)}" if sm.placeholder_in else "not in the request"
    if not sm.bound:
        hosts = ", ".join(h.text for h in spec.hosts)
        text = f"bound to {hosts}, not to this host; its placeholder is {where}"
    elif spec.scheme == "hmac" and spec.hmac is not None:
        text = (f"bound to this host; its placeholder, as the whole {spec.hmac.header} header, is "
                f"replaced by an HMAC-{spec.hmac.algorithm.upper()} signature of the request made "
                f"with the real key (over https only); its placeholder is {where}")  # fmt: skip
    elif spec.scheme == "azure_shared_key":
        text = (f"bound to this host; requests signed with Shared Key for account "
                f"{spec.azure_account!r} are signed again with the real account key (over https "
                f"only); its placeholder is {where}")  # fmt: skip
    elif spec.scheme == "aws_sigv4":
        text = (f"bound to this host; requests signed (AWS SigV4) with its placeholder key id "
                f"are signed again with the real key (over https only); its placeholder is {where}")  # fmt: skip
    else:
        https = "" if v.scheme == "https" or spec.allow_http else " (over https only)"
        minted = f" as a {_minted_from(spec)}" if spec.mint else ""
        text = (f"bound to this host, injected into {', '.join(sorted(spec.surfaces))}{https}{minted}; "
                f"its placeholder is {where}")  # fmt: skip
    if spec.name in v.injected:
        return text + (
            ": signed"
            if spec.scheme == "hmac"
            else ": re-signed"
            if spec.scheme != "static"
            else ": injected"
        )
    if v.secret == spec.name:
        return text + f": refused ({v.reason.value})"
    return text


def _as_json(
    cfg: Config, a: Asked, v: Verdict, explain: bool, redact: Callable[[str], str], loaded: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "method": a.method,
        "url": redact(a.url),
        "decision": v.decision,
        "reason": v.reason.value,
        "status": http_status(v.reason),
        "rule": _label(v),
        "detail": redact(v.detail) if v.detail else None,
        "secrets": list(v.injected),
        "secret": v.secret,
        "host": redact(v.host),
        "port": v.port,
        "scheme": v.scheme,
        "websocket": v.websocket,
        "address": str(v.address) if v.address is not None else None,
        "hint": _hint(a, v),
        "secrets_loaded": loaded,
        "config": cfg.path,
    }
    if cfg.mode == "report":
        out["would_deny"] = v.reason.value if v.reason in ALLOWLIST_REASONS else None
    if explain:
        out["steps"] = [
            {"check": s.check, "result": _JSON_RESULT[_result(s)],
             "reason": s.reason.value if s.reason else None, "detail": redact(s.detail)}
            for s in v.steps
        ]  # fmt: skip
        out["rules"] = [
            {"rule": m.rule.label, "host": m.rule.host.text, "allows": m.allows,
             "matches": dict(_columns(m))}
            for m in v.rules
        ]  # fmt: skip
        out["secret_checks"] = [
            {"secret": sm.spec.name, "bound": sm.bound, "placeholder_in": list(sm.placeholder_in),
             "scheme": sm.spec.scheme, "mint": sm.spec.mint.type if sm.spec.mint else None,
             "inject": sorted(sm.spec.surfaces) if sm.spec.scheme == "static" else [],
             "injected": sm.spec.name in v.injected}
            for sm in v.secrets
        ]  # fmt: skip
    return out
