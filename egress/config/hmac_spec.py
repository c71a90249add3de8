"""The ``hmac:`` block of a secret with ``scheme: hmac``."""

from __future__ import annotations

import re
from typing import Any

from egress.config.checker import Checker
from egress.config.model import HmacSpec
from egress.grammar import fold_name

FIELD = re.compile(r"\{([a-z_0-9]+(?::[A-Za-z0-9!#$%&'*+.^_`|~-]+)?)\}")
MESSAGE_FIELDS = ("method", "path", "body", "body_sha256", "timestamp")
VALUE_FIELDS = ("hex", "base64", "timestamp")


def template_problem(template: str, fields: tuple[str, ...], headers_allowed: bool) -> str | None:
    """Why a template cannot be used, or None."""
    for m in FIELD.finditer(template):
        name = m.group(1)
        if name.startswith("header:") and headers_allowed:
            continue
        if name not in fields:
            allowed = ", ".join("{" + f + "}" for f in fields) + (
                ", {header:Name}" if headers_allowed else ""
            )
            return f"unknown field {{{name}}}: use {allowed}"
    rest = FIELD.sub("", template)
    if "{" in rest or "}" in rest:
        return "has a '{' or '}' that is not a field"
    return None


ALGORITHMS = ("sha1", "sha256", "sha512")
KEY_ENCODINGS = ("raw", "hex", "base64")
_HEADER_NAME = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+.^_`|~-"


def _header(c: Checker, m: dict[str, Any], key: str, name: str, required: bool) -> str | None:
    value = c.typed(m, key, name, str, None)
    if value is None:
        if required:
            c.err(f"{key}.{name}", "is required: the header the agent sends the placeholder in")
        return None
    if not value or any(ch not in _HEADER_NAME for ch in value):
        c.err(f"{key}.{name}", f"{value!r} is not a header name")
        return None
    if fold_name(value) in ("host", "content-length", "transfer-encoding", "authorization"):
        if name == "timestamp_header" or fold_name(value) != "authorization":
            c.err(f"{key}.{name}", f"{value!r} is a header egress does not let a signature replace")
    return value


def parse_hmac(c: Checker, node: Any, key: str) -> HmacSpec | None:
    known = ("header", "algorithm", "key_encoding", "message", "value", "timestamp_header")
    m = c.mapping(node, key, known, ("header",))
    if m is None:
        return None
    start = len(c.problems)
    header = _header(c, m, key, "header", True)
    timestamp_header = _header(c, m, key, "timestamp_header", False)
    algorithm = c.choice(m, key, "algorithm", ALGORITHMS, "sha256")
    key_encoding = c.choice(m, key, "key_encoding", KEY_ENCODINGS, "raw")
    message = c.typed(m, key, "message", str, "{body}")
    value = c.typed(m, key, "value", str, "{hex}")
    if message is not None and (problem := template_problem(message, MESSAGE_FIELDS, True)):
        c.err(f"{key}.message", problem)
    if value is not None:
        problem = template_problem(value, VALUE_FIELDS, False)
        if problem:
            c.err(f"{key}.value", problem)
        elif "{hex}" not in value and "{base64}" not in value:
            c.err(f"{key}.value", "must hold {hex} or {base64}: the signature")
        elif any(ch in value for ch in "\r\n"):
            c.err(f"{key}.value", "must not hold a line break")
    for template in (message or "", value or ""):
        if "{timestamp}" in template and timestamp_header is None:
            c.err(f"{key}.timestamp_header", "is required when a template uses {timestamp}: "
                  "the upstream must receive the time that was signed")  # fmt: skip
            break
    if len(c.problems) > start or header is None or algorithm is None or key_encoding is None:
        return None
    return HmacSpec(header=header, algorithm=algorithm, key_encoding=key_encoding,
                    message=message, value=value, timestamp_header=timestamp_header)  # fmt: skip
