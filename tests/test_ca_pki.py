"""egress's CA signed by a Vault/OpenBao PKI issuer (ca.vault_pki; docs/gateway.md).

A gateway's replicas each make their CA key in memory; one PKI issuer signs each CA, so an
agent trusts one certificate whichever replica its connection lands on. The proof: a real
OpenBao with a pki mount, two egress processes, clients that trust only the issuer, the
chain they are served, and leaves made with a CA's key checked by OpenSSL against the name
constraints OpenBao kept.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from egress.ca import EphemeralCA, SignedCaMismatch, adopt_signed, ca_constraints, name_constraints
from egress.capki import issue_ca
from egress.config import CaPki, parse
from egress.errors import ConfigError
from egress.vault import VaultClient, VaultError
from tests.conftest import (
    API,
    OTHER,
    SECRET,
    RunningProxy,
    base_config,
    egress_cmd,
    proxy_env,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream
from tests.vault_server import VaultServer

MOUNT = "pki-egress"
SIGN = f"{MOUNT}/issuer/default/sign-self-issued"
PH = "egress-api_token-placeholder"
OTHER_PH = "sk-EGRESSPLACEHOLDEROTHER0000"


@dataclass
class Pki:
    vault: VaultServer
    root_file: Path
    root: x509.Certificate
    token: str  # may sign
    read_only_token: str


def _mount_root(vault: VaultServer, mount: str, ttl: str) -> x509.Certificate:
    c = vault.client()
    if f"{mount}/" not in c.sys.list_mounted_secrets_engines()["data"]:
        c.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": "87600h"})
    answer = c.write_data(f"{mount}/root/generate/internal",
                          data={"common_name": f"egress agents root {mount}", "ttl": ttl})  # fmt: skip
    return x509.load_pem_x509_certificate(answer["data"]["certificate"].encode())


def _policy(mount: str, sign: bool) -> str:
    # OpenBao needs "update" on the issuer's sign-self-issued path (its root/ twin needs
    # "sudo" too); docs/gateway.md gives both, which works on Vault and OpenBao alike.
    caps = '["update", "sudo"]' if sign else '["read"]'
    return (f'path "{mount}/issuer/default/sign-self-issued" {{ capabilities = {caps} }}\n'
            f'path "{mount}/issuer/default/json" {{ capabilities = ["read"] }}\n')  # fmt: skip


@pytest.fixture(scope="module")
def pki(vault: VaultServer, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = _mount_root(vault, MOUNT, "8760h")
    root_file = tmp_path_factory.mktemp("pki") / "agents-root.pem"
    root_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    vault.policy("egress-pki", _policy(MOUNT, True))
    vault.policy("egress-pki-read-only", _policy(MOUNT, False))
    return Pki(
        vault, root_file, root, vault.token(["egress-pki"]), vault.token(["egress-pki-read-only"])
    )


def pki_config(
    tmp: Path, ca_file: Path, port: int, vault: VaultServer, **extra: Any
) -> dict[str, Any]:
    cfg = base_config(tmp, ca_file, port)
    cfg["ca"]["vault_pki"] = {"mount": MOUNT}
    cfg["vault"] = {"address": vault.address, "ca_file": str(vault.ca_file),
                    "auth": {"method": "token", "token_env": "EGRESS_VAULT_TOKEN"},
                    "timeout_seconds": 5}  # fmt: skip
    cfg.update(extra)
    return cfg


def _client(p: RunningProxy, trust: Path) -> httpx.Client:
    return httpx.Client(
        proxy=p.url, verify=ssl.create_default_context(cafile=str(trust)), timeout=20
    )


def _served_chain(p: RunningProxy, host: str, port: int) -> list[x509.Certificate]:
    """The certificates egress serves for ``host``, through its CONNECT (openssl s_client)."""
    out = subprocess.run(
        ["openssl", "s_client", "-proxy", f"127.0.0.1:{p.port}", "-connect", f"{host}:{port}",
         "-servername", host, "-showcerts"],
        input=b"", capture_output=True, timeout=30,
    )  # fmt: skip
    pems = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", out.stdout, re.S)
    assert pems, out.stderr.decode()
    return [x509.load_pem_x509_certificate(pem) for pem in pems]


def _no_key_on_disk(*dirs: Path) -> None:
    for d in dirs:
        for f in d.rglob("*"):
            if f.is_file():
                assert b"PRIVATE KEY" not in f.read_bytes(), f


# ------------------------------------------------------------------ two replicas, one root


def test_two_replicas_chain_to_one_issuer_that_agents_trust(
    tmp_path: Path, pki: Pki, upstream: Upstream, test_ca_file: Path
) -> None:
    env = proxy_env(EGRESS_VAULT_TOKEN=pki.token)
    replicas: list[RunningProxy] = []
    try:
        for name, workers in (("a", 1), ("b", 2)):  # b: the CA reaches forked workers
            d = tmp_path / name
            d.mkdir()
            cfg = pki_config(d, test_ca_file, upstream.port, pki.vault, workers=workers)
            replicas.append(start_proxy(write_config(d, cfg), d, env))
        intermediates = []
        for p in replicas:
            # The file egress writes for agents holds the issuer: what they trust already.
            assert x509.load_pem_x509_certificates(p.ca.read_bytes()) == [pki.root]
            upstream.recorder.clear()
            with _client(p, pki.root_file) as c:  # trusts the issuer only
                r = c.get(
                    f"https://{API}:{upstream.port}/pki", headers={"authorization": f"Bearer {PH}"}
                )
                assert r.status_code == 200, r.text
                assert upstream.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
                denied = c.get(f"https://{OTHER}:{upstream.port}/pki")  # a secret bound elsewhere
                assert (
                    denied.status_code == 200
                    and "authorization" not in upstream.requests[-1].headers
                )
            curl = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(pki.root_file),
                 "-x", p.url, f"https://{API}:{upstream.port}/curl"],
                capture_output=True, text=True, timeout=30, env=proxy_env(),
            )  # fmt: skip
            assert curl.stdout == "200", curl.stderr
            chain = _served_chain(p, API, upstream.port)
            leaf, inter = chain[0], chain[1]
            assert leaf.issuer == inter.subject and inter.issuer == pki.root.subject
            inter.verify_directly_issued_by(pki.root)
            nc = inter.extensions.get_extension_for_class(x509.NameConstraints)
            assert nc.critical
            # Exactly the constraints egress decided, addresses excluded included: OpenBao
            # signed them as sent.
            cfg = parse(yaml.safe_load(p.config.read_text()), str(p.config), p.config.parent)
            assert nc.value == ca_constraints(cfg)
            assert x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")) in (
                nc.value.excluded_subtrees or []
            )
            intermediates.append(inter)
        # Each replica its own key, the same issuer.
        assert intermediates[0].public_key() != intermediates[1].public_key()
    finally:
        for p in replicas:
            assert p.stop() == 0, p.stderr_path.read_text()
    for p in replicas:
        assert "Traceback" not in p.stderr_path.read_text()
        out = p.outputs()
        assert pki.token not in out and SECRET not in out
    _no_key_on_disk(tmp_path)


# ------------------------------------------------------- what a leaked CA key could mint


def _vault_client(pki: Pki, tmp: Path, token: str) -> tuple[VaultClient, Any]:
    cfg = parse(pki_config(tmp, pki.root_file, 443, pki.vault), str(tmp / "egress.yaml"), tmp)
    client = VaultClient(cfg.vault, environ={"EGRESS_VAULT_TOKEN": token})
    client.login()
    return client, cfg


def _leaf(ca: EphemeralCA, san: x509.GeneralName) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


# (SAN, what OpenSSL says): a leaf for anything outside the allowlist fails, name or address.
LEAVES = [
    (x509.DNSName(API), "OK"),
    # An exact rule is still a DNS subtree in X.509 (RFC 5280 has no exact-only name): a
    # name below it is within the CA's constraints; egress signs only what the allowlist allows.
    (x509.DNSName(f"deep.{API}"), "OK"),
    (x509.DNSName("evil.example"), "permitted subtree violation"),
    (x509.DNSName(API.replace("api", "apix")), "permitted subtree violation"),
    (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), "excluded subtree violation"),
    (x509.IPAddress(ipaddress.ip_address("169.254.169.254")), "excluded subtree violation"),
    (x509.IPAddress(ipaddress.ip_address("::1")), "excluded subtree violation"),
]


def test_a_leaked_ca_key_mints_nothing_outside_the_allowlist(tmp_path: Path, pki: Pki) -> None:
    client, cfg = _vault_client(pki, tmp_path, pki.token)
    ca = issue_ca(client, cfg.ca_vault_pki, ca_constraints(cfg), 24)
    assert ca.anchor == pki.root
    inter = tmp_path / "inter.pem"
    inter.write_bytes(ca.cert_pem())
    seen = []
    for san, expected in LEAVES:
        leaf = tmp_path / "leaf.pem"
        leaf.write_bytes(_leaf(ca, san).public_bytes(serialization.Encoding.PEM))
        out = subprocess.run(["openssl", "verify", "-CAfile", str(pki.root_file), "-untrusted", str(inter),
                              str(leaf)], capture_output=True, text=True)  # fmt: skip
        said = "OK" if out.returncode == 0 else out.stdout + out.stderr
        seen.append((san, expected in said, said))
    assert all(ok for _, ok, _ in seen), seen


def test_a_constrained_issuer_bounds_any_ca_signed_under_it(tmp_path: Path, pki: Pki) -> None:
    """docs/gateway.md: a root made with permitted_dns_domains bounds even a CA signed with
    no constraints at all (what a stolen signing token could get), as OpenSSL checks it."""
    mount = "pki-bounded"
    c = pki.vault.client()
    if f"{mount}/" not in c.sys.list_mounted_secrets_engines()["data"]:
        c.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": "87600h"})
    answer = c.write_data(f"{mount}/root/generate/internal", data={
        "common_name": "bounded root", "ttl": "24h", "permitted_dns_domains": API})  # fmt: skip
    root_file = tmp_path / "root.pem"
    root_file.write_text(answer["data"]["certificate"])
    pki.vault.policy(f"egress-{mount}", _policy(mount, True))
    client, _ = _vault_client(pki, tmp_path, pki.vault.token([f"egress-{mount}"]))
    # What a stolen signing token could get: a CA with no constraints, signed as sent.
    unconstrained = EphemeralCA.create_with(None, 24)
    answer = client.request("sign", "write", CaPki(mount).sign_path,
                            {"certificate": unconstrained.cert_pem().decode()})  # fmt: skip
    anchor = x509.load_pem_x509_certificate(root_file.read_bytes())
    signed = x509.load_pem_x509_certificate(answer["data"]["certificate"].encode())
    ca = adopt_signed(unconstrained, signed, anchor)
    inter = tmp_path / "inter.pem"
    inter.write_bytes(ca.cert_pem())
    said = {}
    for name in (API, "evil.example"):
        leaf = tmp_path / "leaf.pem"
        leaf.write_bytes(_leaf(ca, x509.DNSName(name)).public_bytes(serialization.Encoding.PEM))
        out = subprocess.run(["openssl", "verify", "-CAfile", str(root_file), "-untrusted", str(inter),
                              str(leaf)], capture_output=True, text=True)  # fmt: skip
        said[name] = "OK" if out.returncode == 0 else out.stdout + out.stderr
    assert said[API] == "OK" and "permitted subtree violation" in said["evil.example"], said


@pytest.mark.parametrize(
    ("ttl", "expect"),
    [
        ("3h", "capped"),  # the CA ends with its issuer, not 24 h later
        ("40m", "refused"),  # less than an hour left: renew the issuer first
    ],
)
def test_the_ca_never_outlives_its_issuer(tmp_path: Path, pki: Pki, ttl: str, expect: str) -> None:
    mount = f"pki-{ttl}"
    root = _mount_root(pki.vault, mount, ttl)
    pki.vault.policy(f"egress-{mount}", _policy(mount, True))
    client, cfg = _vault_client(pki, tmp_path, pki.vault.token([f"egress-{mount}"]))
    if expect == "refused":
        with pytest.raises(VaultError, match="within the hour: renew or rotate it first"):
            issue_ca(client, CaPki(mount), ca_constraints(cfg), 24)
        return
    ca = issue_ca(client, CaPki(mount), ca_constraints(cfg), 24)
    assert ca.cert.not_valid_after_utc == root.not_valid_after_utc


# ------------------------------------------------------------------ failures fail closed


def test_a_token_that_may_not_sign_stops_the_start_with_the_fix(
    tmp_path: Path, pki: Pki, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = pki_config(tmp_path, test_ca_file, upstream.port, pki.vault)
    path = write_config(tmp_path, cfg)
    run = subprocess.run(egress_cmd("run", "--config", str(path)), capture_output=True, text=True,
                         timeout=60, env=proxy_env(EGRESS_VAULT_TOKEN=pki.read_only_token))  # fmt: skip
    assert run.returncode != 0
    err = run.stderr
    assert SIGN in err and '"update", "sudo"' in err and "permission denied" in err, err
    assert "Traceback" not in err and pki.read_only_token not in err + run.stdout
    assert not Path(cfg["ca"]["cert_path"]).exists()  # nothing for an agent to trust
    _no_key_on_disk(tmp_path)


def test_a_wrong_mount_names_the_key_to_fix(
    tmp_path: Path, pki: Pki, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = pki_config(tmp_path, test_ca_file, upstream.port, pki.vault)
    cfg["ca"]["vault_pki"]["mount"] = "no-such-pki"
    path = write_config(tmp_path, cfg)
    run = subprocess.run(egress_cmd("run", "--config", str(path)), capture_output=True, text=True,
                         timeout=60, env=proxy_env(EGRESS_VAULT_TOKEN=pki.vault.root_token))  # fmt: skip
    assert run.returncode != 0
    assert "no-such-pki/issuer/default/json" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def _signed_by(
    ca: EphemeralCA, root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate, **change: Any
) -> x509.Certificate:
    """``ca``'s certificate as a PKI would return it, signed by ``root_key``, with ``change``."""
    mine = ca.cert
    b = (
        x509.CertificateBuilder()
        .subject_name(change.get("subject", mine.subject))
        .issuer_name(change.get("issuer", root.subject))
        .public_key(change.get("public_key", mine.public_key()))
        .serial_number(mine.serial_number)
        .not_valid_before(mine.not_valid_before_utc)
        .not_valid_after(change.get("not_after", mine.not_valid_after_utc))
    )
    drop = change.get("drop")
    for e in mine.extensions:
        if e.oid == drop:
            continue
        if isinstance(e.value, x509.NameConstraints) and "constraints" in change:
            b = b.add_extension(change["constraints"], critical=True)
        elif isinstance(e.value, x509.BasicConstraints) and "path_length" in change:
            b = b.add_extension(x509.BasicConstraints(True, change["path_length"]), critical=True)
        else:
            b = b.add_extension(e.value, critical=e.critical)
    b = b.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key()), critical=False
    )  # type: ignore[arg-type]
    return b.sign(change.get("signer", root_key), hashes.SHA256())


def _root(days: int = 365, ca: bool = True, path_length: int | None = None,
          key_cert_sign: bool | None = None, signer: Any = None,
          issuer: str = "test root") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder().subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca, path_length), critical=True)
    )  # fmt: skip
    if key_cert_sign is not None:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, key_cert_sign, True, False, False),
                            critical=True)  # fmt: skip
    return key, b.sign(signer or key, hashes.SHA256())


# Issuers egress must not take: agents would trust a certificate that cannot be the root of
# the chain egress serves (leaf, CA), or a CA that may not sign one below it.
ANCHORS = [
    ("an intermediate", {"issuer": "some other root"}, "not a root"),
    ("not self-signed", {"signer": ec.generate_private_key(ec.SECP256R1())}, "not self-signed"),
    ("not a CA", {"ca": False}, "not a CA"),
    ("path length 0", {"path_length": 0}, "path length is 0"),
    ("no keyCertSign", {"key_cert_sign": False}, "key usage"),
]


@pytest.mark.parametrize(("what", "kw", "said"), ANCHORS, ids=[a[0] for a in ANCHORS])
def test_an_issuer_that_cannot_anchor_the_chain_is_refused(
    what: str, kw: dict[str, Any], said: str
) -> None:
    ca = EphemeralCA.create_with(None, 24)
    key, root = _root(**kw)
    with pytest.raises(SignedCaMismatch, match=said):
        adopt_signed(ca, _signed_by(ca, key, root), root)
    key, good = _root(key_cert_sign=True, path_length=1)  # the control: accepted
    assert adopt_signed(ca, _signed_by(ca, key, good), good).anchor == good


def _nc_with_maximum(host: str) -> x509.UnrecognizedExtension:
    """NameConstraints permitting ``host`` with a subtree ``maximum`` (RFC 5280 says it must
    be absent): the same value once parsed, a different one to a verifier that reads it."""

    def tlv(tag: int, body: bytes) -> bytes:
        return bytes([tag, len(body)]) + body

    subtree = tlv(0x30, tlv(0x82, host.encode()) + tlv(0x81, b"\x05"))
    return x509.UnrecognizedExtension(x509.NameConstraints.oid, tlv(0x30, tlv(0xA0, subtree)))


_OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
_DNS_ONLY = x509.NameConstraints(permitted_subtrees=[x509.DNSName(API)], excluded_subtrees=None)
# What a PKI might change, and what adopt_signed says: every change is refused.
CHANGES: list[tuple[str, Callable[[EphemeralCA], dict[str, Any]], str]] = [
    ("another key", lambda ca: {"public_key": _OTHER_KEY.public_key()}, "another public key"),
    ("addresses no longer excluded", lambda ca: {"constraints": _DNS_ONLY}, "extensions"),
    ("constraints dropped", lambda ca: {"drop": x509.NameConstraints.oid}, "extensions"),
    ("may sign CAs", lambda ca: {"path_length": None}, "extensions"),
    ("another subject", lambda ca: {"subject": x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])}, "subject"),
    ("longer life", lambda ca: {"not_after": ca.cert.not_valid_after_utc + datetime.timedelta(days=9)}, "validity"),
    ("another issuer name", lambda ca: {"issuer": x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "y")])}, "issuer"),
    ("signed by another key", lambda ca: {"signer": _OTHER_KEY}, "signature"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "change", "said"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_pki_answer_that_changed_anything_is_refused(
    what: str, change: Callable[[EphemeralCA], dict[str, Any]], said: str
) -> None:
    rules = parse({"allow": [{"host": API}]}, "x.yaml", Path(".")).rules
    ca = EphemeralCA.create_with(name_constraints(rules), 24)
    key, root = _root()
    good = adopt_signed(ca, _signed_by(ca, key, root), root)
    assert good.anchor == root and good.key is ca.key and good.trust_pem() != ca.cert_pem()
    with pytest.raises(SignedCaMismatch, match=said):
        adopt_signed(ca, _signed_by(ca, key, root, **change(ca)), root)


def test_extensions_are_compared_as_encoded_not_as_parsed() -> None:
    """A subtree ``maximum`` parses to the same NameConstraints (cryptography drops it) but is
    not what egress sent: refused."""
    ca = EphemeralCA.create_with(_DNS_ONLY, 24)
    key, root = _root()
    changed = _signed_by(ca, key, root, constraints=_nc_with_maximum(API))
    assert changed.extensions.get_extension_for_class(x509.NameConstraints).value == _DNS_ONLY
    with pytest.raises(SignedCaMismatch, match="extensions"):
        adopt_signed(ca, changed, root)
    assert adopt_signed(ca, _signed_by(ca, key, root), root).anchor == root


def test_report_mode_is_never_signed(tmp_path: Path, pki: Pki) -> None:
    """Report mode makes an unconstrained CA; signed by the issuer every agent trusts, its
    key could mint any name. egress refuses to ask (at start, and a reload is rejected)."""
    client, _ = _vault_client(pki, tmp_path, pki.token)
    calls = client.calls
    with pytest.raises(VaultError, match="report mode"):
        issue_ca(client, CaPki(MOUNT), None, 24)
    assert client.calls == calls  # nothing was sent


def test_an_expired_issuer_is_refused() -> None:
    ca = EphemeralCA.create_with(None, 24)
    key, root = _root(days=-0)  # ends now: not valid any more by the time it is checked
    time.sleep(0.01)
    with pytest.raises(SignedCaMismatch, match="not valid now"):
        adopt_signed(ca, _signed_by(ca, key, root), root)


# ------------------------------------------------------------------------- the config


BAD = [
    ({"vault_pki": "pki"}, "ca.vault_pki", "must be a mapping"),
    ({"vault_pki": {}}, "ca.vault_pki.mount", "is required"),
    ({"vault_pki": {"mount": "/pki"}}, "ca.vault_pki.mount", "no leading or trailing"),
    ({"vault_pki": {"mount": "pki/../sys"}}, "ca.vault_pki.mount", "mount path"),
    (
        {"vault_pki": {"mount": "pki", "issuer": "a/b"}},
        "ca.vault_pki.issuer",
        "issuer's name or ID",
    ),
    ({"vault_pki": {"mount": "pki", "role": "x"}}, "ca.vault_pki.role", "unknown key"),
]


@pytest.mark.parametrize(("ca", "key", "said"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_vault_pki_config_names_the_key(
    tmp_path: Path, ca: dict[str, Any], key: str, said: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"ca": ca, "allow": [{"host": API}]}, str(tmp_path / "egress.yaml"), tmp_path)
    text = str(e.value)
    assert key in text and said in text, text


def test_vault_pki_alone_connects_to_vault_from_the_environment(tmp_path: Path) -> None:
    cfg = parse({"ca": {"vault_pki": {"mount": "pki/agents", "issuer": "gw-2026"}}, "allow": [{"host": API}]},
                str(tmp_path / "egress.yaml"), tmp_path)  # fmt: skip
    assert cfg.vault is not None and cfg.vault.auth.method == "token"
    assert cfg.ca_vault_pki == CaPki("pki/agents", "gw-2026")
    assert cfg.ca_vault_pki.sign_path == "pki/agents/issuer/gw-2026/sign-self-issued"


# ---------------------------------------------------------------------------- reload


def test_a_reload_that_needs_a_new_ca_gets_it_signed_and_agents_trust_it_unchanged(
    tmp_path: Path, pki: Pki, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = pki_config(
        tmp_path, test_ca_file, upstream.port, pki.vault, workers=2, reload={"watch": False}
    )
    cfg["allow"], cfg["secrets"] = cfg["allow"][:1], cfg["secrets"][:1]
    path = write_config(tmp_path, cfg)
    p = start_proxy(path, tmp_path, proxy_env(EGRESS_VAULT_TOKEN=pki.token))
    try:
        url = f"https://{OTHER}:{upstream.port}/after"
        first = _served_chain(p, API, upstream.port)[1]
        with _client(p, pki.root_file) as c:
            with pytest.raises(httpx.ProxyError, match="403"):
                c.get(url)
        new = json.loads(json.dumps(cfg))
        new["allow"].append({"host": OTHER, "ports": [upstream.port]})
        path.write_text(yaml.safe_dump(new, sort_keys=False))
        p.proc.send_signal(signal.SIGHUP)
        records = [p.reload_record()]
        assert records[0]["outcome"] == "applied", records[0]
        # The agent's trust is unchanged (the issuer), and every worker serves the new name.
        assert x509.load_pem_x509_certificates(p.ca.read_bytes()) == [pki.root]
        for _ in range(4):  # new connections, spread over the workers
            with _client(p, pki.root_file) as c:
                assert c.get(url).status_code == 200
        chain = _served_chain(p, OTHER, upstream.port)
        assert chain[1].issuer == pki.root.subject and chain[1] != first
        nc = chain[1].extensions.get_extension_for_class(x509.NameConstraints).value
        assert x509.DNSName(OTHER) in nc.permitted_subtrees
        assert _served_chain(p, API, upstream.port)[1] == first  # the first CA still serves API
    finally:
        assert p.stop() == 0, p.stderr_path.read_text()
    assert "Traceback" not in p.stderr_path.read_text()
    _no_key_on_disk(tmp_path)


def test_a_reload_whose_ca_cannot_be_signed_changes_nothing(
    tmp_path: Path, pki: Pki, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = pki_config(
        tmp_path, test_ca_file, upstream.port, pki.vault, workers=1, reload={"watch": False}
    )
    cfg["allow"], cfg["secrets"] = cfg["allow"][:1], cfg["secrets"][:1]
    path = write_config(tmp_path, cfg)
    token = pki.vault.token(["egress-pki"])
    p = start_proxy(path, tmp_path, proxy_env(EGRESS_VAULT_TOKEN=token))
    try:
        pki.vault.client().auth.token.revoke(token)  # Vault no longer signs for this egress
        new = json.loads(json.dumps(cfg))
        new["allow"].append({"host": OTHER, "ports": [upstream.port]})
        path.write_text(yaml.safe_dump(new, sort_keys=False))
        p.proc.send_signal(signal.SIGHUP)
        records = [p.reload_record()]
        assert (records[0]["outcome"], records[0]["reason"]) == ("rejected", "ca_signing_failed"), (
            records[0]
        )
        with _client(p, pki.root_file) as c:
            with pytest.raises(httpx.ProxyError, match="403"):
                c.get(f"https://{OTHER}:{upstream.port}/")
            r = c.get(
                f"https://{API}:{upstream.port}/still", headers={"authorization": f"Bearer {PH}"}
            )
            assert r.status_code == 200
    finally:
        assert p.stop() == 0, p.stderr_path.read_text()
    assert token not in p.outputs()
