"""The plain-text body of a denial: status, reason code, which rule, and what to change."""

from __future__ import annotations

from http import HTTPStatus

from egress.config import DEFAULT_PORTS, Rule
from egress.reasons import Reason, http_status
from egress.routing import path_readings


def how_to_allow(reason: Reason, host: str, port: int, scheme: str, method: str,
                 path: str, rule: Rule | None) -> str | None:  # fmt: skip
    """What to change in the config to allow a request the allowlist refused."""
    port_part = "" if port == {"https": 443, "http": 80}.get(scheme) else f"\n    ports: [{port}]"
    scheme_part = "\n    schemes: [http]" if scheme == "http" else ""
    if reason in (Reason.HOST_NOT_ALLOWED, Reason.IP_LITERAL):
        return f"add a rule under 'allow':\n  - host: {host}{port_part}{scheme_part}"
    label = rule.label if rule else None
    if reason is Reason.PORT_NOT_ALLOWED and rule is not None and scheme not in rule.schemes:
        # e.g. http://host/ on an https-only rule: the port fails first, then the scheme
        # would; say both at once. A rule's default ports follow its schemes.
        defaults = sorted({DEFAULT_PORTS[s] for s in rule.schemes})
        hint = f"add {scheme} to the 'schemes' of {label}"
        if list(rule.ports) != defaults or port != DEFAULT_PORTS.get(scheme):
            hint += f" and {port} to its 'ports'"
    elif reason is Reason.PORT_NOT_ALLOWED:
        hint = f"add {port} to the 'ports' of {label}"
    elif reason is Reason.SCHEME_NOT_ALLOWED:
        hint = f"add {scheme} to the 'schemes' of {label}"
    elif reason is Reason.METHOD_NOT_ALLOWED:
        hint = f"add {method} to the 'methods' of {label}"
    elif reason is Reason.WEBSOCKET_NOT_ALLOWED:
        hint = f"set 'websocket: true' on {label}"
    elif reason is Reason.PATH_NOT_ALLOWED:
        path = path.split("?", 1)[0]
        if path_readings(path)[1]:
            return ("send the path without '.'/'..' segments, ';' parameters on them, encoded slashes, "
                    "backslashes or NULs; such paths never pass a path rule")  # fmt: skip
        hint = f"add a prefix of {path!r} to the 'paths' of {label}"
    else:
        return None
    if rule is not None and rule.origin:
        # A preset (or a shared fragment) is not the user's to edit: say where the rule is
        # written and that a rule of their own, in their file, does the job.
        hint += (f" ({label} is written in {rule.origin}, an included file: rather than "
                 f"editing it, add a rule of your own under 'allow' for {host})")  # fmt: skip
    return hint


def denial_phrase(reason: Reason, host: str, port: int | None) -> str:
    """The status line's reason phrase: what requests, urllib, httpx and curl -v show of a
    refused CONNECT when they show nothing else ("Tunnel connection failed: 403 Forbidden
    (egress: host_not_allowed for evil.example:443)"). Only visible ASCII: the host is
    the agent's and a reason phrase must not break the status line."""
    status = http_status(reason)
    where = f"{host}:{port}" if port else host
    where = "".join(c for c in where if "!" <= c <= "~")[:120]
    return f"{HTTPStatus(status).phrase} (egress: {reason.value}" + (
        f" for {where})" if where else ")"
    )


def denial_body(
    reason: Reason, detail: str, *, method: str, url: str, config: str, hint: str | None = None
) -> str:
    status = http_status(reason)
    verb = "denied" if status < 500 else "could not send"
    lines = [
        f"egress {verb} this request ({status}): {reason.value}",
        f"  request: {method} {url}",
        f"  why:     {detail}",
        f"  config:  {config}",
    ]
    if hint:
        lines.append("  to allow it, " + hint.replace("\n", "\n    "))
    return "\n".join(lines) + "\n"
