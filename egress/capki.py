"""egress's CA signed by a Vault/OpenBao PKI issuer (``ca.vault_pki``; docs/gateway.md).

A gateway runs several replicas behind one Service: an agent's connections land on any of
them, so every replica's CA must chain to one certificate the agent trusts. Each replica
still makes its CA key in memory, with the name constraints of its allowlist
(egress.ca); the PKI issuer only signs that certificate, through
``<mount>/issuer/<issuer>/sign-self-issued``, which keeps every extension as sent (the
sign-intermediate endpoint drops IP-address constraints). ``adopt_signed`` refuses an
answer that differs in anything but the issuer and the signature.

Like every Vault call, these run before anything listens or off the event loop (a reload's
prepare step), never on a request's path.
"""

from __future__ import annotations

import datetime
import logging

from cryptography import x509

from egress.ca import EphemeralCA, SignedCaMismatch, adopt_signed, check_anchor
from egress.config import CaPki
from egress.vault import VaultClient, VaultError

log = logging.getLogger("egress.capki")


def issuer_certificate(client: VaultClient, pki: CaPki) -> x509.Certificate:
    """The issuer's certificate, read from ``<mount>/issuer/<issuer>/json``."""
    what = f"PKI issuer read ({pki.issuer_path})"
    hint = (f"check ca.vault_pki.mount ({pki.mount!r}) and ca.vault_pki.issuer ({pki.issuer!r}), "
            "and that the token's policy may read that path")  # fmt: skip
    try:
        answer = client.request(what, "read", pki.issuer_path)
    except VaultError as e:
        raise VaultError(f"{e}; {hint}") from None
    pem = ((answer or {}).get("data") or {}).get("certificate") or ""
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise VaultError(f"{what}: no certificate in the answer; {hint}") from None


def issue_ca(
    client: VaultClient, pki: CaPki, constraints: x509.NameConstraints | None, validity_hours: int
) -> EphemeralCA:
    """A CA with these constraints, its key in memory, signed by the PKI issuer. Its
    validity ends no later than the issuer's (a chain is only as valid as its shortest
    link); it must have an hour left, or the issuer needs renewing first."""
    if constraints is None:
        # Report mode makes an unconstrained CA (egress.ca.ca_constraints); signed by the
        # issuer every agent trusts, its key could mint a certificate for any name.
        raise VaultError("ca.vault_pki signs only a name-constrained CA, and report mode "
                         "(mode: report, or an agent's mode: report without locked.hosts) "
                         "needs an unconstrained one: set locked.hosts, or leave report mode "
                         "to a self-signed CA")  # fmt: skip
    anchor = issuer_certificate(client, pki)
    try:
        check_anchor(anchor)
    except SignedCaMismatch as e:
        raise VaultError(f"PKI issuer {pki.issuer_path}: {e}") from None
    now = datetime.datetime.now(datetime.UTC)
    left = anchor.not_valid_after_utc - now
    if left < datetime.timedelta(hours=1):
        raise VaultError(f"the PKI issuer {pki.issuer_path} expires at "
                         f"{anchor.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, within the hour: "
                         "renew or rotate it first")  # fmt: skip
    if left < datetime.timedelta(hours=validity_hours):
        log.warning("ca.vault_pki: the issuer expires at %s UTC, before ca.validity_hours (%d h) "
                    "would end: the CA is valid until then only; rotate the issuer "
                    "(docs/gateway.md)", f"{anchor.not_valid_after_utc:%Y-%m-%d %H:%M}",
                    validity_hours)  # fmt: skip
    ca = EphemeralCA.create_with(constraints, validity_hours, not_after=anchor.not_valid_after_utc)
    what = f"PKI signing ({pki.sign_path})"
    try:
        answer = client.request(what, "write", pki.sign_path,
                                {"certificate": ca.cert_pem().decode()})  # fmt: skip
    except VaultError as e:
        if "permission denied" in str(e):
            raise VaultError(f"{e}; the token's policy needs path \"{pki.sign_path}\" "
                             '{ capabilities = ["update", "sudo"] } (docs/gateway.md)') from None  # fmt: skip
        raise
    pem = ((answer or {}).get("data") or {}).get("certificate") or ""
    try:
        signed = x509.load_pem_x509_certificate(pem.encode())
        return adopt_signed(ca, signed, anchor)
    except Exception as e:  # noqa: BLE001 (any parse or check failure refuses the answer)
        why = str(e) if isinstance(e, SignedCaMismatch) else f"unreadable ({type(e).__name__})"
        raise VaultError(f"{what}: refused the certificate it returned: {why}") from None
