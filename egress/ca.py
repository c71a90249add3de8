"""The ephemeral CA: made at every start, private key only in memory, name-constrained.

The certificate carries X.509 name constraints that permit only what the allowlist allows
(an exact name or a ``*.example.com`` rule as that domain's subtree, address rules as IP
ranges; every other address is excluded). Even a leaked key can then mint nothing a
constraint-checking client accepts for any other name. A config change that allows names
outside the constraints needs a new CA: every start makes one, and a reload adds one only
for such names (``covers``; docs/reload.md).

With ``ca.vault_pki`` the same certificate, made here with its key in memory, is signed by
a Vault/OpenBao PKI issuer instead of itself (egress.capki; ``adopt_signed`` checks that
the issuer changed nothing else): agents then trust that issuer, one certificate for every
replica of a gateway and every restart (docs/gateway.md).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from egress.config import Config, Rule

# RFC 6761 reserves "invalid": a permitted subtree that matches no real name, used when the
# allowlist names no host at all.
_NOTHING = "invalid"


def name_constraints(rules: tuple[Rule, ...]) -> x509.NameConstraints:
    names = sorted(
        {
            r.host.text[2:] if r.host.kind == "wildcard" else r.host.text
            for r in rules
            if r.host.kind != "address"
        }
    )
    networks = [r.host.network for r in rules if r.host.kind == "address" and r.host.network]
    permitted: list[x509.GeneralName] = [x509.DNSName(n) for n in names or [_NOTHING]]
    permitted += [x509.IPAddress(n) for n in dict.fromkeys(networks)]
    excluded: list[x509.GeneralName] | None = None
    if not networks:
        # Without an iPAddress subtree, addresses would be unconstrained: exclude them all.
        excluded = [
            x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.ip_network("::/0")),
        ]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


@dataclass(frozen=True, repr=False)
class EphemeralCA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    # ca.vault_pki: the PKI issuer that signed ``cert``, which agents trust instead of it
    # (served chain: leaf, ``cert``); None: ``cert`` is self-signed and is what they trust.
    anchor: x509.Certificate | None = None

    def __repr__(self) -> str:
        return f"EphemeralCA(subject={self.cert.subject.rfc4514_string()!r}, key=<redacted>)"

    @classmethod
    def create(
        cls, rules: tuple[Rule, ...], validity_hours: int, constrained: bool = True
    ) -> EphemeralCA:
        return cls.create_with(name_constraints(rules) if constrained else None, validity_hours)

    @classmethod
    def create_with(
        cls, constraints: x509.NameConstraints | None, validity_hours: int,
        not_after: datetime.datetime | None = None,
    ) -> EphemeralCA:  # fmt: skip
        """A CA with these name constraints (None: unconstrained, for report mode), valid
        ``validity_hours`` or until ``not_after`` if that is sooner."""
        # P-256: new client TLS connections through the proxy are much cheaper than with RSA.
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        end = now + datetime.timedelta(hours=validity_hours)
        if not_after is not None:
            end = min(end, not_after)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egress"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"egress ephemeral CA {secrets.token_hex(4)}"
                ),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if constraints is not None:
            # RFC 5280 4.2.1.10: name constraints MUST be critical.
            cert = cert.add_extension(constraints, critical=True)
        return cls(key=key, cert=cert.sign(key, hashes.SHA256()))

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def trust_pem(self) -> bytes:
        """The certificate agents trust: the signing issuer's (ca.vault_pki), else this."""
        if self.anchor is not None:
            return self.anchor.public_bytes(serialization.Encoding.PEM)
        return self.cert_pem()

    def write_cert(self, path: Path) -> None:
        """Write the certificate agents trust (never the key)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.trust_pem())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


class SignedCaMismatch(ValueError):
    """A certificate a PKI returned for our CA is not exactly the one we asked it to sign."""


def _der(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER element at ``at`` (definite lengths only)."""
    tag, first = data[at], data[at + 1]
    at += 2
    if first < 0x80:
        return tag, at, at + first
    n = first & 0x7F
    if not 1 <= n <= 4:
        raise SignedCaMismatch("its encoding is not DER")
    length = int.from_bytes(data[at : at + n], "big")
    return tag, at + n, at + n + length


def raw_extensions(cert: x509.Certificate) -> dict[bytes, tuple[bool, bytes]]:
    """Each extension's OID, criticality and value exactly as encoded (not as parsed: a
    parser may drop a field, such as a subtree's ``maximum``, that a verifier still reads)."""
    tbs = cert.tbs_certificate_bytes
    _, at, end = _der(tbs, 0)
    out: dict[bytes, tuple[bool, bytes]] = {}
    while at < end:
        tag, start, stop = _der(tbs, at)
        if tag == 0xA3:  # [3] extensions: a SEQUENCE of Extension
            _, ext_at, ext_end = _der(tbs, start)
            while ext_at < ext_end:
                _, e_start, e_stop = _der(tbs, ext_at)
                parts = []
                i = e_start
                while i < e_stop:
                    t, c_start, c_stop = _der(tbs, i)
                    parts.append((t, tbs[c_start:c_stop]))
                    i = c_stop
                oid = parts[0][1]
                critical = len(parts) == 3 and parts[1][1] == b"\xff"
                if oid in out:
                    raise SignedCaMismatch("it carries an extension twice")
                out[oid] = (critical, parts[-1][1])
                ext_at = e_stop
        at = stop
    return out


# The authority key identifier is the issuer's to set; every other extension must come back
# as sent. (2.5.29.35, DER-encoded.)
_AKI = bytes.fromhex("551d23")


def check_anchor(anchor: x509.Certificate) -> None:
    """The signing issuer must be a root CA that may sign a CA below it: self-issued and
    self-signed (egress serves the leaf and its own CA; agents trust the issuer, so there is
    nothing between them), a CA, allowed a CA below it, allowed to sign certificates."""
    if anchor.issuer != anchor.subject:
        raise SignedCaMismatch("the signing issuer is not a root (its issuer is "
                               f"{anchor.issuer.rfc4514_string()!r}): use a root issuer, "
                               "which agents then trust")  # fmt: skip
    try:
        anchor.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature):
        raise SignedCaMismatch("the signing issuer's certificate is not self-signed") from None
    try:
        bc = anchor.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise SignedCaMismatch("the signing issuer's certificate is not a CA")
    if bc.path_length is not None and bc.path_length < 1:
        raise SignedCaMismatch("the signing issuer may not sign a CA (its path length is 0)")
    try:
        ku = anchor.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.key_cert_sign:
        raise SignedCaMismatch("the signing issuer's key usage does not allow signing certificates")
    now = datetime.datetime.now(datetime.UTC)
    if not anchor.not_valid_before_utc <= now < anchor.not_valid_after_utc:
        raise SignedCaMismatch("the signing issuer's certificate is not valid now")


def adopt_signed(
    ca: EphemeralCA, signed: x509.Certificate, anchor: x509.Certificate
) -> EphemeralCA:
    """``ca`` with ``signed`` (its certificate as ``anchor`` signed it) in place of its
    self-signed one, after checking that the issuer changed nothing but the issuer name and
    the signature: same key, same validity, the same extensions byte for byte (name
    constraints first of all) but the authority key identifier, and a signature that
    ``anchor``'s key verifies; and that ``anchor`` is a root that may sign a CA. Anything
    else and the PKI is not signing what egress decided: refuse it."""
    check_anchor(anchor)
    mine = ca.cert
    if signed.public_key() != mine.public_key():
        raise SignedCaMismatch("it carries another public key")
    if signed.subject != mine.subject:
        raise SignedCaMismatch("its subject differs from the one sent")
    if signed.issuer != anchor.subject:
        raise SignedCaMismatch("its issuer is not the signing issuer's subject")
    if (signed.not_valid_before_utc, signed.not_valid_after_utc) != (
        mine.not_valid_before_utc, mine.not_valid_after_utc
    ):  # fmt: skip
        raise SignedCaMismatch("its validity differs from the one sent")
    theirs = {k: v for k, v in raw_extensions(signed).items() if k != _AKI}
    ours = {k: v for k, v in raw_extensions(mine).items() if k != _AKI}
    if theirs != ours:
        raise SignedCaMismatch("its extensions (name constraints, basic constraints, key usage) "
                               "differ from the ones sent")  # fmt: skip
    try:
        signed.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise SignedCaMismatch(
            f"its signature does not verify with the issuer's key ({e})"
        ) from None
    return EphemeralCA(key=ca.key, cert=signed, anchor=anchor)


def trust_bundle(cas: list[EphemeralCA]) -> bytes:
    """What agents trust for these CAs: each self-signed CA, each PKI issuer once."""
    return b"".join(dict.fromkeys(ca.trust_pem() for ca in cas))


def constraints_of(ca: EphemeralCA) -> x509.NameConstraints | None:
    try:
        return ca.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def _dns_within(name: str, subtree: str) -> bool:
    """RFC 5280 4.2.1.10: a DNS subtree covers the name itself and every name below it."""
    name, subtree = name.lower().rstrip("."), subtree.lower().rstrip(".")
    return name == subtree or name.endswith("." + subtree)


def permits(ca: EphemeralCA, host: str) -> bool:
    """Would a constraint-checking client accept a leaf of ``ca`` for ``host``?"""
    nc = constraints_of(ca)
    if nc is None:
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    permitted = nc.permitted_subtrees or []
    excluded = nc.excluded_subtrees or []
    if addr is not None:
        nets = [g.value for g in permitted if isinstance(g, x509.IPAddress)]
        bad = [g.value for g in excluded if isinstance(g, x509.IPAddress)]
        return any(addr in n for n in nets) and not any(addr in n for n in bad)
    names = [g.value for g in permitted if isinstance(g, x509.DNSName)]
    return any(_dns_within(host, n) for n in names)


def covers(cas: list[EphemeralCA], wanted: x509.NameConstraints | None) -> bool:
    """Does every name and range ``wanted`` permits fall within one of ``cas``'s
    constraints? (A reload then keeps the CAs; otherwise it adds a new one.)"""
    if any(constraints_of(ca) is None for ca in cas):
        return True  # an unconstrained CA (report mode) covers everything
    if wanted is None:
        return False
    for g in wanted.permitted_subtrees or []:
        if isinstance(g, x509.DNSName):
            if g.value == _NOTHING:
                continue
            if not any(permits(ca, g.value) for ca in cas):
                return False
        elif isinstance(g, x509.IPAddress):
            net = g.value
            if not any(
                isinstance(h, x509.IPAddress) and net.subnet_of(h.value)  # type: ignore[arg-type]
                for ca in cas
                for h in (constraints_of(ca).permitted_subtrees or [])  # type: ignore[union-attr]
                if type(h.value) is type(net)
            ):
                return False
    return True


def ca_constraints(cfg: Config) -> x509.NameConstraints | None:
    """The name constraints of a CA for ``cfg``; None: unconstrained (report mode)."""
    # The CA's names cover every agent's rules; an agent in report mode may reach any host,
    # so then the CA is not constrained either.
    report = cfg.mode == "report" or any(a.mode == "report" for a in cfg.agents)
    ca_rules = cfg.all_rules
    if report and cfg.agents and cfg.locked.hosts is not None:
        # Report-mode agents reach no further than locked.hosts and the shared rules
        # (AgentView.enforces): the CA stays constrained to those.
        ca_rules += tuple(Rule(i, p, (443,), ("https",), None, None, scope="locked.hosts.")
                          for i, p in enumerate(cfg.locked.hosts))  # fmt: skip
        report = False
    return None if report else name_constraints(ca_rules)
