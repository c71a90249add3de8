"""Placeholder scanning and secret substitution, as pure functions over plain data.

For every secret and every request:
- on a host the secret is NOT bound to, its placeholder or its real value anywhere in the
  request blocks the request (an exfiltration attempt or a config error);
- on a bound host, the placeholder is replaced by the real value in the surfaces the
  secret allows (headers by default; query and body by opt-in), over verified HTTPS only
  unless the secret allows plain http; a placeholder in any other surface blocks the
  request rather than being forwarded;
- a secret that is needed but not loaded fails the request closed (503): a placeholder is
  never forwarded in place of a secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from urllib.parse import quote, quote_plus

from egress import azuresign, hmacsign, sigv4
from egress.awsplan import foreign_aws_key, resign_check
from egress.config import SecretSpec
from egress.deepfind import find_deep
from egress.encodings import Pause, SecretForms, no_pause, value_forms
from egress.grammar import fold_name
from egress.reasons import Reason

# The request's parts and the answers live in egress.requestparts (egress.awsplan needs
# them too); they are imported from here as well.
from egress.requestparts import (  # noqa: F401
    Denial,
    Header,
    Injection,
    RequestParts,
    https_only,
    unavailable,
    utc_now,
)
from egress.secretindex import SecretIndex
from egress.secrets import SecretValue


def _decode_basic(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        return base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None  # ValueError: a token with characters outside ASCII


def surfaces_with(req: RequestParts, needle: str) -> list[str]:
    """Where does ``needle`` occur in the request? Surfaces: header, path, query, body."""
    found: list[str] = []
    path, _, query = req.path.partition("?")
    for _, value in req.headers:
        if needle in value or needle in (_decode_basic(value) or ""):
            found.append("headers")
            break
    if needle in path:
        found.append("path")
    if needle in query:
        found.append("query")
    if req.body and needle.encode() in req.body:
        found.append("body")
    return found


def _body_replacement(content_type: str, value: str) -> bytes:
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct == "application/x-www-form-urlencoded":
        return quote_plus(value).encode()
    if ct == "application/json" or ct.endswith("+json"):
        return json.dumps(value)[1:-1].encode()
    return value.encode()


def _substitute_header(value: str, placeholder: str, secret: str) -> str:
    decoded = _decode_basic(value)
    if decoded is not None and placeholder in decoded:
        # git and many clients send a token as the password of Basic auth.
        token = base64.b64encode(decoded.replace(placeholder, secret).encode("utf-8")).decode()
        return value.split(" ", 1)[0] + " " + token
    return value.replace(placeholder, secret)


def _leaked(
    req: RequestParts, index: SecretIndex, guard: frozenset[int], pause: Pause = no_pause
) -> tuple[str, str] | None:
    """(secret name, where and how) for the first real secret value in the request, however
    deeply encoded (egress.deepfind: percent-decoded up to three times, hex with delimiters,
    JSON values joined, wrapped base64...), among the values in ``guard``. One pass per view
    of each surface for all secrets."""
    if not guard:
        return None
    path, _, query = req.path.partition("?")
    surfaces = [("headers", "\n".join(f"{k}: {v}" for k, v in req.headers).encode("utf-8", "surrogateescape")),
                ("path", path.encode("utf-8", "surrogateescape")),
                ("query", query.encode("utf-8", "surrogateescape")),
                ("body", req.body or b"")]  # fmt: skip
    for name, data in surfaces:
        found = find_deep(data, index, guard, pause)
        if found:
            return found[0], f"{name} ({found[1]})"
    return None


def placeholder_surfaces(req: RequestParts, index: SecretIndex) -> dict[int, list[str]]:
    """For each secret (index into ``index.specs``) whose placeholder is in the request: the
    surfaces it is in, as ``surfaces_with`` lists them. One pass per surface for all."""
    path, _, query = req.path.partition("?")
    header_text = "\n".join(
        [v for _, v in req.headers] + [d for _, v in req.headers if (d := _decode_basic(v))]
    )
    found: dict[int, list[str]] = {}
    for surface, data in (("headers", header_text.encode("utf-8", "surrogateescape")),
                          ("path", path.encode("utf-8", "surrogateescape")),
                          ("query", query.encode("utf-8", "surrogateescape")),
                          ("body", req.body or b"")):  # fmt: skip
        for k in index.placeholders_in(data):
            found.setdefault(k, []).append(surface)
    return found


def is_signed(req: RequestParts) -> bool:
    """AWS SigV4, in a header or a presigned URL."""
    if any(k.lower() == "authorization" and v.startswith("AWS4-") for k, v in req.headers):
        return True
    return "x-amz-signature=" in req.path.lower()


def _foreign_credential(req: RequestParts, index: SecretIndex) -> Denial | None:
    """On a host with bound secrets, the headers those secrets use must carry one of their
    placeholders or be absent: the agent must not log in with a credential of its own."""
    header_owners = index.host(req.host).header_owners
    if not header_owners:
        return None
    for name, value in req.headers:
        # X_Api_Key is X-Api-Key to CGI/WSGI servers: compare names as they fold them.
        owners = [index.specs[k] for k in header_owners.get(fold_name(name), ())]
        if not owners:
            continue
        decoded = _decode_basic(value) or ""
        if not any(s.placeholder in value or s.placeholder in decoded for s in owners):
            names = ", ".join(s.name for s in owners)
            return Denial(
                Reason.FOREIGN_CREDENTIAL,
                f"the {name} header of a request to {req.host!r} carries a credential that is not the "
                f"placeholder of {names}: send the placeholder (egress injects the real one) or leave "
                f"the header out; to allow other credentials, set require_placeholder: false",
                owners[0].name,
            )
    return None


def host_leak(
    names: list[str],
    host: str,
    specs: list[SecretSpec],
    forms: dict[str, list[SecretForms]] | SecretIndex,
) -> Denial | None:
    """A placeholder or real value of a secret not bound to ``host`` inside a host name the
    agent chose (``names``: as sent, and canonical). Checked before egress resolves the
    name: a DNS query for ``<value>.allowed.example`` would carry the value out."""
    index = as_index(forms, specs)
    view = index.host(host)
    for name in dict.fromkeys(names):
        found_ph = index.placeholders_in(
            name.lower().encode("utf-8", "surrogateescape"), lower=True
        )
        for k in sorted(found_ph):
            if k not in view.bound_set:
                spec = index.specs[k]
                return Denial(
                    Reason.PLACEHOLDER_TO_UNBOUND_HOST,
                    f"the placeholder of secret {spec.name!r} is in the host name, and "
                    f"{spec.name!r} is not bound to that host",
                    spec.name,
                )
        found = find_deep(name.encode("utf-8", "surrogateescape"), index, view.guard)
        if found:
            return Denial(
                Reason.SECRET_TO_UNBOUND_HOST,
                f"the real value of secret {found[0]!r} is in the host name ({found[1]}); "
                "egress refused it before any DNS query could carry it",
                found[0],
            )
    return None


def as_index(
    forms: dict[str, list[SecretForms]] | SecretIndex | None,
    specs: list[SecretSpec],
    values: dict[str, SecretValue | None] | None = None,
) -> SecretIndex:
    """The index the caller holds (the proxy's, built once per set of values), or one made
    for this call (egress check, tests)."""
    if isinstance(forms, SecretIndex):
        return forms
    flat = [f for fs in (forms or {}).values() for f in fs]
    return SecretIndex(flat, specs, values)


def unscannable_body(
    length: int, limit: int, specs: list[SecretSpec] | SecretIndex, host: str
) -> Denial | None:
    """A body over ``limits.max_body_bytes`` streams unbuffered: on a host with a secret that
    injects into bodies it cannot be scanned for placeholders, so the request is refused."""
    if length <= limit:
        return None
    if isinstance(specs, SecretIndex):
        body_bound = specs.host(host).body_bound
    else:
        body_bound = any("body" in s.surfaces and s.bound_to(host) for s in specs)
    if body_bound:
        return Denial(
            Reason.BODY_TOO_LARGE,
            f"the request body ({length} bytes) is over limits.max_body_bytes "
            f"({limit}) and cannot be scanned for placeholders",
        )
    return None


def undecodable_body(content_encoding: str, limit: int) -> Denial:
    """A body egress cannot decode within the limit cannot be checked."""
    return Denial(
        Reason.BODY_TOO_LARGE,
        f"the request body's content-encoding ({content_encoding!r}) cannot be decoded within "
        f"limits.max_body_bytes ({limit}), so it cannot be checked for placeholders and secrets",
    )


def refuse_signed_body(result: Denial | Injection, signed: bool) -> Denial | Injection:
    """The body phase of a signed request (see ``is_signed``, decided on its headers): a
    placeholder in its body cannot be swapped without breaking the signature."""
    if isinstance(result, Injection) and result.injected and signed:
        return Denial(
            Reason.SIGNATURE_SCHEME_UNSUPPORTED,
            "the request is signed (AWS SigV4) and its body carries a placeholder: the signature "
            "was computed over the placeholder; egress does not inject into signed requests",
            result.injected[0],
        )
    return result


def _hmac_check(
    req: RequestParts, spec: SecretSpec, where: list[str], value: SecretValue | None
) -> Denial | None:
    """An hmac secret's placeholder must be, whole, the value of its signature header."""
    assert spec.hmac is not None
    header = spec.hmac.header.lower()
    values = [v for k, v in req.headers if k.lower() == header]
    elsewhere = any(spec.placeholder in v for k, v in req.headers if k.lower() != header)
    named = {n[7:].lower() for n in re.findall(r"\{(header:[^}]+)\}", spec.hmac.message)}
    twice = [n for n in named if sum(k.lower() == n for k, _ in req.headers) > 1]
    if twice:
        return Denial(Reason.MALFORMED_REQUEST,
                      f"the {twice[0]} header, which the signature of {spec.name!r} covers, is "
                      "sent more than once: upstreams read such a header differently", spec.name)  # fmt: skip
    if where != ["headers"] or values != [spec.placeholder] or elsewhere:
        return Denial(
            Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED,
            f"the placeholder of secret {spec.name!r} (scheme hmac) goes once, whole, as the value "
            f"of the {spec.hmac.header} header, where egress writes the signature; it is elsewhere "
            "in this request",
            spec.name,
        )
    bad_key = value is not None and hmacsign.key_problem(value, spec.hmac.key_encoding)
    return https_only(req, spec) or unavailable(
        spec, value is not None, f"is not a {spec.hmac.key_encoding} key" if bad_key else None
    )


def _azure_check(
    req: RequestParts, index: SecretIndex, bound: tuple[int, ...]
) -> Denial | SecretSpec | None:
    """A request signed with Shared Key on a host bound to an azure_shared_key secret: the
    account it names must be that secret's; it is then signed again (the key is never in
    the request, so there is no placeholder to find)."""
    specs = [index.specs[k] for k in bound if index.specs[k].scheme == "azure_shared_key"]
    if not specs:
        return None
    account = azuresign.signed_account(req.headers)
    if account is None:
        return None
    spec = next((s for s in specs if s.azure_account == account), None)
    if account is False:
        return Denial(Reason.SIGNATURE_SCHEME_UNSUPPORTED,
                      "the Authorization is not 'SharedKey <account>:<signature>' (SharedKeyLite "
                      "and SAS tokens in this header are not signed again)", specs[0].name)  # fmt: skip
    if spec is None:
        return Denial(Reason.FOREIGN_CREDENTIAL,
                      f"the request is signed with Shared Key for account {account!r}, which no "
                      f"secret bound to {req.host!r} holds ({', '.join(s.name for s in specs)})",
                      specs[0].name)  # fmt: skip
    refused = https_only(req, spec)
    if refused is not None:
        return refused
    problem = azuresign.ambiguous(req.headers, req.path)
    if problem:
        return Denial(Reason.MALFORMED_REQUEST, f"{problem} (secret {spec.name!r})", spec.name)
    value = index.values.get(spec.name)
    bad_key = value is not None and azuresign.key_problem(value)
    return (
        unavailable(spec, value is not None, "is not a base64 account key" if bad_key else None)
        or spec
    )


def _signed_refusal(name: str) -> Denial:
    return Denial(
        Reason.SIGNATURE_SCHEME_UNSUPPORTED,
        f"the request is signed (AWS SigV4) and carries the placeholder of {name!r}: its "
        "signature was computed over the placeholder and cannot survive the swap; egress "
        "substitutes nothing into a signed request (it re-signs requests signed with the "
        "placeholder key id of a secret with scheme: aws_sigv4)",
        name,
    )


def plan(
    req: RequestParts,
    secrets: list[tuple[SecretSpec, SecretValue | None]] | None,
    forms: dict[str, list[SecretForms]] | SecretIndex | None = None,
    pause: Pause = no_pause,
    granted: frozenset[str] | None = None,
) -> Denial | Injection:
    """Check a request against every secret and return what to send, or why not to.

    ``forms``: the proxy's SecretIndex (its specs and values are then the ones checked, and
    ``secrets`` may be None), or each secret's encoded forms (current and previous values)
    for the leak guard; by default made from ``secrets``. ``granted``: the secrets the
    requesting agent may have injected (None: all, when no agents are configured)."""
    if isinstance(forms, SecretIndex):
        index = forms
    else:
        assert secrets is not None
        if forms is None:
            forms = {
                s.name: value_forms(s.name, v, s.placeholder) for s, v in secrets if v is not None
            }
        index = as_index(forms, [s for s, _ in secrets], {s.name: v for s, v in secrets})
    view = index.host(req.host)
    placeholders = placeholder_surfaces(req, index)
    to_inject: list[tuple[SecretSpec, SecretValue, list[str]]] = []
    resign: tuple[SecretSpec, sigv4.Signed] | None = None
    sign_hmac: SecretSpec | None = None
    found = sorted(placeholders)  # in config order, as the checks below report them
    # 1. Nothing of a secret may go to a host it is not bound to.
    for k in found:
        if k not in view.bound_set:
            where = placeholders[k]
            spec = index.specs[k]
            return Denial(
                Reason.PLACEHOLDER_TO_UNBOUND_HOST,
                f"the placeholder of secret {spec.name!r} is in the {where[0]} of a request "
                f"to {req.host!r}, but {spec.name!r} is bound only to "
                f"{', '.join(h.text for h in spec.hosts)}. If {req.host!r} should receive "
                f"it, add it to secrets[{spec.index}].hosts",
                spec.name,
            )
    # 1b. An agent gets only the secrets granted to it, even on their bound hosts
    # (placeholders are no secret: another agent's may be known or guessed).
    for k in found if granted is not None else ():
        spec = index.specs[k]
        if spec.name not in granted:  # type: ignore[operator]
            return Denial(
                Reason.SECRET_NOT_GRANTED,
                f"the placeholder of secret {spec.name!r} is in the {placeholders[k][0]} of the "
                f"request, but {spec.name!r} is not granted to this agent; if it should be, add "
                f"{spec.name!r} to the agent's secrets: in the config",
                spec.name,
            )
    leaked = _leaked(req, index, view.guard, pause)
    if leaked:
        name, where = leaked
        return Denial(
            Reason.SECRET_TO_UNBOUND_HOST,
            f"the real value of secret {name!r} is in the {where} of a request to "
            f"{req.host!r}, which it is not bound to",
            name,
        )
    # 2. The agent must not log in to a bound host with a credential of its own.
    foreign = _foreign_credential(req, index) or foreign_aws_key(req, index, view.bound)
    if foreign is not None:
        return foreign
    sign_azure = _azure_check(req, index, view.bound)
    if isinstance(sign_azure, Denial):
        return sign_azure
    # 3. Each placeholder on its bound host: where it is, and whether it can be injected.
    for k in found:
        if k not in view.bound_set:
            continue
        where = placeholders[k]
        spec = index.specs[k]
        value = index.values.get(spec.name)
        if spec.scheme == "aws_sigv4":
            checked = resign_check(req, spec, where, value)
            if isinstance(checked, Denial):
                return checked
            resign = (spec, checked)
            continue
        if spec.scheme == "hmac":
            refused = _hmac_check(req, spec, where, value)
            if refused is not None:
                return refused
            if sign_hmac is not None:  # two signature headers: egress writes one per request
                return _signed_refusal(spec.name)
            sign_hmac = spec
            continue
        outside = [s for s in where if s not in spec.surfaces]
        if outside:
            hint = (
                "placeholders are never substituted in the URL path"
                if outside[0] == "path"
                else f"to substitute it there, add {outside[0]!r} to secrets[{spec.index}].inject"
            )
            return Denial(
                Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED,
                f"the placeholder of secret {spec.name!r} is in the {outside[0]} of the request, "
                f"where {spec.name!r} is not injected; {hint}",
                spec.name,
            )
        if is_signed(req):
            return _signed_refusal(spec.name)
        if req.scheme != "https" and req.transparent:
            return Denial(
                Reason.PLAINTEXT_INJECTION,
                f"secret {spec.name!r} is never injected into plain-HTTP requests in transparent "
                "mode: the host is only the agent's Host header claim; use https://",
                spec.name,
            )
        if req.scheme != "https" and not spec.allow_http:
            return Denial(
                Reason.PLAINTEXT_INJECTION,
                f"secret {spec.name!r} is only injected over HTTPS; use https:// or set "
                f"secrets[{spec.index}].allow_http: true",
                spec.name,
            )
        if "body" in where and req.body is not None and len(req.body) > spec.body_max_bytes:
            return Denial(
                Reason.BODY_TOO_LARGE,
                f"the request body ({len(req.body)} bytes) is over secrets[{spec.index}]."
                f"body_max_bytes ({spec.body_max_bytes}) for substituting {spec.name!r}",
                spec.name,
            )
        if value is None:
            return Denial(
                Reason.SECRET_UNAVAILABLE,
                f"secret {spec.name!r} is not loaded, so the request was not sent",
                spec.name,
            )
        to_inject.append((spec, value, where))

    # The last gate for agents: every secret this request would use, whether found by its
    # placeholder or not (azure_shared_key signs on the account name alone), is granted.
    using = [spec for spec, _, _ in to_inject]
    using += [s for s in (resign and resign[0], sign_hmac, sign_azure) if s]
    for spec in using if granted is not None else ():
        if spec.name not in granted:  # type: ignore[operator]
            return Denial(
                Reason.SECRET_NOT_GRANTED,
                f"this request would use secret {spec.name!r}, which is not granted to this "
                f"agent; if it should be, add {spec.name!r} to the agent's secrets: in the config",
                spec.name,
            )
    out = Injection(headers=list(req.headers), path=req.path, body=req.body, resign=resign,
                    sign_hmac=sign_hmac, sign_azure=sign_azure)  # fmt: skip
    signers = [s for s in (resign and resign[0], sign_hmac, sign_azure) if s]
    if len(signers) > 1:
        return _signed_refusal(signers[-1].name)
    if resign is not None and to_inject:
        return _signed_refusal(to_inject[0][0].name)
    for spec, value, where in to_inject:
        secret = value.reveal()
        if "headers" in where:
            out.headers = [
                (k, _substitute_header(v, spec.placeholder, secret)) for k, v in out.headers
            ]
        if "query" in where:
            path, _, query = out.path.partition("?")
            out.path = path + "?" + query.replace(spec.placeholder, quote(secret, safe=""))
        if "body" in where and out.body is not None:
            repl = _body_replacement(req.content_type, secret)
            out.body = out.body.replace(spec.placeholder.encode(), repl)
            out.body_changed = True
        out.injected.append(spec.name)
    return out
