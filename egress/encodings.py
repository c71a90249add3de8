"""A secret's common encodings, for finding and scrubbing it wherever it shows up.

For each secret: its raw bytes, base64 and base64url (padded and not), hex (both cases),
percent-encoding and JSON string escaping, each paired with the same encoding of the
placeholder. A secret inside a larger base64 blob (``user:secret`` in a Basic token, a JSON
document) is found through the parts of its base64 that do not depend on its alignment;
such a blob is decoded, scrubbed and encoded again in its own alphabet.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from egress.secrets import SecretValue

_B64_TOKEN = re.compile(rb"[A-Za-z0-9+/_-]{8,}={0,2}")


@dataclass(frozen=True, repr=False)
class SecretForms:
    """One secret's byte patterns, each with its placeholder in the same encoding."""

    name: str
    pairs: tuple[tuple[bytes, bytes, str], ...]  # (secret form, placeholder form, encoding)
    raw: bytes
    placeholder: bytes
    b64_cores: tuple[bytes, ...]  # alignment-independent base64 fragments (prefilter only)

    def __repr__(self) -> str:
        return f"SecretForms(name={self.name!r}, <redacted>)"

    @property
    def longest(self) -> int:
        return max(len(p[0]) for p in self.pairs)


def _b64_cores(raw: bytes) -> tuple[bytes, ...]:
    cores: list[bytes] = []
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + raw).rstrip(b"=")
        # Drop the characters that also carry prefix bits or the unaligned tail.
        core = enc[(4 if shift else 0) : len(enc) - 3]
        if len(core) >= 6:
            cores.append(core)
            cores.append(core.translate(bytes.maketrans(b"+/", b"-_")))
    return tuple(dict.fromkeys(cores))


def make_forms(name: str, value: SecretValue, placeholder: str) -> SecretForms:
    raw, ph = value.reveal().encode("utf-8"), placeholder.encode("utf-8")
    text, ph_text = value.reveal(), placeholder

    def both(f):  # type: ignore[no-untyped-def]
        return f(raw), f(ph)

    candidates: list[tuple[bytes, bytes, str]] = [(raw, ph, "raw")]
    for enc_name, fn in (
        ("base64", base64.b64encode),
        ("base64url", base64.urlsafe_b64encode),
    ):
        s, p = both(fn)
        candidates += [(s, p, enc_name), (s.rstrip(b"="), p.rstrip(b"="), enc_name)]
    candidates += [
        (binascii.hexlify(raw), binascii.hexlify(ph), "hex"),
        (binascii.hexlify(raw).upper(), binascii.hexlify(ph).upper(), "hex"),
        (quote(text, safe="").encode(), quote(ph_text, safe="").encode(), "percent"),
        (
            quote(text, safe="").lower().encode(),
            quote(ph_text, safe="").lower().encode(),
            "percent",
        ),
        (quote_plus(text).encode(), quote_plus(ph_text).encode(), "percent"),
        (json.dumps(text)[1:-1].encode(), json.dumps(ph_text)[1:-1].encode(), "json"),
        (
            json.dumps(text, ensure_ascii=False)[1:-1].encode(),
            json.dumps(ph_text, ensure_ascii=False)[1:-1].encode(),
            "json",
        ),
        (
            json.dumps(text)[1:-1].replace("/", "\\/").encode(),
            json.dumps(ph_text)[1:-1].replace("/", "\\/").encode(),
            "json",
        ),
    ]
    seen: dict[bytes, tuple[bytes, bytes, str]] = {}
    for s, p, enc_name in candidates:
        seen.setdefault(s, (s, p, enc_name))
    # Longest first, so that a longer form is replaced before a shorter one inside it.
    pairs = tuple(sorted(seen.values(), key=lambda t: -len(t[0])))
    return SecretForms(name=name, pairs=pairs, raw=raw, placeholder=ph, b64_cores=_b64_cores(raw))


def _b64_decode(token: bytes) -> tuple[bytes, bool, bool] | None:
    """Decode a base64/base64url token; return (data, urlsafe, padded) or None."""
    body = token.rstrip(b"=")
    urlsafe = b"-" in body or b"_" in body
    # A token that needed no padding is read as padded style: its encoder pads.
    padded = body != token or len(token) % 4 == 0
    try:
        data = (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(
            body + b"=" * (-len(body) % 4)
        )
    except (binascii.Error, ValueError):
        return None
    return data, urlsafe, padded


def _b64_encode(data: bytes, urlsafe: bool, padded: bool) -> bytes:
    out = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data)
    return out if padded else out.rstrip(b"=")


def _scrub_embedded_b64(data: bytes, forms: list[SecretForms]) -> tuple[bytes, int]:
    live = [f for f in forms if any(c in data for c in f.b64_cores)]
    if not live:
        return data, 0
    count = 0

    def fix(m: re.Match[bytes]) -> bytes:
        nonlocal count
        token = m.group(0)
        # A blob may be glued to a preceding character of the alphabet: try each alignment.
        for skip in range(4):
            decoded = _b64_decode(token[skip:])
            if decoded is None:
                continue
            plain, urlsafe, padded = decoded
            hits = [f for f in live if f.raw in plain]
            if not hits:
                continue
            for f in hits:
                count += plain.count(f.raw)
                plain = plain.replace(f.raw, f.placeholder)
            return token[:skip] + _b64_encode(plain, urlsafe, padded)
        return token

    return _B64_TOKEN.sub(fix, data), count


def scrub(data: bytes, forms: list[SecretForms]) -> tuple[bytes, int]:
    """Replace every form of every secret by the same form of its placeholder."""
    if not forms or not data:
        return data, 0
    data, count = _scrub_embedded_b64(data, forms)
    for f in forms:
        for secret, placeholder, _ in f.pairs:
            n = data.count(secret)
            if n:
                data = data.replace(secret, placeholder)
                count += n
    return data, count


def find(data: bytes, forms: list[SecretForms]) -> tuple[str, str] | None:
    """The first secret found in ``data`` in any form: (secret name, encoding)."""
    for f in forms:
        for secret, _, encoding in f.pairs:
            if secret in data:
                return f.name, encoding
        if any(c in data for c in f.b64_cores):
            for m in _B64_TOKEN.finditer(data):
                for skip in range(4):
                    decoded = _b64_decode(m.group(0)[skip:])
                    if decoded is not None and f.raw in decoded[0]:
                        return f.name, "base64 (embedded)"
    return None


def stream_forms(forms: list[SecretForms]) -> list[tuple[bytes, bytes]]:
    """Pairs for scrubbing a streamed body, whose length must not change (its Content-Length
    was sent before the body): each form of a secret is replaced by the same form of a mask
    of the secret's length, made from the placeholder. Forms whose masked length differs are
    left out."""
    out: list[tuple[bytes, bytes]] = []
    for f in forms:
        mask_text = (f.placeholder.decode() + "x" * len(f.raw))[: len(f.raw)]
        mask = make_forms(f.name, SecretValue(mask_text), mask_text)
        for secret, _, enc in f.pairs:
            for candidate in (p for _, p, e in mask.pairs if e == enc and len(p) == len(secret)):
                out.append((secret, candidate))
                break
    return sorted(out, key=lambda t: -len(t[0]))


class StreamScrubber:
    """Scrubs a body chunk by chunk. It holds back the last (longest form - 1) bytes of each
    chunk, so that a secret split across chunks is still found; lengths never change."""

    def __init__(self, pairs: list[tuple[bytes, bytes]]):
        self.pairs = pairs
        self.keep = max((len(s) for s, _ in pairs), default=1) - 1
        self.carry = b""
        self.count = 0

    def _scrub(self, data: bytes) -> bytes:
        for secret, mask in self.pairs:
            n = data.count(secret)
            if n:
                data = data.replace(secret, mask)
                self.count += n
        return data

    def __call__(self, chunk: bytes) -> list[bytes]:
        """Returns chunks to send: never an empty chunk mid-body, which mitmproxy would send
        as the end of a chunked body."""
        data = self._scrub(self.carry + chunk)
        if chunk == b"":  # end of the body
            self.carry = b""
            return [data] if data else []
        if self.keep == 0:
            return [data] if data else []
        out, self.carry = data[: -self.keep], data[-self.keep :]
        return [out] if out else []
