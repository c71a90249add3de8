"""Where the system's trusted CA certificates are."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi


def system_trust_bundle() -> Path:
    """The system CA bundle (what curl and OpenSSL use), or certifi's where there is none."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return Path(certifi.where())
