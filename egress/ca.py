"""The ephemeral CA: made at every start, private key only in memory, name-constrained.

The certificate carries X.509 name constraints that permit only what the allowlist allows
(an exact name or a ``*.example.com`` rule as that domain's subtree, address rules as IP
ranges; every other address is excluded). Even a leaked key can then mint nothing a
constraint-checking client accepts for any other name. A config change that allows names
outside the constraints needs a new CA: every start makes one, and a reload adds one only
for such names (``covers``; docs/reload.md).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
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

    def __repr__(self) -> str:
        return f"EphemeralCA(subject={self.cert.subject.rfc4514_string()!r}, key=<redacted>)"

    @classmethod
    def create(
        cls, rules: tuple[Rule, ...], validity_hours: int, constrained: bool = True
    ) -> EphemeralCA:
        return cls.create_with(name_constraints(rules) if constrained else None, validity_hours)

    @classmethod
    def create_with(
        cls, constraints: x509.NameConstraints | None, validity_hours: int
    ) -> EphemeralCA:
        """A CA with these name constraints (None: unconstrained, for report mode)."""
        # P-256: new client TLS connections through the proxy are much cheaper than with RSA.
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
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
            .not_valid_after(now + datetime.timedelta(hours=validity_hours))
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

    def write_cert(self, path: Path) -> None:
        """Write the public certificate (never the key) for agents to trust."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.cert_pem())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


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
