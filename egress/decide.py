"""One request's whole decision, without sending anything.

The same steps the proxy takes, as pure functions over plain data; the proxy runs the same
pieces in its hooks (each request check itself is in ``egress.request_checks``, the
allowlist, injection and grammar modules: one copy, shared). ``decide_url``: URL, allowlist and addresses (the conformance table).
``decide_request``: a whole request (headers and body too) through every check in the
proxy's order, the secret checks included, each step recorded (``egress check``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from egress import decoding
from egress.addresses import AddressPolicy
from egress.config import Rule, SecretSpec
from egress.encodings import SecretForms
from egress.errors import InvalidHost
from egress.grammar import fold_name, request_problem
from egress.hostnames import IPAddress, canonical_host, is_ip
from egress.injection import (
    Denial,
    RequestParts,
    host_leak,
    is_signed,
    plan,
    refuse_signed_body,
    surfaces_with,
    undecodable_body,
    unscannable_body,
)
from egress.policy import Allowlist, Decision, path_allowed
from egress.reasons import Reason, http_status
from egress.request_checks import (
    PROXY_ONLY_HEADERS,
    Problem,
    host_header_problem,
    proxy_header_problem,
    undecodable_form,
    unreadable_form,
    upgrade_problem,
    upgrade_tokens,
    userinfo_problem,
)
from egress.resolver import Refused
from egress.routing import body_override_methods, is_form, override_methods, path_readings
from egress.secretindex import SecretIndex
from egress.secrets import SecretValue

if TYPE_CHECKING:
    from egress.resolver import Picked


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    host: str  # canonical, or as given when it could not be canonicalised
    port: int
    scheme: str
    path: str
    address: IPAddress | None = None  # the address the proxy would dial
    refused: tuple[tuple[IPAddress, str], ...] = ()  # answers it would not dial, and why


def decide_url(
    allowlist: Allowlist,
    method: str,
    url: str,
    answers: Mapping[str, Sequence[str]] | None = None,
    addresses: AddressPolicy | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Outcome:
    """Decide ``method url``. With ``answers`` (name -> addresses, as DNS would give them)
    the address checks run too; without, only the allowlist is decided."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    raw_host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return Outcome(
            Decision(False, Reason.INVALID_HOST, None, f"invalid port in {url!r}"),
            raw_host,
            0,
            scheme,
            path,
        )
    if scheme not in ("http", "https"):
        return Outcome(Decision(False, Reason.SCHEME_NOT_ALLOWED, None, f"{scheme!r} is not proxied"), raw_host,
                       port, scheme, path)  # fmt: skip
    if parts.username is not None or parts.password is not None:
        d = Decision(False, Reason.USERINFO_IN_URL, None, "the URL carries credentials ('user@')")
        return Outcome(d, raw_host, port, scheme, path)
    try:
        host = canonical_host(raw_host)
    except InvalidHost as e:
        return Outcome(
            Decision(False, Reason.INVALID_HOST, None, str(e)), raw_host, port, scheme, path
        )
    overrides = override_methods(headers, path)
    d = allowlist.decide(scheme, host, port, method.upper(), path, False, overrides)
    if not d.allowed or answers is None:
        return Outcome(d, host, port, scheme, path)
    policy = addresses or AddressPolicy()
    if is_ip(host):
        found: list[IPAddress] = [ipaddress.ip_address(host)]
    else:
        found = [ipaddress.ip_address(a) for a in answers.get(host, ())]
    if not found:
        return Outcome(
            Decision(False, Reason.DNS_FAILURE, d.rule, f"{host!r} has no address"),
            host,
            port,
            scheme,
            path,
        )
    ok, refused = policy.usable(found, port)
    if not ok:
        listed = ", ".join(f"{a} ({why})" for a, why in refused)
        detail = f"{host!r} resolves only to addresses egress does not dial: {listed}"
        return Outcome(Decision(False, Reason.RESOLVED_PRIVATE, d.rule, detail), host, port, scheme, path,
                       refused=tuple(refused))  # fmt: skip
    return Outcome(d, host, port, scheme, path, ok[0], tuple(refused))


# --- One whole request, every check in the proxy's order (egress check) ------------------


@dataclass(frozen=True)
class Request:
    """A request as a client sends it through the proxy: method, URL (``http`` or
    ``https``), every header it sends (``Host`` included) and the body as sent."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


@dataclass(frozen=True)
class Step:
    """One check, in the proxy's order. ``passed`` is None when check cannot know (an
    address only the running proxy resolves) and for a check not reached."""

    check: str
    passed: bool | None
    detail: str
    reason: Reason | None = None
    reached: bool = True


@dataclass(frozen=True)
class RuleMatch:
    """One rule against the request, each dimension on its own."""

    rule: Rule
    host: bool
    port: bool
    scheme: bool
    method: bool
    path: bool
    websocket: bool

    @property
    def allows(self) -> bool:
        return all((self.host, self.port, self.scheme, self.method, self.path, self.websocket))


@dataclass(frozen=True)
class SecretMatch:
    """One secret against the request: bound to its host, and where its placeholder is."""

    spec: SecretSpec
    bound: bool
    placeholder_in: tuple[str, ...]


@dataclass
class Verdict:
    request: Request
    reason: Reason = Reason.ALLOWED
    detail: str = ""
    rule: Rule | None = None  # the rule that allowed, or the closest one that did not
    host: str = ""  # canonical once the host check passed
    port: int = 0
    scheme: str = ""
    path: str = "/"  # path and query
    websocket: bool = False
    overrides: list[str] = field(default_factory=list)
    address: IPAddress | None = None  # the address the proxy would dial, when known here
    secret: str | None = None  # the secret a secret check named
    injected: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    rules: list[RuleMatch] = field(default_factory=list)
    secrets: list[SecretMatch] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.reason is Reason.ALLOWED

    @property
    def decision(self) -> str:
        """allow, deny, or error (the proxy could not do what the request needs), as in the
        audit record."""
        if self.allowed:
            return "allow"
        return "deny" if http_status(self.reason) < 500 else "error"


# Answers a name without sending anything: the resolver's Picked or Refused, or None when
# only the running proxy can know (it would send a DNS query).
Resolve = Callable[[str, int], "Picked | Refused | None"]

# The proxy's order. HTTPS: the CONNECT's checks, then the request's inside the tunnel.
# Plain HTTP: the request's, then the address. See docs/policy.md: The steps, in order.
STEPS_HTTPS = ("url", "userinfo", "host", "host name", "tunnel", "address", "grammar",
               "proxy header", "host header", "upgrade", "allowlist", "streamed form", "body size",
               "secrets", "body method", "body encoding", "body secrets")  # fmt: skip
STEPS_HTTP = ("url", "grammar", "userinfo", "host", "proxy header", "host header", "host name",
              "upgrade", "allowlist", "address", "streamed form", "body size", "secrets",
              "body method", "body encoding", "body secrets")  # fmt: skip
# Steps whose refusal names no rule (the others name the rule that allowed the request
# so far, or the closest one that did not).
RULELESS_STEPS = frozenset({"url", "userinfo", "host", "host name", "grammar", "proxy header",
                            "host header", "upgrade", "body size"})  # fmt: skip
ALLOWLIST_REASONS = frozenset({Reason.HOST_NOT_ALLOWED, Reason.IP_LITERAL, Reason.PORT_NOT_ALLOWED,
                               Reason.SCHEME_NOT_ALLOWED, Reason.METHOD_NOT_ALLOWED,
                               Reason.PATH_NOT_ALLOWED, Reason.WEBSOCKET_NOT_ALLOWED})  # fmt: skip


class _Refused(Exception):
    def __init__(self, reason: Reason, detail: str, secret: str | None = None):
        super().__init__(reason.value)
        self.reason, self.detail, self.secret = reason, detail, secret


def match_rules(
    allowlist: Allowlist, scheme: str, host: str, port: int, methods: Sequence[str], path: str,
    websocket: bool,
) -> list[RuleMatch]:  # fmt: skip
    """Every rule against the request, each dimension on its own (for explaining a
    decision; the decision itself is Allowlist.decide's)."""
    readings, unjudgeable = path_readings(path.split("?", 1)[0] or "/")
    return [
        RuleMatch(
            rule=r,
            host=r.host.matches(host),
            port=port in r.ports,
            scheme=scheme in r.schemes,
            method=r.methods is None or all(m in r.methods for m in methods),
            path=path_allowed(r, readings, unjudgeable),
            websocket=r.websocket or not websocket,
        )  # fmt: skip
        for r in allowlist.rules
    ]


def _raw_host(netloc: str) -> str:
    """The host of a URL's authority as written (no userinfo, port or brackets)."""
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("[") and "]" in hostport:
        return hostport[1 : hostport.index("]")]
    return hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport


def decide_request(
    req: Request,
    allowlist: Allowlist,
    secrets: Sequence[tuple[SecretSpec, SecretValue | None]],
    forms: dict[str, list[SecretForms]] | SecretIndex,
    *,
    max_body_bytes: int,
    resolve: Resolve,
    transparent: bool = False,
    granted: frozenset[str] | None = None,
) -> Verdict:
    """Decide one request the way the proxy does, every check in the proxy's order, and
    record each one. ``secrets``: each secret and its value (None: not loaded); the leak
    guard looks for the ``forms`` given (none: placeholders only). ``allowlist`` and
    ``granted``: the requesting agent's (egress.runtime.AgentView). Pure but for ``resolve``.
    """
    parts = urlsplit(req.url)
    scheme = parts.scheme.lower()
    method = req.method
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = list(req.headers)
    host_headers = [value for name, value in headers if name.lower() == "host"]
    body = req.body or None
    streamed = body is not None and len(body) > max_body_bytes  # mitmproxy streams it
    content_type = next((val for k, val in headers if k.lower() == "content-type"), "")
    encoding = next((val for k, val in headers if k.lower() == "content-encoding"), "")
    specs = [s for s, _ in secrets]
    raw_host = _raw_host(parts.netloc)
    v = Verdict(req, host=raw_host, scheme=scheme, path=path)
    state: dict[str, Any] = {}

    def refuse(reason: Reason, detail: str, secret: str | None = None) -> NoReturn:
        raise _Refused(reason, detail, secret)

    def refuse_on(problem: Problem | None) -> None:
        if problem is not None:
            refuse(*problem)

    def url() -> str:
        try:
            v.port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            refuse(Reason.INVALID_HOST, f"invalid port in {req.url!r}")
        if scheme not in ("http", "https"):
            refuse(Reason.SCHEME_NOT_ALLOWED, f"{scheme!r} is not proxied")
        return f"scheme {scheme}, port {v.port}"

    def userinfo() -> str:
        refuse_on(userinfo_problem(parts.netloc))
        return "the URL carries no 'user@'"

    def host() -> str:
        try:
            v.host = canonical_host(raw_host)
        except InvalidHost as e:
            refuse(Reason.INVALID_HOST, str(e))
        return f"canonical host {v.host!r}"

    def host_name() -> str:
        named = raw_host if scheme == "https" else (host_headers[0] if host_headers else raw_host)
        leak = host_leak([named, v.host], v.host, specs, forms)
        if leak is not None:
            refuse(leak.reason, leak.detail, leak.secret)
        return "no placeholder or value of a secret bound elsewhere in the host name"

    def tunnel() -> str:
        d = allowlist.decide_connect(v.host, v.port)
        v.rule = d.rule
        if not d.allowed:
            refuse(d.reason, d.detail)
        return f"CONNECT {v.host}:{v.port} is allowed by {d.rule_label}"

    def address() -> str | None:
        picked = resolve(v.host, v.port)
        if picked is None:
            return None
        if isinstance(picked, Refused):
            refuse(picked.reason, picked.detail)
        v.address = picked.address
        refused = "".join(f"; not {a} ({why})" for a, why in picked.refused)
        return f"dials {picked.address}{refused}"

    def grammar() -> str:
        # Inside a tunnel (and when redirected) the target is a path; plain HTTP through the
        # proxy names its authority.
        absolute = scheme == "http" and not transparent
        authority = parts.netloc.encode("utf-8", "surrogateescape") if absolute else b""
        fields = [(k.encode("utf-8", "surrogateescape"), val.encode("utf-8", "surrogateescape"))
                  for k, val in headers]  # fmt: skip
        problem = request_problem(method.encode("utf-8", "surrogateescape"), scheme.encode(),
                                  authority, path.encode("utf-8", "surrogateescape"), fields,
                                  http2=False, tls=scheme == "https")  # fmt: skip
        if problem is not None:
            refuse(Reason.MALFORMED_REQUEST, problem)
        return "method, target and headers are well formed"

    def proxy_header() -> str:
        refuse_on(proxy_header_problem(headers))
        return "no 'Proxy' header"

    def host_header() -> str:
        refuse_on(host_header_problem(v.host, v.port, scheme, host_headers))
        return f"the Host header {host_headers[0]!r} names the host"

    def upgrade() -> str:
        tokens = upgrade_tokens(headers)
        refuse_on(upgrade_problem(tokens))
        v.websocket = tokens == ["websocket"]
        return "a WebSocket upgrade" if v.websocket else "no upgrade"

    def allow() -> str:
        v.overrides = override_methods(headers, path)
        d = allowlist.decide(scheme, v.host, v.port, method, path, v.websocket, v.overrides)
        v.rule = d.rule
        if not d.allowed:
            refuse(d.reason, d.detail)
        return f"allowed by {d.rule_label}"

    def streamed_form() -> str:
        refuse_on(unreadable_form(streamed, content_type, allowlist, v.host, max_body_bytes))
        return "no form body too large to check for '_method'"

    def body_size() -> str:
        denial = unscannable_body(len(body or b""), max_body_bytes, specs, v.host)
        if denial is not None:
            refuse(denial.reason, denial.detail)
        if streamed:
            return f"the body ({len(body or b'')} bytes) streams unread: no secret on this host injects into bodies"  # fmt: skip
        return "the body is read whole" if body else "no body"

    def in_headers() -> str:
        sent = tuple((k, val) for k, val in headers if fold_name(k) not in PROXY_ONLY_HEADERS)
        first = RequestParts(scheme, v.host, method, path, sent, None, content_type, transparent)
        state["signed"] = is_signed(first)
        result = plan(first, list(secrets), forms, granted=granted)
        if isinstance(result, Denial):
            refuse(result.reason, result.detail, result.secret)
        if result.resign is not None:
            spec, signed = result.resign
            v.injected.append(spec.name)
            return (f"{spec.name} (aws_sigv4): signed with its placeholder key id for "
                    f"{signed.service} in {signed.region} ({signed.form} form); egress signs it "
                    "again with the real key")  # fmt: skip
        v.injected += result.injected
        if result.sign_azure is not None:
            v.injected.append(result.sign_azure.name)
            return (f"{result.sign_azure.name} (azure_shared_key): signed with Shared Key for "
                    f"account {result.sign_azure.azure_account!r}; egress signs it again with the "
                    "real key")  # fmt: skip
        if result.sign_hmac is not None and result.sign_hmac.hmac is not None:
            v.injected.append(result.sign_hmac.name)
            return (f"{result.sign_hmac.name} (hmac): its placeholder is the "
                    f"{result.sign_hmac.hmac.header} header; egress writes the signature there "
                    "once the body is in")  # fmt: skip
        return _injected("headers, path and query", result.injected)

    def body_method() -> str:
        if body is None or streamed:
            return "no body read"
        if not is_form(content_type) or not allowlist.restricts_methods(v.host):
            return "not a form body, or no rule for this host restricts methods"
        try:
            decoded = decoding.decode(body, encoding, max_body_bytes)
        except decoding.DecodeError:
            refuse(*undecodable_form(v.host))
        in_body = body_override_methods(decoded, content_type)
        if not in_body:
            return "no '_method' in the form body"
        v.overrides = [*override_methods(headers, path), *in_body]
        d = allowlist.decide(scheme, v.host, v.port, method, path, False, v.overrides)
        if not d.allowed:
            v.rule = d.rule
            refuse(d.reason, d.detail)
        return f"'_method' {', '.join(in_body)} is allowed by {d.rule_label}"

    def body_encoding() -> str:
        if body is None or streamed:
            return "no body read"
        try:
            state["body"] = decoding.decode(body, encoding, max_body_bytes)
        except decoding.DecodeError:
            denial = undecodable_body(encoding, max_body_bytes)
            refuse(denial.reason, denial.detail)
        return f"decoded ({encoding})" if encoding else "not encoded"

    def body_secrets() -> str:
        decoded = state.get("body")
        if not decoded:
            return "no body read"
        second = RequestParts(scheme, v.host, method, "/", (), decoded, content_type, transparent)
        result = refuse_signed_body(plan(second, list(secrets), forms, granted=granted),
                                    state.get("signed", False))  # fmt: skip
        if isinstance(result, Denial):
            refuse(result.reason, result.detail, result.secret)
        v.injected += result.injected
        return _injected("body", result.injected)

    checks: dict[str, Callable[[], str | None]] = {
        "url": url, "userinfo": userinfo, "host": host, "host name": host_name, "tunnel": tunnel,
        "address": address, "grammar": grammar, "proxy header": proxy_header,
        "host header": host_header, "upgrade": upgrade, "allowlist": allow,
        "streamed form": streamed_form, "body size": body_size, "secrets": in_headers,
        "body method": body_method, "body encoding": body_encoding, "body secrets": body_secrets,
    }  # fmt: skip
    order = STEPS_HTTP if scheme == "http" else STEPS_HTTPS
    for i, check in enumerate(order):
        try:
            detail = checks[check]()
        except _Refused as e:
            v.reason, v.detail, v.secret = e.reason, e.detail, e.secret
            if check in RULELESS_STEPS:
                v.rule = None  # refused on its own, not by or after a rule (as audited)
            v.steps.append(Step(check, False, e.detail, e.reason))
            v.steps += [Step(c, None, "not reached", reached=False) for c in order[i + 1 :]]
            break
        if detail is None:
            v.steps.append(Step(check, None, "not in upstream.resolve: the running proxy "
                                "resolves it and checks every answer before it dials"))  # fmt: skip
        else:
            v.steps.append(Step(check, True, detail))
    if any(s.check == "host" and s.passed for s in v.steps):
        v.rules = match_rules(allowlist, scheme, v.host, v.port, [method, *v.overrides], path,
                              v.websocket)  # fmt: skip
        whole = RequestParts(scheme, v.host, method, path, tuple(headers), body)
        v.secrets = [SecretMatch(s, s.bound_to(v.host), tuple(surfaces_with(whole, s.placeholder)))
                     for s in specs]  # fmt: skip
    return v


def _injected(where: str, names: list[str]) -> str:
    if names:
        return f"injects {', '.join(names)} ({where})"
    return f"nothing to inject and nothing of a secret bound elsewhere ({where})"
