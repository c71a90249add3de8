"""Every form of every loaded secret, searched in one pass whatever the number of secrets.

Built once per set of secret values (at load and on each rotation) and shared by every
request: the leak guard, placeholder scanning, response and header scrubbing, the stream
scrubber and audit redaction read it instead of looping over secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from egress.encodings import SecretForms, scrub


@dataclass(frozen=True, repr=False)
class SecretIndex:
    forms: tuple[SecretForms, ...]
    by_name: dict[str, list[SecretForms]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"SecretIndex({len(self.forms)} values, <redacted>)"


def build(forms: list[SecretForms]) -> SecretIndex:
    by_name: dict[str, list[SecretForms]] = {}
    for f in forms:
        by_name.setdefault(f.name, []).append(f)
    return SecretIndex(tuple(forms), by_name)


def redact(text: str, index: SecretIndex) -> str:
    """Replace every loaded secret value in ``text`` with ``[secret:<name>]``."""
    data = text.encode("utf-8", "surrogateescape")
    forms = list(index.forms)
    for f in forms:
        for secret, _, _ in f.pairs:
            data = data.replace(secret, f"[secret:{f.name}]".encode())
    data, _ = scrub(data, forms)  # what is left: values inside larger base64 blobs
    return data.decode("utf-8", "surrogateescape")
