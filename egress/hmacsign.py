"""HMAC request signing for webhook-style APIs (``scheme: hmac``): the agent sends the
placeholder as the value of the signature header; egress computes the signature over the
request with the real key and writes it there. Pure functions over plain data; the key is
stdlib ``hmac`` input only and appears in no message.

A template names what is signed (``message``) and how the header reads (``value``):

- message fields: ``{method}``, ``{path}`` (path and query as sent), ``{body}`` (the raw
  body), ``{body_sha256}`` (its SHA-256 in hex), ``{timestamp}`` (Unix seconds, egress's
  clock), ``{header:Name}`` (a request header's value);
- value fields: ``{hex}``, ``{base64}`` (the MAC), ``{timestamp}``.

GitHub webhooks: message ``{body}``, value ``sha256={hex}``; Slack: message
``v0:{timestamp}:{body}``, value ``v0={hex}`` with ``timestamp_header:
X-Slack-Request-Timestamp``; Stripe-style: message ``{timestamp}.{body}``, value
``t={timestamp},v1={hex}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from egress.config.hmac_spec import FIELD as _FIELD
from egress.config.model import HmacSpec
from egress.secrets import SecretValue

Header = tuple[str, str]


@dataclass(frozen=True)
class Signed:
    headers: list[Header]
    signature: str  # the header value written
    masks: tuple[str, ...] = ()  # what to mask wherever an upstream echoes it

    def __repr__(self) -> str:
        return "hmacsign.Signed(<redacted>)"


def _key(value: SecretValue, encoding: str) -> bytes:
    text = value.reveal()
    if encoding == "hex":
        return bytes.fromhex(text)
    if encoding == "base64":
        return base64.b64decode(text, validate=True)
    return text.encode("utf-8")


def key_problem(value: SecretValue, encoding: str) -> str | None:
    try:
        _key(value, encoding)
    except (ValueError, binascii.Error):
        return f"the key is not valid {encoding}"
    return None


def sign(spec: HmacSpec, value: SecretValue, method: str, path: str, headers: list[Header],
         body: bytes, now: float) -> Signed:  # fmt: skip
    """The request's headers with the signature header (and the timestamp header, when
    egress sets one) written."""
    timestamp = str(int(now))
    lowered = spec.header.lower()
    kept = [(k, v) for k, v in headers if k.lower() != lowered
            and (spec.timestamp_header is None or k.lower() != spec.timestamp_header.lower())]  # fmt: skip
    if spec.timestamp_header:
        kept.append((spec.timestamp_header, timestamp))

    def field(name: str) -> bytes:
        if name.startswith("header:"):
            wanted = name[7:].lower()
            return next((v for k, v in kept if k.lower() == wanted), "").encode(
                "utf-8", "surrogateescape"
            )
        return {"method": method.encode(), "path": path.encode("utf-8", "surrogateescape"), "body": body,
                "body_sha256": hashlib.sha256(body).hexdigest().encode(),
                "timestamp": timestamp.encode()}[name]  # fmt: skip

    pieces: list[bytes] = []
    at = 0
    for m in _FIELD.finditer(spec.message):
        pieces += [spec.message[at : m.start()].encode(), field(m.group(1))]
        at = m.end()
    message = b"".join([*pieces, spec.message[at:].encode()])
    mac = hmac.new(_key(value, spec.key_encoding), message, spec.algorithm).digest()
    out = spec.value.replace("{hex}", mac.hex()).replace("{base64}", base64.b64encode(mac).decode())
    out = out.replace("{timestamp}", timestamp)
    # The formatted value and the bare MAC in its spellings: an echo of a part of the
    # header (the v1= part, the hex alone) is still a signature the agent could replay.
    masks = (out, mac.hex(), mac.hex().upper(), base64.b64encode(mac).decode())
    return Signed([*kept, (spec.header, out)], out, masks)
