"""``listen.tls``: agents reach egress over TLS (docs/config.md: listen; docs/agents.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from egress.config.checker import Checker, file_path
from egress.config.model import ListenTls


def _certs(c: Checker, path: Path, key: str) -> list[x509.Certificate]:
    if not path.is_file():
        c.err(key, f"{str(path)!r} does not exist or is not a file")
        return []
    try:
        found = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        found = []
    if not found:
        c.err(key, f"{str(path)!r} holds no PEM certificate")
    return found


def parse_listen_tls(c: Checker, node: Any, base: Path, transparent: bool) -> ListenTls | None:
    k = "listen.tls"
    m = c.mapping(node, k, ("cert_file", "key_file", "client_ca_file"), ("cert_file", "key_file"))
    if m is None or "cert_file" not in m or "key_file" not in m:
        return None
    if transparent:
        c.err(k, "transparent mode receives the agent's own TLS to its destination: a TLS "
              "listener is for explicit mode (HTTPS_PROXY=https://...)")  # fmt: skip
        return None
    cert_path = file_path(base, c.typed(m, k, "cert_file", str, ""))
    key_path = file_path(base, c.typed(m, k, "key_file", str, ""))
    chain = _certs(c, cert_path, f"{k}.cert_file")
    if not key_path.is_file():
        c.err(f"{k}.key_file", f"{str(key_path)!r} does not exist or is not a file")
    elif chain:
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        except (ValueError, TypeError):
            key = None
            c.err(f"{k}.key_file", f"{str(key_path)!r} holds no unencrypted PEM private key")
        if key is not None and key.public_key() != chain[0].public_key():
            c.err(f"{k}.key_file", f"{str(key_path)!r} is not the key of the certificate in "
                  f"{str(cert_path)!r}")  # fmt: skip
    client_ca = None
    if "client_ca_file" in m:
        client_ca = file_path(base, c.typed(m, k, "client_ca_file", str, ""))
        _certs(c, client_ca, f"{k}.client_ca_file")
    digest = hashlib.sha256()
    for path in (cert_path, key_path, client_ca):
        if path is not None and path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return ListenTls(cert_path, key_path, client_ca, digest.hexdigest())
