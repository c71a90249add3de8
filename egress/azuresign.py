"""Azure Storage Shared Key (``scheme: azure_shared_key``): the agent's SDK signs with a
placeholder account key; egress signs the request again with the real key.

The string to sign is Microsoft's documented one ("Authorize with Shared Key", version
2009-09-19 and later): the verb; the values of Content-Encoding, Content-Language,
Content-Length (empty when 0), Content-MD5, Content-Type, Date, If-Modified-Since,
If-Match, If-None-Match, If-Unmodified-Since and Range; the ``x-ms-`` headers, lower-cased
and sorted, one ``name:value`` per line; and the canonicalized resource, ``/account/path``
then each query parameter on its own line as ``name:value`` (names lower-cased and sorted,
several values sorted and joined by commas). The MAC is HMAC-SHA256 with the base64-decoded
account key (stdlib ``hmac``), base64-encoded. egress stamps ``x-ms-date`` with its clock.

Shared Key is the least scoped Azure credential (the account key can do anything in the
account); docs/credentials.md recommends Entra ID tokens (a minted client-credentials
token) or SAS where the API allows them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import datetime
from email.utils import format_datetime
from urllib.parse import unquote

from egress.secrets import SecretValue

Header = tuple[str, str]
_AUTH = re.compile(r"^SharedKey ([a-z0-9]{3,24}):([A-Za-z0-9+/]{43}=)$")
STANDARD = ("content-encoding", "content-language", "content-length", "content-md5",
            "content-type", "date", "if-modified-since", "if-match", "if-none-match",
            "if-unmodified-since", "range")  # fmt: skip
_VALUE = re.compile(r"^[\x20-\x7e]*$")
_MS_NAME = re.compile(r"^x-ms-[a-z0-9-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def signed_account(headers: list[Header] | tuple[Header, ...]) -> str | None | bool:
    """The account a ``SharedKey`` Authorization names; False for an Authorization that says
    SharedKey but is not one egress signs again (SharedKeyLite, a malformed one); None when
    there is none."""
    auths = [v for k, v in headers if k.lower() == "authorization" and v.startswith("SharedKey")]
    if not auths:
        return None
    m = _AUTH.match(auths[0]) if len(auths) == 1 else None
    return m.group(1) if m else False


def key_problem(value: SecretValue) -> str | None:
    try:
        if len(base64.b64decode(value.reveal(), validate=True)) < 16:
            return "the account key is shorter than 16 bytes"
    except (binascii.Error, ValueError):
        return "the account key is not base64"
    return None


def ambiguous(headers: list[Header] | tuple[Header, ...], path: str) -> str | None:
    """Why a request could read differently to egress and to Azure (or two requests give
    one string to sign), or None."""
    for k, v in headers:
        name = k.lower()
        if name.startswith("x-ms-") and not _MS_NAME.match(name):
            return f"the header name {k!r} has characters other than a-z, 0-9 and '-'"
        if (name in STANDARD or name.startswith("x-ms-")) and not _VALUE.match(v):
            return f"the {k} header of a request egress signs has characters other than printable ASCII"
    names = [
        k.lower() for k, _ in headers if k.lower() in STANDARD or k.lower().startswith("x-ms-")
    ]
    if len(names) != len(set(names)):
        return "a header the signature covers is sent twice"
    base, _, query = path.partition("?")
    try:
        base.encode("utf-8")
    except UnicodeEncodeError:
        return "the path of a request egress signs is not UTF-8"
    if "+" in query:
        return "a '+' in the query of a request egress signs (a space to some parsers)"
    try:
        for part in query.split("&"):
            name, _, value = part.partition("=")
            name, value = unquote(name, errors="strict"), unquote(value, errors="strict")
            if ":" in name or _CONTROL.search(name + value):
                return ("a query parameter whose decoded name holds ':' or whose decoded name or "
                        "value holds a control character (it would read as another line)")  # fmt: skip
    except UnicodeDecodeError:
        return "%XX escapes that are not UTF-8 in the query of a request egress signs"
    return None


def string_to_sign(method: str, headers: list[Header], account: str, path: str) -> str:
    lowered = [(k.lower(), v) for k, v in headers]
    values = {k: v for k, v in lowered if k in STANDARD}
    if values.get("content-length") == "0":
        values["content-length"] = ""
    ms = sorted(((k, v.strip()) for k, v in lowered if k.startswith("x-ms-")),
                key=lambda kv: (kv[0].replace("-", ""), kv[0]))  # fmt: skip
    base, _, query = path.partition("?")
    params: dict[str, list[str]] = {}
    for part in (p for p in query.split("&") if p):
        k, _, v = part.partition("=")
        params.setdefault(unquote(k).lower(), []).append(unquote(v))
    resource = f"/{account}{base}" + "".join(
        f"\n{k}:{','.join(sorted(vs))}" for k, vs in sorted(params.items())
    )
    return (
        "\n".join([method, *(values.get(h, "") for h in STANDARD)])
        + "\n"
        + "".join(f"{k}:{v}\n" for k, v in ms)
        + resource
    )


def sign(value: SecretValue, account: str, method: str, path: str, headers: list[Header],
         now: datetime) -> tuple[list[Header], str]:  # fmt: skip
    """The headers signed again with the real key (x-ms-date set to ``now``), and the
    signature."""
    kept = [(k, v) for k, v in headers if k.lower() not in ("authorization", "x-ms-date")]
    kept.append(("x-ms-date", format_datetime(now, usegmt=True)))
    message = string_to_sign(method, kept, account, path).encode("utf-8")
    key = base64.b64decode(value.reveal())
    signature = base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()
    return [*kept, ("Authorization", f"SharedKey {account}:{signature}")], signature


def masks(signature: str) -> tuple[str, ...]:
    """The signature's spellings to mask where an upstream echoes it: as sent, unpadded,
    URL-safe, and the MAC in hex."""
    mac = base64.b64decode(signature)
    return (signature, signature.rstrip("="), base64.urlsafe_b64encode(mac).decode().rstrip("="),
            mac.hex(), mac.hex().upper())  # fmt: skip
