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
# Fields read one by one, at most: a document of a million tiny values would cost seconds
# of Python per request. Past the cap the body is still read whole (body_fields' "body").
MAX_FIELDS = 10_000
# Shorter than any value a detector finds (an e-mail address, a 9-digit identifier): such a
# field is read only in the joined values and the whole body.
MIN_FIELD = 6


def shown(name: str, position: int) -> str:
    return name if _SHOWN_NAME.fullmatch(name) else f"#{position}"


@dataclass(frozen=True)
class Field:
    where: str
    text: str
    surface: str  # body | url | headers
    joined: bool = False  # several fields' values joined: a split value
    plus: bool = False  # form-encoded text, where '+' is a space
    decode: bool = True  # also read through encodings (egress.dlp.views); False: as sent only

    def __repr__(self) -> str:  # the text is what the agent sent: never in a log
        return f"Field({self.where!r}, {len(self.text)} chars, <redacted>)"


class Pairs(list[tuple[str, object]]):
    """A JSON object as its pairs, in order, duplicates kept (json's object_pairs_hook): a
    dict would keep only the last of two equal keys, the one an upstream may not read."""


def parse_json(text: str) -> object:
    """A JSON document with objects as Pairs and numbers with a fraction or an exponent as
    their text (a float would hide the digits of a card number)."""
    return json.loads(text, object_pairs_hook=Pairs, parse_float=str)


def json_fields(doc: object) -> tuple[list[Field], bool]:
    """Every string (and long integer) value of a parsed JSON document, and every key,
    with its path; then the string values joined. Iterative: a deeply nested document
    cannot exhaust the stack. The flag: every node was read (False past the caps)."""
    out: list[Field] = []
    strings: list[str] = []
    stack: list[tuple[str, object]] = [("$", doc)]
    nodes = 0
    while stack and len(out) < MAX_FIELDS and nodes < 20 * MAX_FIELDS:
        path, node = stack.pop()
        nodes += 1
        if isinstance(node, dict | Pairs):
            items = list(node.items()) if isinstance(node, dict) else node
            if len(items) > 20 * MAX_FIELDS:
                return out, False
            for i, (k, v) in reversed(list(enumerate(items))):
                name = shown(k, i)
                if len(k) >= MIN_FIELD:
                    out.append(Field(f"{path} (key {name})", k, "body"))
                stack.append((f"{path}.{name}", v))
                if isinstance(v, str | int) and SECRET_NAME.search(k):
                    out.append(Field(f"{path}.{name} (name and value)", f"{k}={v}", "body"))
        elif isinstance(node, list):
            if len(node) > 20 * MAX_FIELDS:
                return out, False
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(node))))
        elif isinstance(node, str):
            if len(node) >= MIN_FIELD:
                out.append(Field(path, node, "body"))
            strings.append(node)
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 10**5:
            out.append(Field(path, str(node), "body"))
    if len(strings) > 1:
        out.append(Field("JSON string values joined", "".join(strings), "body", joined=True))
    return out, not stack


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
    # As written too: what parsing changed ('+' in base64 read as a space) or dropped.
    out.append(Field(prefix, text, surface, plus=True))
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


def _text(body: bytes, content_type: str) -> str:
    """The body as text: in its declared charset when that is a UTF-16 or UTF-32 one (or
    it starts with their byte-order mark), else UTF-8 (bytes that are not kept as they
    are)."""
    charset = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if charset.startswith(("utf-16", "utf-32", "utf16", "utf32")):
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    if body[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return body.decode("utf-32", "surrogatepass")
    if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return body.decode("utf-16", "surrogatepass")
    return body.decode("utf-8", "surrogateescape")


def body_fields(body: bytes, content_type: str) -> list[Field]:
    """The body's fields by its content type, and the body itself as text (what parsing
    would miss: duplicate keys, numbers JSON reads as floats, fields past MAX_FIELDS);
    a body egress cannot parse is that one field."""
    if not body:
        return []
    media = content_type.split(";", 1)[0].strip().lower()
    text = _text(body, content_type)
    out: list[Field] = [
        Field("body", text, "body", plus=media == "application/x-www-form-urlencoded")
    ]
    if "\x00" in text:  # UTF-16 or UTF-32 that says nothing of its charset
        out.append(Field("body (NUL bytes removed)", text.replace("\x00", ""), "body"))
    if media.endswith("json") or text.lstrip()[:1] in ("{", "["):
        try:
            doc = parse_json(text)
        except (ValueError, RecursionError):
            return out
        fields, whole = json_fields(doc)
        if whole:
            # Every key and value was read (objects as pairs, duplicates kept; numbers as
            # written; a secret-like key with its value): the body text adds nothing but
            # its punctuation. Past the caps it is read whole, through its encodings.
            return fields + out[1:]
        return fields + out
    if media == "application/x-www-form-urlencoded":
        return [f for f in _form_fields(text, "form", "body") if f.where != "form"] + out
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
