"""A secret's common encodings, for finding and scrubbing it wherever it shows up.

For each secret: its raw bytes, base64 and base64url (padded and not), hex (both cases),
percent-encoding and JSON string escaping, each paired with the same encoding of the
placeholder. A secret inside a larger base64 blob (``user:secret`` in a Basic token, a JSON
document, a file's content wrapped at 76 columns) is found and masked by egress.b64scan, at
any alignment, in either alphabet, across line breaks; the mask has the secret's length so
that the blob keeps its shape.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from egress import b64scan
from egress.secrets import SecretValue


@dataclass(frozen=True, repr=False)
class SecretForms:
    """One secret's byte patterns, each with its placeholder in the same encoding."""

    name: str
    pairs: tuple[tuple[bytes, bytes, str], ...]  # (secret form, placeholder form, encoding)
    raw: bytes
    placeholder: bytes
    embedded: b64scan.Embedded  # the secret inside larger base64, and its same-length mask

    def __repr__(self) -> str:
        return f"SecretForms(name={self.name!r}, <redacted>)"

    @property
    def longest(self) -> int:
        return max(len(p[0]) for p in self.pairs)


def mask_text(placeholder: str, length: int) -> str:
    """A stand-in of exactly ``length`` characters, made from the placeholder: what replaces
    a secret where the length of the text around it must not change."""
    return (placeholder + "x" * length)[:length]


def _pairs(text: str, ph_text: str) -> tuple[tuple[bytes, bytes, str], ...]:
    """Each encoding of ``text`` with the same encoding of ``ph_text``, longest first."""
    raw, ph = text.encode("utf-8"), ph_text.encode("utf-8")

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
        # Byte dumps: S3 echoes a canonical request as space-separated hex
        # (CanonicalRequestBytes); MAC-address style uses ':'.
        *(
            (
                binascii.hexlify(raw, sep).upper() if up else binascii.hexlify(raw, sep),
                binascii.hexlify(ph, sep).upper() if up else binascii.hexlify(ph, sep),
                "hex",
            )
            for sep in (" ", ":")
            for up in (False, True)
        ),
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
    return tuple(sorted(seen.values(), key=lambda t: -len(t[0])))


def make_forms(name: str, value: SecretValue, placeholder: str) -> SecretForms:
    raw, ph = value.reveal().encode("utf-8"), placeholder.encode("utf-8")
    pairs = _pairs(value.reveal(), placeholder)
    mask = mask_text(placeholder, len(value.reveal())).encode("utf-8")[: len(raw)]
    mask += b"x" * (len(raw) - len(mask))
    return SecretForms(name=name, pairs=pairs, raw=raw, placeholder=ph,
                       embedded=b64scan.embedded(raw, mask))  # fmt: skip


def value_forms(name: str, value: SecretValue, placeholder: str) -> list[SecretForms]:
    """The forms of every text a secret holds (one for a plain secret; each part of a
    multi-part one, such as an AWS key id, secret key and session token)."""
    return [make_forms(name, SecretValue(text), placeholder) for text in value.texts()]


Pause = Callable[[], None]


def no_pause() -> None:
    pass


def scrub(data: bytes, forms: list[SecretForms], pause: Pause = no_pause) -> tuple[bytes, int]:
    """Replace every form of every secret by the same form of its placeholder, and every
    secret inside larger base64 by its same-length mask. ``pause`` runs between passes
    (time.sleep(0) in a worker thread hands the interpreter back to the event loop)."""
    if not forms or not data:
        return data, 0
    count = 0
    for f in forms:
        for secret, placeholder, _ in f.pairs:
            n = data.count(secret)
            if n:
                data = data.replace(secret, placeholder)
                count += n
            pause()
    data, n = b64scan.mask(data, [f.embedded for f in forms])
    return data, count + n


def find(data: bytes, forms: list[SecretForms], pause: Pause = no_pause) -> tuple[str, str] | None:
    """The first secret found in ``data`` in any form: (secret name, encoding)."""
    for f in forms:
        for secret, _, encoding in f.pairs:
            if secret in data:
                return f.name, encoding
            pause()
    name = b64scan.find(data, [(f.name, f.raw, f.embedded.cores) for f in forms])
    return (name, "base64 (embedded)") if name else None


def stream_forms(forms: list[SecretForms]) -> list[tuple[bytes, bytes]]:
    """Pairs for scrubbing a streamed body, whose length must not change (its Content-Length
    was sent before the body): each form of a secret is replaced by the same form of a mask
    of the secret's length, made from the placeholder. Where that form has another length
    (a secret with characters that percent-encoding or JSON escape), a filler of the same
    length that is valid in the encoding stands in for it."""
    out: list[tuple[bytes, bytes]] = []
    for f in forms:
        text = f.embedded.mask.decode("utf-8", "replace")
        mask_pairs = _pairs(text, text)
        for secret, _, enc in f.pairs:
            same = [p for _, p, e in mask_pairs if e == enc and len(p) == len(secret)]
            out.append((secret, same[0] if same else _filler(secret, enc)))
    return sorted(out, key=lambda t: -len(t[0]))


def _filler(form: bytes, encoding: str) -> bytes:
    if encoding == "hex":
        return b"78" * (len(form) // 2) + b"x" * (len(form) % 2)
    if encoding in ("base64", "base64url"):
        body = form.rstrip(b"=")
        return b"A" * len(body) + b"=" * (len(form) - len(body))
    return b"x" * len(form)
