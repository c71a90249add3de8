"""A request cut into named fields, each searched on its own and, joined, together.

Where a finding is reported is a field: a JSON path (``$.messages[0].content``), a form or
multipart field (``form.comment``), a query parameter (``query.q``), ``path``, a header
(``header:x-note``) or ``body`` for a body that has no structure egress reads. An agent can
split a value across fields (``{"a": "AKIA", "b": "IOSF..."}``, a card number in four query
parameters): each structured surface is also searched as its values joined in order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qsl

from egress.dlp.catalogue import SECRET_NAME

# Headers whose value is the request's framing or negotiation, never an agent's data.
SKIPPED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
     "upgrade", "content-encoding", "accept-encoding", ":authority", ":method", ":path",
     ":scheme", "proxy-authorization", "proxy-connection"}
)  # fmt: skip
# A name the agent chose (a JSON key, a form or header name) is shown in a finding's
# location only when it cannot hold a value worth hiding: letters, '_' and '-', at most 32
# (no credential, card or e-mail fits). Any other name is shown by its position.
_SHOWN_NAME = re.compile(r"[A-Za-z_-]{1,32}")
MAX_FIELDS = 100_000


def shown(name: str, position: int) -> str:
    return name if _SHOWN_NAME.fullmatch(name) else f"#{position}"


@dataclass(frozen=True)
class Field:
    where: str
    text: str
    surface: str  # body | url | headers
    joined: bool = False  # several fields' values joined: a split value

    def __repr__(self) -> str:  # the text is what the agent sent: never in a log
        return f"Field({self.where!r}, {len(self.text)} chars, <redacted>)"


def json_fields(doc: object) -> list[Field]:
    """Every string (and integer) value of a parsed JSON document, and every key, with its
    path; then the string values joined. Iterative: a deeply nested document cannot
    exhaust the stack."""
    out: list[Field] = []
    strings: list[str] = []
    stack: list[tuple[str, object]] = [("$", doc)]
    while stack and len(out) < MAX_FIELDS:
        path, node = stack.pop()
        if isinstance(node, dict):
            for i, (k, v) in reversed(list(enumerate(node.items()))):
                name = shown(k, i)
                out.append(Field(f"{path} (key {name})", k, "body"))
                stack.append((f"{path}.{name}", v))
                if isinstance(v, str | int) and SECRET_NAME.search(k):
                    out.append(Field(f"{path}.{name} (name and value)", f"{k}={v}", "body"))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(node))))
        elif isinstance(node, str):
            out.append(Field(path, node, "body"))
            strings.append(node)
        elif isinstance(node, int) and not isinstance(node, bool):
            out.append(Field(path, str(node), "body"))
    if len(strings) > 1:
        out.append(Field("JSON string values joined", "".join(strings), "body", joined=True))
    return out


def _form_fields(text: str, prefix: str, surface: str) -> list[Field]:
    pairs = parse_qsl(text, keep_blank_values=True, errors="surrogateescape")
    out: list[Field] = []
    for i, (name, value) in enumerate(pairs[:MAX_FIELDS]):
        out.append(Field(f"{prefix}.{shown(name, i)} (name)", name, surface))
        out.append(Field(f"{prefix}.{shown(name, i)}", value, surface))
        if SECRET_NAME.search(name):
            out.append(
                Field(f"{prefix}.{shown(name, i)} (name and value)", f"{name}={value}", surface)
            )
    if len(pairs) > 1:
        joined = "".join(v for _, v in pairs)
        out.append(Field(f"{prefix} values joined", joined, surface, joined=True))
    return out


def _multipart_fields(body: bytes, content_type: str) -> list[Field] | None:
    message = BytesParser(policy=HTTP).parsebytes(
        b"content-type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return None
    out: list[Field] = []
    texts: list[str] = []
    for i, part in enumerate(message.iter_parts()):
        name = part.get_param("name", header="content-disposition") or str(i)
        payload = part.get_payload(decode=True) or b""
        text = payload.decode("utf-8", "surrogateescape")
        out.append(Field(f"multipart.{shown(str(name), i)}", text, "body"))
        texts.append(text)
    if len(texts) > 1:
        out.append(Field("multipart values joined", "".join(texts), "body", joined=True))
    return out


def body_fields(body: bytes, content_type: str) -> list[Field]:
    """The body's fields by its content type; a body egress cannot parse is one text field
    (``body``), searched like any other."""
    if not body:
        return []
    media = content_type.split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", "surrogateescape")
    out: list[Field] = [Field("body", text, "body")]
    # A JSON or form body is read as its fields: what each holds, where (a value split
    # across fields is caught by their join, a secret named by its key by "name and value").
    if media.endswith("json") or media.endswith("+json") or text.lstrip()[:1] in ("{", "["):
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            return out
        return json_fields(doc)
    if media == "application/x-www-form-urlencoded":
        return _form_fields(text, "form", "body")
    if media.startswith("multipart/"):
        try:
            parts = _multipart_fields(body, content_type)
        except Exception:  # noqa: BLE001 (an unparsable multipart body is read as text)
            parts = None
        return (parts or []) + out
    return out


def url_fields(path: str) -> list[Field]:
    """The request target: its path and each query parameter."""
    route, _, query = path.partition("?")
    out = [Field("path", route, "url")]
    if query:
        out += _form_fields(query, "query", "url")
    return out


def header_fields(headers: list[tuple[str, str]]) -> list[Field]:
    out: list[Field] = []
    for i, (name, value) in enumerate(headers):
        low = name.lower()
        if low in SKIPPED_HEADERS:
            continue
        label = f"header:{shown(low, i)}"
        out.append(Field(f"{label} (name)", name, "headers"))
        out.append(Field(label, value, "headers"))
    return out
